"""MTCNN face detection speed on CPU: morph.mtcnn against facenet-pytorch 2.6.0.

Both detect faces (boxes + 5 landmarks) in the same real photos from ../shared/testdata/real
(six photos from 150x225 to 1920x1080, repeated to --images), on 2 threads. Ours gets the whole
list in one call (it groups equal sizes); facenet-pytorch gets one call per photo, since it only
batches images of one size. Rounds alternate between the two, so load from other processes hits
both alike. The img/s figures are from each detector's best (least disturbed) round; CPU seconds
per image (process time, both threads) are printed too, as a load-independent check.

Prints progress lines, then as its last line one JSON object:
{"ours_img_per_s": ..., "facenet_pytorch_img_per_s": ..., "ratio": ..., "ibug68_ms_per_face": ...,
 "ours_with_ibug68_img_per_s": ...}
(facenet-pytorch figures are null when it is not installed:
``pip install torchvision==0.27.1 && pip install --no-deps facenet-pytorch==2.6.0``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from morph.mtcnn import MTCNN  # noqa: E402

TESTDATA = ROOT.parent / "shared" / "testdata" / "real"
PHOTOS = ["astronaut.png", "breakingbad.jpg", "einstein.jpg", "t1.jpg", "takeo.ppm", "tongue.jpg"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=20, help="photos per round (the six repeated)")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per detector")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    photos = []
    for name in PHOTOS:
        with Image.open(TESTDATA / name) as img:
            photos.append(np.asarray(img.convert("RGB")))
    images = [photos[i % len(photos)] for i in range(args.images)]
    print(f"{len(images)} images ({len(photos)} distinct photos, "
          f"{sum(im.shape[0] * im.shape[1] for im in images) / 1e6:.1f} Mpixel), "
          f"{args.threads} threads, {args.rounds} rounds", flush=True)

    ours = MTCNN(device="cpu")
    try:
        from facenet_pytorch import MTCNN as FacenetMTCNN
        ref = FacenetMTCNN(device="cpu", select_largest=False)
    except ImportError:
        ref = None
        print("facenet-pytorch is not installed: timing ours only", flush=True)

    def run_ours():
        return [len(d.boxes) for d in ours.detect(images)]

    def run_ref():
        counts = []
        for im in images:
            boxes, _ = ref.detect(im)
            counts.append(0 if boxes is None else len(boxes))
        return counts

    # Warm-up on each distinct photo (allocator, oneDNN primitives), and a consistency check.
    counts = [len(d.boxes) for d in ours.detect(photos)]
    print(f"warm-up: faces per photo (ours) {dict(zip(PHOTOS, counts))}", flush=True)
    if ref is not None:
        ref_counts = [0 if b is None else len(b) for b in (ref.detect(im)[0] for im in photos)]
        same = "same" if ref_counts == counts else f"DIFFERENT: {ref_counts}"
        print(f"warm-up: facenet-pytorch counts {same}", flush=True)

    wall: dict[str, list[float]] = {"ours": [], "facenet_pytorch": []}
    cpu: dict[str, list[float]] = {"ours": [], "facenet_pytorch": []}
    for r in range(args.rounds):
        for key, fn in (("ours", run_ours), ("facenet_pytorch", run_ref)):
            if key == "facenet_pytorch" and ref is None:
                continue
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            wall[key].append(dt)
            cpu[key].append(dc)
            print(f"round {r + 1}/{args.rounds} {key}: {dt:.2f} s, {len(images) / dt:.2f} img/s, "
                  f"{dc / len(images):.3f} CPU s/img", flush=True)

    n = len(images)
    ours_rate = n / min(wall["ours"])
    ref_rate = n / min(wall["facenet_pytorch"]) if wall["facenet_pytorch"] else None
    summary = {
        "ours_img_per_s": round(ours_rate, 2),
        "facenet_pytorch_img_per_s": None if ref_rate is None else round(ref_rate, 2),
        "ratio": None if ref_rate is None else round(ours_rate / ref_rate, 2),
    }
    for key in ("ours", "facenet_pytorch"):
        if cpu[key]:
            print(f"{key}: median {statistics.median(wall[key]):.2f} s wall, "
                  f"median {statistics.median(cpu[key]) / n:.3f} CPU s/img", flush=True)
    # morph align's default 68-point refinement (morph/landmarks68.py), per face found by ours.
    from morph.landmarks68 import LandmarkRefiner
    refiner = LandmarkRefiner()
    dets = ours.detect(images)
    n_faces = sum(len(d.scores) for d in dets)
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        for im, d in zip(images, dets):
            refiner.refine(im, d.landmarks)
        best = min(best, time.perf_counter() - t0)
    print(f"ibug68 refinement: {n_faces} faces, {1000 * best / n_faces:.1f} ms/face", flush=True)
    summary["ibug68_ms_per_face"] = round(1000 * best / n_faces, 1)
    summary["ours_with_ibug68_img_per_s"] = round(n / (min(wall["ours"]) + best), 2)
    if cpu["facenet_pytorch"]:
        summary["cpu_ratio"] = round(statistics.median(cpu["facenet_pytorch"]) / statistics.median(cpu["ours"]), 2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
