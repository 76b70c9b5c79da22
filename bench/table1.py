"""What is a dataset worth? The paper's Table 1 at this machine's scale, end to end.

With the installed commands:
1. ``morph sample-identities`` + ``morph render``: the training identities of the default model
   (seed 3, ``--train-identities`` x ``--train-images``; a ``refine train`` checkpoint refuses to
   export the identities it trained on, and ``bench/learn.py``'s trained on seed 0);
2. the same for held-out identities (seed 2): a benchmark of identities no row trains on;
3. ``morph align`` of the photos of ``../shared/testdata/realfaces/`` whose file names carry an
   identity (``0_0_NAME_NNNN.jpg``, the RMFD part of the folder: 92 people with 2 or more photos),
   a folder per person: a benchmark of real faces;
4. a ``refine train`` checkpoint (``--checkpoint``, or a short run of ``--refine-steps`` on renders
   of other identities (seed 5) and the aligned real photos, as ``bench/learn.py`` trains), then
   ``refine export-dataset`` of the training identities' very draws (seed 3, no scores);
5. ``refine table1``: the untrained recogniser, the recipe on the raw renders and on the refined
   images, each verified on both benchmarks (10-fold accuracy, AUC, TAR@FAR).

``--real``: the real rows on real people (issue 26). ``morph align`` of
``../shared/testdata/labelled/`` as labelled sets (a folder per person; the largest face near the
centre of CelebA's uncropped photos); CelebA split by person (``--real-people`` of them, drawn with
seed 0, train the real rows); the other CelebA people and the 24 Glint celebrities are the real
benchmarks, beside the held-out renders. Rows: untrained, real, real + rendered, real + refined,
rendered, refined, one recipe for all; the sets of a row are concatenated, so the share of real
images in a batch is the real set's share of the row's images (in the JSON). ``--seeds N`` runs
the real and real + rendered rows with N recogniser seeds (the others with the first), so a
difference smaller than the spread reads as noise. ``--only-real``: the untrained and real rows
alone, to choose the recipe (steps, width, margin) on real data before any synthetic row runs.

Prints progress and the table, then one JSON object as the last line, with the recipe's CPU
seconds per row. ``--out DIR`` keeps everything and resumes from what is there.

    python bench/table1.py [--out DIR] [--steps 800] [--checkpoint RUN/checkpoints/step_N.pt]
    python bench/table1.py --real [--real-people 100] [--seeds 3] [--only-real] [--checkpoint ...]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does (cli/common.py)

import h5py  # noqa: E402
import numpy as np  # noqa: E402

from learn import REALFACES, TESTDATA, sh, work_dir  # noqa: E402 - bench/learn.py: run commands as a user would

TRAIN_SEED = 3
RMFD_NAME = re.compile(r"^0_0_(.+)_(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)


def rmfd_folders(out: Path) -> int:
    """Links to the named photos of realfaces/, a folder per person with 2+ photos; returns people."""
    people: dict[str, list[Path]] = {}
    for p in sorted(REALFACES.iterdir()):
        m = RMFD_NAME.match(p.name)
        if m:
            people.setdefault(m.group(1), []).append(p)
    n = 0
    for name, photos in people.items():
        if len(photos) < 2:
            continue
        (out / name).mkdir(parents=True, exist_ok=True)
        for p in photos:
            link = out / name / p.name
            if not link.exists():
                link.symlink_to(p)
        n += 1
    return n


LABELLED = TESTDATA / "labelled"


def write_people(path: Path, images: np.ndarray, labels: np.ndarray, source: str) -> int:
    """A labelled image set of ``images`` with their people numbered 0..K-1; returns K."""
    people, labels = np.unique(labels, return_inverse=True)
    tmp = path.with_name(path.name + ".partial")
    with h5py.File(tmp, "w") as f:
        f["images"] = images
        f["labels"] = labels.astype(np.int64)
        f.attrs["complete"] = True
        f.attrs["source"] = source
    tmp.replace(path)
    return len(people)


def labelled_people(d: Path, log: Path, train_people: int, seed: int = 0) -> dict:
    """``morph align`` of labelled/celeba and labelled/glint24; CelebA split by person into
    ``celeba_train.h5`` (``train_people`` people) and ``celeba_heldout.h5``; returns the counts."""
    for name in ("celeba", "glint24"):
        sh("morph", "align", LABELLED / name, "-o", d / f"{name}.h5", log=log)
    with h5py.File(d / "celeba.h5", "r") as f:
        images, labels = f["images"][()], f["labels"][()]
    people = np.unique(labels)
    if not 2 <= train_people <= len(people) - 2:
        raise SystemExit(f"--real-people {train_people}: CelebA has {len(people)} people here; leave 2 or more apart.")
    train = np.isin(labels, np.random.default_rng(seed).permutation(people)[:train_people])
    counts = {}
    for name, rows in (("celeba_train", train), ("celeba_heldout", ~train)):
        k = write_people(d / f"{name}.h5", images[rows], labels[rows], str(LABELLED / "celeba"))
        counts[name] = {"people": k, "faces": int(rows.sum())}
    with h5py.File(d / "glint24.h5", "r") as f:
        counts["glint24"] = {"people": int(len(np.unique(f["labels"][()]))), "faces": int(len(f["labels"]))}
    return counts


def row_summary(table: dict) -> dict:
    return {r["row"]: {"benchmarks": r["benchmarks"], "cpu_seconds": r.get("time", {}).get("cpu_seconds"),
                       "images": sum(s["images"] for s in r["sets"]), "identities": r["identities"],
                       "real_share": (round(r["sets"][0]["images"] / sum(s["images"] for s in r["sets"]), 3)
                                      if r["row"].startswith("real") else 0.0)}
            for r in table["rows"]}


def seed_spread(tables: list[dict]) -> dict:
    """Per row run with several seeds and per benchmark: accuracy and AUC, mean and std over seeds."""
    out = {}
    for row in ("real", "real+rendered"):
        runs = [t[row] for t in tables if row in t]
        if len(runs) < 2:
            continue
        out[row] = {b: {m: {"mean": round(float(np.mean([r["benchmarks"][b][m] for r in runs])), 4),
                            "std": round(float(np.std([r["benchmarks"][b][m] for r in runs], ddof=1)), 4)}
                        for m in ("accuracy", "auc")}
                    for b in runs[0]["benchmarks"]}
        out[row]["seeds"] = len(runs)
    # the gain of adding renders, seed by seed (the same seed draws the same real batches' order and
    # the same verification pairs), so that a gain smaller than its spread reads as noise
    paired = [t for t in tables if "real" in t and "real+rendered" in t]
    if len(paired) >= 2:
        out["real+rendered_minus_real"] = {
            b: {m: {"mean": round(float(np.mean(d := [t["real+rendered"]["benchmarks"][b][m]
                                                      - t["real"]["benchmarks"][b][m] for t in paired])), 4),
                    "std": round(float(np.std(d, ddof=1)), 4), "per_seed": [round(float(x), 4) for x in d]}
                for m in ("accuracy", "auc")}
            for b in paired[0]["real"]["benchmarks"]}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="keep everything here (and resume from it)")
    ap.add_argument("--train-identities", type=int, default=200)
    ap.add_argument("--train-images", type=int, default=12)
    ap.add_argument("--heldout-identities", type=int, default=100)
    ap.add_argument("--heldout-images", type=int, default=6)
    ap.add_argument("--steps", type=int, default=800, help="recogniser steps per row")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--margin", default="cosface")
    ap.add_argument("--margin-m", type=float, default=None)
    ap.add_argument("--margin-s", type=float, default=None)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--pairs", type=int, default=1000, help="same and different pairs per benchmark")
    ap.add_argument("--checkpoint", type=Path, default=None, help="a refine train checkpoint (default: train one)")
    ap.add_argument("--refine-steps", type=int, default=300)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--real", action="store_true", help="the real rows on real people (labelled/)")
    ap.add_argument("--real-people", type=int, default=100, help="with --real: CelebA people the real rows train on")
    ap.add_argument("--seeds", type=int, default=3, help="with --real: seeds of the real and real+rendered rows")
    ap.add_argument("--only-real", action="store_true", help="with --real: the untrained and real rows alone")
    a = ap.parse_args()
    t0 = time.perf_counter()
    tmp, d = work_dir(a.out)  # noqa: F841 - tmp holds the temporary folder until the end
    log = d / "commands.log"
    # 1-2. renders
    for name, seed, n, k in (("train", TRAIN_SEED, a.train_identities, a.train_images),
                             ("heldout", 2, a.heldout_identities, a.heldout_images)):
        sh("morph", "sample-identities", "--model", "default", "--n-identities", n, "--images-per-identity", k,
           "--seed", seed, "-o", d / f"{name}_ids.h5", log=log)
        sh("morph", "render", d / f"{name}_ids.h5", "-o", d / f"{name}.h5", log=log)
    # 3. real faces of named people
    if a.real:
        counts = labelled_people(d, log, a.real_people)
        print(f"real people: {counts}", flush=True)
        benchmarks = [d / "celeba_heldout.h5", d / "glint24.h5", d / "heldout.h5"]
    else:
        people = rmfd_folders(d / "rmfd_photos")
        sh("morph", "align", d / "rmfd_photos", "-o", d / "rmfd.h5", log=log)
        print(f"real benchmark: {people} people", flush=True)
        benchmarks = [d / "heldout.h5", d / "rmfd.h5"]
    recipe = ["--pairs", a.pairs, "--steps", a.steps, "--batch-size", a.batch_size, "--width", a.width,
              "--margin", a.margin, "--lr", a.lr, *(["--margin-m", a.margin_m] if a.margin_m is not None else []),
              *(["--margin-s", a.margin_s] if a.margin_s is not None else []), "--device", a.device,
              *(x for b in benchmarks for x in ("--set", b))]
    if a.real and a.only_real:
        sh("refine", "table1", "-o", d / "table1_real", "--real", d / "celeba_train.h5", *recipe, log=log)
        report(d / "table1_real", a, None, t0, [])
        return
    # 4. refined images of the training identities' draws
    checkpoint = a.checkpoint
    if checkpoint is None:
        sh("morph", "align", REALFACES, "-o", d / "real_all.h5", log=log)
        sh("morph", "sample-identities", "--model", "default", "--n-identities", 50, "--images-per-identity", 32,
           "--seed", 5, "-o", d / "gan_ids.h5", log=log)
        sh("morph", "render", d / "gan_ids.h5", "-o", d / "gan_synthetic.h5", log=log)
        cfg = d / "gan.yaml"
        cfg.write_text("g_width: 16\nd_hidden: 32\nwarmup_steps: 100\nlambda_k: 0.01\nlambda_c: 0.01\n"
                       "checkpoint_every: 100\nlog_every: 20\ngrid_every: 100\n")
        run = d / "gan"
        checkpoint = run / "checkpoints" / f"step_{a.refine_steps:08d}.pt"
        if not checkpoint.exists():
            resume = ["--resume"] if (run / "checkpoints").is_dir() and any((run / "checkpoints").glob("*.pt")) else []
            sh("refine", "train", "--synthetic", d / "gan_synthetic.h5", "--real", d / "real_all.h5", "--out", run,
               "--variant", "no_pairs", "--steps", a.refine_steps, "--batch-size", 16, "--lr", 2e-4,
               "--config", cfg, "--device", a.device, *resume, log=log)
    sh("refine", "export-dataset", "--checkpoint", checkpoint, "--model", "default",
       "--n-identities", a.train_identities, "--images-per-identity", a.train_images, "--seed", TRAIN_SEED,
       "--format", "hdf5", "--no-scores", "--device", a.device, "--out", d / "refined", log=log)
    # 5. the table
    real = ["--real", d / "celeba_train.h5"] if a.real else []
    sh("refine", "table1", "-o", d / "table1", *real, "--rendered", d / "train.h5", "--refined", d / "refined",
       *recipe, log=log)
    seeds = []
    for seed in range(1, a.seeds if a.real else 1):
        sh("refine", "table1", "-o", d / f"table1_seed{seed}", *real, "--rendered", d / "train.h5", *recipe,
           "--seed", seed, "--row", "real", "--row", "real+rendered", log=log)
        seeds.append(d / f"table1_seed{seed}")
    report(d / "table1", a, checkpoint, t0, seeds)


def report(table_dir: Path, a, checkpoint, t0: float, seed_dirs: list[Path]) -> None:
    table = json.loads((table_dir / "table1.json").read_text())
    print((table_dir / "table1.md").read_text(), flush=True)
    rows = row_summary(table)
    out = {"recipe": {k: table["recipe"][k] for k in ("arch", "width", "crop", "margin", "margin_m", "margin_s", "steps",
                                                       "batch_size", "lr", "augment", "seed")},
           "checkpoint": str(checkpoint), "rows": rows}
    if "rendered" in rows:
        out["rendered_minus_untrained_accuracy"] = {
            b: round(rows["rendered"]["benchmarks"][b]["accuracy"] - rows["untrained"]["benchmarks"][b]["accuracy"], 4)
            for b in rows["untrained"]["benchmarks"]}
    if seed_dirs:
        tables = [rows] + [row_summary(json.loads((s / "table1.json").read_text())) for s in seed_dirs]
        out["over_seeds"] = seed_spread(tables)
    out["seconds"] = round(time.perf_counter() - t0)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
