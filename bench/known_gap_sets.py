"""The render sets of ``bench/known_gap.py`` (issue 24): made by the toolkit's morph commands,
the pool dealt into training and "real" identities by skin tone, and the colour matcher whose gap
closed is the ceiling of what a refiner can learn from the two sets."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]

#: the renders: (name, first identity, identities, images each); ``pool`` is dealt into ``train`` and
#: ``real`` by ``stratified_split`` (40 identities each)
SETS = (("pool", 0, 80, 8), ("heldout", 80, 20, 4))
#: ``--small``'s sets (the test's reduced form): the earlier split by identity number
SMALL_SETS = (("train", 0, 16, 8), ("real", 40, 16, 8), ("heldout", 80, 8, 4))


def morph(*args) -> None:
    cmd = [sys.executable, "-m", "cli.morph", *map(str, args)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"morph {args[0]} failed (exit {p.returncode}):\n{p.stdout}\n{p.stderr}")


def renders(d: Path, size: int, threads: int, sets=SETS) -> dict[str, Path]:
    """The render sets of ``sets`` ((name, first identity, identities, images each)) at ``size`` px
    in ``d``, made once by the morph commands and reused; a ``pool`` is dealt into ``train`` and
    ``real`` (``stratified_split``)."""
    out = {}
    for name, first, n, k in sets:
        ids, path = d / f"ids_{name}.h5", d / f"{name}_{size}.h5"
        if not path.exists():
            print(f"morph sample-identities + render: {name} (identities {first}-{first + n - 1}, {k} each)",
                  flush=True)
            morph("sample-identities", "--model", "default", "--n-identities", n, "--images-per-identity", k,
                  "--seed", 0, "--first-identity", first, "-o", ids)
            morph("render", ids, "--size", size, "--threads", threads, "-o", path)
        out[name] = path
    if "pool" in out:
        out.update(stratified_split(out.pop("pool"), d, size))
    return out


def stratified_split(pool: Path, d: Path, size: int) -> dict[str, Path]:
    """Deal the pool's identities into ``train`` and ``real`` with the same spread of skin tones:
    sorted by their faces' mean brightness, each neighbouring pair split between the sets (the
    darker to ``train`` in even pairs, to ``real`` in odd ones), since a refiner learns any
    difference between the two sets' skin tones as part of T (the split by identity number left
    the "real" faces 5 levels brighter; bench/README.md). Files ``train_strat_S.h5`` and
    ``real_strat_S.h5``: every dataset of the pool's file cut to the set's rows, attributes kept."""
    paths = {name: d / f"{name}_strat_{size}.h5" for name in ("train", "real")}
    if all(p.exists() for p in paths.values()):
        return paths
    with h5py.File(pool, "r") as f:
        labels, images, masks = f["labels"][()], f["images"][()], f["masks"][()]
        ids = np.unique(labels)
        brightness = np.array([images[labels == i][masks[labels == i]].mean() for i in ids])
        pairs = ids[np.argsort(brightness, kind="stable")].reshape(-1, 2)
        train_ids = np.array([p[k % 2] for k, p in enumerate(pairs)])
        for name, rows in (("train", np.isin(labels, train_ids)), ("real", ~np.isin(labels, train_ids))):
            tmp = paths[name].with_name(paths[name].name + ".partial")
            with h5py.File(tmp, "w") as g:
                def cut(key, obj, g=g, rows=rows):
                    if isinstance(obj, h5py.Dataset):
                        g[key] = obj[()][rows] if obj.shape and obj.shape[0] == len(labels) else obj[()]
                f.visititems(cut)
                g.attrs.update(dict(f.attrs))
                g.attrs["n_images"] = int(rows.sum())
                g.attrs["source"] = f"bench/known_gap.py: {name} identities of {pool.name}, split by skin tone"
            os.replace(tmp, paths[name])
    return paths


def read(path: Path) -> tuple[np.ndarray, np.ndarray, str]:
    with h5py.File(path, "r") as f:
        return f["images"][()], f["masks"][()], f.attrs.get("crop_template", "ganfaces108")


def write_real(path: Path, images: np.ndarray, template: str, level: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    with h5py.File(tmp, "w") as f:
        f["images"] = images
        f.attrs["crop_template"] = template
        f.attrs["source"] = f"bench/known_gap.py: renders of other identities through T = {level}"
        f.attrs["complete"] = True
    os.replace(tmp, path)


def colour_matcher(train_faces: np.ndarray, real_faces: np.ndarray):
    """The per-channel map that takes the training renders' face colours (N, 3) onto the real set's
    source renders' (M, 3) by matching their quantiles: the best a refiner can do that learns the
    real set's colours from the sets alone (it cannot tell T from a difference between the two
    sets' identities). Returns a function of (K, 3) uint8 colours, uint8."""
    qs = np.linspace(0.0, 1.0, 257)
    src = [np.quantile(train_faces[:, c].astype(np.float64), qs) for c in range(3)]
    dst = [np.quantile(real_faces[:, c].astype(np.float64), qs) for c in range(3)]

    def q(v: np.ndarray) -> np.ndarray:
        out = np.stack([np.interp(v[:, c].astype(np.float64), src[c], dst[c]) for c in range(3)], 1)
        return np.clip(np.round(out), 0, 255).astype(np.uint8)
    return q
