"""Batched MTCNN face detection in torch, and the 5-point 108x108 crop.

MTCNN (Zhang et al. 2016) runs three cascaded networks (``morph.align.mtcnn_nets``, with the weights
the `mtcnn` package ships). The algorithm follows facenet-pytorch 2.6.0's ``detect_face``, the
reference our tests compare against, step for step:

1. Image pyramid: scales ``(12 / min_face_size) * scale_factor**k`` while the shorter side stays
   >= 12 px; level size ``int(side * scale + 1)``; resampling by area averaging (what
   ``interpolate(mode="area")``, i.e. adaptive average pooling, does).
2. P-Net on each level; cells with face probability >= threshold 1 give boxes
   ``floor((2 * cell + 1) / scale)`` to ``floor((2 * cell + 12) / scale)``; NMS (IoU 0.5) per
   level and image, then NMS (IoU 0.7) per image; box regression with width ``x2 - x1``; boxes
   made square about their centre ("rerec").
3. R-Net on 24x24 crops: the box's integer pixel range ``[trunc(x1) - 1, trunc(x2))`` (clipped to
   the image; the part outside the image is left out rather than zero-padded, as facenet-pytorch
   does) averaged down/up to 24x24 by area; probability > threshold 2; NMS (IoU 0.7); regression
   with width ``x2 - x1 + 1``; square.
4. O-Net on 48x48 crops, probability > threshold 3; landmarks ``x1 - 1 + (x2 - x1 + 1) * fraction``
   from the box before regression; regression; NMS with the "Min" overlap
   (intersection / smaller area, areas counted with +1) at 0.7.

What is ours: every crop (pyramid levels and the 24/48 crops of thousands of boxes) is read from
a per-image integral image (summed-area table), four corners per output cell, instead of one
``interpolate`` call per box (``morph.align.mtcnn_resample``): on CPU by a numba loop (``_area_resize_cpu``; on 2 busy cores 19 ms
of CPU per photo for the R-/O-Net crops and 10 ms for the pyramid, against 430 and 160 ms for the
same sums as torch gathers, whose index and corner tensors outweighed R-Net), elsewhere by one
vectorised torch gather, with the same bits; convolutions run in channels-last memory layout (about twice as fast
on CPU); images of the same size share every P-Net call; all boxes of a batch share the R-Net and
O-Net calls (in chunks of ``crop_batch``). One deliberate difference: a box whose clipped crop is
empty (it lies wholly outside the image) is dropped; facenet-pytorch skips its crop but keeps the
box, so its box and network-output lists no longer line up.

Coordinates: boxes and landmarks come out exactly as facenet-pytorch (and the `mtcnn` package)
report them. That arithmetic descends from the original Matlab code and is 1-based: a box
``(x1, ...)`` is cropped from 0-based column ``trunc(x1) - 1``, and a landmark is
``x1 - 1 + width * fraction``. So MTCNN's coordinates put the centre of pixel (0, 0) at about
(1, 1), not at (0, 0). We checked it on the real test photos: after a horizontal mirror, the
landmarks come back at ``x' = W + 1.4 - x`` on average (195 points on 13 faces, each photo
also shifted by 0-7 px; standard error ~0.15 px, the points not being independent).
For a detector without bias, that means an offset of +1.2 px from coordinates whose pixel (0, 0) is
centred at (0, 0). iBUG ``.pts`` annotations are 1-based too, so they compare with MTCNN
directly. ``morph.align.faces.align_face`` converts with ``LANDMARK_CENTRE_OFFSET`` to the template's convention
(pixel centres at integer + 0.5).
"""
from __future__ import annotations

import warnings
from typing import NamedTuple, Sequence

import numpy as np
import torch

from morph.align.mtcnn_nets import ONet, PNet, RNet
from morph.align.mtcnn_resample import integral_image, resize_crops, resize_levels

try:  # torchvision's C++ NMS is the fast path; our own greedy NMS is the fallback.
    from torchvision.ops import batched_nms as _tv_batched_nms
except Exception:  # noqa: BLE001 - missing, or built for another torch
    _tv_batched_nms = None

#: Add this to MTCNN's (x, y) to get coordinates with pixel centres at integer + 0.5 (the
#: convention of ``morph.align.template``). MTCNN's coordinates are 1-based (pixel (0, 0) centred at
#: (1, 1)); see the module docstring.
LANDMARK_CENTRE_OFFSET = -0.5


class FaceDetections(NamedTuple):
    """Faces found in one image, highest score first (numpy float32 arrays)."""

    boxes: np.ndarray  # (K, 4) x1, y1, x2, y2
    scores: np.ndarray  # (K,)
    landmarks: np.ndarray  # (K, 5, 2) (x, y): left eye, right eye, nose, left/right mouth corner

    @staticmethod
    def empty() -> "FaceDetections":
        return FaceDetections(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32),
                              np.zeros((0, 5, 2), np.float32))


# ----------------------------------------------------------------------------------------------
# Non-maximum suppression


def greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, threshold: float,
               mode: str = "union") -> torch.Tensor:
    """Greedy NMS within each group; indices kept, highest score first.

    mode "union": IoU with areas (x2 - x1) * (y2 - y1) (torchvision's convention);
    mode "min": intersection over the smaller area, lengths counted as x2 - x1 + 1 (the original
    MTCNN's "Min" mode, as facenet-pytorch's final stage uses it). A box is suppressed when its
    overlap with a kept, higher-scoring box is > threshold.
    """
    if boxes.shape[0] == 0:
        return torch.zeros((0,), dtype=torch.int64, device=boxes.device)
    b = boxes.detach().cpu().double().numpy()
    s = scores.detach().cpu().double().numpy()
    g = groups.detach().cpu().numpy()
    plus = 1.0 if mode == "min" else 0.0
    area = (b[:, 2] - b[:, 0] + plus) * (b[:, 3] - b[:, 1] + plus)
    keep = []
    for grp in np.unique(g):
        order = np.flatnonzero(g == grp)
        order = order[np.argsort(-s[order], kind="stable")]
        while order.size:
            i, rest = order[0], order[1:]
            keep.append(i)
            w = np.maximum(0.0, np.minimum(b[i, 2], b[rest, 2]) - np.maximum(b[i, 0], b[rest, 0]) + plus)
            h = np.maximum(0.0, np.minimum(b[i, 3], b[rest, 3]) - np.maximum(b[i, 1], b[rest, 1]) + plus)
            inter = w * h
            if mode == "min":
                overlap = inter / np.minimum(area[i], area[rest])
            else:
                with np.errstate(divide="ignore", invalid="ignore"):
                    overlap = inter / (area[i] + area[rest] - inter)
            order = rest[~(overlap > threshold)]
    keep = np.asarray(keep, np.int64)
    keep = keep[np.argsort(-s[keep], kind="stable")]
    return torch.as_tensor(keep, device=boxes.device)


def _nms_union(boxes, scores, groups, threshold):
    if _tv_batched_nms is not None:
        return _tv_batched_nms(boxes, scores, groups, threshold)
    return greedy_nms(boxes, scores, groups, threshold, "union")


# ----------------------------------------------------------------------------------------------
# Box arithmetic (float32, same operation order as facenet-pytorch so results agree bit for bit)


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Squares about the box centre, side = the longer side ("rerec")."""
    x1, y1, x2, y2 = boxes.unbind(1)
    w, h = x2 - x1, y2 - y1
    side = torch.maximum(w, h)
    nx1 = x1 + w * 0.5 - side * 0.5
    ny1 = y1 + h * 0.5 - side * 0.5
    return torch.stack([nx1, ny1, nx1 + side, ny1 + side], 1)


def _regress(boxes: torch.Tensor, reg: torch.Tensor, plus_one: bool) -> torch.Tensor:
    x1, y1, x2, y2 = boxes.unbind(1)
    w, h = x2 - x1, y2 - y1
    if plus_one:
        w, h = w + 1, h + 1
    return torch.stack([x1 + reg[:, 0] * w, y1 + reg[:, 1] * h, x2 + reg[:, 2] * w, y2 + reg[:, 3] * h], 1)


def _crop_ranges(boxes: torch.Tensor, width: int, height: int):
    """Integer pixel ranges of the boxes clipped to the image, and which are non-empty."""
    t = boxes.trunc().to(torch.int64)
    x0 = t[:, 0].clamp(min=1) - 1
    y0 = t[:, 1].clamp(min=1) - 1
    x1 = t[:, 2].clamp(max=width)
    y1 = t[:, 3].clamp(max=height)
    return x0, y0, x1, y1, (x1 > x0) & (y1 > y0)


# ----------------------------------------------------------------------------------------------
# The detector


def _as_images(images) -> list[torch.Tensor] | torch.Tensor:
    """Input -> a (B, H, W, 3) uint8 tensor, or a list of (H, W, 3) uint8 tensors."""
    def one(img, where):
        if isinstance(img, torch.Tensor):
            t = img
        else:
            with warnings.catch_warnings():  # read-only arrays (e.g. np.asarray(PIL image)): never written
                warnings.simplefilter("ignore", UserWarning)
                t = torch.from_numpy(np.ascontiguousarray(img))
        if t.dtype != torch.uint8:
            raise ValueError(f"MTCNN.detect: {where} has dtype {t.dtype}; give uint8 RGB values 0-255.")
        if t.ndim == 2:
            t = t[..., None]
        if t.ndim != 3 or t.shape[-1] not in (1, 3, 4):
            raise ValueError(f"MTCNN.detect: {where} has shape {tuple(t.shape)}; "
                             "give H x W x 3 RGB (H x W greyscale and H x W x 4 RGBA are also read).")
        if t.shape[-1] == 1:
            t = t.expand(-1, -1, 3)
        return t[..., :3]

    if isinstance(images, torch.Tensor) and images.ndim == 4:
        if images.dtype != torch.uint8 or images.shape[-1] != 3:
            raise ValueError(f"MTCNN.detect: a tensor batch must be (B, H, W, 3) uint8, got "
                             f"{tuple(images.shape)} {images.dtype}.")
        return images
    if isinstance(images, np.ndarray) and images.ndim == 4:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return _as_images(torch.from_numpy(np.ascontiguousarray(images)))
    if isinstance(images, (np.ndarray, torch.Tensor)):
        raise ValueError("MTCNN.detect: give a list of H x W x 3 images or a (B, H, W, 3) batch.")
    return [one(img, f"image {i}") for i, img in enumerate(images)]


class MTCNN:
    """MTCNN face detector (P-Net, R-Net, O-Net) on CPU or CUDA, batched over images.

    Parameters mirror facenet-pytorch's ``MTCNN`` and the original paper:
    ``min_face_size`` (px, default 20), ``scale_factor`` of the image pyramid (0.709),
    ``thresholds`` on the face probability of P-, R- and O-Net (0.6, 0.7, 0.7), and
    ``nms_thresholds``: P-Net within one pyramid level (0.5), P-Net across levels (0.7), R-Net
    (0.7), O-Net with the "Min" overlap (0.7). ``max_batch_pixels`` caps how many image pixels
    go through P-Net together; ``crop_batch`` how many crops go through R-/O-Net at once (256
    keeps R-Net's activations in the CPU cache: 2-3x faster than thousands at once);
    ``pnet_strip_pixels`` how many input pixels P-Net sees at once on CPU (``_pnet_in_strips``).
    """

    def __init__(self, min_face_size: float = 20.0, scale_factor: float = 0.709,
                 thresholds: Sequence[float] = (0.6, 0.7, 0.7),
                 nms_thresholds: Sequence[float] = (0.5, 0.7, 0.7, 0.7),
                 device: str | torch.device = "cpu", max_batch_pixels: int = 2**24,
                 crop_batch: int = 256, pnet_strip_pixels: int = 2**18):
        if not 0 < scale_factor < 1:
            raise ValueError(f"MTCNN: scale_factor must be in (0, 1), got {scale_factor}.")
        if not min_face_size > 0:
            raise ValueError(f"MTCNN: min_face_size must be > 0 px, got {min_face_size} "
                             "(below 12 px, P-Net's window, the image is enlarged).")
        if len(thresholds) != 3 or len(nms_thresholds) != 4:
            raise ValueError("MTCNN: thresholds takes 3 values (P, R, O) and nms_thresholds 4 "
                             "(P-Net per level, P-Net per image, R-Net, O-Net).")
        self.min_face_size = float(min_face_size)
        self.scale_factor = float(scale_factor)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.nms_thresholds = tuple(float(t) for t in nms_thresholds)
        self.device = torch.device(device)
        self.max_batch_pixels = int(max_batch_pixels)
        self.crop_batch = int(crop_batch)
        self.pnet_strip_pixels = int(pnet_strip_pixels)
        self.pnet, self.rnet, self.onet = (
            net.eval().to(self.device, memory_format=torch.channels_last) for net in (PNet(), RNet(), ONet()))

    def scales(self, height: int, width: int) -> list[float]:
        """Pyramid scales for an image of this size (facenet-pytorch's sequence, in float64)."""
        scale = 12.0 / self.min_face_size
        shorter = min(height, width) * scale
        out = []
        while shorter >= 12:
            out.append(scale)
            scale *= self.scale_factor
            shorter *= self.scale_factor
        return out

    @torch.inference_mode()
    def detect(self, images) -> list[FaceDetections]:
        """Faces in each image: a list of ``FaceDetections(boxes, scores, landmarks)``.

        images: a list of H x W x 3 uint8 RGB arrays (numpy or torch; sizes may differ) or a
        (B, H, W, 3) uint8 batch. Coordinates are pixels of each image, 1-based like facenet-pytorch's
        (pixel (0, 0) centred at (1, 1); see the module docstring).
        """
        batch = _as_images(images)
        n = len(batch)
        results: list[FaceDetections | None] = [None] * n
        if isinstance(batch, torch.Tensor):
            groups = {tuple(batch.shape[1:3]): list(range(n))}
        else:
            groups = {}
            for i, img in enumerate(batch):
                groups.setdefault(tuple(img.shape[:2]), []).append(i)
        for (h, w), idx in groups.items():
            per = max(1, self.max_batch_pixels // max(1, h * w))
            for start in range(0, len(idx), per):
                chunk = idx[start:start + per]
                if isinstance(batch, torch.Tensor):
                    imgs = batch[chunk[0]:chunk[-1] + 1]
                else:
                    imgs = torch.stack([batch[i] for i in chunk])
                imgs = imgs.to(self.device, non_blocking=True)
                for i, det in zip(chunk, self._detect_same_size(imgs)):
                    results[i] = det
        return results  # type: ignore[return-value]

    # -- the three stages ------------------------------------------------------------------

    def _detect_same_size(self, imgs: torch.Tensor) -> list[FaceDetections]:
        b, h, w, _ = imgs.shape
        sat = integral_image(imgs)
        boxes, scores, image_index = self._stage_pnet(sat, h, w)
        if boxes.shape[0]:
            boxes, scores, image_index = self._stage_rnet(sat, boxes, image_index, h, w)
        landmarks = boxes.new_zeros((0, 5, 2))
        if boxes.shape[0]:
            boxes, scores, landmarks, image_index = self._stage_onet(sat, boxes, image_index, h, w)
        boxes, scores, landmarks = (t.float().cpu().numpy() for t in (boxes, scores, landmarks))
        image_index = image_index.cpu().numpy()
        out = []
        for i in range(b):
            sel = np.flatnonzero(image_index == i)
            out.append(FaceDetections(boxes[sel], scores[sel], landmarks[sel]) if sel.size
                       else FaceDetections.empty())
        return out

    def _stage_pnet(self, sat, h, w):
        dev = sat.device
        nms_level, nms_image = self.nms_thresholds[:2]
        all_boxes, all_scores, all_reg, all_index = [], [], [], []
        for scale in self.scales(h, w):
            level = resize_levels(sat, int(h * scale + 1), int(w * scale + 1))
            prob, reg = self._pnet_in_strips(level)
            img_i, cy, cx = torch.nonzero(prob >= self.thresholds[0], as_tuple=True)
            if img_i.numel() == 0:
                continue
            cell = torch.stack([cx, cy], 1).to(torch.float32)
            q1 = torch.floor((2 * cell + 1) / scale)
            q2 = torch.floor((2 * cell + 12) / scale)
            boxes = torch.cat([q1, q2], 1)
            score = prob[img_i, cy, cx]
            keep = _nms_union(boxes, score, img_i, nms_level)
            all_boxes.append(boxes[keep])
            all_scores.append(score[keep])
            all_reg.append(reg[img_i, :, cy, cx][keep])
            all_index.append(img_i[keep])
        if not all_boxes:
            empty = torch.zeros((0,), device=dev)
            return empty.reshape(0, 4), empty, empty.to(torch.int64)
        boxes, scores = torch.cat(all_boxes), torch.cat(all_scores)
        reg, image_index = torch.cat(all_reg), torch.cat(all_index)
        keep = _nms_union(boxes, scores, image_index, nms_image)
        boxes = _square(_regress(boxes[keep], reg[keep], plus_one=False))
        return boxes, scores[keep], image_index[keep]

    def _pnet_in_strips(self, level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """P-Net on a pyramid level, on CPU in horizontal strips of about ``pnet_strip_pixels``
        input pixels. Output row i sees input rows [2i, 2i + 12), so a strip of output rows
        [o0, o1) needs input rows [2 o0, 2 o1 + 10): it starts on an even row and its max-pool
        windows are the whole image's. On a 700 x 1200 level (2 cores) 120 -> 64 CPU-ms: the
        strip's activations stay in the cache instead of 33 MB per layer, and PReLU and max-pool,
        half of P-Net's time, are memory-bound. The convolutions may pick other kernels for the
        other shape, so outputs can differ from one whole-level call in the last bits (1e-11 seen);
        a given image size always gets the same strips."""
        b, _, h, w = level.shape
        out_h = (h - 1) // 2 - 4
        per = max(1, (self.pnet_strip_pixels // max(1, b * w) - 10) // 2)
        if level.device.type != "cpu" or out_h <= per:
            return self.pnet(level)
        probs, regs = [], []
        for o0 in range(0, out_h, per):
            o1 = min(out_h, o0 + per)
            prob, reg = self.pnet(level[:, :, 2 * o0:min(h, 2 * o1 + 10)])
            probs.append(prob)
            regs.append(reg)
        return torch.cat(probs, 1), torch.cat(regs, 2)

    def _run_crops(self, net, sat, boxes, image_index, h, w, size):
        """Crop, resample and run ``net``: (boxes with a non-empty crop, their image index, net outputs)."""
        x0, y0, x1, y1, valid = _crop_ranges(boxes, w, h)
        if not bool(valid.all()):
            boxes, image_index = boxes[valid], image_index[valid]
            x0, y0, x1, y1 = x0[valid], y0[valid], x1[valid], y1[valid]
        outs = []
        if boxes.shape[0] == 0:
            empty = torch.zeros((0, 3, size, size), device=sat.device).contiguous(memory_format=torch.channels_last)
            outs.append(net(empty))
        for s in range(0, boxes.shape[0], self.crop_batch):
            sl = slice(s, s + self.crop_batch)
            crops = resize_crops(sat, image_index[sl], x0[sl], y0[sl], x1[sl], y1[sl], size)
            outs.append(net(crops))
        outs = [torch.cat(o) for o in zip(*outs)]
        return boxes, image_index, outs

    def _stage_rnet(self, sat, boxes, image_index, h, w):
        boxes, image_index, (prob, reg) = self._run_crops(self.rnet, sat, boxes, image_index, h, w, 24)
        ok = prob > self.thresholds[1]
        boxes, prob, reg, image_index = boxes[ok], prob[ok], reg[ok], image_index[ok]
        keep = _nms_union(boxes, prob, image_index, self.nms_thresholds[2])
        boxes = _square(_regress(boxes[keep], reg[keep], plus_one=True))
        return boxes, prob[keep], image_index[keep]

    def _stage_onet(self, sat, boxes, image_index, h, w):
        boxes, image_index, (prob, reg, marks) = self._run_crops(self.onet, sat, boxes, image_index, h, w, 48)
        ok = prob > self.thresholds[2]
        boxes, prob, reg, marks, image_index = boxes[ok], prob[ok], reg[ok], marks[ok], image_index[ok]
        bw = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
        bh = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
        lx = bw * marks[:, :5] + boxes[:, 0:1] - 1
        ly = bh * marks[:, 5:] + boxes[:, 1:2] - 1
        landmarks = torch.stack([lx, ly], 2)
        boxes = _regress(boxes, reg, plus_one=True)
        keep = greedy_nms(boxes, prob, image_index, self.nms_thresholds[3], mode="min")
        return boxes[keep], prob[keep], landmarks[keep], image_index[keep]
