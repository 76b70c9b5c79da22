"""Benchmark: `refine export-dataset` end to end on this CPU - sample -> render -> refine -> JPEG on disk.

Uses the paper's full-size networks (G, G' c7s1-32 ResNets, BEGAN D_R with 64 filters, dlib's
ResNet as C), untrained: a checkpoint in `refine train`'s layout is written with freshly
initialised weights, which cost exactly what trained ones do. The default model renders 108x108
faces. Two exports run in-process through ``refine.jobs.export_dataset.export_dataset``:

- ``scored``: the default, every image also scored with D_R, G' and C (scores.csv);
- ``unscored``: ``--no-scores``, only G refines (score columns left empty);
- ``scored_bf16``, ``unscored_bf16``: the same with ``--precision bf16`` (G in bfloat16), on a CPU
  with bf16 units; ``refine_tolerance``: its images against float32 G's, per 8-bit pixel.

For each: images/s over the whole call (model, checkpoint and embedder loading included, Python
imports not), the steady rate (images over the time spent in the pipeline's stages), the share of
time per stage (sample, render, refine = G, score_D_R, score_Gp, score_C, write = JPEG encoding and
files, finish = scores.csv/manifest), this process's CPU-seconds per image and images per CPU-second
over the whole call, and the same beyond the one-time set-up (``marginal``: the difference from an
export of one identity; what each image of a large export costs; the target: 30 with scores), and
how much of the machine other processes used meanwhile (a shared
machine skews wall-clock rates, and CPU-seconds less). ``score_tolerance``: the export's scores
(bfloat16 D_R and G' where the CPU has bf16 units, ``refine.export.refiner.score_dtype``) against float32
scoring on the same batches, the largest difference per score column. It also measures the
networks' numerical tolerance that the README's "Reproducibility" states: the full-size networks
run twice on the same batches (bit-identical on one machine), then in batches of 8 against 16 and
with 1 thread against ``--threads`` (the largest pixel, score and embedding differences).

Prints progress, then one JSON line last.

    python bench/export.py [--n-identities 16] [--images-per-identity 16] [--batch-size 16] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does (cli/common.py)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import torch
from cpu_load import cpu_jiffies

from morph.base.numerics import numerics, set_threads


def write_checkpoint(path: Path) -> Path:
    """An untrained full-size checkpoint with the layout of ``Trainer.state()``."""
    from refine.checkpoint import CHECKPOINT_FORMAT
    from refine.gan.config import TrainConfig
    from refine.gan.nets import build_nets

    cfg = TrainConfig(image_size=108)  # (a trained run infers it from its synthetic set)
    torch.manual_seed(0)
    nets = build_nets(cfg)
    torch.save({"format": CHECKPOINT_FORMAT, "step": 0, "config": cfg.to_dict(), "world_size": 1,
                "architecture": cfg.architecture_key(), "nets": {k: v.state_dict() for k, v in nets.items()},
                "identities": torch.arange(0), "train_seed": 1000, "train_model": "default"}, path)
    return path


def timed_export(ckpt: Path, out: Path, a, scores: bool, precision: str = "float32") -> dict:
    """One export of ``a``'s size, timed; before it, the same export of one identity, so that the
    difference of their CPU-seconds gives the cost of an image beyond the one-time set-up
    (checkpoint, model and embedder loading, compiling the fused networks): ``marginal``."""
    small = _export(ckpt, out.with_name(out.name + "_one_identity"),
                    argparse.Namespace(**{**vars(a), "n_identities": 1}), scores, precision)
    r = _export(ckpt, out, a, scores, precision)
    extra_images, extra_cpu = r["images"] - small["images"], r["cpu_s"] - small["cpu_s"]
    if extra_images > 0 and extra_cpu > 0:
        r["marginal_cpu_s_per_image"] = round(extra_cpu / extra_images, 4)
        r["marginal_img_per_cpu_s"] = round(extra_images / extra_cpu, 2)
        r["setup_cpu_s"] = round(small["cpu_s"] - small["images"] * extra_cpu / extra_images, 2)
    return r


def _export(ckpt: Path, out: Path, a, scores: bool, precision: str) -> dict:
    from refine.export.options import ExportOptions
    from refine.jobs.export_dataset import export_dataset

    n = a.n_identities * a.images_per_identity
    opts = ExportOptions(checkpoint=ckpt, out=out, n_identities=a.n_identities,
                         images_per_identity=a.images_per_identity, seed=0, scores=scores,
                         batch_size=a.batch_size, threads=a.threads, precision=precision)
    stats: dict[str, float] = {}
    before = cpu_jiffies()
    t = time.perf_counter()
    export_dataset(opts, progress=True, stats=stats)
    wall = time.perf_counter() - t
    after = cpu_jiffies()
    total, idle, own = (x - y for x, y in zip(after, before))
    hz = os.sysconf("SC_CLK_TCK")
    staged = sum(stats.values())
    files = [p for p in out.rglob("*.jpg")]
    assert len(files) == n, (len(files), n)
    return {
        "images": n, "wall_s": round(wall, 2), "img_per_s": round(n / wall, 2),
        "steady_img_per_s": round(n / staged, 2) if staged else None,
        "stage_share": {k: round(v / staged, 3) for k, v in sorted(stats.items(), key=lambda kv: -kv[1])},
        "stage_ms_per_image": {k: round(v / n * 1e3, 2) for k, v in sorted(stats.items(), key=lambda kv: -kv[1])},
        "cpu_s": own / hz if hz else 0.0,
        "cpu_s_per_image": round(own / hz / n, 4) if hz else None,
        "img_per_cpu_s": round(n / (own / hz), 2) if own else None,
        "cpu_used_by_other_processes": round(max(total - idle - own, 0) / total, 3) if total > 0 else None,
        "jpeg_kb_per_image": round(sum(p.stat().st_size for p in files) / n / 1024, 2),
    }


def network_tolerance(ckpt: Path, renders: np.ndarray, threads: int) -> dict:
    """Same batches twice (bit-identical?), then batches of 8 vs 16 and 1 thread vs ``threads``."""
    from refine.export.refiner import Refiner

    state = torch.load(ckpt, weights_only=True)

    def run(batch, n_threads):
        torch.set_num_threads(n_threads)
        return Refiner(state, ckpt, state["config"], "cpu", batch, True, 108).run(renders)

    keys = ("image", "dr_error", "cycle_error", "embedding")
    ref, again, b8, t1 = run(16, threads), run(16, threads), run(8, threads), run(16, 1)
    torch.set_num_threads(threads)
    out = {"same_batches_bit_identical": all(np.array_equal(ref[k], again[k]) for k in keys)}
    for name, other in (("batch_8_vs_16", b8), ("threads_1_vs_n", t1)):
        out[name] = {"max_pixel_levels": int(np.abs(other["image"].astype(int) - ref["image"]).max()),
                     "pixels_equal": float((other["image"] == ref["image"]).mean()),
                     "max_score_diff": float(max(np.nanmax(np.abs(other[k] - ref[k])) for k in keys[1:3])),
                     "max_embedding_diff": float(np.abs(other["embedding"] - ref["embedding"]).max())}
    return out


def score_tolerance(ckpt: Path, renders: np.ndarray, m: int) -> dict:
    """The scores as the export computes them (``Refiner.score_dtype``: bfloat16 D_R and G' on a CPU
    with bf16 units; fused oneDNN Graph partitions on a CPU, ``refine.export.onednn_graph``) against
    float32 scoring op by op (as on CUDA, and before either), on the same renders and batches: the
    largest difference of each score column (identity_loss over identities of ``m`` consecutive
    renders)."""
    from refine.export.refiner import Refiner

    state = torch.load(ckpt, weights_only=True)
    runs = {}
    for name, dtype, fused in (("default", None, None), ("float32", torch.float32, False)):
        r = Refiner(state, ckpt, state["config"], "cpu", 16, True, 108, precision=dtype, fused=fused)
        runs[name] = {**r.run(renders), "dtype": str(r.score_dtype).removeprefix("torch."), "fused": r.fused}
        e = runs[name]["embedding"].astype(np.float64).reshape(-1, m, runs[name]["embedding"].shape[1])
        runs[name]["identity_loss"] = np.linalg.norm(e - e.mean(1, keepdims=True), axis=2).ravel()
    a, b = runs["default"], runs["float32"]
    return {"score_precision": a["dtype"], "fused": runs["default"]["fused"], "images": len(renders),
            "images_bit_identical": bool(np.array_equal(a["image"], b["image"])),
            **{f"max_abs_diff_{k}": float(np.abs(a[k].astype(np.float64) - b[k]).max())
               for k in ("dr_error", "cycle_error", "identity_loss")},
            **{f"max_rel_diff_{k}": float((np.abs(a[k].astype(np.float64) - b[k]) / np.abs(b[k])).max())
               for k in ("dr_error", "cycle_error", "identity_loss")}}


def refine_tolerance(ckpt: Path, renders: np.ndarray) -> dict:
    """``--precision bf16`` (G in bfloat16, fused as the export runs it) against float32 G (op by
    op) on the same renders and batches, per 8-bit pixel, and the scores and embeddings of the
    two exports' images."""
    from refine.export.refiner import Refiner

    state = torch.load(ckpt, weights_only=True)
    seeds = np.arange(len(renders))
    a, b = (Refiner(state, ckpt, state["config"], "cpu", 16, True, 108, refine_dtype=dt).run(renders, seeds)
            for dt in (torch.float32, torch.bfloat16))
    d = np.abs(a["image"].astype(np.int16) - b["image"])
    return {"images": len(renders), "max_levels": int(d.max()), "mean_levels": round(float(d.mean()), 4),
            "share_over_1_level": float((d > 1).mean()),
            # (the scores of the images each export writes: scored on images that differ as above)
            **{f"max_abs_diff_{k}": float(np.abs(a[k].astype(np.float64) - b[k]).max())
               for k in ("dr_error", "cycle_error", "embedding")}}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-identities", type=int, default=16)
    ap.add_argument("--images-per-identity", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2, help="torch and numba threads (default 2)")
    ap.add_argument("--skip-scored", action="store_true", help="time only the --no-scores export")
    a = ap.parse_args()
    set_threads(a.threads)
    out = {"image_size": 108, "threads": a.threads, "batch_size": a.batch_size,
           "n_identities": a.n_identities, "images_per_identity": a.images_per_identity,
           "networks": "paper size, untrained (G/G' width 32, D_R 64 filters, C dlib ResNet)",
           "cpu": _cpu_name(), "numerics": numerics()}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        ckpt = write_checkpoint(d / "untrained.pt")
        print("warm-up export (numba kernels, oneDNN primitives) ...", flush=True)
        timed_export(ckpt, d / "warm", argparse.Namespace(**{**vars(a), "n_identities": 1,
                                                             "images_per_identity": 8}), True)
        from refine.export.refiner import cpu_bf16_units
        runs = [("unscored", False, "float32"), ("scored", True, "float32")]
        if cpu_bf16_units():
            runs += [("unscored_bf16", False, "bf16"), ("scored_bf16", True, "bf16")]
        for name, scores, precision in runs:
            if scores and a.skip_scored:
                continue
            print(f"{name}: {a.n_identities} identities x {a.images_per_identity} images ...", flush=True)
            out[name] = timed_export(ckpt, d / name, a, scores, precision)
            r = out[name]
            print(f"  {r['img_per_s']} images/s end to end ({r['steady_img_per_s']} steady), "
                  f"{r['img_per_cpu_s']} images per CPU-second ({r.get('marginal_img_per_cpu_s')} beyond the "
                  f"set-up of {r.get('setup_cpu_s')} CPU-s); shares {r['stage_share']}; "
                  f"other processes used {r['cpu_used_by_other_processes']:.0%} of the machine", flush=True)
        from PIL import Image
        files = sorted((d / "unscored").rglob("*.jpg"))
        renders = np.stack([np.asarray(Image.open(p)) for p in files[:16]])
        out["network_tolerance"] = network_tolerance(ckpt, renders, a.threads)
        print(f"full-size networks, numerical tolerance: {out['network_tolerance']}", flush=True)
        m = a.images_per_identity
        renders = np.stack([np.asarray(Image.open(p)) for p in files[:m * max(1, min(4, a.n_identities))]])
        out["score_tolerance"] = score_tolerance(ckpt, renders, m)
        print(f"scores against float32 scoring: {out['score_tolerance']}", flush=True)
        if cpu_bf16_units():
            out["refine_tolerance"] = refine_tolerance(ckpt, renders)
            print(f"--precision bf16 against float32 G: {out['refine_tolerance']}", flush=True)
    for name in ("scored", "scored_bf16"):
        if name in out:
            out[f"{name}_img_per_cpu_s"] = out[name]["img_per_cpu_s"]
            out[f"{name}_marginal_img_per_cpu_s"] = out[name].get("marginal_img_per_cpu_s")
    out["target_scored_img_per_cpu_s"] = 30
    print(json.dumps(out))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
