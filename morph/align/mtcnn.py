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
``interpolate`` call per box: on CPU by a numba loop (``_area_resize_cpu``; on 2 busy cores 19 ms
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
directly. ``align_face`` converts with ``LANDMARK_CENTRE_OFFSET`` to the template's convention
(pixel centres at integer + 0.5).
"""
from __future__ import annotations

import warnings
from typing import NamedTuple, Sequence

import numpy as np
import torch
from numba import njit

from morph.align.mtcnn_nets import ONet, PNet, RNet
from morph.align.template import crop_template, five_point_template, similarity_from_points, warp_similarity

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
# Area resampling from an integral image


def integral_image(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) uint8 -> (B, H+1, W+1, C) summed-area table, exact integers.

    int32 while 255 * H * W fits, int64 beyond.
    """
    b, h, w, c = images.shape
    dtype = torch.int32 if 255 * h * w < 2**31 else torch.int64
    if images.device.type == "cpu":
        # one pass of running row sums in numba: 6 against 73 CPU-ms for a 1080p photo as two
        # torch cumsums (the second runs along a strided axis), whose cost rivalled P-Net's
        sat = np.empty((b, h + 1, w + 1, c), np.int32 if dtype == torch.int32 else np.int64)
        _integral_image_cpu(images.contiguous().numpy(), sat)
        return torch.from_numpy(sat)
    return _integral_image_torch(images, dtype)


def _integral_image_torch(images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    b, h, w, c = images.shape
    sat = torch.zeros((b, h + 1, w + 1, c), dtype=dtype, device=images.device)
    inner = sat[:, 1:, 1:]
    # Written straight into the table: 5x faster on CPU than converting, then copying.
    torch.cumsum(images, 1, dtype=dtype, out=inner)
    inner.cumsum_(2)
    return sat


@njit(cache=True, error_model="numpy")
def _integral_image_cpu(images, sat):
    """``integral_image`` on CPU: sat[k, y + 1, x + 1] = sat[k, y, x + 1] + (row y's sum up to x)."""
    b, h, w, c = images.shape
    for k in range(b):
        for x in range(w + 1):
            for ch in range(c):
                sat[k, 0, x, ch] = 0
        for y in range(h):
            for ch in range(c):
                sat[k, y + 1, 0, ch] = 0
            for ch in range(c):
                run = 0
                for x in range(w):
                    run += images[k, y, x, ch]
                    sat[k, y + 1, x + 1, ch] = sat[k, y, x + 1, ch] + run


def _area_bounds(start: torch.Tensor, length: torch.Tensor, out: int):
    """Input ranges [lo, hi) of each output cell, as adaptive average pooling chooses them.

    start, length: (K,) int64 -> lo, hi: (K, out) int64.
    """
    i = torch.arange(out, device=start.device)
    lo = start[:, None] + torch.div(i * length[:, None], out, rounding_mode="floor")
    hi = start[:, None] + torch.div((i + 1) * length[:, None] + out - 1, out, rounding_mode="floor")
    return lo, hi


def _normalise(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    # Area average, then MTCNN's (x - 127.5) / 128, in the order facenet-pytorch applies them.
    out = total.to(torch.float32)
    return out.div_(count.to(torch.float32)).sub_(127.5).mul_(0.0078125)


@njit(cache=True, error_model="numpy")
def _area_resize_cpu(sat, image_index, x0, y0, x1, y1, out):
    """``resize_crops`` in one pass per output cell (the CPU path): out (K, out_h, out_w, C) float32.

    The same integers (bounds as ``_area_bounds``, four-corner sums) and the same float32
    operations in the same order as the torch path, so the same bits; without its (4, K, size,
    size) index and corner tensors, which made the crops cost more than R-Net itself."""
    n, out_h, out_w, nc = out.shape
    cols = np.empty((out_w, 2), np.int64)
    for k in range(n):
        b, lh, lw = image_index[k], y1[k] - y0[k], x1[k] - x0[k]
        for j in range(out_w):
            cols[j, 0] = x0[k] + (j * lw) // out_w
            cols[j, 1] = x0[k] + ((j + 1) * lw + out_w - 1) // out_w
        for i in range(out_h):
            r0 = y0[k] + (i * lh) // out_h
            r1 = y0[k] + ((i + 1) * lh + out_h - 1) // out_h
            for j in range(out_w):
                c0, c1 = cols[j, 0], cols[j, 1]
                count = np.float32((r1 - r0) * (c1 - c0))
                for c in range(nc):
                    total = sat[b, r1, c1, c] - sat[b, r0, c1, c] - sat[b, r1, c0, c] + sat[b, r0, c0, c]
                    out[k, i, j, c] = (np.float32(total) / count - np.float32(127.5)) * np.float32(0.0078125)


def _area_resize_numba(sat, image_index, x0, y0, x1, y1, out_h, out_w):
    out = np.empty((image_index.shape[0], out_h, out_w, sat.shape[-1]), np.float32)
    _area_resize_cpu(sat.numpy(), image_index.numpy(), x0.numpy(), y0.numpy(), x1.numpy(), y1.numpy(), out)
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def resize_levels(sat: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """Whole images area-resized to (out_h, out_w), normalised: (B, 3, out_h, out_w) channels-last."""
    _, h1, w1, _ = sat.shape
    dev = sat.device
    if dev.type == "cpu":
        b = sat.shape[0]
        zero = torch.zeros(b, dtype=torch.int64)
        return _area_resize_numba(sat, torch.arange(b), zero, zero, torch.full((b,), w1 - 1), torch.full((b,), h1 - 1),
                                  out_h, out_w)
    return _resize_levels_torch(sat, out_h, out_w)


def _resize_levels_torch(sat: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    _, h1, w1, _ = sat.shape
    dev = sat.device
    r0, r1 = _area_bounds(torch.zeros(1, dtype=torch.int64, device=dev),
                          torch.full((1,), h1 - 1, dtype=torch.int64, device=dev), out_h)
    c0, c1 = _area_bounds(torch.zeros(1, dtype=torch.int64, device=dev),
                          torch.full((1,), w1 - 1, dtype=torch.int64, device=dev), out_w)
    r0, r1, c0, c1 = r0[0], r1[0], c0[0], c1[0]
    rows = sat.index_select(1, r1).sub_(sat.index_select(1, r0))  # (B, out_h, W+1, C)
    total = rows[:, :, c1].sub_(rows[:, :, c0])  # (B, out_h, out_w, C); faster than index_select here
    count = ((r1 - r0)[:, None] * (c1 - c0)[None, :])[..., None]
    return _normalise(total, count).permute(0, 3, 1, 2)


def resize_crops(sat: torch.Tensor, image_index: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor,
                 x1: torch.Tensor, y1: torch.Tensor, size: int) -> torch.Tensor:
    """Pixel ranges [x0, x1) x [y0, y1) of images ``image_index`` area-resized to size x size.

    All arguments (K,) int64 on sat's device; returns (K, 3, size, size) normalised, channels-last.
    """
    if sat.device.type == "cpu":
        return _area_resize_numba(sat, image_index, x0, y0, x1, y1, size, size)
    return _resize_crops_torch(sat, image_index, x0, y0, x1, y1, size)


def _resize_crops_torch(sat: torch.Tensor, image_index: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor,
                        x1: torch.Tensor, y1: torch.Tensor, size: int) -> torch.Tensor:
    _, h1, w1, c = sat.shape
    r0, r1 = _area_bounds(y0, y1 - y0, size)
    c0, c1 = _area_bounds(x0, x1 - x0, size)
    # Row offsets into the flattened (B * (H+1) * (W+1), C) table; one index_select for all four
    # corners is about twice as fast as four advanced-indexing gathers.
    base = (image_index * h1)[:, None]
    top, bottom = ((base + r0) * w1)[:, :, None], ((base + r1) * w1)[:, :, None]
    left, right = c0[:, None, :], c1[:, None, :]
    index = torch.stack([bottom + right, top + right, bottom + left, top + left])  # (4, K, size, size)
    corners = sat.view(-1, c).index_select(0, index.view(-1)).view(*index.shape, c)
    total = (corners[0] - corners[1]).sub_(corners[2]).add_(corners[3])  # (K, size, size, C)
    count = ((r1 - r0)[:, :, None] * (c1 - c0)[:, None, :])[..., None]
    return _normalise(total, count).permute(0, 3, 1, 2)


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


# ----------------------------------------------------------------------------------------------
# The aligned crop


def align_face(image, landmarks5, size: int | None = None, padding_mode: str = "zeros",
               template: str | None = None) -> np.ndarray:
    """Warp the face(s) so the 5 MTCNN points land on ``five_point_template(size, template)``.

    image: H x W x 3 uint8 RGB (H x W greyscale is replicated); landmarks5: (5, 2) or (K, 5, 2)
    MTCNN points (its 1-based pixel coordinates, as ``MTCNN.detect`` returns them). Returns
    size x size x 3 uint8, or K of them.
    A least-squares similarity transform (``similarity_from_points``), bilinear sampling; the
    area outside the photo is black (``padding_mode="zeros"``) or the nearest edge pixel
    (``"border"``).
    """
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, -1)
    if img.ndim != 3 or img.shape[-1] < 3:
        raise ValueError(f"align_face: image of shape {img.shape}; give H x W x 3 RGB.")
    pts = np.asarray(landmarks5, np.float64)
    single = pts.ndim == 2
    pts = pts.reshape(-1, 5, 2)
    # Work in "pixel centres at integer + 0.5" coordinates, the template's.
    size = size or crop_template(template).size
    m = similarity_from_points(pts + LANDMARK_CENTRE_OFFSET, five_point_template(size, template)[None])  # (K, 2, 3)
    out = warp_similarity(img, m, size, padding_mode)
    return out[0] if single else out
