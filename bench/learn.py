"""Does `refine train` learn on real faces? Realism up, identity kept, measured end to end (issue 24).

From scratch, with the installed commands:
1. the real domain (``bench/realset.py``): ``morph align`` of ``../shared/testdata/realfaces/`` and
   ``utkface/`` (about 5,400 photos), adults only, duplicates dropped, split BY PERSON into
   training faces (D_R sees them) and held-apart faces (only the judge sees them);
2. priors measured on the training faces: the embedded model fitted to their 68 points gives the
   pose and expression distribution renders are drawn from (``priors.yaml``; its statistics are
   in the JSON), so that renders and photos differ in look, not in pose;
3. ``morph sample-identities`` + ``morph render`` of training identities (seed 0) under them;
4. ``refine train`` (variant ``no_pairs``; ``--variant ours``: the paper's full method, its pairs
   made from the training photos by ``morph fit`` and ``morph render-pairs --fits``) for ``--steps``, with
   the settings of ``--config`` over these defaults, the recipe that measured best on 2 CPU cores
   within 90 minutes (issue 24; bench/README.md): widths 16 (2.1-3.8 s a step in float32 on 2
   AVX2 cores), ``residual`` G and G', no warm-up, ``lr_schedule: tail``, lr 2e-4, BEGAN ``gamma``
   1 with a k step of 0.1 (at the authors' 0.5, k stays 0 and D_R never opposes G), resize
   upsampling, a least-squares patch discriminator of the face box beside D_R (``lambda_face``
   0.1), G correcting the drawn face and the background apart (``split_background``) and L_id on
   what no colour map of the render explains (``id_loss: structure``) - the known gap's
   ``structure`` recipe - and the colour histogram term at 0.3 (``lambda_hist``: G's batch's
   colours matched to the photos' as distributions; at 1 it cost realism here), with L_id at the
   authors' weight 0.1 (at 1, the known gap's ``strict`` recipe, G kept the renders' faces:
   KID ratio 0.93), for 3,000 steps where bf16 autocast runs (``--amp auto``: CUDA, or CPUs with
   bf16 units: AMX or AVX512-BF16) and 1,000 in float32 - the most that fit 90 minutes (the
   classifier moved -0.009 at 1,000 steps, -0.024 at 2,000 on an AMX Xeon, -0.036 at 3,000 on an
   AVX-512 BF16 EPYC);
5. ``refine export-dataset`` of new identities (seed 1, hdf5, no scores) -> ``refined.h5``, and the
   raw renders of the very same draws -> ``raw.h5`` (images, identity labels, masks);
6. judged in the embedding space of dlib's ResNet (through its face chip), raw and refined alike,
   each against the held-apart real faces:
   - realism: KID (unbiased squared MMD, cubic polynomial kernel; ``refine.evaluation.metrics``);
     the distance between the set's and the real faces' mean embeddings (on unit-length
     embeddings KID is almost exactly a constant times its square: ``bench/kid_gap.py``); a
     logistic-regression classifier's 5-fold cross-validated accuracy at telling the set from
     real faces (1.0: trivially told apart, 0.5: indistinguishable);
   - identity: same- vs different-identity verification AUC inside the set, and the mean cosine
     between each raw render's embedding and its refined image's;
   - change: the mean absolute pixel difference between refined and raw (8-bit levels), on the
     rendered face and on the background;
   - a picture: raw / refined / real faces in rows (``learn.png``).
Prints progress, then one JSON object as the last line. ``--out DIR`` keeps everything and
resumes from what is there; without it, a temporary folder is used.

    python bench/learn.py [--out DIR] [--steps N] [--config extra.yaml] [--variant no_pairs|ours]
                          [--device cpu|cuda] [--paper]

``--paper``: the paper's widths and settings (lr 8e-5, no warm-up) and a longer run, for a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does (cli/common.py)

import h5py
import numpy as np
import torch

TESTDATA = ROOT.parent / "shared" / "testdata"
REALFACES = TESTDATA / "realfaces"


def sh(*args, log: Path | None = None) -> None:
    """Run one of the toolkit's commands (``morph ...`` / ``refine ...``) as a user would."""
    group = {"morph": "cli.morph", "refine": "cli.refine"}[args[0]]
    cmd = [sys.executable, "-m", group, *map(str, args[1:])]
    print("$ " + " ".join([args[0], *map(str, args[1:])]), flush=True)
    t = time.perf_counter()
    with open(log, "a") if log else open(os.devnull, "w") as f:
        p = subprocess.run(cmd, cwd=ROOT, stdout=f if log else None, stderr=subprocess.STDOUT if log else None)
    if p.returncode:
        raise SystemExit(f"{args[0]} {args[1]} failed (exit {p.returncode})" + (f"; see {log}" if log else ""))
    print(f"  ({time.perf_counter() - t:.0f} s)", flush=True)


def work_dir(out: Path | None) -> tuple[tempfile.TemporaryDirectory | None, Path]:
    """``out`` (created; kept, and resumed from), or a temporary folder (hold the first value)."""
    if out is None:
        tmp = tempfile.TemporaryDirectory()
        return tmp, Path(tmp.name)
    out.mkdir(parents=True, exist_ok=True)
    return None, out


def read_set(path: Path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    with h5py.File(path, "r") as f:
        labels = f["labels"][()] if "labels" in f else None
        masks = f["masks"][()] if "masks" in f else None
        return f["images"][()], labels, masks


def classifier_accuracy(a: np.ndarray, b: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """5-fold cross-validated accuracy of an L2-regularised logistic regression telling the rows
    of ``a`` from those of ``b`` (equal numbers of each, drawn with ``seed``)."""
    rng = np.random.default_rng(seed)
    n = min(len(a), len(b))
    x = np.concatenate([a[rng.permutation(len(a))[:n]], b[rng.permutation(len(b))[:n]]])
    y = np.r_[np.zeros(n), np.ones(n)]
    order = rng.permutation(2 * n)
    x, y = x[order], y[order]
    right = 0
    for f in range(folds):
        test = np.arange(2 * n) % folds == f
        mu, sd = x[~test].mean(0), x[~test].std(0) + 1e-8
        xt = torch.tensor((x[~test] - mu) / sd)
        yt = torch.tensor(y[~test])
        w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
        b0 = torch.zeros((), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b0], max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b0, yt) + 1e-3 * (w * w).sum()
            loss.backward()
            return loss
        opt.step(closure)
        with torch.no_grad():
            pred = (torch.tensor((x[test] - mu) / sd) @ w + b0) > 0
        right += int((pred.numpy() == y[test].astype(bool)).sum())
    return right / (2 * n)


def verification_auc(e: np.ndarray, labels: np.ndarray) -> float:
    from refine.evaluation.metrics import auc, roc_curve

    iu = np.triu_indices(len(labels), 1)
    d = np.sqrt(np.clip(2 - 2 * (e @ e.T), 0, None))[iu]
    same = (labels[:, None] == labels[None])[iu]
    return auc(roc_curve(d[same], d[~same]))


def judge(name: str, labels: np.ndarray, e: np.ndarray, e_real: np.ndarray) -> dict:
    from refine.evaluation.metrics import polynomial_mmd2

    out = {"images": len(e), "identities": int(len(np.unique(labels))),
           "kid": round(polynomial_mmd2(e, e_real), 5),
           "mean_embedding_distance": round(float(np.linalg.norm(e.mean(0) - e_real.mean(0))), 4),
           "real_vs_set_accuracy": round(classifier_accuracy(e, e_real), 4),
           "verification_auc": round(verification_auc(e, labels), 4)}
    print(f"  {name}: {out}", flush=True)
    return out


def picture(raw: np.ndarray, refined: np.ndarray, real: np.ndarray, path: Path, n: int = 10) -> None:
    from PIL import Image

    rows = [np.concatenate(list(s[:n]), 1) for s in (raw, refined, real)]
    Image.fromarray(np.concatenate(rows, 0)).save(path)


def real_domain(d: Path, log: Path, heldout: float) -> tuple[dict, dict]:
    """Steps 1 and 2: the person-split real sets and the priors measured on the training faces."""
    import realset

    aligned = {}
    for name in ("realfaces", "utkface"):
        aligned[name] = d / f"aligned_{name}.h5"
        sh("morph", "align", TESTDATA / name, "-o", aligned[name], log=log)
    split_json = d / "real_split.json"
    if (d / "real_train.h5").exists():
        with h5py.File(d / "real_train.h5", "r") as f:
            stale = "origin" not in f  # made before the split recorded its faces' rows
        if stale:
            split_json.unlink(missing_ok=True)
    if not split_json.exists():
        split_json.write_text(json.dumps(realset.split(d, aligned, heldout)))
    split = json.loads(split_json.read_text())
    print(f"real faces: {split}", flush=True)
    priors_json = d / "priors.json"
    if not priors_json.exists():
        priors_json.write_text(json.dumps(realset.measure_priors(d / "real_train.h5", d / "priors.yaml")))
    priors = json.loads(priors_json.read_text())
    print(f"priors measured on the training faces: {priors}", flush=True)
    return split, priors


def real_pairs(d: Path, log: Path) -> dict:
    """The paper's pairs for the full method (variant ``ours``, issue 25): ``morph fit`` of each
    photo folder (landmarks, then colour and light) and ``morph render-pairs --fits``; the pairs
    of the training people's faces (``real_train.h5``'s ``origin``) go to ``pairs_train.h5``.
    ``morph fit`` finds, picks and aligns faces as ``morph align`` does, so its rows are those of
    ``aligned_NAME.h5``: checked image for image."""
    with h5py.File(d / "real_train.h5", "r") as f:
        origin, train_images = f["origin"][()], f["images"][()]
    out = d / "pairs_train.h5"
    parts = []
    for i, name in enumerate(("realfaces", "utkface")):
        sh("morph", "fit", TESTDATA / name, "-o", d / f"fits_{name}.h5", log=log)
        sh("morph", "render-pairs", "--fits", d / f"fits_{name}.h5", "-o", d / f"pairs_{name}.h5", log=log)
        rows = origin[origin[:, 0] == i, 1]
        with h5py.File(d / f"pairs_{name}.h5", "r") as g:
            parts.append({k: g[k][()][rows] for k in ("real", "render", "mask")})
    pairs = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    order = np.concatenate([np.flatnonzero(origin[:, 0] == i) for i in range(len(parts))])
    if not np.array_equal(pairs["real"], train_images[order]):
        raise SystemExit("morph fit's faces are not morph align's (another detector or crop?): pairs not made")
    if not out.exists():
        tmp = out.with_name(out.name + ".partial")
        with h5py.File(tmp, "w") as f:
            for k, v in pairs.items():
                f[k] = v
            f.attrs["complete"] = True
            f.attrs["source"] = "training people's faces of " + ", ".join(f"pairs_{n}.h5" for n in ("realfaces", "utkface"))
        tmp.replace(out)
    with h5py.File(d / "fits_realfaces.h5", "r") as f, h5py.File(d / "fits_utkface.h5", "r") as g:
        err = np.concatenate([f["photometric_error"][()], g["photometric_error"][()]])
        lm = np.concatenate([f["landmark_error"][()], g["landmark_error"][()]])
    return {"pairs": int(len(pairs["real"])), "photometric_error_median": round(float(np.nanmedian(err)), 1),
            "landmark_error_median_px": round(float(np.median(lm)), 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="keep everything here (and resume from it)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=None,
                    help="training steps (default: 3000 with bf16 autocast, 1000 in float32; --paper 20000)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--amp", choices=("auto", "on", "off"), default="auto",
                    help="bfloat16 autocast (auto: on CUDA and on CPUs with bf16 units, AMX or AVX512-BF16)")
    ap.add_argument("--train-identities", type=int, default=50)
    ap.add_argument("--train-images", type=int, default=32, help="renders per training identity")
    ap.add_argument("--identities", type=int, default=100, help="new identities exported and judged")
    ap.add_argument("--images", type=int, default=4, help="images per judged identity")
    ap.add_argument("--heldout", type=float, default=0.3, help="share of the real faces held apart (by person)")
    ap.add_argument("--paper", action="store_true", help="the paper's widths and a longer run (a GPU)")
    ap.add_argument("--config", type=Path, default=None, help="TrainConfig YAML keys over the defaults")
    ap.add_argument("--variant", choices=("no_pairs", "ours"), default="no_pairs",
                    help="ours: the paper's full method, with pairs of the training photos and renders of their fits")
    a = ap.parse_args()
    cfg = {"g_width": 32, "d_hidden": 64, "lr": 8e-5} if a.paper else \
        {"g_width": 16, "d_hidden": 16, "lr": 2e-4, "warmup_steps": 0, "lambda_k": 0.1, "lambda_c": 0.01,
         "residual": True, "lr_schedule": "tail", "gamma": 1.0, "upsample": "resize", "lambda_face": 0.1,
         "split_background": True, "id_loss": "structure", "lambda_hist": 0.3}
    from refine.export.refiner import cpu_bf16_units

    amp = a.amp == "on" or (a.amp == "auto" and (a.device.startswith("cuda") or cpu_bf16_units()))
    # The most steps that fit the 90 minutes on 2 cores: 3,000 in bf16 (80 minutes in all on
    # an AVX-512 BF16 EPYC at 1.5 s a step; 1.3 s on an AMX Xeon), 1,000 in float32 (39-72 minutes
    # on AVX2 cores, 2.1-3.8 s a step).
    steps = a.steps or (20000 if a.paper else 3000 if amp else 1000)
    t0 = time.perf_counter()
    tmp, d = work_dir(a.out)
    log = d / "commands.log"
    timing = {}

    def stage(name, t):
        timing[name] = round(time.perf_counter() - t)
        return time.perf_counter()

    t = time.perf_counter()
    split, priors = real_domain(d, log, a.heldout)
    t = stage("real_domain_s", t)
    pairs = real_pairs(d, log) if a.variant == "ours" else None
    if pairs is not None:
        print(f"pairs of the training faces: {pairs}", flush=True)
        t = stage("fit_s", t)
    sh("morph", "sample-identities", "--model", "default", "--priors", d / "priors.yaml", "--n-identities",
       a.train_identities, "--images-per-identity", a.train_images, "--seed", 0, "-o", d / "train_ids.h5", log=log)
    sh("morph", "render", d / "train_ids.h5", "-o", d / "synthetic.h5", log=log)
    t = stage("render_s", t)
    import yaml
    cfg.update({"amp": amp, "log_every": 20, "grid_every": 200, "checkpoint_every": 200, "device": a.device})
    if a.config is not None:
        cfg.update(yaml.safe_load(a.config.read_text()) or {})
    (d / "train.yaml").write_text(yaml.safe_dump(cfg))
    run = d / "run"
    last = run / "checkpoints" / f"step_{steps:08d}.pt"
    if not last.exists():
        resume = ["--resume"] if (run / "checkpoints").is_dir() and any((run / "checkpoints").glob("*.pt")) else []
        sh("refine", "train", "--synthetic", d / "synthetic.h5", "--real", d / "real_train.h5", "--out", run,
           "--variant", a.variant, *(("--pairs", d / "pairs_train.h5") if pairs else ()), "--steps", steps,
           "--batch-size", a.batch_size, "--config", d / "train.yaml", *resume, log=log)
    t = stage("train_s", t)
    sh("refine", "export-dataset", "--checkpoint", last, "--model", "default", "--priors", d / "priors.yaml",
       "--n-identities", a.identities, "--images-per-identity", a.images, "--seed", 1, "--format", "hdf5",
       "--no-scores", "--device", a.device, "--out", d / "export", log=log)
    sh("morph", "sample-identities", "--model", "default", "--priors", d / "priors.yaml", "--n-identities",
       a.identities, "--images-per-identity", a.images, "--seed", 1, "-o", d / "judged_ids.h5", log=log)
    sh("morph", "render", d / "judged_ids.h5", "-o", d / "raw.h5", log=log)
    refined_h5 = d / "refined.h5"
    if not refined_h5.exists():
        os.link(d / "export" / "ganfaces.h5", refined_h5)
    t = stage("export_s", t)

    import realset
    raw, raw_labels, masks = read_set(d / "raw.h5")
    refined, ref_labels, _ = read_set(refined_h5)
    real, _, _ = read_set(d / "real_heldout.h5")
    with h5py.File(d / "raw.h5", "r") as f, h5py.File(refined_h5, "r") as g:
        assert np.array_equal(f["params/pose"][()], g["params/pose"][()]), "raw and refined are other draws"
    assert np.array_equal(raw_labels, ref_labels)
    print("embedding raw, refined and held-apart real faces with dlib's ResNet ...", flush=True)
    e_raw, e_ref, e_real = realset.embed(raw), realset.embed(refined), realset.embed(real)
    out = {"settings": {"steps": steps, "batch_size": a.batch_size, "variant": a.variant, **cfg,
                        "train_identities": a.train_identities, "train_images": a.train_images},
           "real": split, "priors": priors, **({"pairs": pairs} if pairs else {}),
           "raw": judge("raw renders", raw_labels, e_raw, e_real),
           "refined": judge("refined", ref_labels, e_ref, e_real)}
    diff = np.abs(refined.astype(np.int16) - raw.astype(np.int16)).mean(-1)
    out["change"] = {"mean_abs_pixel_levels": round(float(diff.mean()), 2),
                     "face_levels": round(float(diff[masks].mean()), 2),
                     "background_levels": round(float(diff[~masks].mean()), 2),
                     "raw_refined_cosine": round(float((e_raw * e_ref).sum(1).mean()), 4),
                     "unrelated_cosine": round(float((e_raw * e_ref[np.random.default_rng(0).permutation(len(e_ref))])
                                                     .sum(1).mean()), 4)}
    r, f = out["raw"], out["refined"]
    out["kid_ratio"] = round(f["kid"] / r["kid"], 3) if r["kid"] > 0 else None
    out["mean_distance_ratio"] = round(f["mean_embedding_distance"] / r["mean_embedding_distance"], 3)
    out["classifier_change"] = round(f["real_vs_set_accuracy"] - r["real_vs_set_accuracy"], 4)
    out["auc_change"] = round(f["verification_auc"] - r["verification_auc"], 4)
    out["targets"] = {"kid_ratio_at_most": 0.7, "mean_distance_lower": True, "classifier_change_at_most": -0.05,
                      "auc_change_at_least": -0.02}
    out["met"] = bool(out["kid_ratio"] is not None and out["kid_ratio"] <= 0.7 and out["mean_distance_ratio"] < 1
                      and out["classifier_change"] <= -0.05 and out["auc_change"] >= -0.02)
    picture(raw, refined, real, d / "learn.png")
    stage("judge_s", t)
    out["seconds"] = {**timing, "total": round(time.perf_counter() - t0)}
    out["picture"] = str(d / "learn.png") if a.out else None
    print(json.dumps(out))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
