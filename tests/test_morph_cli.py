"""The morph commands as a user runs them: quickstart, determinism, resume, bad input."""
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli.morph import main


def run(*args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res


def sample(tmp_path, name, n, m, seed=0, first=0):
    out = tmp_path / name
    res = run("sample-identities", "--model", "default", "--n-identities", n, "--images-per-identity", m,
              "--seed", seed, "--first-identity", first, "-o", out)
    assert res.exit_code == 0, res.output
    return out


def images(path):
    with h5py.File(path, "r") as f:
        return f["images"][()], f["labels"][()]


def test_quickstart_writes_a_sheet_of_8_identities_by_6(tmp_path):
    ids = sample(tmp_path, "identities.h5", 8, 6)
    assert run("render", ids, "-o", tmp_path / "synthetic.h5").exit_code == 0
    res = run("preview", tmp_path / "synthetic.h5", "-o", tmp_path / "sheet.png")
    assert res.exit_code == 0, res.output
    sheet = np.asarray(Image.open(tmp_path / "sheet.png"))
    assert sheet.shape == (8 * 110 - 2, 6 * 110 - 2, 3)
    imgs, labels = images(tmp_path / "synthetic.h5")
    assert imgs.shape == (48, 108, 108, 3) and imgs.dtype == np.uint8
    assert np.array_equal(labels, np.repeat(np.arange(8), 6))
    # every image shows a face (foreground covers a good part of the frame) ...
    with h5py.File(tmp_path / "synthetic.h5", "r") as f:
        masks = f["masks"][()]
        assert f.attrs["complete"] and "sample-identities" not in f.attrs["command"]
        assert "priors" in f.attrs and f.attrs["model"] == "default" and int(f.attrs["seed"]) == 0
    assert np.all(masks.mean((1, 2)) > 0.25)
    # ... and different people differ more than images of one person: the chromaticity of the
    # face (colour with light strength divided out) follows the identity's skin, not the image
    rgb = np.stack([imgs[i][masks[i]].astype(float).mean(0) for i in range(48)])
    chroma = (rgb / rgb.sum(1, keepdims=True)).reshape(8, 6, 3)
    within = chroma.std(1).mean()
    between = chroma.mean(1).std(0).mean()
    assert between > within


def test_render_is_bit_identical_in_any_batch_size(tmp_path):
    ids = sample(tmp_path, "ids.h5", 10, 3, seed=7)
    outs = []
    for bs in (1, 7, 64):
        out = tmp_path / f"r{bs}.h5"
        res = run("render", ids, "-o", out, "--batch-size", bs)
        assert res.exit_code == 0, res.output
        outs.append(images(out)[0])
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])
    # identity 5 of a 10-identity run = identity 5 of a 1,000-identity run (coefficients) and
    # of a run that samples only identity 5 (images)
    big = sample(tmp_path, "big.h5", 1000, 3, seed=7)
    with h5py.File(ids, "r") as a, h5py.File(big, "r") as b:
        assert np.array_equal(a["identity/alpha"][5], b["identity/alpha"][5])
        assert np.array_equal(a["image/pose"][15:18], b["image/pose"][15:18])
    only5 = sample(tmp_path, "only5.h5", 1, 3, seed=7, first=5)
    assert run("render", only5, "-o", tmp_path / "only5_r.h5").exit_code == 0
    imgs5, labels5 = images(tmp_path / "only5_r.h5")
    assert np.array_equal(labels5, [5, 5, 5])
    assert np.array_equal(imgs5, outs[0][15:18])


def test_render_resumes_after_sigkill(tmp_path):
    ids = sample(tmp_path, "ids.h5", 30, 4)
    ref = tmp_path / "ref.h5"
    assert run("render", ids, "-o", ref, "--batch-size", 4).exit_code == 0
    out = tmp_path / "out.h5"
    cmd = [sys.executable, "-m", "cli.morph", "render", str(ids), "-o", str(out), "--batch-size", "4",
           "--threads", "1"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    buf = b""
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once a few batches are on disk
        chunk = os.read(proc.stderr.fileno(), 4096)
        if not chunk:
            break
        buf += chunk
        done = [int(x.split(b"/")[0].split()[-1]) for x in buf.split(b"\r") if b"/120" in x and b"|" in x]
        if done and max(done) >= 12:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "a killed render must not look complete"
    partial = tmp_path / "out.h5.partial"
    assert partial.exists()
    res = run("render", ids, "-o", out, "--batch-size", 4)
    assert res.exit_code == 0, res.output
    assert not partial.exists()
    a, la = images(ref)
    b, lb = images(out)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    # re-running a complete job does nothing
    res = run("render", ids, "-o", out)
    assert res.exit_code == 0 and "already complete" in res.output


@pytest.mark.parametrize("make, args, message", [
    (None, ["render", "missing.h5", "-o", "x.h5"], "missing.h5: no such identities file"),
    (lambda p: (p / "trunc.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100),
     ["render", "trunc.h5", "-o", "x.h5"], "cannot be read as HDF5"),
    (lambda p: h5py.File(p / "wrong.h5", "w").close(), ["render", "wrong.h5", "-o", "x.h5"],
     "not a identities file"),
    (None, ["sample-identities", "--model", "nope.mat", "--n-identities", "1", "--images-per-identity", "1",
            "-o", "x.h5"], "nope.mat"),
    (lambda p: (p / "pr.yaml").write_text("pose: {mean: [0,0,0], std: [1,-1,1]}\n"),
     ["sample-identities", "--priors", "pr.yaml", "--n-identities", "1", "--images-per-identity", "1",
      "-o", "x.h5"], "pr.yaml"),
    (None, ["sample-identities", "--n-identities", "1", "--images-per-identity", "1", "-o", "nodir/x.h5"],
     "does not exist"),
])
def test_bad_input_is_one_line_and_nonzero_exit(tmp_path, monkeypatch, make, args, message):
    monkeypatch.chdir(tmp_path)
    if make:
        make(tmp_path)
    res = run(*args)
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_command_line_entry_point_prints_no_traceback(tmp_path):
    p = subprocess.run(["morph", "render", str(tmp_path / "none.h5"), "-o", str(tmp_path / "x.h5")],
                       capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip().startswith("Error: ") and "Traceback" not in p.stderr


def _model_cases(p):
    import fixtures_formats as fx

    fx.write_bfm2009(p / "01_MorphableModel.mat")
    data = (p / "01_MorphableModel.mat").read_bytes()
    (p / "cut.mat").write_bytes(data[: len(data) // 2])
    fx.write_bfm2017(p / "model2017.h5")
    data = (p / "model2017.h5").read_bytes()
    (p / "cut.h5").write_bytes(data[: len(data) // 2])
    import scipy.io
    scipy.io.savemat(p / "wrongkeys.mat", {"shapeMean": np.zeros((3, 1))})
    fx.write_bfm2017(p / "other_topology.h5", tris=fx.other_diagonal())
    (p / "compose.yaml").write_text("shape: model2017.h5\nexpression: other_topology.h5\n")


@pytest.mark.parametrize("model, message", [
    ("cut.mat", "cut.mat"), ("cut.h5", "cut.h5"), ("wrongkeys.mat", "wrongkeys.mat"),
    ("compose.yaml", "other_topology.h5"), ("absent.h5", "absent.h5"),
])
def test_bad_model_files_are_one_clear_line(tmp_path, monkeypatch, model, message):
    monkeypatch.chdir(tmp_path)
    _model_cases(tmp_path)
    res = run("sample-identities", "--model", model, "--n-identities", "1", "--images-per-identity", "1",
              "-o", "x.h5")
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    if model == "compose.yaml":
        assert "model2017.h5" in res.output  # both files named


def test_mesh_export_and_extra_outputs(tmp_path):
    import trimesh

    ids = sample(tmp_path, "ids.h5", 2, 2)
    res = run("mesh", ids, "--image", 3, "-o", tmp_path / "face.ply")
    assert res.exit_code == 0, res.output
    mesh = trimesh.load(tmp_path / "face.ply", process=False)
    assert mesh.vertices.shape == (24591, 3) and mesh.faces.shape == (48836, 3)  # the default model's mesh
    assert mesh.visual.vertex_colors.shape[0] == 24591
    res = run("render", ids, "-o", tmp_path / "r.h5", "--with", "depth", "--with", "normals")
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "r.h5", "r") as f:
        depth, normals, masks = f["depth"][()], f["normals"][()], f["masks"][()]
    assert depth.shape == (4, 108, 108) and normals.shape == (4, 108, 108, 3)
    assert np.all(depth[masks] > 0) and np.all(depth[~masks] == 0)
    assert np.allclose(np.linalg.norm(normals[masks], axis=-1), 1, atol=1e-3)
