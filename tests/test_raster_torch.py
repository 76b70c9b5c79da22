"""The plain-torch rasterizer (``morph.render.raster_torch``) against the numba engine's and
PyTorch3D's fragments, on hand-made triangles, the SFM mesh and the default model, through the
registry and through the renderer. On the CPU it makes the same float32 decisions as the numba
engine, so where the face agrees, depth, barycentrics and distances are compared exactly.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
import test_render
import torch
from test_render import projected_ndc, random_params, spread_poses

from conftest import pytorch3d_imports, requires_pytorch3d
from morph.render import RenderSettings, rasterize, render_batch
from morph.render.raster import BACKENDS, RASTERIZERS, rasterizer, resolve_backend
from morph.render.raster_pytorch3d import PyTorch3DRasterizer
from morph.render.raster_torch import TorchRasterizer, rasterize_torch

sfm_mesh, sfm_model, default_model = test_render.sfm_mesh, test_render.sfm_model, test_render.default_model
#: the references: the numba engine always, PyTorch3D where it imports (with its own torch)
REFERENCES = ("cpu", "pytorch3d") if pytorch3d_imports() else ("cpu",)


def agreement(ours, ref, label: str, atol: float = 0.0, rtol: float = 0.0) -> float:
    """The share of pixels whose pix_to_face agrees (printed, and at least 99.9%); where it
    agrees, zbuf, bary_coords and dists within atol + rtol |ref| (exactly equal by default)."""
    agree = ours.pix_to_face == ref.pix_to_face
    same = agree.double().mean().item()
    a, b = ours.pix_to_face >= 0, ref.pix_to_face >= 0
    iou = ((a & b).sum() / (a | b).sum()).item()
    print(f"{label}: pix_to_face equal on {same:.6%} of {agree.numel()} pixels, mask IoU {iou:.6f}")
    assert ours.pix_to_face.shape == ref.pix_to_face.shape and ours.bary_coords.shape == ref.bary_coords.shape
    assert ours.pix_to_face.dtype == torch.int64
    assert all(t.dtype == torch.float32 for t in (ours.zbuf, ours.bary_coords, ours.dists))
    assert same >= 0.999, f"{label}: pix_to_face equal on {same:.5%} of pixels"
    assert iou >= 0.999, f"{label}: mask IoU {iou:.5f}"
    for name in ("zbuf", "bary_coords", "dists"):
        x, y = getattr(ours, name)[agree], getattr(ref, name)[agree]
        assert torch.allclose(x, y, atol=atol, rtol=rtol), f"{label}: {name} differs by {(x - y).abs().max():.3g}"
    return same


# ----------------------------------------------------------------------------- hand-made cases
def two_triangles(far_first: bool):
    """A far triangle (z = 2) over the whole 8x8 image and a near one (z = 1) in front of it whose
    edges miss every pixel centre; it covers the centres of rows 2 (columns 2-5), 3 and 4
    (columns 3-4). Returns vertices, faces and the near face's index."""
    v = torch.tensor([[[4.0, -1.1, 2.0], [-4.0, -1.1, 2.0], [0.0, 5.0, 2.0],
                       [0.5, 0.5, 1.0], [-0.5, 0.5, 1.0], [0.0, -0.5, 1.0]]])
    far, near = [0, 1, 2], [3, 4, 5]
    faces = torch.tensor([far, near] if far_first else [near, far])
    return v, faces, 1 if far_first else 0


@pytest.mark.parametrize("far_first", [True, False])
@pytest.mark.parametrize("perspective_correct", [False, True])
def test_nearer_triangle_wins(far_first, perspective_correct):
    v, faces, near = two_triangles(far_first)
    frags = rasterize(v, faces, 8, backend="torch", perspective_correct=perspective_correct)
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[2, 2:6] = True
    expected[3:5, 3:5] = True
    p2f = frags.pix_to_face[0, ..., 0]
    assert torch.equal(p2f == near, expected)
    assert torch.equal(p2f == 1 - near, ~expected)  # the far triangle everywhere else
    assert torch.allclose(frags.zbuf[0, ..., 0], torch.where(expected, 1.0, 2.0), rtol=0, atol=1e-6)
    assert (frags.bary_coords > 0).all() and torch.allclose(frags.bary_coords.sum(-1), torch.ones(1))
    assert (frags.dists < 0).all()  # every pixel centre is inside its face
    ref = rasterize(v, faces, 8, backend="cpu", perspective_correct=perspective_correct)
    for a, b in zip(frags, ref):
        assert torch.equal(a, b)


def test_edge_cases_as_the_numba_engine_and_pytorch3d():
    """Pixel centres exactly on a shared edge (neither face), depth ties (the smaller face index
    wins), a face behind the camera, the background's -1s (test_render's edge-case mesh)."""
    v = torch.tensor([[[1.0, 1.0, 2.0], [-1.0, 1.0, 2.0], [-1.0, -1.0, 2.0], [1.0, -1.0, 2.0],
                       [1.0, 1.0, 2.0], [-1.0, -1.0, 2.0], [1.0, -1.0, 2.0], [0.0, 0.0, -1.0]]])
    f = torch.tensor([[0, 1, 2], [0, 2, 3], [4, 5, 6], [0, 1, 7]])
    for pc in (False, True):
        ours = rasterize(v, f, 4, backend="torch", perspective_correct=pc)
        for backend in REFERENCES:
            for a, b in zip(ours, rasterize(v, f, 4, backend=backend, perspective_correct=pc)):
                assert torch.equal(a, b), backend
    assert (ours.pix_to_face == -1).any() and set(ours.pix_to_face.unique().tolist()) <= {-1, 0, 1}
    bg = ours.pix_to_face == -1
    assert (ours.zbuf[bg] == -1).all() and (ours.dists[bg] == -1).all() and (ours.bary_coords[bg] == -1).all()


def test_random_soups_in_small_chunks_match_the_numba_engine():
    """Overlapping random triangles (duplicated faces: exact depth ties; some behind the camera;
    NaN and infinite vertices; coordinates on a 1/8 grid: edges through pixel centres), tested a
    few candidates or one image at a time: chunk and group boundaries change nothing."""
    for trial in range(6):
        g = torch.Generator().manual_seed(trial)
        v = torch.rand(3, 40, 3, generator=g) * 2.4 - 1.2
        v[..., 2] = torch.rand(3, 40, generator=g) * 3 - 0.3
        if trial % 2:
            v = (v * 8).round() / 8
        v[0, 3, 0], v[1, 4, 2], v[2, 5, 1] = float("nan"), float("inf"), -float("inf")
        f = torch.randint(0, 40, (60, 3), generator=g)
        f[:6] = f[6:12]
        hw = [(16, 16), (13, 21), (21, 13)][trial % 3]
        for pc in (False, True):
            ref = rasterize(v, f, hw, backend="cpu", perspective_correct=pc)
            assert (ref.pix_to_face >= 0).float().mean() > 0.3
            for max_candidates, face_budget in ((1, 1), (7, 100), (1 << 21, 1 << 21)):
                ours = rasterize_torch(v, f, hw, pc, max_candidates, face_budget)
                for a, b in zip(ours, ref):
                    assert torch.equal(a.nan_to_num(9.0), b.nan_to_num(9.0)), (trial, pc, max_candidates)


# ----------------------------------------------------------------------------- real meshes
@pytest.mark.parametrize("perspective_correct", [True, False])
def test_matches_numba_and_pytorch3d_on_sfm_16_poses(sfm_mesh, perspective_correct):
    verts, tris = sfm_mesh
    ndc = projected_ndc(verts, spread_poses(16), (108, 108))
    faces = torch.from_numpy(tris)
    ours = rasterize(ndc, faces, 108, backend="torch", perspective_correct=perspective_correct)
    assert (ours.pix_to_face >= 0).float().mean() > 0.2
    hit = ours.pix_to_face[5][ours.pix_to_face[5] >= 0]  # packed: image b's faces are offset by b * F
    assert hit.min() >= 5 * len(tris) and hit.max() < 6 * len(tris)
    agreement(ours, rasterize(ndc, faces, 108, "cpu", perspective_correct),
              f"sfm 108px pc={perspective_correct} vs cpu")
    if "pytorch3d" not in REFERENCES:
        return
    # PyTorch3D's CPU rasterizer loops over every face at every pixel: 4 of the poses
    ref = rasterize(ndc[:4], faces, 108, "pytorch3d", perspective_correct)
    agreement(rasterize(ndc[:4], faces, 108, "torch", perspective_correct), ref,
              f"sfm 108px pc={perspective_correct} vs pytorch3d")


@pytest.mark.parametrize("hw", [(40, 56), (56, 40)])
def test_matches_numba_and_pytorch3d_non_square(sfm_mesh, hw):
    verts, tris = sfm_mesh
    ndc = projected_ndc(verts, spread_poses(4), hw, fov=18.0)
    faces = torch.from_numpy(tris)
    for pc in (False, True):
        ours = rasterize(ndc, faces, hw, backend="torch", perspective_correct=pc)
        assert ours.pix_to_face.shape == (4, *hw, 1) and ours.bary_coords.shape == (4, *hw, 1, 3)
        for backend in REFERENCES:
            agreement(ours, rasterize(ndc, faces, hw, backend, pc), f"sfm {hw} pc={pc} vs {backend}")


@pytest.mark.parametrize("perspective_correct", [True, False])
def test_matches_numba_on_default_model_108(default_model, perspective_correct):
    """106k triangles, most smaller than a pixel; in chunks of 20k candidates (a few per call)
    and whole. (PyTorch3D at 108 px: the slow test below; it equals the numba engine bit for bit,
    ``tests/test_render.py``.)"""
    ndc = projected_ndc(default_model.shape.mean.reshape(-1, 3), spread_poses(4), (108, 108), distance=800.0, fov=22.0)
    faces = torch.from_numpy(default_model.triangles)
    ref = rasterize(ndc, faces, 108, "cpu", perspective_correct)
    assert (ref.pix_to_face >= 0).float().mean() > 0.2
    agreement(rasterize(ndc, faces, 108, "torch", perspective_correct), ref,
              f"default model 108px pc={perspective_correct} vs cpu")
    small = rasterize_torch(ndc, faces, (108, 108), perspective_correct, max_candidates=20_000, face_budget=200_000)
    for a, b in zip(small, ref):
        assert torch.equal(a, b)


@requires_pytorch3d
def test_matches_pytorch3d_on_default_model_small(default_model):
    ndc = projected_ndc(default_model.shape.mean.reshape(-1, 3), spread_poses(4), (24, 24), distance=800.0, fov=22.0)
    faces = torch.from_numpy(default_model.triangles)
    agreement(rasterize(ndc, faces, 24, "torch", True), rasterize(ndc, faces, 24, "pytorch3d", True),
              "default model 24px vs pytorch3d")


@requires_pytorch3d
@pytest.mark.slow
def test_matches_pytorch3d_on_default_model_108(default_model):
    """PyTorch3D's CPU rasterizer takes ~10 s per 108x108 image of the default model."""
    ndc = projected_ndc(default_model.shape.mean.reshape(-1, 3), spread_poses(2), (108, 108), distance=800.0, fov=22.0)
    faces = torch.from_numpy(default_model.triangles)
    agreement(rasterize(ndc, faces, 108, "torch", True), rasterize(ndc, faces, 108, "pytorch3d", True),
              "default model 108px vs pytorch3d")


# ----------------------------------------------------------------------------- registry, renderer
def test_registry_and_auto():
    assert "torch" in BACKENDS and isinstance(rasterizer("torch"), TorchRasterizer)
    names = list(RASTERIZERS)
    assert names.index("torch") > names.index("pytorch3d")  # auto on CUDA tries PyTorch3D first
    assert TorchRasterizer.default_on == ("cuda",) and TorchRasterizer.available()
    assert resolve_backend("auto", "cpu") == "cpu"
    assert resolve_backend("torch", "cpu") == "torch"


def test_auto_on_cuda_falls_back_to_torch(monkeypatch):
    """(resolve_backend only reads the device type: no GPU needed.)"""
    monkeypatch.setattr(PyTorch3DRasterizer, "available", classmethod(lambda cls: False))
    assert resolve_backend("auto", "cuda") == "torch"
    monkeypatch.setattr(PyTorch3DRasterizer, "available", classmethod(lambda cls: True))
    assert resolve_backend("auto", "cuda") == "pytorch3d"


def test_module_imports_only_torch():
    code = ("import sys, torch\n"
            "from morph.render.raster_torch import rasterize_torch\n"
            "f = rasterize_torch(torch.tensor([[[0.5, 0.5, 1.0], [-0.5, 0.5, 1.0], [0.0, -0.5, 1.0]]]),"
            " torch.tensor([[0, 1, 2]]), (8, 8))\n"
            "assert (f.pix_to_face >= 0).sum() > 0\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'numba', 'pytorch3d', 'scipy', 'h5py'}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_renders_equal_the_numba_engines(sfm_model):
    """render_batch with backend="torch" (numba engine: its vertex stage and shading around our
    fragments; torch engine: all torch) gives the numba backend's images, to within one uint8 level."""
    params = random_params(sfm_model, 6, seed=4)
    outputs = ("image", "mask", "depth", "normals")
    for engine in ("numba", "torch"):
        ref = render_batch(sfm_model, params, RenderSettings(engine=engine, backend="cpu", outputs=outputs))
        out = render_batch(sfm_model, params, RenderSettings(engine=engine, backend="torch", outputs=outputs))
        assert out.mask.float().mean() > 0.2
        assert torch.equal(out.mask, ref.mask), engine
        levels = ((out.image * 255).round() - (ref.image * 255).round()).abs().max().item()
        print(f"engine {engine}: images differ by at most {levels:.0f} uint8 levels, "
              f"{(out.image - ref.image).abs().max().item():.3g} in float")
        assert levels <= 1, engine
        assert torch.allclose(out.depth, ref.depth) and torch.allclose(out.normals, ref.normals, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_the_numba_engine(sfm_mesh, sfm_model):
    verts, tris = sfm_mesh
    ndc = projected_ndc(verts, spread_poses(16), (108, 108))
    faces = torch.from_numpy(tris)
    for pc in (True, False):
        ours = rasterize(ndc.cuda(), faces.cuda(), 108, backend="torch", perspective_correct=pc)
        assert ours.pix_to_face.is_cuda
        agreement(type(ours)(*(t.cpu() for t in ours)), rasterize(ndc, faces, 108, "cpu", pc),
                  f"cuda sfm 108px pc={pc} vs cpu", atol=1e-6, rtol=1e-5)
    assert resolve_backend("auto", "cuda") in ("pytorch3d", "torch")
    params = random_params(sfm_model, 6, seed=4)
    ref = render_batch(sfm_model, params, RenderSettings(outputs=("image", "mask")))
    out = render_batch(sfm_model, params, RenderSettings(device="cuda", backend="torch", outputs=("image", "mask")))
    assert out.image.is_cuda and (out.mask.cpu() == ref.mask).float().mean() >= 0.999
    both = (out.mask.cpu() & ref.mask).expand_as(ref.image)
    assert ((out.image.cpu() - ref.image).abs()[both] < 1e-4).double().mean() > 0.999
