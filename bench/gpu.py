"""One prepared run of every GPU path, for a machine with a GPU (and, small, on the CPU first).

On ``--device`` (default: cuda when present):

- **render**: images/s at 108x108 of the default model through ``render_batch`` for each
  rasterizer that runs there (``torch``; ``pytorch3d`` where it imports), and the share of pixels
  whose ``pix_to_face`` equals our CPU engine's on the mean face under spread poses;
- **detect**: MTCNN photos/s on the test photos, and the largest box and landmark difference (px)
  from the CPU detector on the same photos;
- **train**: seconds per training step at the paper's settings (batch 16, full widths) in float32
  and with bf16 autocast, and the largest difference of any logged loss between the two over the
  first ``--loss-steps`` steps from the same seed;
- **export**: ``refine export-dataset`` images/s with and without scores;
- peak GPU memory of each (``torch.cuda.max_memory_allocated``).

A section that fails records its error and the others still run. Prints progress and, last,
one JSON object.

    python bench/gpu.py                      # on a GPU (sized for 8 minutes on one; not yet run on one)
    python bench/gpu.py --device cpu --small # the same code paths, small, as the test suite runs it
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
PHOTOS = ROOT.parent / "shared" / "testdata" / "real"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_memory(device: str) -> float | None:
    """Peak GPU memory since the last reset, in MiB (None on the CPU)."""
    if not device.startswith("cuda"):
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def sample_params(model, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    sh = np.zeros((n, 9, 3), np.float32)
    sh[:, 0] = 1.0 + 0.2 * rng.standard_normal((n, 1))
    sh[:, 1:4] = 0.3 * rng.standard_normal((n, 3, 1))
    return {"alpha": rng.standard_normal((n, model.n_shape)).astype(np.float32),
            "beta": 0.7 * rng.standard_normal((n, model.n_expression)).astype(np.float32),
            "gamma": rng.standard_normal((n, model.n_texture)).astype(np.float32),
            "pose": (rng.standard_normal((n, 3)) * [10, 25, 6]).clip(-60, 60).astype(np.float32),
            "camera_distance": rng.uniform(500, 1200, n).astype(np.float32), "sh": sh}


def mean_face_ndc(model, n: int, size: int) -> torch.Tensor:
    """(n, N, 3) NDC vertices of the model's mean face under n spread poses (yaw -60..60)."""
    from morph.render import camera

    verts = model.vertices(np.zeros((1, model.n_shape), np.float32))[0].reshape(-1, 3)
    yaw = np.linspace(-60, 60, n)
    poses = np.stack([25 * np.sin(np.arange(n) * 1.7), yaw, 20 * np.cos(np.arange(n) * 2.3)], 1)
    v = torch.from_numpy(np.repeat((verts - verts.mean(0))[None], n, 0).astype(np.float32))
    rot = torch.from_numpy(camera.compute_rotation(poses))
    hw = (size, size)
    _, pix, depth = camera.perspective_project(v, rot, torch.full((n,), 800.0), camera.focal_from_fov(15.0, hw), hw)
    return camera.pixels_to_ndc(pix, depth, hw).contiguous()


def bench_render(device: str, batch: int, repeats: int) -> dict:
    from morph.formats.named import load_model
    from morph.render import RenderSettings, render_batch
    from morph.render.raster import RASTERIZERS, rasterize, rasterizer

    model = load_model("default")
    params = sample_params(model, batch)
    faces = torch.from_numpy(model.triangles).long()
    ndc = mean_face_ndc(model, 8, 108)
    reference = rasterize(ndc, faces, 108, "cpu").pix_to_face
    out = {"batch": batch}
    for name in ("torch", "pytorch3d"):
        if name not in RASTERIZERS or not rasterizer(name).available():
            out[name] = "not available"
            continue
        if name == "pytorch3d" and not device.startswith("cuda"):
            out[name] = "skipped on the CPU (about 10 s per image)"
            continue
        settings = RenderSettings(backend=name, device=device, outputs=("image", "mask", "landmarks"))
        render_batch(model, params, settings)  # warm-up
        reset_peak(device)
        sync(device)
        t = time.perf_counter()
        for _ in range(repeats):
            render_batch(model, params, settings)
        sync(device)
        wall = time.perf_counter() - t
        frags = rasterize(ndc.to(device), faces.to(device), 108, name).pix_to_face.cpu()
        out[name] = {"img_per_s": round(batch * repeats / wall, 1), "peak_mib": peak_memory(device),
                     "pix_to_face_equal_to_cpu": round(float((frags == reference).double().mean()), 6)}
        print(f"render {name}: {out[name]}", flush=True)
    return out


def bench_detect(device: str, repeats: int, n_photos: int | None) -> dict:
    from morph.base.imageio import read_rgb
    from morph.align.mtcnn import MTCNN

    photos = [read_rgb(p) for p in sorted(PHOTOS.iterdir()) if p.suffix.lower() in (".jpg", ".png", ".ppm")]
    if n_photos is not None:  # the smallest, for the smoke run
        photos = sorted(photos, key=lambda im: im.shape[0] * im.shape[1])[:n_photos]
    ref = MTCNN(device="cpu").detect(photos)
    det = MTCNN(device=device)
    found = det.detect(photos)  # warm-up, and the comparison
    box, lm = 0.0, 0.0
    for a, b in zip(ref, found):
        if len(a.boxes) != len(b.boxes):
            return {"error": f"{len(a.boxes)} faces on the CPU, {len(b.boxes)} on {device} in one photo"}
        if len(a.boxes):
            box = max(box, float(np.abs(a.boxes - b.boxes).max()))
            lm = max(lm, float(np.abs(a.landmarks - b.landmarks).max()))
    reset_peak(device)
    sync(device)
    t = time.perf_counter()
    for _ in range(repeats):
        det.detect(photos)
    sync(device)
    wall = time.perf_counter() - t
    out = {"photos": len(photos), "faces": int(sum(len(r.boxes) for r in ref)),
           "photos_per_s": round(len(photos) * repeats / wall, 2), "max_box_diff_px": box,
           "max_landmark_diff_px": lm, "peak_mib": peak_memory(device)}
    print(f"detect: {out}", flush=True)
    return out


def bench_train(device: str, small: bool, steps: int, loss_steps: int, d: Path) -> dict:
    from refine.gan.config import TrainConfig
    from refine.gan.trainer import Trainer
    from train_step import make_sets

    make_sets(d)
    widths = {"g_width": 8, "d_hidden": 16} if small else {}
    batch = 2 if small else 16

    def trainer(amp: bool, run: str) -> Trainer:
        torch.manual_seed(0)
        cfg = TrainConfig(steps=1000, batch_size=batch, device=device, amp=amp, seed=0, **widths)
        return Trainer(cfg, d / "synthetic.h5", d / "real.h5", d / "pairs.h5", d / run)

    out = {"batch": batch, "widths": widths or "paper"}
    logs = {}
    for amp in (False, True):
        key = "bf16" if amp else "fp32"
        t = trainer(amp, key)
        logs[key] = [t.train_step() for _ in range(loss_steps)]
        reset_peak(device)
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            t.train_step()
        sync(device)
        out[f"{key}_s_per_step"] = round((time.perf_counter() - start) / steps, 4)
        out[f"{key}_peak_mib"] = peak_memory(device)
        print(f"train {key}: {out[f'{key}_s_per_step']} s/step", flush=True)
    diffs = {k: max(abs(a[k] - b[k]) for a, b in zip(logs["fp32"], logs["bf16"]))
             for k in logs["fp32"][0] if k.startswith("L_")}
    worst = max(diffs, key=diffs.get)
    out["loss_steps"] = loss_steps
    out["max_loss_diff_bf16_vs_fp32"] = {"term": worst, "abs": round(diffs[worst], 5),
                                         "relative": round(diffs[worst] / max(1e-12, abs(logs["fp32"][0][worst])), 4)}
    out["paper_steps_hours_bf16"] = round(248_000 * out["bf16_s_per_step"] / 3600, 2)
    return out


def bench_export(device: str, n_identities: int, images: int, batch: int, d: Path) -> dict:
    from export import write_checkpoint

    from refine.export.options import ExportOptions
    from refine.jobs.export_dataset import export_dataset

    ckpt = write_checkpoint(d / "ckpt.pt")
    out = {"images": n_identities * images, "batch": batch}
    for scores in (False, True):
        opts = ExportOptions(checkpoint=ckpt, out=d / f"export_{scores}", n_identities=n_identities,
                             images_per_identity=images, seed=0, scores=scores, batch_size=batch, device=device)
        reset_peak(device)
        t = time.perf_counter()
        export_dataset(opts, progress=False)
        sync(device)
        key = "with_scores" if scores else "no_scores"
        out[f"{key}_img_per_s"] = round(n_identities * images / (time.perf_counter() - t), 1)
        out[f"{key}_peak_mib"] = peak_memory(device)
        print(f"export {key}: {out[f'{key}_img_per_s']} img/s", flush=True)
    return out


def section(results: dict, name: str, fn, *args) -> None:
    t = time.perf_counter()
    try:
        results[name] = fn(*args)
    except Exception as e:  # noqa: BLE001 - one failing path must not hide the others' figures
        traceback.print_exc()
        results[name] = {"error": f"{type(e).__name__}: {e}"[:500]}
    results[name]["seconds"] = round(time.perf_counter() - t, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--small", action="store_true", help="small sizes (the test suite's smoke run)")
    a = ap.parse_args()
    from morph.base.numerics import numerics

    small = a.small
    results = {"device": a.device, "torch": torch.__version__, "python": sys.version.split()[0],
               "gpu": torch.cuda.get_device_name(a.device) if a.device.startswith("cuda") else None,
               "numerics": numerics(), "small": small}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        section(results, "render", bench_render, a.device, 4 if small else 256, 1 if small else 20)
        section(results, "detect", bench_detect, a.device, 1 if small else 10, 2 if small else None)
        (d / "train").mkdir()
        section(results, "train", bench_train, a.device, small, 1 if small else 20, 2 if small else 20, d / "train")
        section(results, "export", bench_export, a.device, *((2, 2, 4) if small else (64, 32, 256)), d)
    results["targets_h200"] = {"train_bf16_s_per_step_at_most": 0.05, "export_with_scores_img_per_s_at_least": 3000,
                               "render_img_per_s_at_least": 20000}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
