"""refine export-dataset on a tiny checkpoint: formats, bit-exact resume, torchrun, filtering, bad input.

The checkpoint comes from a few training steps with narrow networks (as tests/test_train.py does)
on renders of the default model (seed 0, identities 0..5); real.h5 and pairs.h5 are made from the
same renders in their exact layouts, which is all a short run needs. Exports use seed 1.

Byte-for-byte comparisons are made only where the export promises them: the same machine, the
same network batch and the same threads per process (``SAME``); across batch sizes, batch
positions and thread counts the networks' results are compared within a stated tolerance.
"""
import errno
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli.morph import main as morph
from cli.refine import main as refine

ROOT = Path(__file__).resolve().parents[1]
N, M = 5, 4
SMALL = "g_width: 8\nd_hidden: 16\nlog_every: 1\ngrid_every: 100\n"
THREADS = 2
SAME = ("--batch-size", 8, "--threads", THREADS)  # network batch 8 (2 identities of M = 4 per chunk)


def run(group, *args):
    return CliRunner().invoke(group, [str(a) for a in args])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("export_sets")
    assert run(morph, "sample-identities", "--n-identities", 6, "--images-per-identity", 4, "--seed", 0,
               "-o", d / "ids.h5").exit_code == 0
    assert run(morph, "render", d / "ids.h5", "-o", d / "synthetic.h5").exit_code == 0
    with h5py.File(d / "synthetic.h5", "r") as f:
        renders = f["images"][()]
    with h5py.File(d / "real.h5", "w") as f:
        f["images"] = renders[:, :, ::-1]  # stand-in "photos": mirrored renders
        f.attrs["complete"] = True
    with h5py.File(d / "pairs.h5", "w") as f:
        f["render"], f["real"] = renders[:8], renders[:8, :, ::-1]
        f.attrs["complete"] = True
    (d / "small.yaml").write_text(SMALL)
    res = run(refine, "train", "--synthetic", d / "synthetic.h5", "--real", d / "real.h5", "--pairs",
              d / "pairs.h5", "--out", d / "run", "--steps", 4, "--batch-size", 2, "--checkpoint-every", 4,
              "--config", d / "small.yaml")
    assert res.exit_code == 0, res.output
    path = d / "run" / "checkpoints" / "step_00000004.pt"
    state = torch.load(path, weights_only=True)
    assert state["train_seed"] == 0 and state["train_model"] == "default"
    assert state["train_model_files"] == {"shape": "ict_default_model.h5", "texture": "ict_default_model.h5",
                                          "expression": "ict_default_model.h5"}  # what "default" meant then
    return path


def export_args(ckpt, out, *extra, n=N, m=M, seed=1):
    return ["export-dataset", "--checkpoint", ckpt, "--n-identities", n, "--images-per-identity", m,
            "--seed", seed, "--out", out, *extra]


def tree(out: Path) -> dict[str, bytes]:
    """Every file of an export except the manifest (it records time and command), by relative path."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


@pytest.fixture(scope="module")
def reference(ckpt, tmp_path_factory):
    """One uninterrupted single-process export of each format (network batch 8, 2 threads)."""
    d = tmp_path_factory.mktemp("reference")
    for fmt in ("imagefolder", "hdf5"):
        res = run(refine, *export_args(ckpt, d / fmt, "--format", fmt, *SAME))
        assert res.exit_code == 0, res.output
    return d


# ------------------------------------------------------------------------------ (1) formats --

def test_imagefolder_loads_in_torchvision_with_scores_and_manifest(reference):
    from torchvision.datasets import ImageFolder

    out = reference / "imagefolder"
    ds = ImageFolder(str(out))
    assert len(ds.classes) == N and len(ds) == N * M
    assert ds.classes == [f"{i:05d}" for i in range(N)]
    img, label = ds[M + 1]
    assert img.size == (108, 108) and label == 1
    lines = (out / "scores.csv").read_text().splitlines()
    assert lines[0] == "identity,image,draw,path,dr_error,cycle_error,identity_loss,retries,flagged"
    rows = [r.split(",") for r in lines[1:]]
    assert len(rows) == N * M
    assert [(int(r[0]), int(r[1])) for r in rows] == [(i, j) for i in range(N) for j in range(M)]
    for r in rows:
        assert (out / r[3]).is_file() and int(r[2]) == int(r[1]) and r[7:] == ["0", "0"]
        assert all(float(v) >= 0 for v in r[4:7])
    man = json.loads((out / "manifest.json").read_text())
    assert man["complete"] and man["seed"] == 1 and man["n_images"] == N * M and man["format"] == "imagefolder"
    assert len(man["checkpoint"]["sha256"]) == 64 and man["checkpoint"]["train_seed"] == 0
    assert "shape" in man["priors"] and man["model"] == "default" and "torch" in man["versions"]
    assert set(man["scores"]["columns"]) >= {"dr_error", "cycle_error", "identity_loss"}
    assert not (out / ".export").exists()


def test_hdf5_holds_every_parameter_and_the_ema_generators_output(reference, ckpt):
    from morph.formats.named import load_model
    from morph.model.priors import load_priors
    from morph.render import RenderSettings, render_batch
    from morph.render.output import to_uint8 as render_uint8
    from morph.model.sample import sample_block
    from refine.images import to_tensor, to_uint8
    from refine.gan.nets import Generator

    out = reference / "hdf5"
    assert sorted(p.name for p in out.iterdir()) == ["DATACARD.md", "datacard.json", "ganfaces.h5", "manifest.json", "scores.csv"]
    model, priors = load_model("default"), load_priors(None)
    s = sample_block(model, priors, 1, range(N), M)
    with h5py.File(out / "ganfaces.h5", "r") as f:
        assert f.attrs["complete"] and int(f.attrs["seed"]) == 1
        images = f["images"][()]
        assert images.shape == (N * M, 108, 108, 3) and images.dtype == np.uint8
        np.testing.assert_array_equal(f["labels"][()], s.identity)
        np.testing.assert_array_equal(f["index"][()], s.image)
        np.testing.assert_array_equal(f["draw"][()], s.image)
        for k in ("beta", "pose", "sh", "camera_distance"):
            np.testing.assert_array_equal(f[f"params/{k}"][()], getattr(s, k))
        np.testing.assert_array_equal(f["params/alpha"][()], s.alpha[s.identity])
        np.testing.assert_array_equal(f["params/gamma"][()], s.gamma[s.identity])
        assert f["landmarks"].shape == (N * M, 68, 2) and f["masks"].shape == (N * M, 108, 108)
        dr = f["scores/dr_error"][()]
    # the images are G_ema of the 8-bit renders with dropout seeded per (seed, identity, draw), and
    # the two formats hold the same images
    from refine.export.options import noise_seed

    state = torch.load(ckpt, weights_only=True)
    g = Generator(skips=True, dropout=0.1, norm=state["config"]["norm"], width=state["config"]["g_width"])
    g.load_state_dict(state["nets"]["ema"])
    r = render_batch(model, {k: v[:8] for k, v in s.render_params().items()}, RenderSettings(image_size=108))
    seeds = [noise_seed(1, int(i), int(j)) for i, j in zip(s.identity[:8], s.image[:8])]
    with torch.inference_mode():
        x = to_tensor(render_uint8(r.image.numpy()))
        mine = to_uint8(g.eval()(x, seeds))
        assert np.abs(to_uint8(g(x)).astype(int) - images[:8]).max() > 1  # (without the noise: other images)
    # (the export runs the nets in channels-last layout: float rounding may move a value by one level)
    assert np.abs(mine.astype(int) - images[:8]).max() <= 1 and (mine == images[:8]).mean() > 0.999
    from PIL import Image
    jpg = np.asarray(Image.open(reference / "imagefolder" / "00001" / "0002.jpg"))
    assert np.abs(jpg.astype(float) - images[M + 2]).mean() < 3
    csv = [r.split(",") for r in (out / "scores.csv").read_text().splitlines()[1:]]
    assert [r[3] for r in csv[:2]] == ["ganfaces.h5#images/0", "ganfaces.h5#images/1"]
    np.testing.assert_allclose([float(r[4]) for r in csv], dr, atol=1e-6)
    ic = [r.split(",") for r in (reference / "imagefolder" / "scores.csv").read_text().splitlines()[1:]]
    assert [r[4:] for r in ic] == [r[4:] for r in csv]  # same scores whatever the format


def test_no_dropout_refines_with_the_plain_moving_average(ckpt, tmp_path):
    from morph.formats.named import load_model
    from morph.model.priors import load_priors
    from morph.render import RenderSettings, render_batch
    from morph.render.output import to_uint8 as render_uint8
    from morph.model.sample import sample_block
    from refine.images import to_tensor, to_uint8
    from refine.gan.nets import build_nets

    res = run(refine, *export_args(ckpt, tmp_path / "plain", "--format", "hdf5", "--no-dropout", "--no-scores",
                                   n=1, m=3))
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "plain" / "ganfaces.h5", "r") as f:
        images = f["images"][()]
    state = torch.load(ckpt, weights_only=True)
    g = build_nets(state["config"])["ema"]
    g.load_state_dict(state["nets"]["ema"])
    model = load_model("default")
    s = sample_block(model, load_priors(None), 1, range(1), 3)
    x = to_tensor(render_uint8(render_batch(model, s.render_params(), RenderSettings(image_size=108)).image.numpy()))
    with torch.inference_mode():
        assert np.abs(to_uint8(g.eval()(x)).astype(int) - images).max() <= 1
    settings = json.loads((tmp_path / "plain" / "manifest.json").read_text())["settings"]
    assert settings["dropout"] is False
    assert "onednn_graph" not in settings  # (float32 G alone runs op by op: its job key stays as it was)


def test_fused_networks_are_recorded_and_an_export_computed_op_by_op_does_not_resume(ckpt, reference, tmp_path):
    """A scored export on a CPU runs its scoring networks fused (``refine.export.onednn_graph``), which
    round otherwise than op by op: the manifest records it, and an export that was computed op by
    op (this toolkit before fusion; simulated by its manifest without the key) is refused rather
    than finished with differently rounded scores."""
    import shutil

    from refine.export import onednn_graph

    settings = json.loads((reference / "hdf5" / "manifest.json").read_text())["settings"]
    assert settings.get("onednn_graph", False) is onednn_graph.available("cpu")
    if not onednn_graph.available("cpu"):
        return
    old = tmp_path / "old"
    shutil.copytree(reference / "hdf5", old)
    m = json.loads((old / "manifest.json").read_text())
    del m["settings"]["onednn_graph"]
    m["complete"] = False
    (old / "manifest.json").write_text(json.dumps(m))
    res = run(refine, *export_args(ckpt, old, "--format", "hdf5", *SAME))
    assert res.exit_code != 0 and "different onednn_graph" in res.output


def test_refiner_is_bit_identical_on_one_machine_and_close_across_batches_and_threads(ckpt, reference):
    """The same batch size, position and threads give every bit of G(x) and of the scores again;
    other batch sizes, positions and thread counts (other oneDNN/MKL kernels) stay within the
    tolerance the README states: at most one 8-bit level in a pixel, 1e-5 in a score or an
    embedding component."""
    from refine.export.refiner import Refiner

    state = torch.load(ckpt, weights_only=True)
    with h5py.File(ckpt.parent.parent.parent / "synthetic.h5", "r") as f:
        renders = f["images"][()][:21]
    results = []
    threads = torch.get_num_threads()
    try:
        for batch, nthreads, shift in ((16, threads, 0), (16, threads, 0), (8, threads, 3), (24, 1, 5), (8, 1, 0)):
            torch.set_num_threads(nthreads)
            ref = Refiner(state, ckpt, state["config"], "cpu", batch, True, 108)
            order = np.roll(np.arange(len(renders)), shift)
            out = ref.run(renders[order])
            back = np.argsort(order)
            results.append({k: out[k][back] for k in ("image", "dr_error", "cycle_error", "embedding")})
    finally:
        torch.set_num_threads(threads)
    for k, v in results[0].items():
        np.testing.assert_array_equal(results[1][k], v, err_msg=k)
    for other in results[2:]:
        diff = np.abs(other["image"].astype(int) - results[0]["image"])
        assert diff.max() <= 1 and (diff == 0).mean() > 0.999
        for k in ("dr_error", "cycle_error", "embedding"):
            np.testing.assert_allclose(other[k], results[0][k], rtol=0, atol=1e-5, err_msg=k)
    assert not np.array_equal(results[0]["image"], renders)  # (G changed the renders)


REFINE_SCRIPT = """
import sys, h5py, numpy as np, torch
from refine.export.refiner import Refiner
ckpt, renders, out = sys.argv[1:4]
state = torch.load(ckpt, weights_only=True)
with h5py.File(renders, "r") as f:
    x = f["images"][()][:21]
refiner = Refiner(state, ckpt, state["config"], "cpu", 16, True, 108)
r = refiner.run(x)
np.savez(out, score_dtype=str(refiner.score_dtype), **{k: r[k] for k in ("image", "dr_error", "cycle_error",
                                                                          "embedding")})
"""


def test_refiner_under_avx2_kernels_is_within_the_same_tolerance(ckpt, tmp_path):
    """Another instruction set (this CPU held to its AVX2 code) moves G(x) and the embeddings by no
    more than other batch shapes do, and D_R's and G''s scores by no more than bfloat16 scoring
    does (held to AVX2, they run in float32: oneDNN would emulate bf16)."""
    from morph.base.numerics import AVX2_ENVIRONMENT
    from refine.export.refiner import Refiner

    state = torch.load(ckpt, weights_only=True)
    synthetic = ckpt.parent.parent.parent / "synthetic.h5"
    with h5py.File(synthetic, "r") as f:
        mine = Refiner(state, ckpt, state["config"], "cpu", 16, True, 108).run(f["images"][()][:21])
    env = dict(_env(), **AVX2_ENVIRONMENT)
    subprocess.run([sys.executable, "-c", REFINE_SCRIPT, str(ckpt), str(synthetic), str(tmp_path / "avx2.npz")],
                   cwd=ROOT, env=env, check=True, timeout=300)
    with np.load(tmp_path / "avx2.npz") as other:
        assert str(other["score_dtype"]) == "torch.float32"
        diff = np.abs(other["image"].astype(int) - mine["image"])
        assert diff.max() <= 1 and (diff == 0).mean() > 0.999
        np.testing.assert_allclose(other["embedding"], mine["embedding"], rtol=0, atol=1e-5)
        for k in ("dr_error", "cycle_error"):
            np.testing.assert_allclose(other[k], mine[k], rtol=0, atol=SCORE_ATOL, err_msg=k)


#: bfloat16 D_R and G' against float32 (``refine.export.refiner``; README, Reproducibility)
SCORE_ATOL = 1e-4
REFINE_LEVELS = 4  # --precision bf16 against float32, per 8-bit pixel (README, Reproducibility)
REFINE_SCORE_ATOL = {"dr_error": 1e-3, "cycle_error": 1e-3, "identity_loss": 1e-2}  # its scores, the same


def test_bf16_scores_are_within_the_stated_tolerance_of_float32(ckpt):
    """The export's scoring precision (``score_dtype``: bfloat16 D_R and G' on a CPU with bf16 units)
    against float32 scoring of the same batches: the images and C's embeddings (float32 both ways)
    are the same bits, dr_error and cycle_error within ``SCORE_ATOL``. Catches G or C run in
    bfloat16 (images, embeddings change) and a score computed in bfloat16 or on the wrong image."""
    from refine.export.refiner import Refiner, score_dtype

    state = torch.load(ckpt, weights_only=True)
    with h5py.File(ckpt.parent.parent.parent / "synthetic.h5", "r") as f:
        renders = f["images"][()][:21]
    mine = Refiner(state, ckpt, state["config"], "cpu", 16, True, 108).run(renders)
    f32 = Refiner(state, ckpt, state["config"], "cpu", 16, True, 108, precision=torch.float32).run(renders)
    np.testing.assert_array_equal(mine["image"], f32["image"])
    np.testing.assert_array_equal(mine["embedding"], f32["embedding"])
    for k in ("dr_error", "cycle_error"):
        np.testing.assert_allclose(mine[k], f32[k], rtol=0, atol=SCORE_ATOL, err_msg=k)
    if score_dtype("cpu") == torch.bfloat16:  # (else there is nothing to tell apart)
        assert not np.array_equal(mine["dr_error"], f32["dr_error"])


def test_bf16_refining_is_within_the_stated_levels_recorded_and_refused_where_slow(ckpt, reference, tmp_path):
    """``--precision bf16`` runs G in bfloat16 where the machine has bf16 units: every pixel within
    REFINE_LEVELS of the float32 export's (not all equal: G did change precision), its images'
    scores within REFINE_SCORE_ATOL of the float32 export's (the README's stated tolerance),
    recorded in the manifest, and a float32 export does not resume as a bf16 one. Without bf16
    units (an AVX2 CPU, or this one held to AVX2) it is refused with one sentence."""
    from refine.export.refiner import cpu_bf16_units

    out = tmp_path / "bf16"
    res = run(refine, *export_args(ckpt, out, "--format", "hdf5", "--precision", "bf16", *SAME))
    if not cpu_bf16_units():
        assert res.exit_code != 0 and "has no bf16 units" in res.output and "--precision float32" in res.output
        return
    assert res.exit_code == 0, res.output
    with h5py.File(out / "ganfaces.h5", "r") as a, h5py.File(reference / "hdf5" / "ganfaces.h5", "r") as b:
        diff = np.abs(a["images"][()].astype(np.int16) - b["images"][()])
        for k, atol in REFINE_SCORE_ATOL.items():  # (each export scores its own images)
            np.testing.assert_allclose(a[f"scores/{k}"][()], b[f"scores/{k}"][()], rtol=0, atol=atol, err_msg=k)
    assert diff.max() <= REFINE_LEVELS and diff.any(), (diff.max(), diff.mean())
    assert json.loads((out / "manifest.json").read_text())["settings"]["refine_precision"] == "bfloat16"
    again = run(refine, *export_args(ckpt, reference / "hdf5", "--format", "hdf5", "--precision", "bf16", *SAME))
    assert again.exit_code != 0 and "different refine_precision" in again.output


# --------------------------------------------------------------------------- (2) kill/resume --

def _difference(got: dict[str, bytes], want: dict[str, bytes]) -> str:
    """Which files differ and how: JPEGs by their largest pixel difference, text by its lines."""
    notes = [f"missing {sorted(set(want) - set(got))}, extra {sorted(set(got) - set(want))}"]
    for k in sorted(set(got) & set(want)):
        if got[k] == want[k]:
            continue
        if k.endswith(".jpg"):
            a, b = (np.asarray(Image.open(io.BytesIO(x)), np.int16) for x in (got[k], want[k]))
            notes.append(f"{k}: max {int(np.abs(a - b).max())} levels")
        else:
            lines = [(x, y) for x, y in zip(got[k].decode().splitlines(), want[k].decode().splitlines()) if x != y]
            notes.append(f"{k}: {lines[:6]}")
    return "; ".join(notes)


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_WAIT_POLICY="PASSIVE")


def test_sigkill_then_resume_gives_the_uninterrupted_bytes(ckpt, reference, tmp_path):
    out = tmp_path / "killed"
    args = [str(a) for a in export_args(ckpt, out, *SAME)]  # 2 identities per chunk
    proc = subprocess.Popen([sys.executable, "-m", "cli.refine", *args], cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list(out.glob("0000?")):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in out.glob("0000?"))
    assert done and not (out / "scores.csv").exists(), "the export finished before the kill"
    for name in done:  # whatever the kill hit, a visible identity folder is whole
        assert len(list((out / name).iterdir())) == M
    killed = {p.name: p.read_text() for p in (out / ".export").glob("progress-*.jsonl")}
    res = run(refine, *args)
    assert res.exit_code == 0, res.output
    got, want = tree(out), tree(reference / "imagefolder")
    assert got == want, (f"after a kill that left {done} and progress {killed}: "
                         + _difference(got, want))
    assert not (out / ".export").exists()
    # complete: nothing to do, nothing changes - but what a kill right after completing can leave
    # (work state that ImageFolder would take for a class, a temporary file) is cleaned up
    (out / ".export" / "tmp").mkdir(parents=True)
    (out / "scores.csv.partial").write_text("x")
    again = run(refine, *args)
    assert again.exit_code == 0 and "already complete" in again.output
    assert tree(out) == tree(reference / "imagefolder")
    assert sorted(p.name for p in out.iterdir() if not p.is_dir()) == ["DATACARD.md", "datacard.json", "manifest.json", "scores.csv"]


# ------------------------------------------------------------------------------ (3) torchrun --

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_write_the_same_bytes_as_one(ckpt, tmp_path):
    """Two ranks of one thread each write what one process of one thread writes (rank 0 takes
    chunk 0, rank 1 chunks 1 and 2 of identities {0, 1}, {2, 3}, {4})."""
    one = tmp_path / "one"
    res = run(refine, *export_args(ckpt, one, "--batch-size", 8, "--threads", 1))
    assert res.exit_code == 0, res.output
    out = tmp_path / "ddp"
    args = [str(a) for a in export_args(ckpt, out, "--batch-size", 8)]
    env = dict(_env(), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(_free_port()), "-m", "cli.refine", *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    assert tree(out) == tree(one)
    man = json.loads((out / "manifest.json").read_text())
    assert man["complete"] and man["numerics"]["processes"] == 2 and man["numerics"]["torch_threads"] == 1


# ----------------------------------------------------------------------------- filtering --

def test_filter_redraws_from_the_identitys_next_images(ckpt, reference, tmp_path):
    from morph.formats.named import load_model
    from morph.model.priors import load_priors
    from morph.model.sample import sample_image

    with h5py.File(reference / "hdf5" / "ganfaces.h5", "r") as f:
        dr0 = f["scores/dr_error"][()]
    limit = float(np.median(dr0))
    out = tmp_path / "filtered"
    res = run(refine, *export_args(ckpt, out, "--format", "hdf5", "--max-dr-error", limit, "--max-retries", 2,
                                     *SAME))
    assert res.exit_code == 0, res.output
    rows = [r.split(",") for r in (out / "scores.csv").read_text().splitlines()[1:]]
    with h5py.File(out / "ganfaces.h5", "r") as f:
        draw, dr, flagged = f["draw"][()], f["scores/dr_error"][()], f["scores/flagged"][()]
        retries, pose, labels = f["scores/retries"][()], f["params/pose"][()], f["labels"][()]
    assert (dr0 > limit).any() and (draw >= M).any()
    keep = dr0 <= limit
    np.testing.assert_array_equal(draw[keep], np.tile(np.arange(M), N)[keep])  # passing first draws stay
    assert np.all((dr <= limit) | flagged)
    assert np.all(retries[flagged] == 2)
    for r, fl in zip(rows, flagged):
        assert r[8] == str(int(fl))
    # re-draws take the identity's next image numbers M, M+1, ... of its own seed stream
    model, priors = load_model("default"), load_priors(None)
    for k in np.flatnonzero(draw >= M):
        np.testing.assert_array_equal(pose[k], sample_image(model, priors, 1, int(labels[k]), int(draw[k]))["pose"])
    for i in range(N):
        d = draw[labels == i]
        assert len(set(d)) == M and set(d[d >= M]) <= set(range(M, M + M * 2))


# ----------------------------------------------------------------------------- (4) bad input --

def test_export_with_another_model_than_training_says_so(ckpt, tmp_path):
    """The note names both models' files, not just the words given: 'default' meant the menpo3d
    model's file before the ICT default."""
    res = run(refine, *export_args(ckpt, tmp_path / "other", "--model", "menpo3d", "--no-scores", n=1, m=1))
    assert res.exit_code == 0, res.output
    note = next(line for line in res.output.splitlines() if line.startswith("note:"))
    assert "'default'" in note and "ict_default_model.h5" in note and "'default_model.h5'" in note
    state = torch.load(ckpt, weights_only=True)
    state["train_model_files"] = {"shape": "default_model.h5"}  # a checkpoint of the old default
    old = tmp_path / "old.pt"
    torch.save(state, old)
    res = run(refine, *export_args(old, tmp_path / "same_word", "--no-scores", n=1, m=1))
    assert res.exit_code == 0 and "note:" in res.output and "'default_model.h5'" in res.output


def test_training_identities_are_refused_with_the_fix(ckpt, tmp_path):
    res = run(refine, *export_args(ckpt, tmp_path / "x", seed=0))
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "identities 0..5 of seed 0" in res.output and "--seed" in res.output
    assert "--first-identity 6" in res.output
    assert not (tmp_path / "x").exists()
    res = run(refine, *export_args(ckpt, tmp_path / "y", "--first-identity", 6, seed=0, n=1, m=1))
    assert res.exit_code == 0, res.output


def test_checkpoint_whose_nets_do_not_match_its_config_is_refused(ckpt, tmp_path):
    state = torch.load(ckpt, weights_only=True)
    state["config"]["image_size"] = 64
    torch.save(state, tmp_path / "c64.pt")
    res = run(refine, *export_args(tmp_path / "c64.pt", tmp_path / "x"))
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "'D_R' network does not match its own config" in res.output
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    res = run(refine, *export_args(tmp_path / "junk.pt", tmp_path / "x"))
    assert res.exit_code == 2 and "not a readable checkpoint" in res.output
    assert not (tmp_path / "x").exists()


def test_folder_of_another_export_or_other_files_is_refused(ckpt, reference, tmp_path):
    before = tree(reference / "imagefolder")
    res = run(refine, *export_args(ckpt, reference / "imagefolder", *SAME, seed=2))
    assert res.exit_code == 2 and "holds another export (different seed)" in res.output
    res = run(refine, *export_args(ckpt, reference / "imagefolder", "--format", "hdf5", "--quality", 80, *SAME))
    assert res.exit_code == 2 and "holds another export (different file_type, format, jpeg_quality)" in res.output
    # a complete export is complete whatever the batch size; an unfinished one resumes only with
    # its own network batch (another would compute the rest with other low bits)
    res = run(refine, *export_args(ckpt, reference / "imagefolder", "--batch-size", 16))
    assert res.exit_code == 0 and "already complete" in res.output
    assert tree(reference / "imagefolder") == before
    part = tmp_path / "part"
    res = run(refine, *export_args(ckpt, part, *SAME, n=1))
    assert res.exit_code == 0, res.output
    man = json.loads((part / "manifest.json").read_text())
    (part / "manifest.json").write_text(json.dumps({**man, "complete": False}))
    res = run(refine, *export_args(ckpt, part, "--batch-size", 9, n=1))
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "network batches of 8 images (--batch-size 1..8); resume with such a --batch-size" in res.output
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    res = run(refine, *export_args(ckpt, tmp_path / "mine"))
    assert res.exit_code == 2 and "not empty and holds no export" in res.output


@pytest.mark.parametrize("fmt", ["imagefolder", "hdf5"])
def test_full_disk_stops_with_one_line_and_resumes(ckpt, reference, tmp_path, monkeypatch, fmt):
    import refine.export.exporter as E
    import refine.export.sinks as S

    real_write = E.Exporter.write_identity
    calls = {"n": 0}

    def write_then_fill_disk(self, i, final):
        calls["n"] += 1
        if calls["n"] == 3:  # the third identity hits a full disk half-way through its files
            raise_at = {"n": 0}
            real_encode, real_savez = S.encode_image, np.savez_compressed

            def failing(*a, **k):
                raise_at["n"] += 1
                if raise_at["n"] >= 2 or fmt == "hdf5":
                    raise OSError(errno.ENOSPC, "No space left on device")
                return real_encode(*a, **k)
            monkeypatch.setattr(S, "encode_image", failing)
            monkeypatch.setattr(np, "savez_compressed", failing)
            try:
                return real_write(self, i, final)
            finally:
                monkeypatch.setattr(S, "encode_image", real_encode)
                monkeypatch.setattr(np, "savez_compressed", real_savez)
        return real_write(self, i, final)

    monkeypatch.setattr(E.Exporter, "write_identity", write_then_fill_disk)
    out = tmp_path / "full"
    args = export_args(ckpt, out, "--format", fmt, *SAME)
    res = run(refine, *args)
    assert res.exit_code == 2 and "Traceback" not in res.output
    err = res.output.split("Error: ")[1:]  # (the progress bar may share its line)
    assert len(err) == 1 and err[0].startswith("disk full while writing ")
    assert err[0].splitlines()[0].endswith("; free space and re-run to resume.")
    progress = list((out / ".export").glob("progress-*.jsonl"))
    assert len(progress) == 1 and len(progress[0].read_text().splitlines()) == 2  # the completed part is kept
    assert not (out / "scores.csv").exists()
    monkeypatch.setattr(E.Exporter, "write_identity", real_write)
    res = run(refine, *args)
    assert res.exit_code == 0, res.output
    if fmt == "imagefolder":
        assert tree(out) == tree(reference / fmt)
    else:
        with h5py.File(out / "ganfaces.h5", "r") as a, h5py.File(reference / fmt / "ganfaces.h5", "r") as b:
            for k in ("images", "labels", "index", "draw", "params/alpha", "params/pose", "scores/dr_error"):
                np.testing.assert_array_equal(a[k][()], b[k][()], err_msg=k)
        assert (out / "scores.csv").read_bytes() == (reference / fmt / "scores.csv").read_bytes()


def test_a_real_file_size_limit_stops_with_one_line_and_resumes(ckpt, reference, tmp_path):
    """The kernel's file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored so writes fail with EFBIG) stands
    in for a full disk: one clear line, a non-zero exit, and the completed part resumes."""
    import resource

    out = tmp_path / "limited"
    args = [str(a) for a in export_args(ckpt, out, "--batch-size", 4, "--threads", THREADS)]  # network batch 8
    limit = 2500  # bytes per file: a 108x108 JPEG of these faces is larger, manifest and progress are not

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    p = subprocess.run([sys.executable, "-m", "cli.refine", *args], cwd=ROOT, env=_env(), preexec_fn=limited,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode != 0
    assert "disk full while writing" in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]
    res = run(refine, *args)
    assert res.exit_code == 0, res.output
    assert tree(out) == tree(reference / "imagefolder")


def test_cpu_bf16_units_ask_for_bf16_instructions(monkeypatch):
    """AVX-512 alone (Skylake, Ice Lake) is not bf16 units: ATen's mkldnn check passes there, but
    oneDNN emulates bf16, slower than float32, so scoring and ``bench/learn.py --amp auto`` must
    stay in float32. Mutants caught: the AVX512-BF16 / AMX check dropped, or its ``or`` made ``and``."""
    from refine.export import refiner

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    for avx512_bf16, amx, want in ((False, False, False), (True, False, True), (False, True, True)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert refiner.cpu_bf16_units() is want, (avx512_bf16, amx)
