"""Align renders by a detector run on them, as the paper aligned everything (section 4, Data).

``morph render`` normally crops each render by the 5 points projected from the 3DMM, which needs
no detector and is exact. For parity with the paper's pipeline (MTCNN on every image, real or
rendered) ``morph render --align-by mtcnn`` (MTCNN's own points) or ``--align-by ibug68``
(MTCNN refined to the 68 iBUG points, what ``morph align`` does to photos by default) renders each
face at twice the size, already framed by its projected points, runs the detector on that render
and re-crops it by the detected points with the one warp of the project
(``morph.align.template.warp_similarity``). The background of a render is a uniform colour, so the
little that the re-crop pulls in from outside the frame is filled with the nearest edge pixel.

A render in which MTCNN finds no face keeps the crop by its projected points and is marked
(``aligned_by`` = 0) rather than dropped, so every identity keeps all its images.
"""
from __future__ import annotations

import numpy as np

from morph.align.mtcnn import LANDMARK_CENTRE_OFFSET
from morph.align.template import five_point_template, similarity_from_points, warp_similarity

#: ``aligned_by`` codes stored per image.
ALIGNED_BY = {"projection": 0, "mtcnn": 1, "ibug68": 2}
#: Renders for detection are made this many times larger than the final crop.
UPSCALE = 2


class DetectorAlignment:
    """Re-crop renders by MTCNN's (``rule="mtcnn"``) or the refined iBUG (``"ibug68"``) points."""

    def __init__(self, rule: str, size: int, device: str = "cpu", template: str | None = None):
        from morph.align.mtcnn import MTCNN

        if rule not in ("mtcnn", "ibug68"):
            raise ValueError(rule)
        self.rule, self.size, self.template = rule, size, template
        self.detector = MTCNN(device=device)
        self.refiner = None
        if rule == "ibug68":
            from morph.align.landmarks68 import LandmarkRefiner
            self.refiner = LandmarkRefiner()

    def __call__(self, images: np.ndarray, landmarks: np.ndarray, masks: np.ndarray) -> dict:
        """images (B, H, W, 3) uint8 renders at ``UPSCALE * size``; landmarks (B, 68, 2) in them
        (pixel centres at + 0.5); masks (B, H, W) bool. Returns the crops at ``size`` with their
        landmarks and masks carried along, and ``aligned_by`` codes."""
        from morph.jobs.align import pick_face
        from morph.align.landmarks68 import five_from_68

        dets = self.detector.detect(list(images))
        out = {"images": [], "landmarks": [], "masks": [], "aligned_by": []}
        template = five_point_template(self.size, self.template)
        for img, lm, mask, det in zip(images, landmarks, masks, dets):
            if len(det.scores):
                five = det.landmarks[pick_face(det.boxes, det.scores, img.shape[:2])]
                if self.refiner is not None:
                    five = five_from_68(self.refiner.refine(img, five))
                five = five + LANDMARK_CENTRE_OFFSET  # MTCNN's 1-based -> pixel centres at + 0.5
                code = ALIGNED_BY[self.rule]
            else:
                five, code = five_from_68(lm), ALIGNED_BY["projection"]
            m = similarity_from_points(five, template)
            out["images"].append(warp_similarity(img, m, self.size, padding_mode="border")[0])
            mask8 = np.repeat(mask[..., None].astype(np.uint8) * 255, 3, -1)
            out["masks"].append(warp_similarity(mask8, m, self.size)[0][..., 0] >= 128)
            out["landmarks"].append(lm @ m[:, :2].T + m[:, 2])
            out["aligned_by"].append(code)
        return {"images": np.stack(out["images"]), "landmarks": np.stack(out["landmarks"]).astype(np.float32),
                "masks": np.stack(out["masks"]), "aligned_by": np.array(out["aligned_by"], np.uint8)}
