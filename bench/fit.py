"""How well and how fast ``morph fit`` fits the embedded model to a folder of photos (issue 25).

With the installed commands, on ``../shared/testdata/realfaces/`` (1,446 photos) by default:
1. ``morph fit PHOTOS -o fits.h5`` (detect, pick, refine to 68 points, fit pose, identity shape and
   expression, then colour and light; its wall time covers all of that);
2. the landmark fit alone (``morph.fitting.landmarks.LandmarkFitter``) timed on the same faces'
   detected 68 points, batched, best of 3: faces per second;
3. the photometric fit alone (``morph.fitting.photometric.PhotometricFitter``, colour and light
   from the aligned crops, the geometry given) timed once over every face in batches of 16: faces
   per second, and its error (levels, over the face pixels fitted) median and 95th percentile;
4. the landmark fit's quality: the share of photos fitted, the reprojection error of the 68 points
   (photo pixels, and as a share of the face box's side, as 3DDFA's NME normalises by the box),
   median and 95th percentile;
5. ``morph render-pairs --fits`` and a sheet ``fit_sheet.png``: per face the aligned photo, the
   render of its fit in the same crop, and the photo with the fitted 68 points (green) over the
   detected ones (red), the worst fits last.

Threads: torch's default (the machine's cores), as ``morph fit`` runs. Prints progress, then one
JSON object as the last line. ``--out DIR`` keeps everything and resumes.

    python bench/fit.py [--photos DIR] [--out DIR] [--model default]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import h5py
import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learn import REALFACES, sh, work_dir  # noqa: E402 - run commands as a user would


def crop_points(points: np.ndarray, five: np.ndarray, size: int, template: str | None) -> np.ndarray:
    """(N, 68, 2) photo points (MTCNN's 1-based convention) -> the aligned crop's pixel frame."""
    from morph.align.faces import crop_transform
    from morph.align.mtcnn import LANDMARK_CENTRE_OFFSET

    m = crop_transform(five, size, template)  # (N, 2, 3), points + offset -> template frame
    p = points + LANDMARK_CENTRE_OFFSET
    return np.einsum("nij,nkj->nki", m[:, :, :2], p) + m[:, None, :, 2]


def sheet(real: np.ndarray, render: np.ndarray, fitted: np.ndarray, detected: np.ndarray, path: Path) -> None:
    """Rows of (photo crop | render of its fit | photo with fitted (green) and detected (red) points)."""
    size = real.shape[1]
    rows = []
    for a, b, p, q in zip(real, render, fitted, detected):
        over = Image.fromarray(a).resize((2 * size, 2 * size), Image.Resampling.BILINEAR)
        draw = ImageDraw.Draw(over)
        for pts, colour in ((q, (255, 40, 40)), (p, (40, 255, 40))):
            for x, y in pts * 2:
                draw.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=colour)
        over = np.asarray(over.resize((size, size), Image.Resampling.LANCZOS))
        rows.append(np.concatenate([a, b, over], 1))
    cols = 4
    while len(rows) % cols:
        rows.append(np.zeros_like(rows[0]))
    grid = np.concatenate([np.concatenate(rows[i:i + cols], 1) for i in range(0, len(rows), cols)], 0)
    Image.fromarray(grid).save(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=Path, default=REALFACES)
    ap.add_argument("--out", type=Path, default=None, help="keep everything here (and resume from it)")
    ap.add_argument("--model", default="default")
    ap.add_argument("--sheet", type=int, default=24, help="faces on the sheet (half the best, half the worst)")
    a = ap.parse_args()
    tmp, d = work_dir(a.out)  # noqa: F841 - tmp holds the temporary folder until the end
    log = d / "commands.log"
    resumed = (d / "fits.h5").is_file()  # then its time is not the whole fit's
    t0 = time.perf_counter()
    sh("morph", "fit", a.photos, "-o", d / "fits.h5", "--model", a.model, log=log)
    fit_wall = None if resumed else time.perf_counter() - t0
    sh("morph", "render-pairs", "--fits", d / "fits.h5", "-o", d / "pairs.h5", log=log)

    from morph.align.template import template_of
    from morph.fitting.landmarks import LandmarkFitter
    from morph.formats.named import load_model

    with h5py.File(d / "fits.h5", "r") as f:
        detected, fitted = f["landmarks68"][()], f["fit_landmarks68"][()]
        five, boxes, error = f["landmarks5"][()], f["boxes"][()], f["landmark_error"][()]
        n_photos, size, template = int(f.attrs["n_photos"]), int(f["images"].shape[1]), template_of(f.attrs)
        n_faces, sources = len(error), list(f["source"].asstr()[()])
    model = load_model(a.model)
    fitter = LandmarkFitter(model, contour=True)  # as morph fit fits
    from morph.align.mtcnn import LANDMARK_CENTRE_OFFSET

    from morph.fitting.photometric import PhotometricFitter
    from morph.model.priors import load_priors

    keys = ("identity/alpha", "image/beta", "image/pose", "fit_scale", "fit_translation", "landmarks5")
    with h5py.File(d / "fits.h5", "r") as f:
        geometry = {k: f[k][()] for k in keys}
        crops = f["images"][()]
    light = load_priors(None).groups["sh"]
    colour = PhotometricFitter(model, size, template, light=light)
    start = np.repeat(light.mean.reshape(1, 9, 3), 16, 0).astype(np.float32)
    s = time.perf_counter()
    photometric = np.concatenate([colour.fit(crops[i:i + 16], {k: v[i:i + 16] for k, v in geometry.items()},
                                             start[:len(crops[i:i + 16])]).error for i in range(0, n_faces, 16)])
    photometric_s = time.perf_counter() - s

    times = []
    for _ in range(3):
        s = time.perf_counter()
        fitter.fit(detected + LANDMARK_CENTRE_OFFSET)
        times.append(time.perf_counter() - s)
    side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    nme = error / side
    order = np.argsort(nme)
    k = a.sheet // 2
    pick = np.concatenate([order[:k], order[-k:]])
    with h5py.File(d / "pairs.h5", "r") as g:
        real, render = g["real"][()][pick], g["render"][()][pick]
    sheet(real, render, crop_points(fitted[pick], five[pick], size, template),
          crop_points(detected[pick], five[pick], size, template), d / "fit_sheet.png")
    out = {"photos": n_photos, "faces_fitted": n_faces, "fitted_share": round(n_faces / n_photos, 4),
           "morph_fit_wall_s": fit_wall and round(fit_wall, 1),
           "morph_fit_photos_per_s": fit_wall and round(n_photos / fit_wall, 2),
           "landmark_fit_faces_per_s": round(n_faces / min(times), 1),
           "photometric_fit_faces_per_s": round(n_faces / photometric_s, 1),
           "photometric_error_levels": {"median": round(float(np.nanmedian(photometric)), 1),
                                        "p95": round(float(np.nanpercentile(photometric, 95)), 1),
                                        "not_fitted": int(np.isnan(photometric).sum())},
           "reprojection_px": {"median": round(float(np.median(error)), 2),
                               "p95": round(float(np.percentile(error, 95)), 2)},
           "reprojection_share_of_box": {"median": round(float(np.median(nme)), 4),
                                         "p95": round(float(np.percentile(nme, 95)), 4)},
           "worst": [sources[i] for i in order[-5:][::-1]],
           "sheet": str(d / "fit_sheet.png"), "model": a.model}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
