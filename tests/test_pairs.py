"""`morph render-pairs`: 300W-LP-style folders -> pixel-aligned (real, render) pairs.

The photos here are made from known parameters, written as the dataset writes them (raw
coefficients, ``Pose_Para``, MATLAB 1-based ``pt2d``), so rendering them back must reproduce the
photo. Geometry and raw coefficients are computed here straight from the definitions (basis
columns times raw coefficients, ``P = s R v + t``, row ``H + 1 - P_y``), not through
``morph.jobs.render_pairs``.
"""
import math

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from click.testing import CliRunner
from PIL import Image

import fixtures_formats as fx
from cli.morph import main
from morph.formats.named import load_model
from morph.render import RenderSettings, render_projected
from morph.render.camera import rotation_300wlp
from morph.render.shading import compute_norm, phong_300wlp

DATASETS = ("real", "render", "mask", "landmarks", "pt2d", "landmark_error", "landmark_threshold", "flagged",
            "names", "transform")


@pytest.fixture(scope="module")
def model():
    return load_model("default")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def project_300wlp(verts_um, pose, height):
    """The dataset's MATLAB example: P = s R v + t; MATLAB pixel (P_x, H + 1 - P_y)."""
    rot = rotation_300wlp(pose[None])[0].astype(np.float64)
    p = pose[6] * verts_um @ rot.T + pose[3:6]
    matlab = np.stack([p[:, 0], height + 1 - p[:, 1]], 1)
    return matlab, p[:, 2]


def make_photo(path, verts_um, albedo, triangles, pose, illum, color, hw, rng, landmarks):
    """Render the face into an H x W photo over grey noise (as a PNG); return MATLAB pt2d (2, 68)."""
    h, w = hw
    matlab, z = project_300wlp(verts_um, pose, h)
    pix = matlab - 0.5  # our frame: pixel centres at integer + 0.5
    depth = z.max() + 1 - z
    v = torch.from_numpy(verts_um.astype(np.float32))[None]
    colors = phong_300wlp(torch.from_numpy(albedo.astype(np.float32))[None], compute_norm(v, torch.from_numpy(triangles)),
                          torch.tensor(illum, dtype=torch.float32)[None], torch.tensor(color, dtype=torch.float32)[None])
    out = render_projected(torch.from_numpy(pix)[None], torch.from_numpy(depth)[None], colors, triangles,
                           RenderSettings(image_size=(h, w), align=False, outputs=("image", "mask")))
    img = np.round(out.image[0].numpy().transpose(1, 2, 0) * 255).astype(np.uint8)
    mask = out.mask[0, 0].numpy()
    background = rng.integers(105, 150, (h, w, 3), dtype=np.uint8)
    photo = np.where(mask[..., None], img, background)
    Image.fromarray(photo).save(path)
    return matlab[landmarks].T, mask


def write_default_sample(folder, name, model, seed, yaw_deg=20.0, hw=(450, 500), scale=0.0011, suffix=".png",
                         n_shape=None, extra_keys=None, drop=()):
    """One 300W-LP-style pair for the embedded default model, raw coefficients per the generic
    convention (raw_k = c_k std_k 1000 um for shape/expression, c_k std_k 255 for colour)."""
    rng = np.random.default_rng(seed)
    alpha = rng.standard_normal(model.n_shape) * 0.8
    beta = np.zeros(model.n_expression)
    beta[:3] = [0.3, 0.6, -0.2]  # jaw open a little, smile, lip pucker
    gamma = rng.standard_normal(model.n_texture) * 0.8
    if n_shape is not None:
        alpha[n_shape:] = 0
    raw_shape = (alpha * model.shape.std * 1000).astype(np.float32)
    raw_exp = (beta * model.expression.std * 1000).astype(np.float32)
    raw_tex = (gamma * model.texture.std * 255).astype(np.float32)
    h, w = hw
    pose = np.array([math.radians(-5), math.radians(yaw_deg), math.radians(3), w / 2 + 4, h / 2 - 6, 0.0, scale],
                    np.float32)
    illum = np.array([0.6, 0.58, 0.55, 0.4, 0.4, 0.42, 0.3, 0.5, 0.05, 20.0], np.float32)
    color = np.array([1, 1, 1, 0, 0, 0, 1], np.float32)
    # vertices and colours straight from the convention, with the values as stored (float32)
    d = lambda a: np.asarray(a, np.float64)
    verts_um = (1000 * (d(model.shape.mean) + d(model.expression.mean)) + d(model.shape.basis) @ d(raw_shape)
                + d(model.expression.basis) @ d(raw_exp)).reshape(-1, 3)
    albedo = np.clip((255 * d(model.texture.mean) + d(model.texture.basis) @ d(raw_tex)) / 255, 0, 1).reshape(-1, 3)
    pt2d, mask = make_photo(folder / f"{name}{suffix}", verts_um, albedo, model.triangles, d(pose), d(illum),
                            d(color), hw, rng, model.landmarks)
    keep = raw_shape if n_shape is None else raw_shape[:n_shape]
    mat = {"Pose_Para": pose[None], "Shape_Para": keep[:, None], "Exp_Para": raw_exp[:, None],
           "Tex_Para": raw_tex[:, None], "Color_Para": color[None], "Illum_Para": illum[None],
           "pt2d": pt2d.astype(np.float32), "roi": np.array([[0, 0, w, h]], np.float32)}
    mat.update(extra_keys or {})
    for k in drop:
        del mat[k]
    scipy.io.savemat(folder / f"{name}.mat", mat)
    return {"mask": mask, "pt2d": pt2d}


def read_pairs(path):
    with h5py.File(path, "r") as f:
        out = {k: f[k][()] for k in DATASETS}
        out["skipped"] = [s.decode() for s in f["skipped"][()]]
        out["attrs"] = dict(f.attrs)
    out["names"] = [s.decode() for s in out["names"]]
    return out


def psnr(a, b, mask):
    diff = a.astype(np.float64)[mask] - b.astype(np.float64)[mask]
    return 10 * np.log10(255.0 ** 2 / np.mean(diff ** 2))


def test_round_trip_render_matches_the_photo(tmp_path, model):
    """Known parameters -> photo + .mat -> render-pairs: the render reproduces the photo's crop
    and the projected landmarks land on pt2d."""
    folder = tmp_path / "ann"
    folder.mkdir()
    write_default_sample(folder, "face_0", model, seed=1, yaw_deg=20.0)
    write_default_sample(folder, "face_1", model, seed=2, yaw_deg=-35.0, hw=(450, 450))
    out = tmp_path / "pairs.h5"
    res = run("render-pairs", folder, "-o", out, "--model", "default")
    assert res.exit_code == 0, res.output
    p = read_pairs(out)
    assert p["names"] == ["face_0", "face_1"]
    assert p["real"].shape == (2, 108, 108, 3) and p["real"].dtype == np.uint8
    assert p["render"].shape == (2, 108, 108, 3) and p["mask"].dtype == bool
    assert p["landmarks"].shape == (2, 68, 2) and p["pt2d"].shape == (2, 68, 2)
    for i in range(2):
        mask = p["mask"][i]
        assert mask.mean() > 0.3
        value = psnr(p["real"][i], p["render"][i], mask)
        print(f"round trip {p['names'][i]}: PSNR {value:.2f} dB over {mask.sum()} mask pixels, "
              f"landmark error {p['landmark_error'][i]:.2e} px")
        # 30 dB is the bar; measured 38.3 and 41.3 dB. Shifting the photo crop by half a photo pixel
        # drops face_0 to 34.9 dB and a whole pixel to 30.5 dB, so 36 dB also catches half-pixel slips.
        assert value >= 36.0
        # the photo's background is grey noise, the render's black: the mask is where the face is
        assert psnr(p["real"][i], p["render"][i], ~mask) < 20
    assert np.all(p["landmark_error"] < 0.01)  # exact up to float32 storage
    assert np.allclose(p["landmarks"], p["pt2d"], atol=0.02)
    assert not p["flagged"].any()
    # 5-point frame: eye centres of the projected landmarks near the template's
    from morph.align.template import five_point_template
    eyes = np.stack([p["landmarks"][:, 36:42].mean(1), p["landmarks"][:, 42:48].mean(1)], 1)
    assert np.abs(eyes - five_point_template(108)[:2]).max() < 4
    assert p["skipped"] == []
    a = p["attrs"]
    assert a["complete"] and a["model"] == "default" and int(a["n_pairs"]) == 2 and "command" in a
    assert "1000" in a["coefficient_convention"]


def test_shorter_coefficient_vectors_are_zero_padded(tmp_path, model):
    folder = tmp_path / "ann"
    folder.mkdir()
    write_default_sample(folder, "short", model, seed=3, hw=(200, 200), scale=0.0005, n_shape=10)
    out = tmp_path / "pairs.h5"
    res = run("render-pairs", folder, "-o", out, "--model", "default")
    assert res.exit_code == 0, res.output
    p = read_pairs(out)
    assert p["landmark_error"][0] < 0.01
    assert psnr(p["real"][0], p["render"][0], p["mask"][0]) > 28  # small photo: coarser crop


def test_face3d_model_uses_the_raw_coefficients_of_its_file(tmp_path):
    """A face3d BFM.mat: Shape_Para/Exp_Para/Tex_Para multiply the file's own bases (um, 0..255)."""
    bfm = tmp_path / "BFM.mat"
    d = fx.write_face3d_bfm(bfm)
    folder = tmp_path / "ann"
    folder.mkdir()
    rng = np.random.default_rng(5)
    k, ke = d["shapePC"].shape[1], d["expPC"].shape[1]
    sp = rng.standard_normal(k) * d["shapeEV"].ravel()
    ep = rng.standard_normal(ke) * d["expEV"].ravel()
    tp = rng.standard_normal(k) * d["texEV"].ravel()
    verts = (d["shapeMU"].ravel() + d["expMU"].ravel() + d["shapePC"] @ sp + d["expPC"] @ ep).reshape(-1, 3)
    albedo = np.clip((d["texMU"].ravel() + d["texPC"] @ tp) / 255, 0, 1).reshape(-1, 3)
    m = load_model(bfm)
    pose = np.array([0.05, 0.3, -0.02, 100, 95, 0, 0.9e-3])
    illum = [0.6, 0.6, 0.6, 0.4, 0.4, 0.4, 0.2, -0.3, 0.0, 20.0]
    color = [1.1, 1.0, 0.9, 5, 0, -5, 0.9]
    pt2d, _ = make_photo(folder / "x.png", verts, albedo, m.triangles, pose, illum, color, (200, 200), rng,
                         m.landmarks)
    scipy.io.savemat(folder / "x.mat", {"Pose_Para": pose[None], "Shape_Para": sp[:, None], "Exp_Para": ep[:, None],
                                        "Tex_Para": tp[:, None], "Color_Para": np.array(color)[None],
                                        "Illum_Para": np.array(illum)[None], "pt2d": pt2d})
    out = tmp_path / "pairs.h5"
    res = run("render-pairs", folder, "-o", out, "--model", bfm)
    assert res.exit_code == 0, res.output
    p = read_pairs(out)
    assert p["landmark_error"][0] < 1e-3
    assert "face3d raw (BFM.mat)" in p["attrs"]["coefficient_convention"]


def test_bad_files_are_one_line_each_and_the_good_pairs_are_kept(tmp_path, model):
    folder = tmp_path / "ann"
    (folder / "sub").mkdir(parents=True)
    small = dict(hw=(160, 160), scale=0.0004)
    for i, name in enumerate(["good_a", "sub/good_b", "good_c"]):
        write_default_sample(folder, name, model, seed=10 + i, **small)
    write_default_sample(folder, "nopose", model, seed=20, drop=("Pose_Para",), **small)
    write_default_sample(folder, "longshape", model, seed=21, extra_keys={
        "Shape_Para": np.ones((199, 1), np.float32)}, **small)
    write_default_sample(folder, "truncated", model, seed=22, suffix=".jpg", **small)
    data = (folder / "truncated.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(folder / "orphan.jpg")
    (folder / "brokenmat.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 10)
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(folder / "brokenmat.png")
    (folder / "lonely_pts.mat").write_bytes(b"not looked at")  # .mat without image: ignored

    out = tmp_path / "pairs.h5"
    res = run("render-pairs", folder, "-o", out, "--model", "default", "--batch-size", 2)
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    lines = [l for l in res.output.replace("\r", "\n").splitlines() if "skipped" in l and "pairs (" not in l]
    expect = {"nopose.mat": "Pose_Para", "longshape.mat": "Shape_Para has 199 coefficients",
              "truncated.jpg": "not a readable image", "orphan.jpg": "no annotation orphan.mat",
              "brokenmat.mat": "cannot be read as a .mat file"}
    assert len(lines) == len(expect), lines
    for file, why in expect.items():
        hit = [l for l in lines if file in l]
        assert len(hit) == 1 and why in hit[0], (file, lines)
    p = read_pairs(out)
    assert p["names"] == ["good_a", "good_c", "sub/good_b"]
    assert sorted(p["skipped"]) == sorted(lines)
    assert int(p["attrs"]["n_skipped"]) == 5 and int(p["attrs"]["n_mat_without_image"]) == 1
    assert np.all(p["landmark_error"] < 0.01)
    assert "3 pairs (5 files skipped" in res.output


def test_landmark_threshold_flags_bad_fits(tmp_path, model):
    folder = tmp_path / "ann"
    folder.mkdir()
    small = dict(hw=(160, 160), scale=0.0004)
    write_default_sample(folder, "ok", model, seed=30, **small)
    info = write_default_sample(folder, "off", model, seed=31, **small)
    mat = scipy.io.loadmat(folder / "off.mat")
    mat["pt2d"] = (info["pt2d"] + np.array([[6.0], [0.0]])).astype(np.float32)  # annotation 6 px to the right
    scipy.io.savemat(folder / "off.mat", {k: v for k, v in mat.items() if not k.startswith("__")})
    res = run("render-pairs", folder, "-o", tmp_path / "a.h5", "--model", "default")
    assert res.exit_code == 0, res.output
    p = read_pairs(tmp_path / "a.h5")
    assert p["names"] == ["off", "ok"]
    assert abs(p["landmark_error"][0] - 6.0) < 0.01
    iod = np.linalg.norm(info["pt2d"][:, 36] - info["pt2d"][:, 45])
    assert np.isclose(p["landmark_threshold"][0], 0.1 * iod, rtol=1e-5)
    assert list(p["flagged"]) == [6.0 > 0.1 * iod, False]
    res = run("render-pairs", folder, "-o", tmp_path / "b.h5", "--model", "default", "--max-landmark-error", 3)
    assert res.exit_code == 0, res.output
    p = read_pairs(tmp_path / "b.h5")
    assert list(p["flagged"]) == [True, False] and np.allclose(p["landmark_threshold"], 3)
    assert "1 pairs flagged" in res.output


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "holds no images or .mat files"),
    (lambda p: Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(p / "lonely.jpg"), "holds no image + .mat pairs"),
    ("missing", "no such folder"),
])
def test_empty_or_pairless_folder_is_one_line(tmp_path, make, message):
    folder = tmp_path / "ann"
    if make != "missing":
        folder.mkdir()
        make(folder)
    res = run("render-pairs", folder, "-o", tmp_path / "pairs.h5", "--model", "default")
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "pairs.h5").exists() and not (tmp_path / "pairs.h5.partial").exists()


def test_all_pairs_unusable_is_an_error_and_leaves_nothing(tmp_path, model):
    folder = tmp_path / "ann"
    folder.mkdir()
    write_default_sample(folder, "nopose", model, seed=40, hw=(120, 120), scale=0.0003, drop=("Pose_Para",))
    res = run("render-pairs", folder, "-o", tmp_path / "pairs.h5", "--model", "default")
    assert res.exit_code == 2
    assert "nopose.mat: has no Pose_Para; skipped." in res.output and "none of the 1 images gave a pair" in res.output
    assert not (tmp_path / "pairs.h5").exists() and not (tmp_path / "pairs.h5.partial").exists()


def test_resume_after_a_kill_gives_the_same_file(tmp_path, model, monkeypatch):
    import morph.jobs.render_pairs

    folder = tmp_path / "ann"
    folder.mkdir()
    small = dict(hw=(160, 160), scale=0.0004)
    for i in range(7):
        write_default_sample(folder, f"img_{i}", model, seed=50 + i, **small)
    write_default_sample(folder, "img_1b", model, seed=60, drop=("Pose_Para",), **small)  # skipped, in batch 1
    write_default_sample(folder, "img_5b", model, seed=61, drop=("Illum_Para",), **small)  # skipped, in batch 3
    ref = tmp_path / "ref.h5"
    assert run("render-pairs", folder, "-o", ref, "--model", "default", "--batch-size", 3).exit_code == 0

    calls = {"n": 0}
    original = morph.jobs.render_pairs.PairRenderer.render

    def dies_in_batch_3(self, geoms):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return original(self, geoms)

    monkeypatch.setattr(morph.jobs.render_pairs.PairRenderer, "render", dies_in_batch_3)
    out = tmp_path / "out.h5"
    res = run("render-pairs", folder, "-o", out, "--model", "default", "--batch-size", 3)
    assert res.exit_code != 0 and isinstance(res.exception, RuntimeError)
    assert not out.exists(), "a killed run must not look complete"
    with h5py.File(tmp_path / "out.h5.partial", "r") as f:
        assert int(f.attrs["n_done"]) == 5  # batches [img_0 img_1 img_1b] [img_2 img_3 img_4]
        assert len(f["skipped"]) == 2  # img_5b was reached before the kill; the re-run must not repeat it

    monkeypatch.setattr(morph.jobs.render_pairs.PairRenderer, "render", original)
    seen = []
    geometry = morph.jobs.render_pairs.PairRenderer.geometry
    monkeypatch.setattr(morph.jobs.render_pairs.PairRenderer, "geometry",
                        lambda self, ann, hw: seen.append(hw) or geometry(self, ann, hw))
    res = run("render-pairs", folder, "-o", out, "--model", "default", "--batch-size", 3)
    assert res.exit_code == 0, res.output
    assert len(seen) == 2  # only img_5 and img_6 were computed again
    assert not (tmp_path / "out.h5.partial").exists()
    a, b = read_pairs(ref), read_pairs(out)
    for k in DATASETS:
        assert np.array_equal(a[k], b[k]), k
    assert a["skipped"] == b["skipped"] and len(a["skipped"]) == 2
    # a different batch size gives the same pairs; a complete job is not redone
    assert run("render-pairs", folder, "-o", tmp_path / "bs1.h5", "--model", "default", "--batch-size", 1).exit_code == 0
    c = read_pairs(tmp_path / "bs1.h5")
    for k in DATASETS:
        assert np.array_equal(a[k], c[k]), k
    res = run("render-pairs", folder, "-o", out, "--model", "default", "--batch-size", 3)
    assert res.exit_code == 0 and "already complete" in res.output
