"""`refine evaluate`: how real and how identity-preserving an image set looks to a face network.

The paper's Fig. 7 (section 5.2): 1,000 same-identity ("positive") and 1,000 different-identity
("negative") pairs of one set are embedded by a pre-trained face-recognition network, and the
histograms of their euclidean distances show how well identities separate. The paper compares
three kinds of set - 3DMM renders, refined renders (GANFaces) and real faces (VGG Face): "as
the images become more realistic, they become better separable in the pre-trained embedding
space". Here, for any one set:

- pairs drawn uniformly from all positive (all negative) pairs of the set, from ``seed``; all of
  them when the set has fewer (the report says so);
- embeddings of C (default dlib's ResNet) of the face framed as C was trained (its face chip,
  ``Embedder.transform().centre``: dlib's 150 px chip with padding 0.25); distances between the
  L2-normalised embeddings, so in [0, 2];
- the ROC of "same identity when distance <= t", its AUC, the equal error rate with its
  threshold, and TAR at FAR 1e-2 / 1e-3 when there are enough negative pairs to measure them;
- the fraction of images in which MTCNN finds a face (a crude realism check of the renders);
- with a real set to compare with: the Fréchet distance between Gaussians fitted to the two
  sets' embeddings (FID's formula in C's feature space, so no Inception weights) and the
  unbiased squared MMD with KID's cubic polynomial kernel.

Sets: an HDF5 file with ``images`` (N, S, S, 3) uint8 and integer ``labels`` (synthetic.h5 from
``morph render``, real.h5 from ``morph align``, an exported ``ganfaces.h5``), a folder holding
``ganfaces.h5``, or an ImageFolder tree ``DIR/{identity}/{image}`` (identities and images in
sorted order, as ``torchvision.datasets.ImageFolder`` numbers them: the report's pair indices
refer to that order). Images of another square size are resized to 108x108 first.
Only the images that are used are read, so a 500K-image set costs no more than a small one.
"""
from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from morph.errors import UserError
from morph.h5io import open_h5, provenance
from morph.imageio import IMAGE_SUFFIXES, read_rgb
from refine.data import to_tensor
from refine.embedders.base import SOURCE_SIZE

KINDS = ("rendered", "refined", "real")
KIND_TITLES = {"rendered": "3DMM renders", "refined": "refined (GANFaces)", "real": "real faces",
               "unknown": "image set"}
#: TAR is reported at these FARs when there are at least 1/FAR negative pairs.
FARS = (1e-2, 1e-3)
#: Independent random streams derived from --seed (numpy SeedSequence entropy [seed, stream]).
PAIR_STREAM, SET_SAMPLE_STREAM, AGAINST_SAMPLE_STREAM = 0, 1, 2


# ----------------------------------------------------------------------------------------------
# Image sets


@dataclass
class ImageSet:
    """An image set read lazily: ``read(idx)`` gives (k, 108, 108, 3) uint8 images."""

    path: Path
    layout: str  # "h5" or "imagefolder"
    kind: str  # one of KINDS or "unknown"
    n: int
    size: int  # side of the stored (square) images
    labels: np.ndarray | None = None  # (n,) int64 in 0..L-1
    label_names: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)  # imagefolder only

    def read(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, np.int64)
        if self.layout == "h5":
            uniq, inverse = np.unique(idx, return_inverse=True)  # h5py wants increasing, unique indices
            with open_h5(self.path, "image set") as f:
                images = f["images"][uniq][inverse]
        else:
            images = np.stack([self._read_file(self.files[i]) for i in idx])
        if self.size != SOURCE_SIZE:
            images = np.stack([np.asarray(Image.fromarray(im).resize((SOURCE_SIZE, SOURCE_SIZE),
                                                                    Image.Resampling.BILINEAR))
                               for im in images])
        return images

    def _read_file(self, path: Path) -> np.ndarray:
        im = read_rgb(path)
        if im.shape[:2] != (self.size, self.size):
            raise UserError(f"{path}: is {im.shape[1]}x{im.shape[0]} px, but the set's first image is "
                            f"{self.size}x{self.size}; evaluate a set of aligned faces of one size.")
        return im


def open_image_set(path: str | Path, what: str = "image set", need_labels: bool = True) -> ImageSet:
    """The set at ``path`` (see the module docstring), checked but not read; ``UserError`` if unusable."""
    path = Path(path)
    if path.is_dir():
        manifest = _export_manifest(path)
        if manifest is not None and not manifest.get("complete", True):
            raise UserError(f"{path}: the export is not complete (its manifest.json says so); re-run the "
                            "same 'refine export-dataset' command to finish it first.")
        if (path / "ganfaces.h5").is_file():
            return _open_h5_set(path / "ganfaces.h5", what, need_labels)
        found = _open_image_folder(path)
        if found is not None:
            return found
        h5s = sorted(path.glob("*.h5"))
        if len(h5s) == 1:
            return _open_h5_set(h5s[0], what, need_labels)
        raise UserError(f"{path}: holds neither ganfaces.h5 nor identity sub-folders of images; give an "
                        "image set .h5 (images + labels) or an ImageFolder tree DIR/IDENTITY/IMAGE.jpg.")
    if not path.exists():
        raise UserError(f"{path}: no such {what}; check the path.")
    return _open_h5_set(path, what, need_labels)


def _open_h5_set(path: Path, what: str, need_labels: bool) -> ImageSet:
    with open_h5(path, what) as f:
        missing = [k for k in ("images", *(["labels"] if need_labels else [])) if k not in f]
        if missing:
            raise UserError(f"{path}: not an image set{' with identity labels' * need_labels} (missing "
                            f"{', '.join(missing)}); "
                            "give synthetic.h5 ('morph render'), real.h5 ('morph align') or an exported "
                            "ganfaces.h5.")
        if not f.attrs.get("complete", True) or path.name.endswith(".partial"):
            raise UserError(f"{path}: is not complete; finish the command that writes it first.")
        shape = f["images"].shape
        if len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2] or f["images"].dtype != np.uint8:
            raise UserError(f"{path}: 'images' is {f['images'].dtype} of shape {shape}; expected square "
                            "RGB uint8 images (N, S, S, 3).")
        labels, names = None, []
        if "labels" in f:
            raw = f["labels"][()]
            if raw.shape != (shape[0],):
                raise UserError(f"{path}: 'labels' has shape {raw.shape} for {shape[0]} images; re-create the file.")
            values, labels = np.unique(raw, return_inverse=True)
            stored = [_text(x) for x in f["label_names"][()]] if "label_names" in f else []
            names = ([stored[v] for v in values] if len(stored) and 0 <= values.min() and values.max() < len(stored)
                     else [str(v) for v in values])
        kind = _kind_of_h5(path, f)
    if shape[0] == 0:
        raise UserError(f"{path}: holds no images; re-create it with more input.")
    return ImageSet(path, "h5", kind, shape[0], shape[1],
                    None if labels is None else labels.astype(np.int64), names)


def _text(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _kind_of_h5(path: Path, f) -> str:
    """What made the file: its ``command`` attribute, else its name, else the datasets it holds."""
    words = str(f.attrs.get("command", "")).split()
    if "export-dataset" in words:
        return "refined"
    if "render" in words:
        return "rendered"
    if "align" in words:
        return "real"
    if path.name == "ganfaces.h5":
        return "refined"
    if "params" in f or "masks" in f:
        return "rendered"
    if "source" in f or "boxes" in f:
        return "real"
    return "unknown"


def _open_image_folder(root: Path) -> ImageSet | None:
    classes, files, labels = [], [], []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = sorted(p for p in sub.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if found:
            labels += [len(classes)] * len(found)
            classes.append(sub.name)
            files += found
    if not files:
        return None
    first = read_rgb(files[0])
    if first.shape[0] != first.shape[1]:
        raise UserError(f"{files[0]}: is {first.shape[1]}x{first.shape[0]} px; evaluate square aligned "
                        "faces (108x108 from 'morph align' or 'refine export-dataset').")
    kind = "refined" if _export_manifest(root) is not None else "unknown"
    return ImageSet(root, "imagefolder", kind, len(files), first.shape[0], np.asarray(labels, np.int64),
                    classes, files)


def _export_manifest(root: Path) -> dict | None:
    """The JSON sidecar (``manifest.json``) of a folder that 'refine export-dataset' wrote, if any."""
    for sidecar in sorted(root.glob("*.json")):
        try:
            found = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(found, dict) and "export-dataset" in str(found.get("command", "")).split():
            return found
    return None


# ----------------------------------------------------------------------------------------------
# Pairs


@dataclass
class Pairs:
    positive: np.ndarray  # (P, 2) int64 image indices, i < j, same identity
    negative: np.ndarray  # (Q, 2) different identities
    available_positive: int
    available_negative: int


def draw_pairs(labels: np.ndarray, n: int, rng: np.random.Generator) -> Pairs:
    """``n`` distinct positive and ``n`` distinct negative pairs, each drawn uniformly from all pairs
    of its kind (so identities with more images give more pairs); all of them if there are fewer.

    Raises ``UserError`` when the set has no pair of one kind.
    """
    labels = np.asarray(labels, np.int64)
    counts = np.bincount(labels)
    n_pos = int((counts * (counts - 1) // 2).sum())
    n_neg = len(labels) * (len(labels) - 1) // 2 - n_pos
    if (counts > 0).sum() < 2:
        raise UserError("the set has a single identity, so no different-identity (negative) pairs; evaluate "
                        "a set with at least 2 identities ('morph align' takes them from the photos' sub-folders).")
    if n_pos == 0:
        raise UserError("no identity of the set has 2 images, so no same-identity (positive) pairs; "
                        "evaluate a set with several images per identity.")
    order = np.argsort(labels, kind="stable")  # images grouped by identity: block l is
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])  # order[start[l] : start[l] + counts[l]]
    pos = _draw(n, n_pos, rng, lambda: _all_positive(order, start, counts),
                lambda m: _sample_positive(m, order, labels, start, counts, rng))
    neg = _draw(n, n_neg, rng, lambda: _all_negative(order, start, counts),
                lambda m: _sample_negative(m, order, labels, start, counts, rng))
    return Pairs(pos, neg, n_pos, n_neg)


def _draw(n, available, rng, enumerate_all, sample) -> np.ndarray:
    if available <= 2 * n:  # few enough to list: choose without replacement
        pairs = enumerate_all()
        if available > n:
            pairs = pairs[rng.choice(available, n, replace=False)]
    else:  # more than twice as many as needed: rejection of repeats converges in a few rounds
        seen: dict[tuple[int, int], None] = {}
        while len(seen) < n:
            for p in map(tuple, np.sort(sample(2 * (n - len(seen))), axis=1).tolist()):
                seen.setdefault(p, None)
        pairs = np.array(list(seen)[:n], np.int64)
    pairs = np.sort(pairs, axis=1)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def _all_positive(order, start, counts) -> np.ndarray:
    out = [pair for s, c in zip(start, counts) for pair in itertools.combinations(order[s:s + c], 2)]
    return np.array(out, np.int64).reshape(-1, 2)


def _all_negative(order, start, counts) -> np.ndarray:
    blocks = [order[s:s + c] for s, c in zip(start, counts) if c]
    out = [pair for a, b in itertools.combinations(blocks, 2) for pair in itertools.product(a, b)]
    return np.array(out, np.int64).reshape(-1, 2)


def _sample_positive(m, order, labels, start, counts, rng) -> np.ndarray:
    # first image s (in identity order) with weight = its number of partners, then a partner
    # uniformly: every ordered, hence every unordered, pair has the same probability
    sorted_labels = labels[order]
    w = (counts[sorted_labels] - 1).astype(np.float64)
    s = rng.choice(len(order), m, p=w / w.sum())
    lab = sorted_labels[s]
    t = start[lab] + rng.integers(0, counts[lab] - 1)
    t = t + (t >= s)  # skip s itself
    return np.stack([order[s], order[t]], 1)


def _sample_negative(m, order, labels, start, counts, rng) -> np.ndarray:
    sorted_labels = labels[order]
    w = (len(order) - counts[sorted_labels]).astype(np.float64)
    s = rng.choice(len(order), m, p=w / w.sum())
    lab = sorted_labels[s]
    t = rng.integers(0, len(order) - counts[lab])
    t = t + np.where(t >= start[lab], counts[lab], 0)  # skip s's identity block
    return np.stack([order[s], order[t]], 1)


# ----------------------------------------------------------------------------------------------
# Verification metrics (distances: smaller = more alike; a pair is accepted when distance <= t)


@dataclass
class ROC:
    fpr: np.ndarray  # false accept rate, non-decreasing, from 0 to 1
    tpr: np.ndarray  # true accept rate
    thresholds: np.ndarray  # accept distance <= threshold; point 0 accepts nothing
    fp: np.ndarray  # the counts behind fpr and tpr (int64), for exact comparisons
    tp: np.ndarray


def roc_curve(positive: np.ndarray, negative: np.ndarray) -> ROC:
    """Empirical ROC: one point per distinct distance, plus (0, 0) for "accept nothing".

    Tied positive and negative distances move the curve diagonally (they are accepted together).
    """
    pos, neg = np.asarray(positive, np.float64), np.asarray(negative, np.float64)
    if not len(pos) or not len(neg):
        raise ValueError("roc_curve: needs at least one positive and one negative distance")
    d = np.concatenate([pos, neg])
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    order = np.argsort(d, kind="stable")
    d, y = d[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(d)), len(d) - 1]  # last index of each run of equal values
    tp = np.r_[0, np.cumsum(y == 1)[last]]
    fp = np.r_[0, np.cumsum(y == 0)[last]]
    return ROC(fpr=fp / len(neg), tpr=tp / len(pos), thresholds=np.r_[d[0], d[last]], fp=fp, tp=tp)


def auc(roc: ROC) -> float:
    """Area under the ROC (trapezoids): P(positive distance < negative distance) + P(tie) / 2."""
    return float(np.trapezoid(roc.tpr, roc.fpr))


def equal_error_rate(roc: ROC) -> tuple[float, float]:
    """(EER, threshold) where FAR = FRR (= 1 - TAR), interpolating linearly between ROC points.

    When the rates are equal exactly at a ROC point, every threshold from that point's distance up
    to (not including) the next one gives the same rates; the midpoint is reported.
    """
    n_pos, n_neg = roc.tp[-1], roc.fp[-1]
    # FAR - FRR times n_pos * n_neg, in integers so that equality is exact; it increases from
    # -n_pos * n_neg (accept nothing) to +n_pos * n_neg (accept all)
    gap = roc.fp * n_pos - (n_pos - roc.tp) * n_neg
    k = int(np.argmax(gap >= 0))
    if gap[k] == 0:
        nxt = min(k + 1, len(gap) - 1)
        return float(roc.fpr[k]), float((roc.thresholds[k] + roc.thresholds[nxt]) / 2)
    a = gap[k - 1] / (gap[k - 1] - gap[k])
    eer = roc.fpr[k - 1] + a * (roc.fpr[k] - roc.fpr[k - 1])
    thr = roc.thresholds[k - 1] + a * (roc.thresholds[k] - roc.thresholds[k - 1])
    return float(eer), float(thr)


def tar_at_far(roc: ROC, far: float) -> tuple[float, float]:
    """(TAR, threshold) of the most accepting ROC point whose FAR is at most ``far`` (no interpolation)."""
    k = int(np.flatnonzero(roc.fpr <= far)[-1])
    return float(roc.tpr[k]), float(roc.thresholds[k])


# ----------------------------------------------------------------------------------------------
# Distances between two sets of embeddings


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the rows of ``x`` and ``y`` (FID's formula):
    ``|mu_x - mu_y|^2 + tr(S_x) + tr(S_y) - 2 tr((S_x S_y)^(1/2))``.

    ``tr((S_x S_y)^(1/2))`` is computed as the sum of the square roots of the eigenvalues of the
    symmetric ``S_x^(1/2) S_y S_x^(1/2)`` (same eigenvalues as ``S_x S_y``): stable for the
    singular covariances of sets smaller than the embedding's dimension, where a general
    ``sqrtm(S_x @ S_y)`` turns complex or non-finite.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2 or len(y) < 2:
        raise ValueError("frechet_distance: needs at least 2 samples per set")
    mx, my = x.mean(0), y.mean(0)
    sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    w, v = np.linalg.eigh(sx)
    root_x = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root_x @ sy @ root_x)
    tr_sqrt = np.sqrt(np.clip(inner, 0, None)).sum()
    return float(max(((mx - my) ** 2).sum() + np.trace(sx) + np.trace(sy) - 2 * tr_sqrt, 0.0))


def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased squared MMD with KID's kernel ``k(a, b) = (a.b / d + 1)^3`` (Binkowski et al. 2018).

    Unbiased: can be slightly negative when the sets come from one distribution.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError("polynomial_mmd2: needs at least 2 samples per set")
    d = x.shape[1]
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    within_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    within_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(within_x + within_y - 2 * kxy.mean())


# ----------------------------------------------------------------------------------------------
# The evaluation


def output_paths(prefix: str | Path) -> tuple[Path, Path]:
    """PREFIX.json and PREFIX.png (a .json or .png suffix given with the prefix is dropped)."""
    prefix = Path(prefix)
    if prefix.suffix.lower() in (".json", ".png"):
        prefix = prefix.with_suffix("")
    if not prefix.resolve().parent.is_dir():
        raise UserError(f"{prefix}: folder {prefix.resolve().parent} does not exist; create it first.")
    return prefix.with_name(prefix.name + ".json"), prefix.with_name(prefix.name + ".png")


def _sample(n: int, k: int, seed: int, stream: int) -> np.ndarray:
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, stream]).choice(n, k, replace=False))


@torch.inference_mode()
def embed(images: ImageSet, idx: np.ndarray, embedder, batch_size: int = 64, device: str = "cpu",
          desc: str = "embed") -> np.ndarray:
    """(len(idx), dim) float64 embeddings of ``images[idx]`` (aligned 108x108) through C's face chip."""
    transform = embedder.transform(SOURCE_SIZE)
    out = np.empty((len(idx), embedder.dim), np.float64)
    for s in tqdm(range(0, len(idx), batch_size), desc=desc, unit="batch", leave=False):
        x = to_tensor(images.read(idx[s:s + batch_size])).to(device)
        out[s:s + batch_size] = embedder(transform.centre(x)).double().cpu().numpy()
    return out


def face_fraction(images: ImageSet, idx: np.ndarray, min_face_size: float = 20.0, device: str = "cpu",
                  batch_size: int = 256) -> float:
    """Fraction of ``images[idx]`` in which MTCNN finds at least one face."""
    from morph.mtcnn import MTCNN

    detector = MTCNN(min_face_size=min_face_size, device=device)
    found = 0
    for s in tqdm(range(0, len(idx), batch_size), desc="detect", unit="batch", leave=False):
        found += sum(len(d.scores) > 0 for d in detector.detect(images.read(idx[s:s + batch_size])))
    return found / len(idx)


def _stats(d: np.ndarray) -> dict:
    return {"mean": float(d.mean()), "std": float(d.std()), "min": float(d.min()), "max": float(d.max())}


def evaluate(dataset: str | Path, prefix: str | Path, *, against: str | Path | None = None,
             embedder: str = "dlib", n_pairs: int = 1000, seed: int = 0, max_images: int = 2000,
             min_face_size: float = 20.0, kind: str | None = None, batch_size: int = 64,
             device: str = "cpu") -> dict:
    """Evaluate ``dataset``; write PREFIX.json and PREFIX.png; return the report (the JSON's content)."""
    from refine.embedders import load_embedder

    json_path, png_path = output_paths(prefix)
    images = open_image_set(dataset, "image set")
    reference = open_image_set(against, "real set to compare with", need_labels=False) if against else None
    try:
        pairs = draw_pairs(images.labels, n_pairs, np.random.default_rng([seed, PAIR_STREAM]))
    except UserError as e:
        raise UserError(f"{images.path}: {e}") from None
    net = load_embedder(embedder, device=device)

    sample = _sample(images.n, max_images, seed, SET_SAMPLE_STREAM)
    used = np.unique(np.concatenate([pairs.positive.ravel(), pairs.negative.ravel(), sample]))
    emb = embed(images, used, net, batch_size, device, desc=f"embed {images.path.name}")
    row = {int(i): r for r, i in enumerate(used)}

    def distances(p):
        a, b = emb[[row[i] for i in p[:, 0]]], emb[[row[i] for i in p[:, 1]]]
        return np.linalg.norm(a - b, axis=1)

    d_pos, d_neg = distances(pairs.positive), distances(pairs.negative)
    roc = roc_curve(d_pos, d_neg)
    eer, eer_threshold = equal_error_rate(roc)
    notes = []
    for what, got, available in (("positive", len(d_pos), pairs.available_positive),
                                 ("negative", len(d_neg), pairs.available_negative)):
        if got < n_pairs:
            notes.append(f"the set has only {available} {what} pairs ({n_pairs} asked); all are used")
    tar = {}
    for far in FARS:
        if len(d_neg) * far >= 1:
            t, thr = tar_at_far(roc, far)
            tar[f"{far:g}"] = {"tar": t, "threshold": thr}
        else:
            tar[f"{far:g}"] = None
            notes.append(f"TAR at FAR {far:g} needs at least {round(1 / far)} negative pairs; not reported")

    n_detect = len(sample)
    detection = {"n_images": n_detect, "min_face_size": min_face_size,
                 "fraction": face_fraction(images, sample, min_face_size, device)}

    comparison = None
    if reference is not None:
        ref_idx = _sample(reference.n, max_images, seed, AGAINST_SAMPLE_STREAM)
        ref_emb = embed(reference, ref_idx, net, batch_size, device, desc=f"embed {reference.path.name}")
        set_emb = emb[[row[int(i)] for i in sample]]
        if min(len(set_emb), len(ref_emb)) < 2:
            raise UserError(f"{reference.path if len(ref_emb) < 2 else images.path}: a distribution distance "
                            "needs at least 2 images in each set.")
        comparison = {"path": str(reference.path), "kind": reference.kind, "n_images": len(ref_emb),
                      "n_images_set": len(set_emb), "frechet_distance": frechet_distance(set_emb, ref_emb),
                      "kid_mmd2": polynomial_mmd2(set_emb, ref_emb),
                      "kid_kernel": "(x.y / dim + 1)^3, unbiased MMD^2 over all images"}
        if min(len(set_emb), len(ref_emb)) <= net.dim:
            notes.append(f"Fréchet distance from {min(len(set_emb), len(ref_emb))} images in {net.dim} "
                         "dimensions: covariances are singular and the value is biased upwards; "
                         "compare only values from equal numbers of images")

    report = {
        "set": {"path": str(images.path), "layout": images.layout, "kind": kind or images.kind,
                "n_images": images.n, "n_identities": len(images.label_names),
                "n_identities_with_2_images": int((np.bincount(images.labels) >= 2).sum()),
                "image_size": images.size},
        "embedder": {"spec": str(embedder), "name": net.name, "dim": net.dim, "input_size": net.input_size,
                     "transform": "centre 96x96 crop of the 108x108 image, resized to the input size"},
        "seed": seed,
        "pairs": {"requested": n_pairs, "positive": len(d_pos), "negative": len(d_neg),
                  "available_positive": pairs.available_positive,
                  "available_negative": pairs.available_negative},
        "distance": "euclidean between L2-normalised embeddings (0 to 2)",
        "positive_distance": _stats(d_pos),
        "negative_distance": _stats(d_neg),
        "auc": auc(roc),
        "eer": eer,
        "eer_threshold": eer_threshold,
        "tar_at_far": tar,
        "face_detection": detection,
        "against": comparison,
        "notes": notes,
        "figure": str(png_path),
        "provenance": provenance(),
        "raw": {"positive_pairs": pairs.positive.tolist(), "positive_distances": d_pos.tolist(),
                "negative_pairs": pairs.negative.tolist(), "negative_distances": d_neg.tolist()},
    }
    _write_atomic(png_path, lambda p: plot(report, roc, d_pos, d_neg, p))
    _write_atomic(json_path, lambda p: p.write_text(json.dumps(report, indent=1, ensure_ascii=False)))
    return report


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".partial")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{path}: cannot be written ({e.strerror or e}); choose another --output.") from None


def plot(report: dict, roc: ROC, d_pos: np.ndarray, d_neg: np.ndarray, path: Path) -> None:
    """Fig. 7's histograms of positive and negative pair distances, beside the ROC, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.6), dpi=100)
    FigureCanvasAgg(fig)  # no pyplot: no global state, no display needed
    hist, curve = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.5, 1]})
    bins = np.linspace(min(d_pos.min(), d_neg.min()), max(d_pos.max(), d_neg.max()), 41)
    for d, colour, label in ((d_pos, "tab:blue", "same identity"), (d_neg, "tab:red", "different identities")):
        hist.hist(d, bins=bins, weights=np.full(len(d), 1 / len(d)), color=colour, alpha=0.55,
                  label=f"{label} ({len(d)} pairs)")
    hist.axvline(report["eer_threshold"], color="k", ls="--", lw=1,
                 label=f"EER threshold {report['eer_threshold']:.3f}")
    hist.set_xlabel("euclidean distance between embeddings")
    hist.set_ylabel("fraction of pairs")
    hist.legend(loc="upper left", fontsize=8)

    curve.plot(roc.fpr, roc.tpr, color="tab:purple", lw=1.8, label=f"AUC {report['auc']:.3f}")
    curve.plot([0, 1], [0, 1], color="0.6", ls=":", lw=1)
    curve.plot([report["eer"]], [1 - report["eer"]], "ko", ms=5, label=f"EER {100 * report['eer']:.1f}%")
    curve.set_xlim(0, 1)
    curve.set_ylim(0, 1.01)
    curve.set_xlabel("false accept rate")
    curve.set_ylabel("true accept rate")
    curve.set_aspect("equal")
    curve.legend(loc="lower right", fontsize=8)

    s = report["set"]
    fig.suptitle(f"{Path(s['path']).name}: {KIND_TITLES.get(s['kind'], s['kind'])}, {s['n_images']} images of "
                 f"{s['n_identities']} identities; {report['embedder']['name']} embeddings, seed {report['seed']}",
                 fontsize=11)
    line = f"MTCNN finds a face in {100 * report['face_detection']['fraction']:.1f}% of " \
           f"{report['face_detection']['n_images']} images"
    if report["against"]:
        a = report["against"]
        line += (f"   |   against {Path(a['path']).name}: Fréchet {a['frechet_distance']:.4f}, "
                 f"KID (MMD²) {a['kid_mmd2']:.5f}")
    fig.text(0.5, 0.015, line, ha="center", fontsize=9)
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    with open(path, "wb") as fh:
        fig.savefig(fh, format="png")
