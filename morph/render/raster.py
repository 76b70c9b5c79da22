"""The rasterizer registry: one ``rasterize`` over sibling backends, each in its own module.

- ``cpu``: our numba z-buffer (``raster_cpu``), bit-identical to PyTorch3D's fragments, the
  default on the CPU (PyTorch3D's CPU path loops over every face at every pixel: ~10 s per
  108x108 image of a 106k-triangle mesh, against ~1 ms; ``bench/render.py``);
- ``pytorch3d``: ``pytorch3d.renderer.mesh.rasterize_meshes`` (``raster_pytorch3d``), the
  reference, and the default on CUDA where it imports;
- ``torch``: a z-buffer in plain torch (``raster_torch``), the same fragments on any device with
  no compiled extension: the default on CUDA when PyTorch3D's binary does not match the installed
  torch (its wheels are built for one torch version at a time).

A new backend is one module with a ``Rasterizer`` subclass (``morph.render.types``) and one line
in ``RASTERIZERS``; the CLI's ``--backend`` choices come from it. Backends are imported only when
used, so a library one of them needs (PyTorch3D) is never imported unless it is chosen.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from morph.base.errors import UserError

if TYPE_CHECKING:  # (imported lazily: the CLI reads BACKENDS without importing torch)
    import torch

    from morph.render.types import Fragments, Rasterizer

#: name -> "module:class", in the order ``auto`` tries them
RASTERIZERS = {
    "cpu": "morph.render.raster_cpu:NumbaRasterizer",
    "pytorch3d": "morph.render.raster_pytorch3d:PyTorch3DRasterizer",
    "torch": "morph.render.raster_torch:TorchRasterizer",
}
BACKENDS = ("auto", *RASTERIZERS)


def rasterizer(name: str) -> Rasterizer:
    """The backend ``name`` (not ``auto``)."""
    if name not in RASTERIZERS:
        raise UserError(f"unknown rasterizer backend {name!r}; choose one of {', '.join(BACKENDS)}.")
    module, cls = RASTERIZERS[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """The backend a request means on ``device``: ``auto`` is the first available backend
    whose ``default_on`` holds the device's type."""
    import torch

    if backend != "auto":
        rasterizer(backend)  # a clear error for an unknown name
        return backend
    kind = torch.device(device).type
    for name, spec in RASTERIZERS.items():
        module, cls = spec.split(":")
        backend_cls = getattr(importlib.import_module(module), cls)
        if kind in backend_cls.default_on and backend_cls.available():
            return name
    raise UserError(f"no rasterizer backend runs on {kind} here; choose one of {', '.join(RASTERIZERS)}.")


def rasterize(verts_ndc: torch.Tensor, faces: torch.Tensor, image_size: int | tuple[int, int] = 108,
              backend: str = "auto", perspective_correct: bool = False) -> Fragments:
    """Rasterize B meshes sharing one triangle list.

    verts_ndc: (B, N, 3) float32 NDC vertices (z > 0 in front of the camera; faces with any
    vertex at z < 1e-8 are dropped, as PyTorch3D does). faces: (F, 3) int64.
    """
    from morph.render.types import image_hw

    if verts_ndc.ndim != 3 or verts_ndc.shape[-1] != 3:
        raise ValueError(f"verts_ndc must be (B, N, 3), got {tuple(verts_ndc.shape)}")
    if faces.ndim != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces must be (F, 3), got {tuple(faces.shape)}")
    r = rasterizer(resolve_backend(backend, verts_ndc.device))
    return r(verts_ndc, faces, image_hw(image_size), perspective_correct)
