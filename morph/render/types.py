"""What every rasterizer takes and returns, as PyTorch3D's ``renderer/mesh/rasterizer.py`` lays
it out: vertices in PyTorch3D's NDC screen space in, ``Fragments`` out; and the interface a
rasterizer backend implements (``Rasterizer``; the registry is ``morph.render.raster``).

``Fragments`` holds one face per pixel (K = 1), no blur, no back-face culling:

- ``pix_to_face`` (B, H, W, 1) int64: index of the visible face in the *packed* face list
  (face ``f`` of image ``b`` is ``b * F + f``), -1 for background;
- ``zbuf`` (B, H, W, 1) float32: the interpolated z of that face (our renderer passes camera
  depth in mm), -1 for background;
- ``bary_coords`` (B, H, W, 1, 3) float32: barycentric coordinates of the pixel centre in that
  face (perspective-corrected when asked), -1 for background;
- ``dists`` (B, H, W, 1) float32: signed squared NDC distance of the pixel centre to the face's
  nearest edge (negative inside), -1 for background.

NDC, as PyTorch3D defines it: +X points left, +Y up, +Z into the screen; pixel centres sit at
``ndc = (S - 2 p) / min(H, W)`` for a pixel coordinate ``p`` (pixel centres at integer + 0.5)
along a side of S pixels, so the shorter side spans [-1, 1] (``camera.pixels_to_ndc``).
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class Fragments(NamedTuple):
    """Per-pixel rasterization output, laid out as PyTorch3D's ``Fragments`` (K = 1)."""

    pix_to_face: torch.Tensor
    zbuf: torch.Tensor
    bary_coords: torch.Tensor
    dists: torch.Tensor


def image_hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """(H, W) from S or (H, W)."""
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


class Rasterizer:
    """A rasterizer backend: ``rasterizer(verts_ndc, faces, hw, perspective_correct) -> Fragments``.

    Backends are siblings (as PyTorch3D's ``MeshRasterizer`` and ``MeshRasterizerOpenGL``), each in
    its own module and listed in ``morph.render.raster.RASTERIZERS``. ``default_on``: the device
    types ("cpu", "cuda") where ``backend="auto"`` picks it (the first available one listed);
    ``available()`` says whether it can run here (its library imports). A backend may also
    offer a ``fused_pixel_stage`` (see ``raster_cpu.NumbaRasterizer``): rasterization and
    interpolation of numpy arrays in one pass, which the renderer's numba engine uses when the
    chosen backend has one.
    """

    name: str = ""
    default_on: tuple[str, ...] = ()
    fused_pixel_stage = None

    @classmethod
    def available(cls) -> bool:
        return True

    def __call__(self, verts_ndc: torch.Tensor, faces: torch.Tensor, hw: tuple[int, int],
                 perspective_correct: bool = False) -> Fragments:
        raise NotImplementedError
