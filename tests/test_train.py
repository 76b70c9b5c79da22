"""refine train on tiny real data: renders of the default model, aligned real photos, round-trip pairs."""
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from cli.refine import main as refine

STEPS = 40  # narrow networks (conftest.SMALL_NETS), so that 40 CPU steps are short


def run(group, *args):
    return CliRunner().invoke(group, [str(a) for a in args])


def losses(run_dir):
    return [json.loads(line) for line in (run_dir / "losses.jsonl").read_text().splitlines()]


def train_args(sets, out, steps=STEPS, *extra):
    return ["train", "--synthetic", sets / "synthetic.h5", "--real", sets / "real.h5", "--pairs",
            sets / "pairs.h5", "--out", out, "--steps", steps, "--batch-size", 2, "--checkpoint-every", 20,
            "--config", sets / "small.yaml", *extra]


def test_amp_flag_trains_under_bf16_autocast_on_the_cpu_and_is_off_by_default(sets, tmp_path):
    """``--amp``: the networks run under bfloat16 autocast on the CPU too (the losses move from
    float32's, a little); without it, float32. Catches the flag not reaching the config and autocast
    skipped on the CPU (both: losses equal to float32's)."""
    logs, configs = {}, {}
    for name, extra in (("plain", ()), ("amp", ("--amp",))):
        out = tmp_path / name
        res = run(refine, *train_args(sets, out, 2, "--threads", 2, *extra))
        assert res.exit_code == 0, res.output
        logs[name] = losses(out)
        configs[name] = yaml.safe_load((out / "config.yaml").read_text())
    assert configs["plain"]["amp"] is False and configs["amp"]["amp"] is True
    plain, amp = logs["plain"][-1], logs["amp"][-1]
    assert plain["L_G"] != amp["L_G"]
    for k in ("L_G", "L_cyc", "L_id", "L_C"):
        assert amp[k] == pytest.approx(plain[k], rel=0.05), k


def test_40_steps_then_resume_after_sigkill_logs_the_same_losses(sets, tmp_path):
    """40 steps: every loss finite, every balance term in [0, 1] and k_R moving, checkpoints,
    config and TensorBoard written. Then, same machine, same threads: the resumed run repeats
    that uninterrupted one bit for bit."""
    ref = tmp_path / "ref"
    res = run(refine, *train_args(sets, ref, STEPS, "--threads", 2))
    assert res.exit_code == 0, res.output
    log = losses(ref)
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))
    for r in log:
        for k, v in r.items():
            assert np.isfinite(v), (r["step"], k)
        for k in ("k_R", "k_S", "k_P"):
            assert 0.0 <= r[k] <= 1.0
    for key in ("L_G", "L_cyc", "L_DP", "L_C", "L_id", "M_R", "M_S", "M_P"):
        assert key in log[0]
    assert any(r["k_R"] > 0 for r in log)  # the balance term moves
    ckpts = sorted((ref / "checkpoints").glob("step_*.pt"))
    assert [c.name for c in ckpts] == ["step_00000020.pt", "step_00000040.pt"]
    assert (ref / "config.yaml").exists() and list((ref / "tensorboard").iterdir())
    state = torch.load(ckpts[-1], weights_only=True)
    assert state["step"] == STEPS and state["centroids"].abs().sum() > 0
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "cli.refine", *map(str, train_args(sets, out, STEPS, "--threads", 2))]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "checkpoints" / "step_00000020.pt"
    deadline = time.time() + 600
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists()
    res = run(refine, *train_args(sets, out, STEPS, "--threads", 2), "--resume")
    assert res.exit_code == 0, res.output
    a, b = losses(ref), losses(out)
    assert [r["step"] for r in b] == list(range(1, STEPS + 1))
    assert a == b  # every logged value, exactly (JSON keeps a float's every bit)
    sa = torch.load(ref / "checkpoints" / "step_00000040.pt", weights_only=True)
    sb = torch.load(out / "checkpoints" / "step_00000040.pt", weights_only=True)
    for name, net in sa["nets"].items():
        for k, v in net.items():
            assert torch.equal(v, sb["nets"][name][k]), (name, k)
    # and the file itself: the same bytes, so an export's checkpoint_sha256 and job keys agree
    assert (ref / "checkpoints" / "step_00000040.pt").read_bytes() == (out / "checkpoints" / "step_00000040.pt").read_bytes()


def _bad_sets(sets, tmp):
    with h5py.File(tmp / "small.h5", "w") as f:
        f["images"] = np.zeros((3, 64, 64, 3), np.uint8)
        f["labels"] = np.zeros(3, np.int64)
        f.attrs["complete"] = True
    with h5py.File(tmp / "nopairs.h5", "w") as f:
        f["real"] = np.zeros((0, 108, 108, 3), np.uint8)
        f["render"] = np.zeros((0, 108, 108, 3), np.uint8)
        f.attrs["complete"] = True
    (tmp / "file").write_text("x")


@pytest.mark.parametrize("change, message", [
    ({"--synthetic": "small.h5"}, "(108, 108, 3), but training uses 64x64x3"),  # the real set
    ({"--real": "small.h5"}, "64, 64, 3"),
    ({"--pairs": "nopairs.h5"}, "holds no images"),
    ({"--out": "file/run"}, "cannot write the run directory"),
    ({"--synthetic": "absent.h5"}, "no such"),
    ({"--real": "absent_real.h5"}, "no such real image set"),
])
def test_bad_input_fails_before_training(sets, tmp_path, change, message):
    _bad_sets(sets, tmp_path)
    args = train_args(sets, tmp_path / "run")
    for k, v in change.items():
        args[args.index(k) + 1] = tmp_path / v
    res = run(refine, *args)
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "run" / "checkpoints").exists()
    if message.startswith("no such"):  # a set that is not there: refused before --out is made
        assert not (tmp_path / "run").exists()


def test_checkpoint_of_another_config_is_refused(sets, tmp_path):
    out = tmp_path / "run"
    assert run(refine, *train_args(sets, out, 2)).exit_code == 0
    res = run(refine, *train_args(sets, out, 4, "--variant", "no_pairs"), "--resume")
    assert res.exit_code == 2 and "another configuration" in res.output


def test_torchrun_two_processes_gloo_and_checkpoint_loads_in_one(sets, tmp_path):
    out = tmp_path / "ddp"
    args = [str(a) for a in train_args(sets, out, 4)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_port", "29517", "-m", "cli.refine", *args],
                       capture_output=True, text=True, env=env, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "ranks disagree" not in p.stderr
    ckpt = out / "checkpoints" / "step_00000004.pt"
    state = torch.load(ckpt, weights_only=True)
    assert state["world_size"] == 2
    log = losses(out)
    assert [r["step"] for r in log] == [1, 2, 3, 4]  # one writer
    # the 2-process checkpoint continues in a 1-process run
    res = run(refine, *train_args(sets, out, 6), "--resume")
    assert res.exit_code == 0, res.output
    assert [r["step"] for r in losses(out)] == [1, 2, 3, 4, 5, 6]


def test_ctrl_c_saves_a_checkpoint_and_nan_stops_keeping_the_last_good_one(sets, tmp_path, monkeypatch):
    import refine.gan.losses as L
    from refine.gan.trainer import Trainer

    original = Trainer.train_step

    def interrupted(self):
        if self.step == 3:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    out = tmp_path / "run"
    res = run(refine, *train_args(sets, out, 10))
    assert res.exit_code != 0
    assert (out / "checkpoints" / "step_00000003.pt").exists()
    monkeypatch.setattr(Trainer, "train_step", original)

    real_loss = L.began_generator_loss
    monkeypatch.setattr(L, "began_generator_loss",
                        lambda a, b, **kw: real_loss(a, b, **kw) * (float("nan") if a.shape[0] and _calls() > 4 else 1.0))
    res = run(refine, *train_args(sets, out, 10), "--resume")
    assert res.exit_code == 2 and "training diverged" in res.output and "step_00000003.pt" in res.output
    assert sorted(p.name for p in (out / "checkpoints").glob("*.pt")) == ["step_00000003.pt"]


_count = {"n": 0}


def _calls():
    _count["n"] += 1
    return _count["n"]


@pytest.mark.parametrize("variant, present, absent", [
    ("no_pairs", ["L_C", "L_cyc"], ["L_DP"]),
    ("no_identity", ["L_DP", "L_cyc"], ["L_C"]),
    ("cyclegan", ["L_cyc"], ["L_DP", "L_C"]),
    ("simgan", ["L_reg"], ["L_cyc", "L_DP", "L_C", "L_Gp"]),
    ("recons", ["L_recons", "L_DP", "L_C"], []),
])
def test_ablation_variants_train(sets, tmp_path, variant, present, absent):
    out = tmp_path / variant
    res = run(refine, *train_args(sets, out, 2, "--variant", variant))
    assert res.exit_code == 0, res.output
    last = losses(out)[-1]
    assert all(k in last and np.isfinite(last[k]) for k in present)
    assert not any(k in last for k in absent)


def test_trains_at_another_image_size(sets, tmp_path):
    """64 px sets (render, align and pairs at --size 64): every network and C's face chip follow
    the image size, and the export renders at the checkpoint's size."""
    from cli.morph import main as morph

    d = tmp_path
    for args in (("render", sets / "ids.h5", "-o", d / "syn64.h5", "--size", 64),
                 ("align", sets / "ann", "-o", d / "real64.h5", "--size", 64),
                 ("render-pairs", sets / "ann", "-o", d / "pairs64.h5", "--model", "default", "--size", 64)):
        res = run(morph, *args)
        assert res.exit_code == 0, res.output
    out = d / "run64"
    res = run(refine, "train", "--synthetic", d / "syn64.h5", "--real", d / "real64.h5", "--pairs", d / "pairs64.h5",
              "--out", out, "--steps", 3, "--batch-size", 2, "--config", sets / "small.yaml")
    assert res.exit_code == 0, res.output
    state = torch.load(out / "checkpoints" / "step_00000003.pt", weights_only=True)
    assert state["config"]["image_size"] == 64 and all(np.isfinite(v) for v in losses(out)[-1].values())
