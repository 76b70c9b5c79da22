"""The renderer: our CPU rasterizer against PyTorch3D, batch invariance, lighting, alignment,
camera conventions, mesh export.

Real data: the Surrey Face Model (``../shared/testdata/models/sfm``, read with eos-py) and, when
it has been built, the default model (106k triangles; PyTorch3D's CPU rasterizer needs ~10 s per
108x108 image of it, so the fast run compares small images and ``-m slow`` full-size ones).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import pytorch3d_imports, requires_pytorch3d
from morph.base.errors import UserError
from morph.model.morphable import FIVE_POINT_GROUPS, MorphableModel, PCAModel
from morph.render import RenderSettings, camera, cpu, export_mesh, rasterize, render_batch, render_projected, shading
from morph.align.template import five_point_template, similarity_from_points

TESTDATA = Path(__file__).resolve().parents[2] / "shared" / "testdata"
SFM = TESTDATA / "models" / "sfm"
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "data" / "default_model.h5"
PYTORCH3D = pytorch3d_imports()


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def sfm_mesh():
    eos = pytest.importorskip("eos")
    shape = eos.morphablemodel.load_model(str(SFM / "sfm_shape_3448.bin")).get_shape_model()
    mean = np.asarray(shape.get_mean(), np.float32).reshape(-1, 3)
    return mean, np.asarray(shape.get_triangle_list(), np.int64)


@pytest.fixture(scope="module")
def sfm_model() -> MorphableModel:
    """The SFM shape model and its 6 expression blendshapes, iBUG landmarks from
    ``ibug_to_sfm.txt``, and (SFM has no colour model) a smooth synthetic colour model."""
    eos = pytest.importorskip("eos")
    shape = eos.morphablemodel.load_model(str(SFM / "sfm_shape_3448.bin")).get_shape_model()
    mean = np.asarray(shape.get_mean(), np.float32)
    blend = np.stack([np.asarray(b.deformation, np.float32)
                      for b in eos.morphablemodel.load_blendshapes(str(SFM / "expression_blendshapes_3448.bin"))], 1)
    landmarks = -np.ones(68, np.int64)
    for line in (SFM / "ibug_to_sfm.txt").read_text().splitlines():
        m = re.match(r"\s*(\d+)\s*=\s*(\d+)", line)
        if m:
            landmarks[int(m.group(1)) - 1] = int(m.group(2))
    xyz = mean.reshape(-1, 3)
    colour_fields = np.stack([np.repeat(np.sin(xyz[:, 0] / 30), 3), np.repeat(np.cos(xyz[:, 1] / 40), 3),
                              np.tile([0.3, 0.1, -0.2], len(xyz)).astype(np.float32)], 1)
    norms = np.linalg.norm(blend, axis=0)
    return MorphableModel(
        shape=PCAModel(mean, np.asarray(shape.get_orthonormal_pca_basis()),
                       np.sqrt(np.asarray(shape.get_eigenvalues()))),
        expression=PCAModel(np.zeros_like(mean), blend / norms, norms),
        texture=PCAModel(np.tile(np.array([0.75, 0.57, 0.48], np.float32), len(xyz)),
                         colour_fields / np.linalg.norm(colour_fields, axis=0), np.array([4.0, 4.0, 3.0])),
        triangles=np.asarray(shape.get_triangle_list()), landmarks=landmarks, name="sfm")


@pytest.fixture(scope="module")
def default_model():
    if not DEFAULT_MODEL.exists():
        pytest.skip("data/default_model.h5 has not been built")
    from morph.formats.named import load_model
    return load_model("default")


def random_params(model: MorphableModel, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sh = np.zeros((n, 9, 3), np.float32)
    sh[:, 0] = 1.0 + 0.2 * rng.standard_normal((n, 1))
    sh[:, 1:9] = 0.2 * rng.standard_normal((n, 8, 1)) + 0.02 * rng.standard_normal((n, 8, 3))
    return {"alpha": rng.standard_normal((n, model.n_shape)).astype(np.float32),
            "beta": rng.standard_normal((n, model.n_expression)).astype(np.float32),
            "gamma": rng.standard_normal((n, model.n_texture)).astype(np.float32),
            "pose": np.stack([rng.uniform(-25, 25, n), rng.uniform(-60, 60, n),
                              rng.uniform(-20, 20, n)], 1).astype(np.float32),
            "camera_distance": rng.uniform(400, 1500, n).astype(np.float32), "sh": sh}


def spread_poses(n: int) -> np.ndarray:
    """n poses with yaw over [-60, 60] and pitch/roll spread (degrees)."""
    yaw = np.linspace(-60, 60, n)
    pitch = 25 * np.sin(np.arange(n) * 1.7)
    roll = 20 * np.cos(np.arange(n) * 2.3)
    return np.stack([pitch, yaw, roll], 1)


def projected_ndc(verts: np.ndarray, poses: np.ndarray, hw, distance=600.0, fov=15.0) -> torch.Tensor:
    """(B, N, 3) NDC vertices of one mesh under several poses, through our perspective camera."""
    v = torch.from_numpy(np.repeat((verts - verts.mean(0))[None], len(poses), 0).astype(np.float32))
    rot = torch.from_numpy(camera.compute_rotation(poses))
    dist = torch.full((len(poses),), distance)
    _, pix, depth = camera.perspective_project(v, rot, dist, camera.focal_from_fov(fov, hw), hw)
    return camera.pixels_to_ndc(pix, depth, hw).contiguous()


def assert_same_fragments(ours, ref, min_equal=0.999, min_iou=0.999):
    same = (ours.pix_to_face == ref.pix_to_face).double().mean().item()
    a, b = ours.pix_to_face >= 0, ref.pix_to_face >= 0
    iou = ((a & b).sum() / (a | b).sum()).item()
    assert same >= min_equal, f"pix_to_face equal on {same:.5%} of pixels"
    assert iou >= min_iou, f"mask IoU {iou:.5f}"
    agree = ours.pix_to_face == ref.pix_to_face
    # where the face agrees, depth, barycentrics and distances are the same float32 numbers
    assert torch.equal(ours.zbuf[agree], ref.zbuf[agree])
    assert torch.equal(ours.bary_coords[agree], ref.bary_coords[agree])
    assert torch.equal(ours.dists[agree], ref.dists[agree])


# ----------------------------------------------------------------------------- (1) rasterizer vs PyTorch3D
@requires_pytorch3d
def test_cpu_rasterizer_matches_pytorch3d_on_sfm_16_poses(sfm_mesh):
    verts, tris = sfm_mesh
    ndc = projected_ndc(verts, spread_poses(16), (108, 108))
    faces = torch.from_numpy(tris)
    ours = rasterize(ndc, faces, 108, backend="cpu", perspective_correct=True)
    ref = rasterize(ndc, faces, 108, backend="pytorch3d", perspective_correct=True)
    assert_same_fragments(ours, ref)
    assert (ref.pix_to_face >= 0).float().mean() > 0.2  # the face fills a good part of the image
    assert ours.pix_to_face.dtype == torch.int64 and ours.pix_to_face.shape == (16, 108, 108, 1)
    assert ours.bary_coords.shape == (16, 108, 108, 1, 3)
    # packed face indices: image b's faces are offset by b * F
    hit = ours.pix_to_face[5][ours.pix_to_face[5] >= 0]
    assert hit.min() >= 5 * len(tris) and hit.max() < 6 * len(tris)


@requires_pytorch3d
@pytest.mark.parametrize("hw", [(40, 56), (56, 40)])
def test_cpu_rasterizer_matches_pytorch3d_non_square_affine(sfm_mesh, hw):
    """Non-square images (PyTorch3D's longer NDC side) and screen-space barycentrics."""
    verts, tris = sfm_mesh
    ndc = projected_ndc(verts, spread_poses(4), hw, fov=18.0)
    faces = torch.from_numpy(tris)
    ours = rasterize(ndc, faces, hw, backend="cpu")
    ref = rasterize(ndc, faces, hw, backend="pytorch3d")
    assert ours.pix_to_face.shape == (4, *hw, 1)
    assert_same_fragments(ours, ref)


@requires_pytorch3d
def test_cpu_rasterizer_edge_cases():
    """Background values, pixel centres exactly on a shared edge (strict inside test: neither
    face takes them), depth ties (the smaller face index wins), faces behind the camera."""
    # two triangles sharing the diagonal x = y through pixel centres of a 4x4 image
    v = torch.tensor([[[1.0, 1.0, 2.0], [-1.0, 1.0, 2.0], [-1.0, -1.0, 2.0], [1.0, -1.0, 2.0],
                       [1.0, 1.0, 2.0], [-1.0, -1.0, 2.0], [1.0, -1.0, 2.0], [0.0, 0.0, -1.0]]])
    f = torch.tensor([[0, 1, 2], [0, 2, 3], [4, 5, 6], [0, 1, 7]])
    for pc in (False, True):
        ours = rasterize(v, f, 4, backend="cpu", perspective_correct=pc)
        ref = rasterize(v, f, 4, backend="pytorch3d", perspective_correct=pc)
        for a, b in zip(ours, ref):
            assert torch.equal(a, b)
    assert (ours.pix_to_face == -1).any()  # the diagonal's pixel centres
    assert set(ours.pix_to_face.unique().tolist()) <= {-1, 0, 1}  # face 2 ties with 1 and loses
    bg = ours.pix_to_face == -1
    assert (ours.zbuf[bg] == -1).all() and (ours.dists[bg] == -1).all() and (ours.bary_coords[bg] == -1).all()


@requires_pytorch3d
def test_cpu_rasterizer_matches_pytorch3d_default_model_small(default_model):
    ndc = projected_ndc(default_model.shape.mean.reshape(-1, 3), spread_poses(4), (24, 24), distance=800.0, fov=22.0)
    faces = torch.from_numpy(default_model.triangles)
    assert_same_fragments(rasterize(ndc, faces, 24, "cpu", True), rasterize(ndc, faces, 24, "pytorch3d", True))


@requires_pytorch3d
@pytest.mark.slow
def test_cpu_rasterizer_matches_pytorch3d_default_model_108(default_model):
    """Renders through render_batch (aligned, 108x108); PyTorch3D takes ~10 s per image."""
    params = random_params(default_model, 4, seed=3)
    params["pose"] = spread_poses(4).astype(np.float32)
    ours = render_batch(default_model, params, RenderSettings(backend="cpu", outputs=("image", "mask")))
    ref = render_batch(default_model, params, RenderSettings(backend="pytorch3d", outputs=("image", "mask")))
    iou = ((ours.mask & ref.mask).sum() / (ours.mask | ref.mask).sum()).item()
    assert iou >= 0.999 and (ours.mask == ref.mask).float().mean() >= 0.999
    assert torch.equal(ours.image[ours.mask.expand_as(ours.image) & ref.mask.expand_as(ref.image)],
                       ref.image[ours.mask.expand_as(ours.image) & ref.mask.expand_as(ref.image)])


# ----------------------------------------------------------------------------- (2) batch invariance
def _assert_batch_invariant(model, n, sizes, outputs=("image", "mask", "landmarks", "depth", "normals")):
    params = random_params(model, n, seed=7)
    settings = RenderSettings(outputs=outputs)
    whole = render_batch(model, params, settings)
    for size in sizes:
        for start in range(0, n, size):
            part = render_batch(model, {k: v[start:start + size] for k, v in params.items()}, settings)
            for name in outputs:
                a, b = getattr(whole, name)[start:start + size], getattr(part, name)
                assert torch.equal(a.nan_to_num(), b.nan_to_num()), f"{name}, batch size {size}, start {start}"
    return whole


def test_batch_invariance_sfm(sfm_model):
    whole = _assert_batch_invariant(sfm_model, 64, (1, 7))
    assert whole.mask.float().mean() > 0.2


def test_batch_invariance_default_model(default_model):
    _assert_batch_invariant(default_model, 64, (7,), outputs=("image", "mask", "landmarks"))
    _assert_batch_invariant(default_model, 8, (1,), outputs=("image", "mask", "landmarks"))


def test_position_in_batch_does_not_matter(sfm_model):
    params = random_params(sfm_model, 9, seed=2)
    settings = RenderSettings()
    order = np.array([4, 0, 8, 2, 6, 1, 3, 7, 5])
    a = render_batch(sfm_model, params, settings)
    b = render_batch(sfm_model, {k: v[order] for k, v in params.items()}, settings)
    assert torch.equal(a.image[order], b.image)
    assert torch.equal(a.landmarks[order].nan_to_num(), b.landmarks.nan_to_num())


def test_torch_engine_agrees_with_numba_engine(sfm_model):
    """The device-agnostic torch path (CUDA's) gives the same renders to float32 rounding."""
    params = random_params(sfm_model, 6, seed=4)
    outputs = ("image", "mask", "landmarks", "depth", "normals")
    a = render_batch(sfm_model, params, RenderSettings(outputs=outputs))
    b = render_batch(sfm_model, params, RenderSettings(engine="torch", outputs=outputs))
    assert (a.mask == b.mask).float().mean() >= 0.999
    both = a.mask & b.mask
    for name, tol in (("image", 1e-4), ("normals", 1e-3), ("depth", 1e-2)):
        x, y = getattr(a, name), getattr(b, name)
        err = (x - y).abs()[both.expand_as(x)]
        assert (err < tol).double().mean() > 0.999 and err.max() < 100 * tol, name
    assert torch.allclose(a.landmarks, b.landmarks, atol=1e-3, equal_nan=True)


# ----------------------------------------------------------------------------- (3) lighting
def test_constant_sh_gives_albedo_times_constant(sfm_model):
    grey = MorphableModel(shape=sfm_model.shape, triangles=sfm_model.triangles, landmarks=sfm_model.landmarks)
    params = random_params(grey, 3, seed=5)
    params["sh"] = np.zeros((3, 9, 3), np.float32)
    params["sh"][:, 0] = [0.5, 1.0, 1.2]
    out = render_batch(grey, params, RenderSettings(background=(0.1, 0.2, 0.3)))
    expected = 0.7 * np.array([0.5, 1.0, 1.2]) * np.sqrt(np.pi) / 2  # grey albedo 0.7, Y0 = sqrt(pi)/2
    m = out.mask[:, 0]
    for c in range(3):
        assert np.allclose(out.image[:, c][m].numpy(), expected[c], atol=1e-5)
        assert np.allclose(out.image[:, c][~m].numpy(), (0.1, 0.2, 0.3)[c])


def test_light_from_the_left_brightens_the_left_side(sfm_model):
    grey = MorphableModel(shape=sfm_model.shape, triangles=sfm_model.triangles, landmarks=sfm_model.landmarks)
    params = random_params(grey, 2, seed=6)
    params.update(pose=np.zeros((2, 3), np.float32), alpha=np.zeros_like(params["alpha"]))
    sh = np.zeros((2, 9, 3), np.float32)
    sh[:, 0] = 0.6
    sh[0, 3] = 0.5  # weights -x: light from the image's left
    sh[1, 3] = -0.5  # from the right
    params["sh"] = sh
    out = render_batch(grey, params, RenderSettings())
    lum = out.image.mean(1)
    m = out.mask[:, 0]
    half = lum.shape[-1] // 2

    def side(b, cols):
        return lum[b][:, cols][m[b][:, cols]].mean().item()

    left, right = slice(0, half), slice(half, None)
    assert side(0, left) > side(0, right) + 0.05
    assert side(1, right) > side(1, left) + 0.05


def test_sh_kernel_matches_torch_formula():
    rng = np.random.default_rng(0)
    n = rng.standard_normal((2, 500, 3)).astype(np.float32)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    albedo = rng.uniform(0, 1, (2, 500, 3)).astype(np.float32)
    sh = rng.standard_normal((2, 9, 3)).astype(np.float32)
    out = np.empty_like(albedo)
    for b in range(2):
        cpu.shade_sh(n[b], albedo[b], sh[b], shading.SH_BASIS_SCALE, out[b])
    ref = shading.compute_color(torch.from_numpy(albedo), torch.from_numpy(n), torch.from_numpy(sh))
    assert np.allclose(out, ref.numpy(), atol=1e-5)
    # the basis is Deep3DFaceRecon's: Y1 = -sqrt(pi) y, Y2 = sqrt(pi) z, Y3 = -sqrt(pi) x
    y = shading.sh_basis(torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))
    assert np.allclose(y[0, :4], [np.sqrt(np.pi) / 2, 0, np.sqrt(np.pi), 0], atol=1e-6)
    assert np.allclose(y[1, 3], -np.sqrt(np.pi), atol=1e-6)


def test_phong_300wlp_model():
    albedo = torch.full((1, 2, 3), 0.4)
    normals = torch.tensor([[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]])
    neutral_colour = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0]])
    ambient = torch.tensor([[0.5, 0.5, 0.5, 0, 0, 0, 0, 0, 0, 1]])
    assert torch.allclose(shading.phong_300wlp(albedo, normals, ambient, neutral_colour), albedo * 0.5)
    # frontal light (theta = phi = 0): full diffuse on the frontal normal, none at 90 degrees;
    # the specular term adds ks * dir * (n.h)^v / 255 where n.h = 1
    frontal = torch.tensor([[0.0, 0, 0, 1.0, 1.0, 1.0, 0, 0, 51.0, 8.0]])
    out = shading.phong_300wlp(albedo, normals, frontal, neutral_colour)
    assert torch.allclose(out[0, 0], torch.full((3,), 0.4 + 51.0 / 255), atol=1e-6)
    assert torch.allclose(out[0, 1], torch.zeros(3), atol=1e-6)
    # c = 0 turns colours into their luminance; gains and offsets act per channel
    rgb = torch.tensor([[[0.8, 0.4, 0.2]]])
    grey = shading.phong_300wlp(rgb, normals[:, :1], ambient * 2, torch.tensor([[1.0, 1, 1, 0, 0, 0, 0.0]]))
    assert torch.allclose(grey, torch.full((1, 1, 3), 0.3 * 0.8 + 0.59 * 0.4 + 0.11 * 0.2), atol=1e-6)
    shifted = shading.phong_300wlp(rgb, normals[:, :1], ambient * 2, torch.tensor([[0.5, 1, 1, 25.5, 0, 0, 1.0]]))
    assert torch.allclose(shifted, torch.tensor([[[0.5, 0.4, 0.2]]]), atol=1e-6)


# ----------------------------------------------------------------------------- (4) alignment, frames
def five_from_landmarks(landmarks: torch.Tensor) -> np.ndarray:
    lm = landmarks.double().numpy()
    return np.stack([lm[:, list(g)].mean(1) for g in FIVE_POINT_GROUPS], 1)


def test_alignment_frames_renders_like_the_template(sfm_model):
    """The rendered 5 points are where the template similarity puts them: their centroid is the
    template's and fitting a similarity from them to the template gives the identity (to 0.01 px).
    (The 5 points of a given face are not a similar copy of the template, so each point keeps its
    least-squares residual, as an MTCNN-aligned photo does.)"""
    params = random_params(sfm_model, 16, seed=8)
    out = render_batch(sfm_model, params, RenderSettings(image_size=108))
    pts = five_from_landmarks(out.landmarks)
    tmpl = five_point_template(108)
    assert np.abs(pts.mean(1) - tmpl.mean(0)).max() < 0.01
    fit = similarity_from_points(pts, tmpl[None])
    identity = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    assert np.abs(fit[..., :2] - identity[:, :2]).max() < 1e-4
    assert np.abs(fit[..., 2]).max() < 0.01
    assert np.sqrt(((pts - tmpl) ** 2).sum(-1)).max() < 12  # a sanity bound on the residuals


def test_alignment_lands_exactly_when_the_face_matches_the_template():
    """A flat face whose 5 points are a similar copy of the template, facing the camera (any
    roll and distance): perspective projection keeps it similar, so alignment puts the 5 points
    on the template to 0.01 px."""
    tmpl = five_point_template(108)
    pts = np.c_[(tmpl - tmpl.mean(0)) * [0.9, -0.9], np.zeros(5)]  # mm, y up, z = 0
    corners = np.array([[-60, -70, 0], [60, -70, 0], [60, 70, 0], [-60, 70, 0]])
    verts = np.concatenate([pts, corners]).astype(np.float32)
    landmarks = -np.ones(68, np.int64)
    for vertex, group in enumerate(FIVE_POINT_GROUPS):
        landmarks[list(group)] = vertex
    flat = MorphableModel(shape=PCAModel(verts.reshape(-1), np.zeros((27, 1)), np.ones(1)),
                          triangles=np.array([[5, 6, 7], [5, 7, 8]]), landmarks=landmarks, name="flat")
    params = {"alpha": np.zeros((3, 1), np.float32), "pose": np.array([[0, 0, 0], [0, 0, 25], [0, 0, -40]], np.float32),
              "camera_distance": np.array([300, 800, 2000], np.float32), "sh": np.ones((3, 9, 3), np.float32)}
    for engine in ("numba", "torch"):
        out = render_batch(flat, params, RenderSettings(engine=engine))
        assert np.abs(five_from_landmarks(out.landmarks) - tmpl).max() < 0.01, engine


def test_alignment_is_morph_template_similarity():
    """Our numba port gives morph.align.template.similarity_from_points' transform."""
    rng = np.random.default_rng(1)
    pix = rng.uniform(0, 200, (3, 40, 2)).astype(np.float32)
    groups = [np.arange(0, 6), np.arange(6, 12), np.array([12]), np.array([13]), np.array([14])]
    index = np.concatenate(groups).astype(np.int64)
    start = np.cumsum([0] + [len(g) for g in groups]).astype(np.int64)
    src = np.stack([pix[:, g].astype(np.float64).mean(1) for g in groups], 1)
    aligned = pix.copy()
    transform = np.stack([cpu.align_to_template(aligned[b], index, start, five_point_template(108)) for b in range(3)])
    ref = similarity_from_points(src, five_point_template(108)[None])
    assert np.allclose(transform, ref, rtol=0, atol=1e-9)
    t = camera.similarity_to_template(torch.from_numpy(src), 108)
    assert np.allclose(t.numpy(), ref, atol=1e-9)
    expected = np.einsum("bij,bnj->bni", ref[..., :2], pix.astype(np.float64)) + ref[:, None, :, 2]
    assert np.allclose(aligned, expected, atol=1e-4)


def test_pixel_centre_convention():
    """A square covering pixel coordinates [10, 20] x [4, 12] (centres at integer + 0.5) covers
    exactly columns 10..19 and rows 4..11, with both backends."""
    pix = torch.tensor([[[10.0, 4.0], [20.0, 4.0], [20.0, 12.0], [10.0, 12.0]]])
    depth = torch.full((1, 4), 5.0)
    colors = torch.tensor([[[1.0, 0.0, 0.0]] * 4])
    tri = np.array([[0, 2, 1], [0, 3, 2]])
    expected = torch.zeros(16, 32, dtype=torch.bool)
    expected[4:12, 10:20] = True
    for backend in ("cpu", "pytorch3d") if PYTORCH3D else ("cpu",):
        for engine in ("numba", "torch"):
            out = render_projected(pix, depth, colors, tri, RenderSettings(
                image_size=(16, 32), align=False, backend=backend, engine=engine, outputs=("image", "mask")))
            assert torch.equal(out.mask[0, 0], expected), (backend, engine)
            assert torch.allclose(out.image[0, 0][expected], torch.ones(1))


def test_pose_conventions(sfm_model):
    """yaw > 0 turns the face to the image's right, pitch > 0 looks down, roll > 0 tilts the top
    of the head to the image's left (face3d's angle2matrix). Measured relative to the eyes, so
    that it does not depend on where the model's origin is."""
    params = random_params(sfm_model, 4)
    params.update(alpha=np.zeros_like(params["alpha"]), beta=np.zeros_like(params["beta"]),
                  camera_distance=np.full(4, 800, np.float32),
                  pose=np.array([[0, 0, 0], [0, 30, 0], [20, 0, 0], [0, 0, 20]], np.float32))
    lm = render_batch(sfm_model, params, RenderSettings(align=False, image_size=200)).landmarks.numpy()
    nose = lm[:, 30] - lm[:, 36:48].mean(1)  # nose tip relative to the eyes
    brow = lm[:, 27] - lm[:, 57]  # nasion relative to the lower lip
    assert nose[1, 0] > nose[0, 0] + 3  # yaw: the nose tip moves right
    assert nose[2, 1] > nose[0, 1] + 3  # pitch: the nose tip moves down
    assert brow[3, 0] < brow[0, 0] - 3  # roll: the top of the face moves left


def test_rotation_300wlp_is_transposed_face3d():
    angles = np.array([[0.1, -0.4, 0.25]])
    r3 = camera.rotation_300wlp(angles)[0]
    x, y, z = angles[0]
    rx = np.array([[1, 0, 0], [0, np.cos(x), np.sin(x)], [0, -np.sin(x), np.cos(x)]])
    ry = np.array([[np.cos(y), 0, -np.sin(y)], [0, 1, 0], [np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(z), np.sin(z), 0], [-np.sin(z), np.cos(z), 0], [0, 0, 1]])
    assert np.allclose(r3, rx @ ry @ rz, atol=1e-6)
    verts = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, 10.0]]])
    pix, depth = camera.weak_perspective_300wlp(verts, torch.tensor([2.0]), torch.eye(3)[None],
                                                torch.tensor([[100.0, 50.0]]), 450)
    assert torch.allclose(pix[0, 0], torch.tensor([99.5, 400.5]))  # MATLAB (100, 50) -> row 450 + 1 - 50
    assert depth[0, 1] < depth[0, 0] and (depth > 0).all()


def test_300wlp_camera_and_phong_render_in_the_photo_frame(sfm_model):
    """The pieces a 300W-LP pair render uses: weak perspective into a 450x450 photo, Phong
    colours on model-frame normals, render_projected without alignment."""
    verts = torch.from_numpy(sfm_model.shape.mean.reshape(1, -1, 3).copy())
    tri = torch.from_numpy(sfm_model.triangles)
    rot = torch.from_numpy(camera.rotation_300wlp(np.array([[0.1, 0.5, -0.1]])))
    pix, depth = camera.weak_perspective_300wlp(verts, torch.tensor([1.2]), rot, torch.tensor([[225.0, 225.0]]), 450)
    normals = shading.compute_norm(verts, tri)
    illum = torch.tensor([[0.4, 0.4, 0.4, 0.6, 0.6, 0.6, 0.2, -0.3, 20.0, 10.0]])
    colour = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0]])
    colors = shading.phong_300wlp(torch.full_like(verts, 0.6), normals, illum, colour)
    settings = RenderSettings(image_size=(450, 450), align=False, outputs=("image", "mask"))
    out = render_projected(pix, depth, colors, sfm_model.triangles, settings)
    assert out.mask.float().mean() > 0.05
    ys, xs = torch.nonzero(out.mask[0, 0], as_tuple=True)
    assert abs(xs.float().mean() - 225) < 80 and abs(ys.float().mean() - 225) < 80  # t2d = photo centre
    ref = render_projected(pix, depth, colors, sfm_model.triangles, RenderSettings(
        image_size=(450, 450), align=False, outputs=("image", "mask"), engine="torch"))
    assert torch.equal(out.mask, ref.mask) and torch.allclose(out.image, ref.image, atol=1e-5)


def test_render_outputs_and_errors(sfm_model):
    params = random_params(sfm_model, 2)
    out = render_batch(sfm_model, params, RenderSettings(outputs=("image", "mask", "landmarks", "depth", "normals")))
    assert out.image.shape == (2, 3, 108, 108) and out.image.dtype == torch.float32
    assert 0 <= out.image.min() and out.image.max() <= 1
    assert out.mask.shape == (2, 1, 108, 108) and out.mask.dtype == torch.bool
    assert out.landmarks.shape == (2, 68, 2) and torch.isnan(out.landmarks[:, 0]).all()  # SFM lacks jaw points
    assert (out.depth[out.mask] > 300).all() and (out.depth[~out.mask] == 0).all()
    length = out.normals.norm(dim=1, keepdim=True)
    assert torch.allclose(length[out.mask], torch.ones(1), atol=1e-4)
    assert (out.normals[:, 2:][out.mask] > -0.2).float().mean() > 0.95  # visible surfaces face the camera
    only = render_batch(sfm_model, params, RenderSettings(outputs=("mask",)))
    assert only.image is None and torch.equal(only.mask, out.mask)
    empty = render_batch(sfm_model, {k: v[:0] for k, v in params.items()}, RenderSettings())
    assert empty.image.shape == (0, 3, 108, 108)
    with pytest.raises(UserError, match="alpha"):
        render_batch(sfm_model, {**params, "alpha": params["alpha"][:, :10]}, RenderSettings())
    with pytest.raises(UserError, match="unknown"):
        render_batch(sfm_model, {**params, "gama": params["gamma"]}, RenderSettings())
    with pytest.raises(UserError):
        RenderSettings(outputs=("picture",))
    no_landmarks = MorphableModel(shape=sfm_model.shape, triangles=sfm_model.triangles)
    shape_only = {k: params[k] for k in ("alpha", "pose", "camera_distance", "sh")}  # beta, gamma: the mean
    with pytest.raises(UserError, match="landmark"):
        render_batch(no_landmarks, shape_only, RenderSettings())
    assert render_batch(no_landmarks, shape_only, RenderSettings(align=False)).mask.any()


# ----------------------------------------------------------------------------- (5) export
@pytest.mark.parametrize("suffix", [".ply", ".obj"])
def test_export_mesh_round_trip(tmp_path, sfm_mesh, suffix):
    trimesh = pytest.importorskip("trimesh")
    verts, tris = sfm_mesh
    rng = np.random.default_rng(0)
    colors = rng.uniform(0, 1, verts.shape)
    path = export_mesh(tmp_path / f"face{suffix}", verts, colors, tris)
    assert path.exists() and not list(tmp_path.glob(".face*"))  # no temporary left behind
    mesh = trimesh.load(path, process=False)
    assert np.allclose(mesh.vertices, verts, atol=1e-5)
    assert np.array_equal(mesh.faces, tris)
    assert np.array_equal(mesh.visual.vertex_colors[:, :3], np.round(colors * 255).astype(np.uint8))
    with pytest.raises(UserError):
        export_mesh(tmp_path / "face.stl", verts, colors, tris)


def test_every_renderer_forms_the_reference_face_with_an_expression_mean(sfm_model):
    """S(alpha, beta) includes the expression model's mean deformation E_mean in the reference
    (``MorphableModel.vertices``) and in every copy: the numba and torch engines, PyTorch3D as the
    rasterizer, and the pair renderer. On a model whose E_mean is a 4 mm deformation, their
    landmarks are the reference vertices projected, to 1e-3 px. (Before E_mean reached the
    renderer, its landmarks were off by millimetres' worth of pixels.)"""
    from dataclasses import replace

    from morph.w300lp import Annotation, PairRenderer

    blend = sfm_model.expression.basis[:, 0] * sfm_model.expression.std[0]
    e_mean = (4.0 * blend / np.abs(blend).max()).astype(np.float32)
    model = replace(sfm_model, expression=replace(sfm_model.expression, mean=e_mean))
    rng = np.random.default_rng(1)
    b = 3
    params = {"alpha": rng.standard_normal((b, model.n_shape)).astype(np.float32) * 0.5,
              "beta": np.clip(rng.standard_normal((b, model.n_expression)), 0, 1).astype(np.float32) * 0.3,
              "pose": np.array([[5, -20, 3], [0, 0, 0], [-8, 30, -5]], np.float32),
              "camera_distance": np.array([700, 900, 1100], np.float32), "sh": np.tile(np.eye(9, 3, dtype=np.float32), (b, 1, 1))}
    verts = torch.from_numpy(model.vertices(params["alpha"], params["beta"]).astype(np.float64))
    settings = RenderSettings(image_size=108)
    hw = (108, 108)
    _, pix, _ = camera.perspective_project(verts, torch.from_numpy(camera.compute_rotation(params["pose"])).double(),
                                           torch.from_numpy(params["camera_distance"]).double(),
                                           camera.focal_from_fov(settings.fov, hw), hw)
    pix = camera.apply_similarity(pix, camera.similarity_to_template(camera.five_points(pix, model.five_point_vertices()), 108))
    known = model.landmarks >= 0  # (SFM maps 60 of the 68 iBUG points)
    want = pix[:, model.landmarks[known]].float()
    for kw in ({"engine": "numba"}, {"engine": "torch"}, *([{"engine": "numba", "backend": "pytorch3d"}] * PYTORCH3D)):
        out = render_batch(model, params, RenderSettings(image_size=108, outputs=("landmarks", "mask"), **kw))
        assert (out.landmarks[:, known] - want).abs().max() < 1e-3, kw
    # the pair renderer: 300W-LP's weak-perspective camera of the same face
    ann = Annotation(pose=np.array([0.1, -0.3, 0.05, 230.0, 220.0, 0.0, 0.0011]),
                     coeffs={"shape": params["alpha"][0].astype(np.float64), "expression": params["beta"][0].astype(np.float64),
                             "texture": np.zeros(model.n_texture)},
                     color=np.array([1, 1, 1, 0, 0, 0, 1.0]), illum=np.array([0.4, 0.4, 0.4, 0.6, 0.6, 0.6, 0.2, -0.3, 20, 10.0]),
                     pt2d=np.full((68, 2), np.nan))
    geo = PairRenderer(model, 108).geometry(ann, (450, 450))
    rot = torch.from_numpy(camera.rotation_300wlp(ann.pose[None])).double()
    photo, _ = camera.weak_perspective_300wlp(verts[:1], torch.tensor([ann.pose[6] * 1000.0], dtype=torch.float64), rot,
                                              torch.from_numpy(ann.pose[None, 3:5]), 450)
    assert np.abs(geo["landmarks_photo"][known] - photo[0, model.landmarks[known]].numpy()).max() < 1e-3
    # and E_mean matters: the neutral-mean model's landmarks are elsewhere
    plain = render_batch(sfm_model, params, RenderSettings(image_size=108, outputs=("landmarks",)))
    assert (plain.landmarks[:, known] - want).abs().max() > 0.5
