"""Verification and distribution metrics on embeddings: pairs of a labelled set, the ROC of
"same identity when distance <= t", AUC, EER, TAR at a FAR, the Fréchet distance and the
unbiased polynomial-kernel MMD (KID). Distances: smaller = more alike."""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from morph.base.errors import UserError



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
