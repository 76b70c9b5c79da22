"""The PyTorch3D backend: the reference rasterizer, and the default on CUDA.

A thin call of ``pytorch3d.renderer.mesh.rasterize_meshes`` on the same NDC vertices as our CPU
backend, in the configuration ``raster_cpu`` reproduces (one face per pixel, no blur, no
culling, no clipping). On CPU we force the naive path (``bin_size=0``; PyTorch3D has no binned
CPU rasterizer anyway); on CUDA PyTorch3D picks its coarse-to-fine bins, which give the same
fragments.
"""
from __future__ import annotations

import torch

from morph.render.types import Fragments, Rasterizer


class PyTorch3DRasterizer(Rasterizer):
    name = "pytorch3d"
    default_on = ("cuda",)

    @classmethod
    def available(cls) -> bool:
        import importlib.util
        if importlib.util.find_spec("pytorch3d") is None:
            return False
        try:  # its binary is built for one torch version; another fails at import
            import pytorch3d.renderer  # noqa: F401
        except (ImportError, OSError):
            return False
        return True

    def __call__(self, verts_ndc: torch.Tensor, faces: torch.Tensor, hw: tuple[int, int],
                 perspective_correct: bool = False) -> Fragments:
        return rasterize_pytorch3d(verts_ndc, faces, hw, perspective_correct)


def rasterize_pytorch3d(verts_ndc: torch.Tensor, faces: torch.Tensor, hw: tuple[int, int],
                        perspective_correct: bool = False) -> Fragments:
    from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes
    from pytorch3d.structures import Meshes

    b = verts_ndc.shape[0]
    faces = faces.to(device=verts_ndc.device, dtype=torch.int64)
    meshes = Meshes(verts=verts_ndc.float(), faces=faces[None].expand(b, -1, -1))
    pix_to_face, zbuf, bary, dists = rasterize_meshes(
        meshes, image_size=hw, blur_radius=0.0, faces_per_pixel=1,
        bin_size=None if verts_ndc.is_cuda else 0,
        perspective_correct=perspective_correct, cull_backfaces=False)
    return Fragments(pix_to_face, zbuf, bary, dists)
