"""Seconds per training step of `refine train` at the paper's settings (batch 16, 108x108, full
networks, all three games and the identity loss), on this CPU (and with bf16 autocast where the CPU
has bf16 units) and on CUDA when present (with and
without mixed precision). The paper: 248k steps in 70 h on a GTX 1080 Ti, about 1 s per step.

The sets are random images in the exact layouts of synthetic.h5 / real.h5 / pairs.h5: a step's
cost does not depend on what the pixels show. Prints progress, then one JSON line.

    python bench/train_step.py [--steps 3] [--batch-size 16]
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

from morph.numerics import numerics, set_threads


def make_sets(d: Path, n: int = 64, ids: int = 16, size: int = 108):
    rng = np.random.default_rng(0)
    img = lambda: rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)  # noqa: E731
    for name, data in (("synthetic.h5", {"images": img(), "labels": np.repeat(np.arange(ids), n // ids)}),
                       ("real.h5", {"images": img()}), ("pairs.h5", {"real": img(), "render": img()})):
        with h5py.File(d / name, "w") as f:
            for k, v in data.items():
                f[k] = v
            f.attrs["complete"] = True


def time_steps(device: str, amp: bool, steps: int, batch: int, d: Path) -> float:
    from refine.config import TrainConfig
    from refine.trainer import Trainer

    cfg = TrainConfig(steps=1000, batch_size=batch, device=device, amp=amp)
    t = Trainer(cfg, d / "synthetic.h5", d / "real.h5", d / "pairs.h5", d / "run")
    t.train_step()  # warm-up: allocations, cuDNN autotuning
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        t.train_step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    set_threads(a.threads)
    out = {"numerics": numerics(), "batch": a.batch_size, "image_size": 108, "threads": a.threads}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        make_sets(d)
        print(f"CPU, {a.threads} threads, batch {a.batch_size}: {a.steps} steps after a warm-up ...", flush=True)
        out["cpu_s_per_step"] = round(time_steps("cpu", False, a.steps, a.batch_size, d), 3)
        print(f"  {out['cpu_s_per_step']} s/step", flush=True)
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():  # bf16 units (AMX / AVX512-BF16)
            out["cpu_bf16_s_per_step"] = round(time_steps("cpu", True, a.steps, a.batch_size, d), 3)
            print(f"  bf16 autocast: {out['cpu_bf16_s_per_step']} s/step", flush=True)
        if torch.cuda.is_available():
            for amp in (False, True):
                key = "cuda_amp_s_per_step" if amp else "cuda_s_per_step"
                out[key] = round(time_steps("cuda", amp, max(a.steps, 10), a.batch_size, d), 4)
                print(f"  {key}: {out[key]}", flush=True)
        else:
            out["cuda"] = "not available"
    out["paper_s_per_step_gtx1080ti"] = round(70 * 3600 / 248_000, 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
