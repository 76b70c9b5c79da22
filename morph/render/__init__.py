"""Rendering: 3DMM coefficients -> aligned, shaded face images (and the pieces it is made of).

- ``renderer``: ``render_batch`` (the CLI's entry point), ``RenderSettings``, ``RenderOutput``,
  ``render_projected`` (vertices already in an image frame); ``prepared``: a model's arrays laid
  out for it; ``mesh``: ``export_mesh``; ``output``: a batch as stored arrays (uint8 images) and
  the checks a batch must pass;
- ``camera``: pose rotation, perspective and 300W-LP weak-perspective cameras, 5-point alignment;
- ``shading``: spherical-harmonics and 300W-LP Phong lighting, vertex normals;
- ``types``: ``Fragments`` and the ``Rasterizer`` interface; ``raster``: the registry of sibling
  backends (``raster_cpu``: our numba z-buffer; ``raster_pytorch3d``;
  ``raster_torch``: plain torch, any device) and ``rasterize``;
- ``cpu``: the numba vertex-stage and shading kernels of the CPU engine.
"""
import importlib

#: name -> module; loaded on first use, so that ``morph.render.raster``'s registry (the CLI's
#: choices) is read without importing torch
_EXPORTS = {"Fragments": "types", "rasterize": "raster", "RenderOutput": "renderer", "RenderSettings": "renderer",
            "export_mesh": "mesh", "render_batch": "renderer", "render_projected": "renderer"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"morph.render.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'morph.render' has no attribute {name!r}")
