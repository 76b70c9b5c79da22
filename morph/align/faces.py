"""Faces in photos, the one path of ``morph align`` and of renders aligned by a detector
(``morph.align.realign``): detect (MTCNN) -> pick the face -> refine its points to the 68 iBUG
points -> crop by the 5-point template (``morph.align.template``).

By default (``landmarks="ibug68"``) the crop is taken by the renders' own 5-point definition of
the refined 68 points (eye centres, nose tip, mouth corners; ``morph.align.landmarks68``), so
photos and renders are framed by the same points; ``"mtcnn"`` keeps MTCNN's points, as the
paper's code did. Points are in MTCNN's 1-based pixel coordinates (``morph.align.mtcnn``) until
``crop_transform`` converts them with ``LANDMARK_CENTRE_OFFSET``.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from morph.base.errors import UserError
from morph.align.landmarks68 import five_from_68
from morph.align.mtcnn import LANDMARK_CENTRE_OFFSET, MTCNN, FaceDetections
from morph.align.template import crop_template, five_point_template, similarity_from_points, warp_similarity

#: How the 5 crop points are taken: refined to the iBUG 68 (the renders' definition), or MTCNN's.
LANDMARK_RULES = ("ibug68", "mtcnn")


def pick_face(boxes: np.ndarray, scores: np.ndarray, hw: tuple[int, int]) -> int:
    """Index of the largest, most confident face near the centre: score * (box side / the largest
    box side) * (1 - d / half-diagonal). Photos collected for one person (CelebA's uncropped
    photos, LFW's) frame that person large and central; a face behind them is smaller, and often
    as confidently detected, so confidence and centrality alone can pick it."""
    h, w = hw
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    d = np.linalg.norm(centre - np.array([w / 2, h / 2]), axis=1) / (0.5 * np.hypot(w, h))
    side = np.sqrt(np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None))
    return int(np.argmax(scores * (side / max(float(side.max()), 1e-6) + 1e-6) * (1 - np.clip(d, 0, 1) + 1e-6)))


def crop_transform(five, size: int, template: str | None = None) -> np.ndarray:
    """(..., 2, 3) similarity taking MTCNN-convention points (..., 5, 2) onto the template at
    ``size`` px, in the template's convention (pixel centres at integer + 0.5)."""
    pts = np.asarray(five, np.float64)
    return similarity_from_points(pts + LANDMARK_CENTRE_OFFSET,
                                  five_point_template(size, template)[(None,) * (pts.ndim - 2)])


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
    size = size or crop_template(template).size
    out = warp_similarity(img, crop_transform(pts.reshape(-1, 5, 2), size, template), size, padding_mode)
    return out[0] if single else out


class Located(NamedTuple):
    """The faces kept in one image: ``keep`` indexes its detections; ``five`` (K, 5, 2) are the
    crop points, ``points68`` (K, 68, 2) the refined points (None with ``landmarks="mtcnn"``)."""

    detections: FaceDetections
    keep: list[int]
    five: np.ndarray
    points68: np.ndarray | None


class FaceLocator:
    """MTCNN, then the face(s) to keep and their crop points (module docstring)."""

    def __init__(self, landmarks: str = "ibug68", device: str = "cpu", **mtcnn_options):
        if landmarks not in LANDMARK_RULES:
            raise UserError(f"landmarks '{landmarks}' is unknown; choose one of {', '.join(LANDMARK_RULES)}.")
        self.detector = MTCNN(device=device, **mtcnn_options)
        self.refiner = None
        if landmarks == "ibug68":
            from morph.align.landmarks68 import LandmarkRefiner
            self.refiner = LandmarkRefiner()

    def locate(self, images: list[np.ndarray], all_faces: bool = False) -> list[Located | None]:
        """Per image, its kept faces (every face with ``all_faces``, else the one ``pick_face``
        chooses), or None where no face was found."""
        out = []
        for img, det in zip(images, self.detector.detect(images) if images else []):
            if len(det.scores) == 0:
                out.append(None)
                continue
            keep = list(range(len(det.scores))) if all_faces else [pick_face(det.boxes, det.scores, img.shape[:2])]
            five, p68 = det.landmarks[keep], None
            if self.refiner is not None:
                p68 = self.refiner.refine(img, five)
                five = five_from_68(p68)
            out.append(Located(det, keep, five, p68))
        return out
