"""The real domain of the learning benchmarks, split by person (issue 24).

From the photos of ``../shared/testdata/realfaces/`` and ``utkface/`` (``morph align`` of each,
done by the caller):

- children are left out (UTKFace's file names start with the age; the 3DMMs model adults), and so
  are realfaces' ``augmented_image_*`` files (rotated copies of other photos of the folder);
- duplicates go: faces whose dlib embeddings (unit length) lie closer than ``DUPLICATE`` to an
  earlier face are dropped (the same photo twice, resized or re-encoded);
- people: realfaces' names ``A_B_NAME_NNNN.jpg`` (RMFD's people) label their photos; every face is
  also joined to every face closer than ``SAME_PERSON`` (union-find), so one person's photos stay
  together whatever their names; at most ``per_person`` faces a person are kept (two people make
  up 277 of realfaces' photos);
- the people, not the faces, are split into training and held-apart sets (``heldout`` of the
  faces, by a seeded permutation of the people).

Then ``measure_priors`` fits the embedded model to the training faces' 68 points
(``morph.fitting.landmarks``) and writes the pose and expression priors that make renders look
like these photos (lighting and camera stay the defaults: landmarks do not measure them).
"""
from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import torch

#: unit-embedding distances: below DUPLICATE the same photo; below SAME_PERSON the same person (on
#: realfaces, named people's own photos lie 0.28-0.50 apart (5-95%), different people 0.31 and more
#: (99%); joining at 0.28 or more chains half the set into one "person")
DUPLICATE = 0.12
SAME_PERSON = 0.25
NAMED = re.compile(r"^\d+_\d+_([a-z]+)_\d+\.[a-z]+$")
MIN_AGE = 18


@torch.inference_mode()
def embed(images: np.ndarray, batch: int = 64) -> np.ndarray:
    """(N, 128) unit-length dlib embeddings of aligned 108-px faces, through dlib's face chip."""
    from refine.embedders import load_embedder
    from refine.images import to_tensor

    c = load_embedder("dlib")
    t = c.transform(images.shape[1])
    e = np.concatenate([c(t.centre(to_tensor(images[i:i + batch]))).double().numpy()
                        for i in range(0, len(images), batch)])
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def read_aligned(path: Path, source: str) -> dict:
    with h5py.File(path, "r") as f:
        names = [Path(s).name for s in f["source"].asstr()[()]]
        return {"images": f["images"][()], "landmarks68": f["landmarks68"][()], "name": names,
                "source": [source] * len(names), "row": np.arange(len(names))}


def keep_adults(d: dict) -> np.ndarray:
    """Faces to keep: not a UTKFace child, not a realfaces augmented copy."""
    keep = []
    for src, name in zip(d["source"], d["name"]):
        if src == "utkface":
            keep.append(int(name.split("_")[0]) >= MIN_AGE)
        else:
            keep.append(not name.startswith("augmented_image"))
    return np.array(keep)


class _Union:
    def __init__(self, n):
        self.p = np.arange(n)

    def find(self, i):
        while self.p[i] != i:
            self.p[i] = self.p[self.p[i]]
            i = self.p[i]
        return i

    def join(self, i, j):
        self.p[self.find(i)] = self.find(j)


def drop_duplicates(e: np.ndarray) -> np.ndarray:
    """Indices kept: each face unless an earlier kept one lies closer than ``DUPLICATE``."""
    keep = []
    for i in range(len(e)):
        if not keep or np.sqrt(np.clip(2 - 2 * e[keep] @ e[i], 0, None)).min() >= DUPLICATE:
            keep.append(i)
    return np.array(keep)


def people(e: np.ndarray, names: list[str]) -> np.ndarray:
    """(N,) person label of each face: RMFD names joined, then faces closer than ``SAME_PERSON``."""
    u = _Union(len(e))
    first = {}
    for i, n in enumerate(names):
        m = NAMED.match(n)
        if m:
            u.join(i, first.setdefault(m.group(1), i))
    d = np.sqrt(np.clip(2 - 2 * e @ e.T, 0, None))
    for i, j in zip(*np.nonzero(np.triu(d < SAME_PERSON, 1))):
        u.join(i, j)
    roots = np.array([u.find(i) for i in range(len(e))])
    return np.unique(roots, return_inverse=True)[1]


def split(folder: Path, aligned: dict[str, Path], heldout: float = 0.3, per_person: int = 20,
          seed: int = 0) -> dict:
    """Write ``real_train.h5`` and ``real_heldout.h5`` (images, person labels, landmarks68, and
    ``origin``: per face the index of its file in ``aligned`` and its row there) into ``folder``,
    people apart; return the counts."""
    parts = [read_aligned(p, name) for name, p in aligned.items()]
    for i, part in enumerate(parts):
        part["part"] = np.full(len(part["row"]), i)
    d = {k: (np.concatenate([p[k] for p in parts]) if isinstance(parts[0][k], np.ndarray)
             else sum((p[k] for p in parts), [])) for k in parts[0]}
    n_all = len(d["images"])
    adult = np.flatnonzero(keep_adults(d))
    e = embed(d["images"][adult])
    unique = drop_duplicates(e)
    idx, e = adult[unique], e[unique]
    names = [d["name"][i] for i in idx]
    label = people(e, names)
    largest = int(np.bincount(label).max())
    rng = np.random.default_rng(seed)
    capped = np.concatenate([rng.permutation(np.flatnonzero(label == p))[:per_person] for p in np.unique(label)])
    capped.sort()
    idx, label, e = idx[capped], label[capped], e[capped]
    order = rng.permutation(np.unique(label))
    counts = np.bincount(label)[order]
    held_people = order[:np.searchsorted(np.cumsum(counts), heldout * len(idx)) + 1]
    held = np.isin(label, held_people)
    for name, rows in (("real_train.h5", ~held), ("real_heldout.h5", held)):
        path = folder / name
        tmp = path.with_name(path.name + ".partial")
        with h5py.File(tmp, "w") as f:
            f["images"] = d["images"][idx[rows]]
            f["labels"] = label[rows].astype(np.int64)
            f["landmarks68"] = d["landmarks68"][idx[rows]]
            f["origin"] = np.stack([d["part"][idx[rows]], d["row"][idx[rows]]], 1).astype(np.int64)
            f.attrs["complete"] = True
            f.attrs["source"] = ", ".join(str(p) for p in aligned.values())
        tmp.replace(path)
    return {"aligned": n_all, "adults": int(len(adult)), "after_duplicates": int(len(unique)),
            "people": int(len(np.unique(label))), "largest_person": largest, "per_person_cap": per_person,
            "kept": int(len(idx)), "train": int((~held).sum()), "heldout": int(held.sum()),
            "train_people": int(len(np.unique(label[~held]))), "heldout_people": int(len(held_people))}


def measure_priors(real_h5: Path, out: Path, model: str = "default") -> dict:
    """Pose and expression priors fitted to the faces' 68 points (``morph.fitting.landmarks``, the
    jaw outline left out: it is the least reliable of the detected points), measured as
    ``morph fit-priors fits.h5`` measures them (``morph.jobs.fit_priors.priors_from_fits``),
    written over the default priors into ``out``; returns their summary."""
    from morph.fitting.landmarks import INNER, LandmarkFitter
    from morph.formats.named import load_model
    from morph.jobs.fit_priors import priors_from_fits

    with h5py.File(real_h5, "r") as f:
        points = f["landmarks68"][()]
    m = load_model(model)
    fit = LandmarkFitter(m, points=INNER).fit(points)
    text, summary = priors_from_fits(fit.pose, fit.beta, fit.error, real_h5.name,
                                     f"{m.name} expression ({m.n_expression} modes)")
    out.write_text(text)
    return summary
