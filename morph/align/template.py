"""Named 5-point crop templates: one crop rule for real photos and renders alike.

The paper aligns every image with MTCNN and centre-crops it to 108x108 (section 4, Data). We fix
the crop by a similarity transform that takes the 5 points (eye centres, nose tip, mouth corners)
onto a template's points. Points are (x, y) pixel coordinates, pixel centres at integer + 0.5.

- ``ganfaces108`` (the default): the widely used 112x112 ArcFace/InsightFace layout shrunk by 0.8
  about its centre and placed in a 108x108 frame, so that the whole face (chin, forehead, ears'
  roots) and a little context are inside the crop, as in the paper's figures;
- ``arcface112``: InsightFace's own crop, ``arcface_src`` of ``norm_crop`` in
  python-package/insightface/utils/face_align.py, which ``cv2.warpAffine`` applies with pixel
  centres at integers (hence + 0.5 here): the crop the field's ArcFace recognisers train on.

A template is used at its own size or scaled to another (``points(size)``). Every file of aligned
images records its template's name (attribute ``crop_template``); training refuses sets aligned
by different templates.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from morph.base.errors import UserError

ALIGNED_SIZE = 108

_ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
#: Shrink so the whole face and some context fit the crop (the ArcFace crop cuts the chin).
_SHRINK = 0.8


@dataclass(frozen=True)
class CropTemplate:
    name: str
    size: int  # its own crop size, px
    native: tuple  # 5 (x, y) points at that size

    def points(self, size: int | None = None) -> np.ndarray:
        """(5, 2) left eye, right eye, nose tip, left and right mouth corner at ``size`` px."""
        size = self.size if size is None else size
        return np.asarray(self.native, np.float64) * (size / self.size)


def _ganfaces108() -> tuple:
    pts = (_ARCFACE_112 - _ARCFACE_112.mean(axis=0)) * _SHRINK + np.array([56.0, 54.0])
    return tuple(map(tuple, pts * (108 / 112.0)))


#: name -> template; a new crop is one line here (the CLI's --template choices)
TEMPLATES = {t.name: t for t in (CropTemplate("ganfaces108", 108, _ganfaces108()),
                                 CropTemplate("arcface112", 112, tuple(map(tuple, _ARCFACE_112 + 0.5))))}
DEFAULT_TEMPLATE = "ganfaces108"


def crop_template(name: str | None) -> CropTemplate:
    """The template ``name`` (None: the default); a clear error for an unknown one."""
    name = DEFAULT_TEMPLATE if name is None else str(name)
    if name not in TEMPLATES:
        raise UserError(f"crop template '{name}' is unknown; choose one of {', '.join(TEMPLATES)}.")
    return TEMPLATES[name]


def five_point_template(size: int = ALIGNED_SIZE, template: str | None = None) -> np.ndarray:
    """(5, 2) target positions of left eye, right eye, nose tip, left and right mouth corner of
    ``template`` (default ``ganfaces108``) at ``size`` px."""
    return crop_template(template).points(size)


def template_of(attrs) -> str:
    """The crop template a file's attributes record (files written before templates had names
    were all cropped by ``ganfaces108``)."""
    name = attrs.get("crop_template", DEFAULT_TEMPLATE)
    return name.decode() if isinstance(name, bytes) else str(name)


def similarity_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """(..., 2, 3) least-squares similarity (rotation, uniform scale, translation) taking src to dst.

    Umeyama (1991) without reflection; src, dst: (..., P, 2).
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s = src.mean(-2, keepdims=True)
    mu_d = dst.mean(-2, keepdims=True)
    s = src - mu_s
    d = dst - mu_d
    # Closed form for 2D similarity: a = sum(s.d)/|s|^2, b = sum(s x d)/|s|^2.
    norm = (s ** 2).sum((-1, -2))
    a = (s * d).sum((-1, -2)) / norm
    b = (s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0]).sum(-1) / norm
    rot = np.stack([np.stack([a, -b], -1), np.stack([b, a], -1)], -2)
    t = mu_d[..., 0, :] - (rot @ mu_s[..., 0, :, None])[..., 0]
    return np.concatenate([rot, t[..., None]], -1)


def warp_similarity(image: np.ndarray, transforms: np.ndarray, size: int = ALIGNED_SIZE,
                    padding_mode: str = "zeros") -> np.ndarray:
    """(K, size, size, 3) uint8 crops of an H x W x 3 image through K (2, 3) transforms that map
    image pixels to crop pixels (both with pixel centres at integer + 0.5); bilinear sampling,
    black outside the image (``padding_mode="zeros"``) or its nearest edge pixel (``"border"``).

    The one warp of the project: real photos (``morph align``) and 300W-LP photos
    (``morph render-pairs``) are cropped by it, so both domains are resampled alike.
    """
    import torch
    import torch.nn.functional as F

    img = np.asarray(image)
    h, w = img.shape[:2]
    m = np.asarray(transforms, np.float64).reshape(-1, 2, 3)
    a_inv = np.linalg.inv(m[:, :, :2])  # crop -> image
    ys, xs = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    q = np.stack([xs, ys], -1).reshape(1, -1, 2) - m[:, None, :, 2]
    p = np.einsum("kij,knj->kni", a_inv, q)
    # grid_sample with align_corners=False puts -1 / +1 on the outer edges of the border pixels,
    # i.e. exactly the "centre at + 0.5" convention.
    grid = torch.from_numpy((2 * p / np.array([w, h]) - 1).reshape(-1, size, size, 2)).float()
    src = torch.from_numpy(np.ascontiguousarray(img[..., :3])).permute(2, 0, 1)[None].float()
    out = F.grid_sample(src.expand(grid.shape[0], -1, -1, -1), grid, mode="bilinear",
                        padding_mode=padding_mode, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
