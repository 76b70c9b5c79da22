import numpy as np
import scipy.io
import torch
from click.testing import CliRunner

import fixtures_formats as fx  # noqa: E402
from cli.morph import main
from morph.jobs.fit_priors import fit_priors
from morph.w300lp import matrix_to_pose, phong_to_sh
from morph.model.priors import load_priors
from morph.render.camera import compute_rotation, rotation_300wlp
from morph.render.shading import sh_basis


def write_300wlp(folder, n, ke=4, seed=0):
    """Annotation files in 300W-LP's layout (the keys and shapes of e.g. AFW_134212_1_0.mat)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    truth = []
    for i in range(n):
        angles = rng.normal([0.0, 0.0, 0.0], [0.15, 0.5, 0.1])
        pose = np.concatenate([angles, [220.0, 230.0, 0.0, 0.0012]])[None]
        exp = rng.normal(0, 1, (ke, 1))
        illum = np.array([[0.5, 0.5, 0.5, 0.4, 0.4, 0.4, rng.normal(0, 0.3), rng.normal(0, 0.5), 0.1, 20.0]])
        scipy.io.savemat(folder / f"IMG_{i:04d}.mat", {
            "Pose_Para": pose.astype(np.float32), "Shape_Para": rng.normal(0, 1e4, (199, 1)).astype(np.float32),
            "Exp_Para": exp.astype(np.float32), "Tex_Para": rng.normal(0, 1, (199, 1)).astype(np.float32),
            "Color_Para": np.array([[1, 1, 1, 0, 0, 0, 1]], np.float32), "Illum_Para": illum.astype(np.float32),
            "pt2d": rng.uniform(0, 450, (2, 68)).astype(np.float32), "roi": np.array([[0, 0, 450, 450]], np.float32)})
        truth.append((angles, exp.ravel()))
    return truth


def test_matrix_to_pose_inverts_compute_rotation():
    rng = np.random.default_rng(1)
    pose = rng.uniform([-40, -80, -30], [40, 80, 30], (50, 3))
    assert np.allclose(matrix_to_pose(compute_rotation(pose)), pose, atol=1e-3)


def test_phong_to_sh_matches_the_lambertian_light():
    rot = np.eye(3)
    ambient_only = phong_to_sh([0.3, 0.4, 0.5, 0, 0, 0, 0, 0, 0, 1], rot)
    n = torch.randn(100, 3, dtype=torch.float64)
    n = n / n.norm(dim=1, keepdim=True)
    e = sh_basis(n).numpy() @ ambient_only
    assert np.allclose(e, [0.3, 0.4, 0.5], atol=1e-6)
    # a light from the subject's front-left-above: brightest normal points that way
    theta, phi = 0.4, 0.6
    sh = phong_to_sh([0.2, 0.2, 0.2, 0.8, 0.8, 0.8, theta, phi, 0, 1], rot)
    light = np.array([np.cos(theta) * np.sin(phi), np.sin(theta), np.cos(theta) * np.cos(phi)])
    e = sh_basis(n).numpy() @ sh
    brightest = n.numpy()[np.argmax(e[:, 0])]
    assert brightest @ light > 0.9
    exact = 0.2 + 0.8 * np.clip(n.numpy() @ light, 0, None)
    assert np.abs(e[:, 0] - exact).mean() < 0.05  # order-2 SH approximates the clamped cosine


def test_fit_priors_from_300wlp_layout(tmp_path):
    truth = write_300wlp(tmp_path / "ann", 60)
    expr = tmp_path / "Model_Expression.mat"
    raw = fx.write_model_expression(expr, ke=4)
    out = tmp_path / "fitted.yaml"
    r = fit_priors(tmp_path / "ann", out, expression_model=expr)
    assert r["n_used"] == 60 and r["n_expression"] == 60 and r["n_lighting"] == 60
    p = load_priors(out)
    ours = np.stack([matrix_to_pose(rotation_300wlp(np.r_[a, 0, 0, 0, 1][None]))[0] for a, _ in truth])
    assert np.allclose(p["pose"].mean, ours.mean(0), atol=1e-3)
    assert np.allclose(p["pose"].chol @ p["pose"].chol.T, np.cov(ours.T), rtol=1e-3, atol=1e-3)
    # yaw spread of the fixture (0.5 rad) survives the change of convention
    assert 20 < np.sqrt(np.cov(ours.T)[1, 1]) < 40
    exps = np.stack([e for _, e in truth]) / raw["sigma_exp"].ravel()
    assert np.allclose(p["expression"].mean, exps.mean(0), atol=1e-4)
    assert p["sh"].mean.shape == (27,)


def test_fit_priors_cli_skips_bad_files_and_fails_on_empty(tmp_path):
    write_300wlp(tmp_path / "ann", 5)
    scipy.io.savemat(tmp_path / "ann" / "broken.mat", {"Shape_Para": np.zeros((199, 1))})
    (tmp_path / "ann" / "truncated.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 10)
    res = CliRunner().invoke(main, ["fit-priors", str(tmp_path / "ann"), "-o", str(tmp_path / "p.yaml")])
    assert res.exit_code == 0, res.output
    assert "broken.mat: has no Pose_Para" in res.output
    assert "truncated.mat" in res.output
    assert "fitted to 5 of 7" in res.output
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(main, ["fit-priors", str(tmp_path / "empty"), "-o", str(tmp_path / "q.yaml")])
    assert res.exit_code == 2 and "holds no .mat" in res.output and "Traceback" not in res.output


def test_fit_priors_from_fits_measures_the_users_photos(tmp_path):
    """``morph fit-priors fits.h5``: pose, expression and lighting are the mean and covariance of the
    fits (the worst 5% by landmark error left out), the expression in the fitted model's basis, the
    lighting that of the photometric fit; fits made without it keep the base priors' lighting.
    ``morph sample-identities`` then draws from them. Mutants caught: the default pose kept, the
    worst fit kept in, the covariance of another set, the fitted light ignored (or taken from fits
    that did not measure it)."""
    import h5py
    import yaml

    from conftest import TESTDATA

    def run(*args):
        return CliRunner().invoke(main, [str(a) for a in args])

    assert run("fit", TESTDATA / "real", "-o", tmp_path / "fits.h5").exit_code == 0
    res = run("fit-priors", tmp_path / "fits.h5", "-o", tmp_path / "p.yaml")
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "fits.h5", "r") as f:
        pose, beta, error = f["image/pose"][()], f["image/beta"][()], f["landmark_error"][()]
        sh = f["image/sh"][()].reshape(-1, 27)
    keep = error < error.max()  # 6 faces: the 95th percentile leaves out the worst one
    doc = yaml.safe_load((tmp_path / "p.yaml").read_text())
    np.testing.assert_allclose(doc["pose"]["mean"], pose[keep].mean(0), rtol=1e-5)
    np.testing.assert_allclose(doc["pose"]["cov"], np.cov(pose[keep].T.astype(np.float64)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(doc["expression"]["mean"], beta[keep].mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(doc["sh"]["mean"], sh[keep].mean(0), rtol=1e-4, atol=1e-6)
    default = load_priors(None)
    assert not np.allclose(doc["sh"]["mean"], default.groups["sh"].mean, atol=1e-3)
    import shutil

    shutil.copy(tmp_path / "fits.h5", tmp_path / "landmarks_only.h5")
    with h5py.File(tmp_path / "landmarks_only.h5", "r+") as f:
        f.attrs["photometric"] = False  # as 'morph fit --no-photometric' writes it
    assert run("fit-priors", tmp_path / "landmarks_only.h5", "-o", tmp_path / "q.yaml").exit_code == 0
    assert yaml.safe_load((tmp_path / "q.yaml").read_text())["sh"]["mean"] == default.groups["sh"].mean.tolist()
    assert len(doc["expression"]["mean"]) == beta.shape[1]
    res = run("sample-identities", "--priors", tmp_path / "p.yaml", "--n-identities", 2, "--images-per-identity", 50,
              "-o", tmp_path / "ids.h5")
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "ids.h5", "r") as f:
        drawn = f["image/pose"][()]
    # 100 draws: their mean within 4 standard errors of the fitted one
    se = np.sqrt(np.diag(doc["pose"]["cov"]) / len(drawn))
    assert np.all(np.abs(drawn.mean(0) - doc["pose"]["mean"]) < 4 * se + 1e-6)


def test_fit_priors_refuses_an_unfinished_or_foreign_h5(tmp_path):
    import h5py

    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["images"] = np.zeros((1, 8, 8, 3), np.uint8)
        f.attrs["complete"] = True
    res = CliRunner().invoke(main, ["fit-priors", str(tmp_path / "x.h5"), "-o", str(tmp_path / "p.yaml")])
    assert res.exit_code == 2 and "written by 'morph fit'" in res.output, res.output
    with h5py.File(tmp_path / "x.h5", "a") as f:
        f.attrs["complete"] = False
    res = CliRunner().invoke(main, ["fit-priors", str(tmp_path / "x.h5"), "-o", str(tmp_path / "p.yaml")])
    assert res.exit_code == 2 and "not complete" in res.output, res.output
