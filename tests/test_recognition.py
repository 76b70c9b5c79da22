"""refine train-recognizer and refine table1: the backbone, the margins, the batches, training
that learns, exact resume, the model file as an embedder, and the table.

Each test names the break it catches."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cli.refine import main as refine
from morph.base.errors import UserError
from refine.images import to_tensor
from refine.recognition.data import Augment, Mixture, random_erasing
from refine.recognition.margin import MarginHead
from refine.recognition.mobilefacenet import MobileFaceNet, final_map_size


def run(*args):
    return CliRunner().invoke(refine, [str(a) for a in args])


# ----------------------------------------------------------------------------------- backbone
def test_mobilefacenet_is_the_papers_table():
    """Chen et al. 2018 report 0.99M parameters for MobileFaceNet (128-D): a stage with the wrong
    expansion, width or repeats, or a missing GDConv/linear layer, moves the count by > 2%."""
    net = MobileFaceNet(112, 128, 1.0)
    n = sum(p.numel() for p in net.parameters())
    assert abs(n - 0.99e6) / 0.99e6 < 0.02, n
    assert final_map_size(112) == final_map_size(108) == 7
    for size in (108, 112):
        out = MobileFaceNet(size, 64, 0.25).eval()(torch.zeros(2, 3, size, size))
        assert out.shape == (2, 64)


# ----------------------------------------------------------------------------------- margins
def test_arcface_and_cosface_adjust_only_the_true_class():
    """Logits against angles computed by acos: ArcFace s*cos(theta_y + m) (and insightface's
    fallback cos(theta) - m sin(m) past pi - m), CosFace s*(cos theta_y - m); other classes
    s*cos theta. Catches a margin of the wrong sign, on the wrong class, or a missing fallback."""
    torch.manual_seed(0)
    head = MarginHead(8, 5, "arcface")
    e = torch.randn(6, 8)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    cos = head.cosine(e).double()
    out = head(e, y).double() / 64
    theta = torch.acos(cos.gather(1, y[:, None]).squeeze(1))
    want = torch.where(theta + 0.5 < math.pi, torch.cos(theta + 0.5), torch.cos(theta) - 0.5 * math.sin(0.5))
    assert torch.allclose(out.gather(1, y[:, None]).squeeze(1), want, atol=1e-5)
    other = torch.ones_like(cos, dtype=torch.bool).scatter(1, y[:, None], False)
    assert torch.allclose(out[other], cos[other], atol=1e-6)
    # the fallback branch: an embedding opposite its class centre (theta = pi)
    e_far = -head.weight[:1].detach()
    got = head(e_far, torch.tensor([0])).double()[0, 0] / 64
    assert abs(got - (-1 - 0.5 * math.sin(0.5))) < 1e-5
    cosface = MarginHead(8, 5, "cosface")
    c = cosface.cosine(e).double()
    got = cosface(e, y).double() / 64
    assert torch.allclose(got.gather(1, y[:, None]), c.gather(1, y[:, None]) - 0.35, atol=1e-6)
    assert torch.allclose(got[other], c[other], atol=1e-6)


# ----------------------------------------------------------------------------------- batches
def _labelled_h5(path: Path, identities: int, per: int, seed: int, value_base: int = 0) -> Path:
    """A labelled set in morph render's layout whose every image holds its identity as a colour."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(identities), per)
    images = np.zeros((len(labels), 108, 108, 3), np.uint8)
    for i, lab in enumerate(labels):
        images[i] = value_base + lab
        images[i, :4, :4] = rng.integers(0, 256, (4, 4, 3))
    with h5py.File(path, "w") as f:
        f["images"] = images
        f["labels"] = labels
        f.attrs["complete"] = True
    return path


def test_sets_keep_their_identities_apart_and_mix_at_the_proportions(tmp_path):
    """Set 1's classes follow set 0's (a label offset dropped merges render 0 with real 0);
    batches are a function of (seed, step, rank) alone; proportions are obeyed."""
    a = _labelled_h5(tmp_path / "a.h5", 3, 4, 0, value_base=10)
    b = _labelled_h5(tmp_path / "b.h5", 2, 5, 1, value_base=100)
    m = Mixture([a, b])
    assert m.classes == 5 and m.n == 22
    images, labels = m.batch(400, seed=3, step=7)
    colour = images[:, 50, 50, 0].astype(int)
    # an image's colour names its set and identity: class = identity (set a), 3 + identity (set b)
    want = np.where(colour >= 100, 3 + colour - 100, colour - 10)
    assert np.array_equal(labels, want)
    assert abs((labels >= 3).mean() - 10 / 22) < 0.08  # by set sizes
    again, _ = m.batch(400, seed=3, step=7)
    other, _ = m.batch(400, seed=3, step=7, rank=1)
    assert np.array_equal(images, again) and not np.array_equal(images, other)
    only_b = Mixture([a, b], proportions=[0, 1])
    _, lb = only_b.batch(50, seed=0, step=0)
    assert (lb >= 3).all()
    with pytest.raises(UserError, match="proportions"):
        Mixture([a, b], proportions=[1])


def test_random_erasing_erases_a_rectangle_of_the_stated_area():
    """p=1: every image has one zero rectangle of 2-33% of its area; p=0: untouched. Catches a
    swapped area/aspect draw or an erasing that ignores p."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 108, 108) + 0.5  # no zeros before erasing
    y = random_erasing(x, g, p=1.0)
    zero = (y == 0).all(1)
    frac = zero.float().mean((1, 2))
    assert ((frac >= 0.019) & (frac <= 0.34)).all(), frac
    for k in range(8):  # a rectangle: its bounding box is all zeros
        r, c = torch.nonzero(zero[k], as_tuple=True)
        assert zero[k, r.min():r.max() + 1, c.min():c.max() + 1].all()
    assert torch.equal(random_erasing(x, g, p=0.0), x)


def test_augment_warps_to_the_recognisers_crop():
    """arcface112 gives 112 px images whose 5 points are ArcFace's: the image of a dot at our
    template's left eye lands at ArcFace's left eye. Catches a crop that only resizes."""
    from morph.align.template import five_point_template

    src = five_point_template(108)
    x = -torch.ones(1, 3, 108, 108)
    ex, ey = src[0]
    x[:, :, int(ey) - 1:int(ey) + 1, int(ex) - 1:int(ex) + 1] = 1.0
    aug = Augment("arcface112", "none")
    y = aug.centre(x)
    assert y.shape == (1, 3, 112, 112)
    r, c = np.unravel_index(int(y[0, 0].argmax()), (112, 112))
    want = five_point_template(112, "arcface112")[0]
    assert abs(c + 0.5 - want[0]) <= 1.5 and abs(r + 0.5 - want[1]) <= 1.5


# ----------------------------------------------------------------------------------- training
def _cfg(**kw):
    from refine.recognition.trainer import RecognizerConfig

    base = dict(steps=6, batch_size=8, width=0.25, embedding_size=32, warmup_steps=2, lr=0.1, checkpoint_every=2,
                log_every=1)
    return RecognizerConfig(**{**base, **kw})


def _nuisance_set(path: Path, identities: int = 4, per: int = 32, seed: int = 0) -> Path:
    """Identities told apart only by a faint pattern in the centre, under strong per-image
    nuisance (coarse colour blocks everywhere): an untrained network's embedding follows the
    nuisance (verification AUC about 0.6), a trained one must learn to ignore it."""
    rng = np.random.default_rng(seed)
    pattern = rng.integers(-1, 2, (identities, 9, 9, 1)) * 60
    labels = np.repeat(np.arange(identities), per)
    images = []
    for lab in labels:
        im = 128 + np.kron(rng.integers(-90, 91, (6, 6, 3)), np.ones((18, 18, 1)))
        im[36:72, 36:72] += np.kron(pattern[lab], np.ones((4, 4, 1)))
        images.append(np.clip(im, 0, 255).astype(np.uint8))
    with h5py.File(path, "w") as f:
        f["images"], f["labels"] = np.stack(images), labels
        f.attrs["complete"] = True
    return path


def test_training_learns_the_identities(tmp_path):
    """60 steps take the training loss well down, and the trained network verifies the
    identities (AUC > 0.9) far better than its own initial weights. Catches a flipped loss, a
    skipped optimiser step, labels not matched to their images, a margin on the wrong class."""
    from refine.jobs.train_recognizer import train_recognizer
    from refine.recognition.trainer import untrained_model
    from refine.evaluation.verification import pairs_of_labelled_set, verify_pairs as verify

    path = _nuisance_set(tmp_path / "set.h5")
    cfg = _cfg(steps=60, batch_size=16, margin="cosface", augment="none", checkpoint_every=60, warmup_steps=5)
    model = train_recognizer(cfg, [path], tmp_path / "run", progress=False, threads=2)
    log = [json.loads(x) for x in (tmp_path / "run" / "losses.jsonl").read_text().splitlines()]
    assert np.mean([x["loss"] for x in log[-10:]]) < 0.6 * np.mean([x["loss"] for x in log[:5]])
    base = untrained_model(tmp_path / "untrained.pt", cfg)
    pairs = pairs_of_labelled_set(path, 100, 0, folds=4)
    got = {n: verify(pairs, tmp_path / n, embedder=str(m))["auc"] for n, m in (("trained", model), ("untrained", base))}
    assert got["trained"] > 0.9 and got["trained"] > got["untrained"] + 0.2, got


def test_resume_repeats_the_uninterrupted_run_bit_for_bit(sets, tmp_path):
    """3 steps, then --resume to 6, equal the 6 uninterrupted steps in every weight and momentum
    buffer. Catches batches or augmentation drawn from state not saved, momentum not restored, a
    schedule counted from the resume."""
    from refine.jobs.train_recognizer import train_recognizer

    data = [sets / "synthetic.h5"]
    train_recognizer(_cfg(steps=6, checkpoint_every=6), data, tmp_path / "one", progress=False, threads=1)
    train_recognizer(_cfg(steps=3, checkpoint_every=3), data, tmp_path / "two", progress=False, threads=1)
    train_recognizer(_cfg(steps=6, checkpoint_every=3), data, tmp_path / "two", resume=True, progress=False, threads=1)
    a = torch.load(tmp_path / "one" / "checkpoints" / "step_00000006.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "checkpoints" / "step_00000006.pt", weights_only=True)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for k, v in a["optimizer"]["state"].items():
        assert torch.equal(v["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])
    assert (tmp_path / "one" / "recognizer.pt").read_bytes() == (tmp_path / "two" / "recognizer.pt").read_bytes()
    with pytest.raises(UserError, match="other settings"):
        train_recognizer(_cfg(steps=8, margin="cosface"), data, tmp_path / "two", resume=True, progress=False)
    with pytest.raises(UserError, match="already holds a run"):
        train_recognizer(_cfg(), data, tmp_path / "two", progress=False)


def test_the_model_file_is_an_embedder_and_refine_verify_takes_it(sets, tmp_path):
    """recognizer.pt loads as an embedder (told from the file) whose embeddings are the backbone's
    on its crop; 'refine verify --embedder' uses it; the untrained baseline is the run's initial
    weights. Catches a file saved before training, an embedder on the wrong crop."""
    from refine.embedders import load_embedder
    from refine.jobs.train_recognizer import train_recognizer
    from refine.recognition.trainer import RecognizerTrainer, untrained_model
    from refine.distributed import Dist

    cfg = _cfg(steps=2, crop="arcface112", checkpoint_every=2)
    model = train_recognizer(cfg, [sets / "synthetic.h5"], tmp_path / "run", progress=False, threads=1)
    net = load_embedder(model)
    state = torch.load(tmp_path / "run" / "checkpoints" / "step_00000002.pt", weights_only=True)
    for k, v in net.net.state_dict().items():
        assert torch.equal(v, state["model"]["backbone." + k]), k
    assert net.input_size == 112 and net.dim == 32
    with h5py.File(sets / "synthetic.h5") as f:
        x = to_tensor(f["images"][:4])
    chips = net.transform(108).centre(x)
    assert torch.allclose(chips, Augment("arcface112", "none").centre(x), atol=1e-5)  # the crop it trained on
    assert torch.allclose(net(chips), torch.nn.functional.normalize(net.net.eval()(chips), dim=1), atol=1e-6)
    res = run("verify", "--set", sets / "synthetic.h5", "--pairs", 20, "--folds", 2, "--embedder", model,
              "-o", tmp_path / "v")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "v.json").read_text())["embedder"]["dim"] == 32
    fresh = RecognizerTrainer(cfg, [sets / "synthetic.h5"], Dist()).model.backbone.state_dict()
    base = load_embedder(untrained_model(tmp_path / "u.pt", cfg)).net.state_dict()
    assert all(torch.equal(v, base[k]) for k, v in fresh.items())
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(UserError):
        load_embedder(f"recognizer:{tmp_path / 'junk.pt'}")


def test_cli_trains_and_table1_prints_a_row_per_set(sets, tmp_path):
    """The CLI end to end at toy scale: train-recognizer writes recognizer.pt; table1 writes a row
    for the untrained network and one per given set, each verified on the benchmark, and reuses
    finished rows. Catches a row trained on the wrong sets or a table not written, and a run folder
    made for a set that cannot be read. ``--row`` keeps the rows it names beside the untrained one
    (catches the filter ignored) and names a row the sets cannot make in one line."""
    missing = run("train-recognizer", "--data", tmp_path / "nothing.h5", "--out", tmp_path / "rec", "--steps", 2)
    assert missing.exit_code != 0 and "nothing.h5" in missing.output and not (tmp_path / "rec").exists()
    res = run("train-recognizer", "--data", sets / "synthetic.h5", "--out", tmp_path / "rec", "--steps", 2,
              "--batch-size", 8, "--width", 0.25, "--embedding-size", 32, "--threads", 1)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "rec" / "recognizer.pt").is_file()
    real = _labelled_h5(tmp_path / "real.h5", 3, 4, 0, value_base=10)
    # the refined set as refine export-dataset --format hdf5 lays it out: a folder holding ganfaces.h5
    # (a re-run must know its finished rows, recorded under the file's path)
    (tmp_path / "export").mkdir()
    shutil.copy(sets / "synthetic.h5", tmp_path / "export" / "ganfaces.h5")
    args = ["table1", "-o", tmp_path / "t", "--real", real, "--rendered", sets / "synthetic.h5",
            "--refined", tmp_path / "export", "--set", sets / "synthetic.h5", "--pairs", 20, "--steps", 2,
            "--batch-size", 8, "--width", 0.25, "--embedding-size", 32, "--threads", 1]
    res = run(*args)
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "t" / "table1.json").read_text())
    rows = {r["row"]: r for r in report["rows"]}
    assert list(rows) == ["untrained", "real", "real+rendered", "real+refined", "rendered", "refined"]
    assert [s["path"] for s in rows["real+rendered"]["sets"]] == [str(real), str(sets / "synthetic.h5")]
    assert rows["real+rendered"]["identities"] == 3 + 6 and rows["rendered"]["identities"] == 6
    assert "| rendered | 6 | 24 |" in (tmp_path / "t" / "table1.md").read_text()
    assert "| real+refined | 9 | 36 |" in (tmp_path / "t" / "table1.md").read_text()
    before = {r: (tmp_path / "t" / r / "recognizer.pt").stat().st_mtime_ns for r in ("rendered", "refined")}
    res = run(*args)
    assert res.exit_code == 0, res.output
    assert {r: (tmp_path / "t" / r / "recognizer.pt").stat().st_mtime_ns for r in before} == before
    res = run(*args[:-2], "--seed", 1, "--threads", 1)
    assert res.exit_code == 2 and "other settings" in res.output
    res = run(*args, "--row", "real", "--row", "rendered")
    assert res.exit_code == 0, res.output
    assert [r["row"] for r in json.loads((tmp_path / "t" / "table1.json").read_text())["rows"]] == [
        "untrained", "real", "rendered"]
    res = run("table1", "-o", tmp_path / "t2", "--real", real, "--set", sets / "synthetic.h5", "--row", "refined")
    assert res.exit_code == 2 and "--row refined" in res.output and "untrained, real" in res.output


def test_torchrun_ranks_draw_their_own_batches(sets, tmp_path):
    """Two torchrun ranks train (gloo), rank 0 writes the run, and the result is not the one
    process's: each rank drew its own batch. Without augmentation, ranks drawing the same batch
    would average equal gradients and give the one process's weights exactly (checked: the test
    fails when the rank is left out of the batch draw)."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    common = ["train-recognizer", "--data", str(sets / "synthetic.h5"), "--steps", "2", "--batch-size", "4",
              "--width", "0.25", "--embedding-size", "32", "--warmup-steps", "1", "--augment", "none"]
    res = run(*common, "--out", tmp_path / "one", "--threads", 1)
    assert res.exit_code == 0, res.output
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                        str(port), "-m", "cli.refine", *common, "--out", str(tmp_path / "ddp")],
                       cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
                       timeout=600, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    a = torch.load(tmp_path / "one" / "recognizer.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "ddp" / "recognizer.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
