"""`morph align` speed on CPU: our MTCNN, and its default path (MTCNN + 68-point refinement),
against facenet-pytorch 2.6.0's MTCNN.

All detect faces (boxes + 5 landmarks) in the same real photos from ../shared/testdata/real
(six photos from 150x225 to 1920x1080, repeated to --images), on 2 threads. Ours gets the whole
list in one call (it groups equal sizes); facenet-pytorch gets one call per photo, since it only
batches images of one size. The default path is what ``morph align`` does before cropping:
detect, pick one face per photo (``pick_face``) and refine it to the 68 iBUG points
(``morph/align/landmarks68.py``). Rounds alternate between the three, so load from other processes hits
all alike. The img/s figures are from each one's best (least disturbed) round; CPU seconds per
image (process time, both threads; median round) are printed too, as a load-independent check.

Prints progress lines, then as its last line one JSON object:
{"ours_img_per_s": ..., "facenet_pytorch_img_per_s": ..., "ratio": ..., "ours_with_ibug68_img_per_s": ...,
 "ibug68_ratio": (default path / facenet-pytorch, img/s), "cpu_s_per_img": {...}, "cpu_ratio": ...,
 "ibug68_cpu_ratio": ..., "ibug68_ms_per_face": (every face found, best of 2)}
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

from morph.align.faces import pick_face  # noqa: E402
from morph.align.landmarks68 import LandmarkRefiner  # noqa: E402
from morph.align.mtcnn import MTCNN  # noqa: E402

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

    refiner = LandmarkRefiner()

    def run_ours():
        return [len(d.boxes) for d in ours.detect(images)]

    def run_default():
        # morph align's default: one face per photo, refined to the 68 iBUG points
        out = []
        for im, d in zip(images, ours.detect(images)):
            if len(d.scores):
                out.append(refiner.refine(im, d.landmarks[pick_face(d.boxes, d.scores, im.shape[:2])]))
        return out

    def run_ref():
        counts = []
        for im in images:
            boxes, _ = ref.detect(im)
            counts.append(0 if boxes is None else len(boxes))
        return counts

    # Warm-up on each distinct photo (allocator, oneDNN primitives, numba), and a consistency check.
    counts = [len(d.boxes) for d in ours.detect(photos)]
    refiner.refine(photos[0], ours.detect(photos[:1])[0].landmarks)
    print(f"warm-up: faces per photo (ours) {dict(zip(PHOTOS, counts))}", flush=True)
    if ref is not None:
        ref_counts = [0 if b is None else len(b) for b in (ref.detect(im)[0] for im in photos)]
        same = "same" if ref_counts == counts else f"DIFFERENT: {ref_counts}"
        print(f"warm-up: facenet-pytorch counts {same}", flush=True)

    runs = {"ours": run_ours, "ours_with_ibug68": run_default, "facenet_pytorch": run_ref}
    if ref is None:
        del runs["facenet_pytorch"]
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.rounds):
        for key, fn in runs.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            wall[key].append(dt)
            cpu[key].append(dc)
            print(f"round {r + 1}/{args.rounds} {key}: {dt:.2f} s, {len(images) / dt:.2f} img/s, "
                  f"{dc / len(images):.3f} CPU s/img", flush=True)

    n = len(images)
    rate = {k: n / min(v) for k, v in wall.items()}
    cpu_per_img = {k: statistics.median(v) / n for k, v in cpu.items()}
    for key in runs:
        print(f"{key}: median {statistics.median(wall[key]):.2f} s wall, median {cpu_per_img[key]:.3f} CPU s/img",
              flush=True)
    # Refinement alone, for every face found (the --all-faces cost).
    dets = ours.detect(images)
    n_faces = sum(len(d.scores) for d in dets)
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        for im, d in zip(images, dets):
            refiner.refine(im, d.landmarks)
        best = min(best, time.perf_counter() - t0)
    print(f"ibug68 refinement: {n_faces} faces, {1000 * best / n_faces:.1f} ms/face", flush=True)
    ref_rate = rate.get("facenet_pytorch")
    summary = {
        "ours_img_per_s": round(rate["ours"], 2),
        "facenet_pytorch_img_per_s": None if ref_rate is None else round(ref_rate, 2),
        "ratio": None if ref_rate is None else round(rate["ours"] / ref_rate, 2),
        "ours_with_ibug68_img_per_s": round(rate["ours_with_ibug68"], 2),
        "ibug68_ratio": None if ref_rate is None else round(rate["ours_with_ibug68"] / ref_rate, 2),
        "cpu_s_per_img": {k: round(v, 3) for k, v in cpu_per_img.items()},
        "cpu_ratio": None if ref_rate is None else round(cpu_per_img["facenet_pytorch"] / cpu_per_img["ours"], 2),
        "ibug68_cpu_ratio": None if ref_rate is None else round(
            cpu_per_img["facenet_pytorch"] / cpu_per_img["ours_with_ibug68"], 2),
        "ibug68_ms_per_face": round(1000 * best / n_faces, 1),
        # the figure this bench printed before: every face refined (--all-faces), MTCNN's best round
        "ours_with_ibug68_all_faces_img_per_s": round(n / (min(wall["ours"]) + best), 2),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
