"""Seconds per training step of `refine train` at the paper's settings (batch 16, 108x108, full
networks, all three games and the identity loss), on this CPU (and with bf16 autocast where the CPU
has bf16 units) and on CUDA when present (with and
without mixed precision). The paper: 248k steps in 70 h on a GTX 1080 Ti, about 1 s per step.

The sets are random images in the exact layouts of synthetic.h5 / real.h5 / pairs.h5: a step's
cost does not depend on what the pixels show. On the CPU, float32 and bf16 each run ``--steps``
steps from the same weights and batches (the first one a warm-up, not timed); the JSON gives wall
and process CPU seconds per step (other processes on a shared machine slow the wall clock), the
bf16 speed-up, and how far bf16's logged losses are from float32's over those steps: for each loss
(L_* terms and obj_* objectives) the largest absolute difference and the largest difference
relative to float32's value at the same step. Tolerance: ``LOSS_RTOL`` (``losses_within_tolerance``).
Prints progress, then one JSON line.

    python bench/train_step.py [--steps 20] [--batch-size 16]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from morph.base.numerics import numerics, set_threads

#: bf16 autocast against float32 over the first 20 steps from the same weights and batches: every
#: logged loss within this fraction of float32's value at the same step.
LOSS_RTOL = 0.02


def make_sets(d: Path, n: int = 64, ids: int = 16, size: int = 108):
    rng = np.random.default_rng(0)
    img = lambda: rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)  # noqa: E731
    for name, data in (("synthetic.h5", {"images": img(), "labels": np.repeat(np.arange(ids), n // ids)}),
                       ("real.h5", {"images": img()}), ("pairs.h5", {"real": img(), "render": img()})):
        with h5py.File(d / name, "w") as f:
            for k, v in data.items():
                f[k] = v
            f.attrs["complete"] = True


def run_steps(device: str, amp: bool, steps: int, batch: int, d: Path) -> dict:
    """``steps`` steps (the first a warm-up: allocations, cuDNN autotuning) from the same weights
    and batches (``TrainConfig.seed``): wall and CPU s per timed step, and every step's losses."""
    from refine.gan.config import TrainConfig
    from refine.gan.trainer import Trainer

    cfg = TrainConfig(steps=1000, batch_size=batch, device=device, amp=amp)
    t = Trainer(cfg, d / "synthetic.h5", d / "real.h5", d / "pairs.h5", d / "run")
    losses = [t.train_step()]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps - 1):
        losses.append(t.train_step())
        print(".", end="", flush=True)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    n = max(1, steps - 1)
    print(flush=True)
    return {"s_per_step": (time.perf_counter() - start) / n, "cpu_s_per_step": (time.process_time() - cpu) / n,
            "losses": losses}


def loss_difference(a: list[dict], b: list[dict]) -> dict:
    """Per loss: the largest |a - b| over the steps, and the largest |a - b| / |b|."""
    keys = [k for k in b[0] if (k.startswith("L_") or k.startswith("obj_")) and k in a[0]]
    out = {}
    for k in keys:
        d = [abs(x[k] - y[k]) for x, y in zip(a, b)]
        out[k] = {"max_abs": float(f"{max(d):.3g}"),
                  "max_rel": float(f"{max(e / max(abs(y[k]), 1e-12) for e, y in zip(d, b)):.3g}")}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="steps per run, the first a warm-up (default 20)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    set_threads(a.threads)
    out = {"numerics": numerics(), "batch": a.batch_size, "image_size": 108, "threads": a.threads}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        make_sets(d)
        print(f"CPU, {a.threads} threads, batch {a.batch_size}: {a.steps} steps (a warm-up, then timed) ...",
              flush=True)
        f32 = run_steps("cpu", False, a.steps, a.batch_size, d)
        out["cpu_s_per_step"] = round(f32["s_per_step"], 3)
        out["cpu_process_cpu_s_per_step"] = round(f32["cpu_s_per_step"], 3)
        print(f"  float32: {out['cpu_s_per_step']} s/step ({out['cpu_process_cpu_s_per_step']} CPU-s)", flush=True)
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():  # oneDNN runs bf16 (fast with AMX / AVX512-BF16)
            bf = run_steps("cpu", True, a.steps, a.batch_size, d)
            out["cpu_bf16_s_per_step"] = round(bf["s_per_step"], 3)
            out["cpu_bf16_process_cpu_s_per_step"] = round(bf["cpu_s_per_step"], 3)
            out["bf16_speedup_wall"] = round(f32["s_per_step"] / bf["s_per_step"], 2)
            out["bf16_speedup_cpu_s"] = round(f32["cpu_s_per_step"] / bf["cpu_s_per_step"], 2)
            diff = loss_difference(bf["losses"], f32["losses"])
            out[f"bf16_loss_difference_over_{a.steps}_steps"] = diff
            out["loss_rtol"] = LOSS_RTOL
            out["losses_within_tolerance"] = all(v["max_rel"] <= LOSS_RTOL for v in diff.values())
            print(f"  bf16 autocast: {out['cpu_bf16_s_per_step']} s/step ({out['cpu_bf16_process_cpu_s_per_step']} "
                  f"CPU-s), x{out['bf16_speedup_wall']} wall, x{out['bf16_speedup_cpu_s']} CPU-s; loss differences "
                  f"{diff}", flush=True)
        if torch.cuda.is_available():
            for amp in (False, True):
                key = "cuda_amp_s_per_step" if amp else "cuda_s_per_step"
                out[key] = round(run_steps("cuda", amp, max(a.steps, 10), a.batch_size, d)["s_per_step"], 4)
                print(f"  {key}: {out[key]}", flush=True)
        else:
            out["cuda"] = "not available"
    out["paper_s_per_step_gtx1080ti"] = round(70 * 3600 / 248_000, 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
