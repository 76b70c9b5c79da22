"""Large Scale Facial Model (LSFM, Booth et al. CVPR 2016 / IJCV 2018) ``.mat`` files, e.g.
``all_all_all.mat`` (written by menpo/lsfm ``export_lsfm_model`` with ``scipy.io.savemat``).

Variables (N = 53,215 vertices and F = 105,840 triangles for the full models - the 3DDFA-trimmed
BFM topology, the same as face3d's ``BFM.mat``; 28,431 / 56,272 for ``*_cropped.mat``):

    mean                          (1, 3N)  float64  mean shape, x0 y0 z0 x1 ... (savemat stores
                                                    the 1-D vector as a row)
    components                    (3N, K)  float64  unit eigenvectors as columns (menpo's (K, 3N)
                                                    ``components`` transposed; a (K, 3N) matrix is
                                                    accepted too)
    eigenvalues                   (1, K)   float64  VARIANCES of the coefficients
    cumulative_explained_variance (1, K)            not used
    trilist                       (F, 3)   int      0-based triangles
    n_training_samples            (1, 1)            not used
    map_cropped_to_full, map_full_to_cropped        cropped models only, not used

No colour, expression or landmarks. ``std = sqrt(eigenvalues)``. LSFM does not document its
length unit, so the loader measures the width (x extent) of the mean face and multiplies every
length by the power of ten that brings it between 50 and 500 mm (a face is about 150 mm wide).
Triangles are checked to be counter-clockwise seen from +z and flipped if not.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from morph.formats import _common as c
from morph.model.morphable import MorphableModel

KEYS = ("mean", "components", "eigenvalues", "trilist")


def unit_scale(mean: np.ndarray) -> float:
    """Power of ten that makes a face's width (x extent) fall in [50, 500) mm."""
    width = float(np.ptp(np.asarray(mean).reshape(-1, 3)[:, 0]))
    if not np.isfinite(width) or width <= 0:
        return 1.0
    return float(10.0 ** np.floor(np.log10(500.0 / width)))


def load(path, name: str = "") -> MorphableModel:
    path = c.existing(path)
    data = c.read_mat(path, list(KEYS))
    c.need(path, data, KEYS, "LSFM model (.mat)")
    mean = c.vector(path, "mean", data["mean"])
    if mean.shape[0] % 3:
        raise c.fail(path, f"'mean' has {mean.shape[0]} values, not a multiple of 3", "the file is corrupt")
    n3 = mean.shape[0]
    comps = c.matrix(path, "components", data["components"], n3, allow_transposed=True)
    var = c.vector(path, "eigenvalues", data["eigenvalues"], comps.shape[1])
    if np.any(var < 0):
        raise c.fail(path, "'eigenvalues' has negative variances", "the file is corrupt")
    shape = c.pca_part(path, mean, comps, np.sqrt(var), scale=unit_scale(mean))
    tris = c.triangles(path, "trilist", data["trilist"], n3 // 3, base=0)
    tris = c.orient_front_ccw(shape.mean, tris)
    return MorphableModel(shape=shape, triangles=tris, name=name or Path(path).stem,
                          sources={"shape": str(path)})
