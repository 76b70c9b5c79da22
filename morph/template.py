"""The 5-point alignment template: one crop rule for real photos and renders alike.

The paper aligns every image with MTCNN and centre-crops it to 108x108 (section 4, Data). We fix
the crop by a similarity transform that takes the 5 MTCNN points (eye centres, nose tip, mouth
corners) onto this template. The template is the widely used 112x112 ArcFace/InsightFace
5-point layout shrunk by 0.8 about its centre and placed in a 108x108 frame, so that the whole
face (chin, forehead, ears' roots) and a little context are inside the crop, as in the paper's
figures. Points are (x, y) pixel coordinates, pixel centres at integer + 0.5.
"""
import numpy as np

ALIGNED_SIZE = 108

_ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
#: Shrink so the whole face and some context fit the crop (the ArcFace crop cuts the chin).
_SHRINK = 0.8


def five_point_template(size: int = ALIGNED_SIZE) -> np.ndarray:
    """(5, 2) target positions of left eye, right eye, nose tip, left and right mouth corner."""
    centre = _ARCFACE_112.mean(axis=0)
    pts = (_ARCFACE_112 - centre) * _SHRINK + np.array([56.0, 54.0])
    return (pts * (size / 112.0)).astype(np.float64)


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
