"""Basel Face Model 2017/2019 ``.h5`` (statismo layout; Gerig et al. 2017), and our embedded
models, which use the same layout (the default stores its bases as float16, read as float32).

Datasets read (N vertices, F triangles, K modes per part):

    shape/model/mean              (3N,)    float32  mean shape, x0 y0 z0 x1 ..., MILLIMETRES
    shape/model/pcaBasis          (3N, K)  float32  orthonormal columns
    shape/model/pcaVariance       (K,)     float32  VARIANCES (eigenvalues) of the coefficients
    shape/model/names             (K,)     str      optional: UTF-8 name of each mode
    shape/representer/cells       (3, F)   int      0-based triangles
    shape/representer/points      (3, N)            reference mesh (not used)
    color/model/{mean, pcaBasis, pcaVariance[, names]}       colours r0 g0 b0 ..., in [0, 1]
    expression/model/{mean, pcaBasis, pcaVariance[, names]}  expression deformations, mm
    */model attributes coefficient_low, coefficient_high (optional, ours): (K,) sampling bounds
                      in std units
    landmarks/ibug68              (68,)    int      optional: iBUG 68 vertex indices, -1 unknown

``color`` and ``expression`` are optional (a shape-only file loads). Units are already ours (mm,
[0, 1]); ``std = sqrt(pcaVariance)`` times the column length (1 for these files). The expression
mean is a deformation (an offset added to the shape), kept as ``expression.mean``;
``MorphableModel.vertices`` does not add it, so ``beta = 0`` gives the neutral mean face.
Triangles are checked to be counter-clockwise seen from +z and flipped if not.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from morph.formats import _common as c
from morph.model.morphable import MorphableModel

PARTS = {"shape": "shape", "texture": "color", "expression": "expression"}


def load(path, name: str = "") -> MorphableModel:
    import h5py

    path = c.existing(path)
    try:
        f = h5py.File(path, "r")
    except c.PARSE_ERRORS as err:
        raise c.corrupt(path, "HDF5 (.h5)", err) from None
    try:
        with f:
            return _read(f, path, name)
    except c.PARSE_ERRORS as err:  # a readable header but broken data further on
        raise c.corrupt(path, "HDF5 (.h5)", err) from None


def _read(f, path: Path, name: str) -> MorphableModel:
    if "shape" not in f or "model" not in f["shape"]:
        raise c.fail(path, f"is not a Basel Face Model 2017 .h5 file: no 'shape/model' group (found: "
                     f"{', '.join(f.keys()) or 'nothing'})", "give a BFM 2017/2019 .h5 model file")
    parts = {}
    n3 = None
    for role, group in PARTS.items():
        if group not in f:
            continue
        g = f[group].get("model")
        if g is None:
            raise c.fail(path, f"group '{group}' has no 'model' subgroup", "the file is not in the BFM 2017 layout")
        c.need(path, g, ("mean", "pcaBasis", "pcaVariance"), "Basel Face Model 2017", where=f"{group}/model/")
        mean = c.vector(path, f"{group}/model/mean", g["mean"][()], n3)
        n3 = mean.shape[0]
        basis = c.matrix(path, f"{group}/model/pcaBasis", g["pcaBasis"][()], n3)
        var = c.vector(path, f"{group}/model/pcaVariance", g["pcaVariance"][()], basis.shape[1])
        if np.any(var < 0):
            raise c.fail(path, f"'{group}/model/pcaVariance' has negative variances", "the file is corrupt")
        names = _names(path, g, group, basis.shape[1])
        part = c.pca_part(path, mean, basis, np.sqrt(var), names=names)
        # Optional sampling bounds in std units (our default model sets them for 'jaw open').
        part.low = _bounds(path, g, group, "coefficient_low", basis.shape[1])
        part.high = _bounds(path, g, group, "coefficient_high", basis.shape[1])
        parts[role] = part
    if n3 % 3:
        raise c.fail(path, f"'shape/model/mean' has {n3} values, not a multiple of 3", "the file is corrupt")
    cells = f.get("shape/representer/cells")
    if cells is None:
        raise c.fail(path, "has no triangles ('shape/representer/cells' missing)", "give a complete BFM 2017 file")
    tris = c.triangles(path, "shape/representer/cells", cells[()], n3 // 3, base=0)
    tris = c.orient_front_ccw(parts["shape"].mean, tris)
    landmarks = None
    if "landmarks/ibug68" in f:
        landmarks = c.landmarks_from(path, f["landmarks/ibug68"][()], n3 // 3, base=0)
    sources = {role: str(path) for role in parts}
    return MorphableModel(shape=parts["shape"], triangles=tris, texture=parts.get("texture"),
                          expression=parts.get("expression"), landmarks=landmarks,
                          name=name or path.stem, sources=sources)


def _bounds(path, g, group: str, attr: str, k: int):
    if attr not in g.attrs:
        return None
    v = np.asarray(g.attrs[attr], np.float64).reshape(-1)
    if v.shape[0] != k:
        raise c.fail(path, f"attribute '{group}/model.{attr}' has {v.shape[0]} values for {k} modes",
                     "give one bound per mode or remove the attribute")
    return v


def _names(path, g, group: str, k: int):
    if "names" not in g:
        return None
    raw = np.asarray(g["names"][()]).reshape(-1)
    names = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in raw]
    if len(names) != k:
        raise c.fail(path, f"'{group}/model/names' has {len(names)} names for {k} modes",
                     "give one name per mode or remove the dataset")
    return names
