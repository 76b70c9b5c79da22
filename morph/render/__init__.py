"""Rendering: 3DMM coefficients -> aligned, shaded face images (and the pieces it is made of).

- ``renderer``: ``render_batch`` (the CLI's entry point), ``RenderSettings``, ``RenderOutput``,
  ``render_projected`` (vertices already in an image frame), ``export_mesh``;
- ``camera``: pose rotation, perspective and 300W-LP weak-perspective cameras, 5-point alignment;
- ``shading``: spherical-harmonics and 300W-LP Phong lighting, vertex normals;
- ``raster``: one ``rasterize`` over two backends, PyTorch3D (``raster_pytorch3d``) and our
  numba z-buffer (``raster_cpu``), returning PyTorch3D-style ``Fragments``;
- ``cpu``: the numba vertex-stage and shading kernels of the CPU engine.
"""
from morph.render.raster import Fragments, RasterSettings, rasterize
from morph.render.renderer import RenderOutput, RenderSettings, export_mesh, render_batch, render_projected

__all__ = ["Fragments", "RasterSettings", "RenderOutput", "RenderSettings", "export_mesh", "rasterize",
           "render_batch", "render_projected"]
