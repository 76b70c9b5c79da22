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

from morph.align.faces import FaceLocator, crop_transform
from morph.align.landmarks68 import five_from_68
from morph.align.template import five_point_template, similarity_from_points, warp_similarity

#: ``aligned_by`` codes stored per image.
ALIGNED_BY = {"projection": 0, "mtcnn": 1, "ibug68": 2}
#: Renders for detection are made this many times larger than the final crop.
UPSCALE = 2


class DetectorAlignment:
    """Re-crop renders by MTCNN's (``rule="mtcnn"``) or the refined iBUG (``"ibug68"``) points."""

    def __init__(self, rule: str, size: int, device: str = "cpu", template: str | None = None):
        if rule not in ("mtcnn", "ibug68"):
            raise ValueError(rule)
        self.rule, self.size, self.template = rule, size, template
        self.locator = FaceLocator(rule, device)

    def __call__(self, images: np.ndarray, landmarks: np.ndarray, masks: np.ndarray) -> dict:
        """images (B, H, W, 3) uint8 renders at ``UPSCALE * size``; landmarks (B, 68, 2) in them
        (pixel centres at + 0.5); masks (B, H, W) bool. Returns the crops at ``size`` with their
        landmarks and masks carried along, and ``aligned_by`` codes."""
        out = {"images": [], "landmarks": [], "masks": [], "aligned_by": []}
        for img, lm, mask, found in zip(images, landmarks, masks, self.locator.locate(list(images))):
            if found is not None:
                m, code = crop_transform(found.five[0], self.size, self.template), ALIGNED_BY[self.rule]
            else:  # the projected points, already in the template's convention
                m = similarity_from_points(five_from_68(lm), five_point_template(self.size, self.template))
                code = ALIGNED_BY["projection"]
            out["images"].append(warp_similarity(img, m, self.size, padding_mode="border")[0])
            mask8 = np.repeat(mask[..., None].astype(np.uint8) * 255, 3, -1)
            out["masks"].append(warp_similarity(mask8, m, self.size)[0][..., 0] >= 128)
            out["landmarks"].append(lm @ m[:, :2].T + m[:, 2])
            out["aligned_by"].append(code)
        return {"images": np.stack(out["images"]), "landmarks": np.stack(out["landmarks"]).astype(np.float32),
                "masks": np.stack(out["masks"]), "aligned_by": np.array(out["aligned_by"], np.uint8)}
