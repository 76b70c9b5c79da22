"""One rasterizer interface, two backends: PyTorch3D (the reference) and our CPU z-buffer.

Both take vertices already in PyTorch3D's NDC screen space and return PyTorch3D-style
``Fragments`` for one face per pixel, no blur, no back-face culling:

- ``pix_to_face`` (B, H, W, 1) int64: index of the visible face in the *packed* face list
  (face ``f`` of image ``b`` is ``b * F + f``), -1 for background;
- ``zbuf`` (B, H, W, 1) float32: the interpolated z of that face (our renderer passes camera
  depth in mm), -1 for background;
- ``bary_coords`` (B, H, W, 1, 3) float32: barycentric coordinates of the pixel centre in that
  face (perspective-corrected when asked), -1 for background;
- ``dists`` (B, H, W, 1) float32: signed squared NDC distance of the pixel centre to the face's
  nearest edge (negative inside), -1 for background.

NDC, as PyTorch3D defines it: +X points left, +Y up, +Z into the screen; pixel centres sit at
``ndc = (S - 2 p) / min(H, W)`` for a pixel coordinate ``p`` (pixel centres at integer + 0.5,
p = 0 on the image's left/top edge) along a side of S pixels, so the shorter side spans [-1, 1]
and the longer one proportionally more. ``morph.render.camera.pixels_to_ndc`` does that mapping.

Backend choice (``backend="auto"``): PyTorch3D when the vertices are on CUDA, our CPU z-buffer
otherwise. PyTorch3D's CPU path is a naive loop over every face for every pixel: about 10 s per
108x108 image of a 106k-triangle mesh here, against 1.2 ms for ``raster_cpu`` (see
``bench/render.py``); ``tests/test_render.py`` holds the two to the same fragments.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from morph.errors import UserError

BACKENDS = ("auto", "cpu", "pytorch3d")


class Fragments(NamedTuple):
    """Per-pixel rasterization output, laid out as PyTorch3D's ``Fragments`` (K = 1)."""

    pix_to_face: torch.Tensor
    zbuf: torch.Tensor
    bary_coords: torch.Tensor
    dists: torch.Tensor


@dataclass(frozen=True)
class RasterSettings:
    """Like PyTorch3D's ``RasterizationSettings``, for the one configuration we use.

    image_size: S or (H, W). perspective_correct: interpolate barycentrics in camera space
    (needs z = camera depth); PyTorch3D's ``rasterize_meshes`` defaults to False and its
    ``MeshRasterizer`` turns it on for perspective cameras, as our renderer does.
    """

    image_size: int | tuple[int, int] = 108
    backend: str = "auto"
    perspective_correct: bool = False


def image_hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """(H, W) from S or (H, W)."""
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """'cpu' or 'pytorch3d' for a requested backend and the vertices' device."""
    if backend not in BACKENDS:
        raise UserError(f"unknown rasterizer backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    if backend == "auto":
        return "pytorch3d" if torch.device(device).type == "cuda" else "cpu"
    return backend


def rasterize(verts_ndc: torch.Tensor, faces: torch.Tensor, image_size: int | tuple[int, int] = 108,
              backend: str = "auto", perspective_correct: bool = False) -> Fragments:
    """Rasterize B meshes sharing one triangle list.

    verts_ndc: (B, N, 3) float32 NDC vertices (z > 0 in front of the camera; faces with any
    vertex at z < 1e-8 are dropped, as PyTorch3D does). faces: (F, 3) int64.
    """
    if verts_ndc.ndim != 3 or verts_ndc.shape[-1] != 3:
        raise ValueError(f"verts_ndc must be (B, N, 3), got {tuple(verts_ndc.shape)}")
    if faces.ndim != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces must be (F, 3), got {tuple(faces.shape)}")
    which = resolve_backend(backend, verts_ndc.device)
    if which == "cpu":
        from morph.render.raster_cpu import rasterize_cpu
        return rasterize_cpu(verts_ndc, faces, image_hw(image_size), perspective_correct)
    from morph.render.raster_pytorch3d import rasterize_pytorch3d
    return rasterize_pytorch3d(verts_ndc, faces, image_hw(image_size), perspective_correct)
