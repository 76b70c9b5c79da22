"""`refine verify`: verification accuracy (10-fold), AUC, EER and TAR@FAR of an embedder on one
protocol's pairs (``refine.evaluation.verification``), as PREFIX.json and PREFIX.png."""
from __future__ import annotations

from pathlib import Path

from refine.evaluation.verification import read_protocol, verify_pairs


def verify(prefix: str | Path, *, lfw_pairs=None, images=None, template: str | None = None, bin_path=None,
           labelled_set=None, n_pairs: int = 1000, seed: int = 0, folds: int = 10, embedder: str = "dlib",
           flip: bool = True, batch_size: int = 64, device: str = "cpu", align: str = "auto") -> dict:
    """Verify the pairs of one protocol (``read_protocol``); write PREFIX.json and PREFIX.png; return the report."""
    pairs = read_protocol(lfw_pairs, images, template, bin_path, labelled_set, n_pairs, seed, folds, align)
    return verify_pairs(pairs, prefix, embedder=embedder, flip=flip, batch_size=batch_size, device=device)
