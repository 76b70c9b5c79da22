"""3DDFA_V2 ``configs/bfm_noneck_v3.pkl`` (Guo et al. ECCV 2020; cleardusk/3DDFA_V2 ``bfm/bfm.py``).

A pickled dict of numpy arrays, on a BFM 2009 mesh trimmed further by 3DDFA_V2 (no neck):

    u          (3N, 1)   float  mean shape INCLUDING 3DDFA's mean expression offset, x0 y0 z0 x1
                                 ..., in BFM 2009 units: MICROMETRES
    w_shp      (3N, Ks)  float  shape basis: BFM 2009 ``shapePC`` rows of the kept vertices, NOT
                                 scaled by the standard deviations (3DDFA_V2 uses the first 40)
    w_exp      (3N, Ke)  float  3DDFA expression basis (3DDFA_V2 uses the first 10)
    tri        (3, F)    int    0-based triangles (3DDFA_V2 replaces them by ``configs/tri.pkl``
                                 for this file, "re-built for bfm_noneck_v3")
    keypoints  (204,)    int    indices into the flattened ``u`` of the 68 iBUG landmarks,
                                 x, y, z of each point in turn (vertex = keypoints[0::3] // 3)

3DDFA_V2 builds ``u + w_shp @ alpha_shp + w_exp @ alpha_exp`` with RAW alphas; the pickle holds
no standard deviations. The network's parameters are de-normalised with the mean and std in
``configs/param_mean_std_62d_120x120.pkl`` (dict ``mean``, ``std``, each (62,) = 12 pose + 40
shape + 10 expression), i.e. the spread of the 300W-LP fits 3DDFA_V2 was trained on. That std
is the only standard deviation 3DDFA_V2 ships, so the loader requires that file beside the model
(``param_mean_std_62d_*.pkl``), keeps the first 40 shape and 10 expression columns it covers,
and uses ``std_k = |w_k| * param_std_k / 1000`` mm with unit columns (``c_k = alpha_k /
param_std_k`` converts 3DDFA_V2 alphas; ``param_mean`` is not folded into the mean). If a
``tri.pkl`` lies beside the model it replaces the pickle's own ``tri``, as in 3DDFA_V2.
Triangles are checked to be counter-clockwise seen from +z and flipped if not.

Pickles can run code when loaded: every .pkl is read with an unpickler whose ``find_class``
admits only numpy's array and scalar reconstructors (``numpy[._]core.multiarray._reconstruct``
and ``.scalar``, ``numpy[._]core.numeric._frombuffer`` for protocol 5, ``numpy.ndarray``,
``numpy.dtype``) and ``_codecs.encode`` restricted to str -> latin-1 bytes (how Python 3 writes
bytes in protocol 2); any other global is refused before it is called.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from morph.formats import _common as c
from morph.model.morphable import MorphableModel

UM_TO_MM = 1e-3
KEYS = ("u", "w_shp", "w_exp", "tri", "keypoints")

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # protocol-2 pickles written by Python 3 rebuild bytes with it
}


class RefusedPickle(Exception):
    pass


class ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers of numpy arrays and nothing else."""

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise RefusedPickle(f"{module}.{name}")
        if name == "ndarray":
            return np.ndarray
        if name == "dtype":
            return np.dtype
        if module == "_codecs":
            return _latin1_bytes
        if name == "_frombuffer":
            from numpy._core.numeric import _frombuffer
            return _frombuffer
        from numpy._core import multiarray
        return getattr(multiarray, name)


def _latin1_bytes(text, encoding="latin1"):
    """``_codecs.encode`` restricted to what pickle protocol 2 uses it for: str -> latin-1 bytes."""
    if encoding != "latin1" or not isinstance(text, str):
        raise RefusedPickle(f"_codecs.encode(..., {encoding!r})")
    return text.encode("latin1")


def safe_load(path: Path):
    """The object in a pickle of numpy arrays, or a UserError (never running the file's code)."""
    try:
        with open(path, "rb") as f:
            return ArrayUnpickler(f, encoding="latin1").load()
    except RefusedPickle as err:
        raise c.fail(path, f"contains code objects ({err}) besides numpy arrays, and we refuse to load it",
                     "use the original file from 3DDFA_V2, or re-save it as a dict of plain numpy arrays") from None
    except (pickle.UnpicklingError, EOFError, *c.PARSE_ERRORS) as err:
        raise c.corrupt(path, "pickle (.pkl)", err) from None


def load(path, name: str = "") -> MorphableModel:
    path = c.existing(path)
    data = safe_load(path)
    if not isinstance(data, dict):
        raise c.fail(path, f"holds a {type(data).__name__}, not 3DDFA_V2's dict of arrays",
                     "give 3DDFA_V2's configs/bfm_noneck_v3.pkl")
    c.need(path, data, [k for k in KEYS if k != "tri"], "3DDFA_V2 model (bfm_noneck_v3.pkl)")
    u = c.vector(path, "u", data["u"])
    if u.shape[0] % 3:
        raise c.fail(path, f"'u' has {u.shape[0]} values, not a multiple of 3", "the file is corrupt")
    n3 = u.shape[0]
    w_shp = c.matrix(path, "w_shp", data["w_shp"], n3)
    w_exp = c.matrix(path, "w_exp", data["w_exp"], n3)
    std_shp, std_exp = _param_std(path, w_shp.shape[1], w_exp.shape[1])
    w_shp, w_exp = w_shp[:, :std_shp.shape[0]], w_exp[:, :std_exp.shape[0]]
    shape = c.pca_part(path, u, w_shp, std_shp, scale=UM_TO_MM)
    expression = c.pca_part(path, np.zeros(n3), w_exp, std_exp, scale=UM_TO_MM)
    tri_path = path.parent / "tri.pkl"
    if tri_path.is_file():
        tris = c.triangles(tri_path, "tri.pkl", safe_load(tri_path), n3 // 3, base=0)
    elif "tri" in data:
        tris = c.triangles(path, "tri", data["tri"], n3 // 3, base=0)
    else:
        raise c.fail(path, "has no 'tri' triangles and there is no tri.pkl beside it",
                     "copy 3DDFA_V2's configs/tri.pkl next to the model")
    tris = c.orient_front_ccw(shape.mean, tris)
    kp = np.asarray(data["keypoints"]).reshape(-1)
    if kp.shape[0] == 204:
        kp = kp[0::3] // 3
    landmarks = c.landmarks_from(path, kp, n3 // 3, base=0)
    return MorphableModel(shape=shape, triangles=tris, expression=expression, landmarks=landmarks,
                          name=name or path.stem,
                          sources={"shape": str(path), "expression": str(path)})


def _param_std(path: Path, k_shp: int, k_exp: int):
    found = sorted(path.parent.glob("param_mean_std_62d_*.pkl"))
    if not found:
        raise c.fail(path, "3DDFA_V2 models carry no standard deviations and no "
                     "param_mean_std_62d_*.pkl lies beside it",
                     "copy 3DDFA_V2's configs/param_mean_std_62d_120x120.pkl next to the model")
    meta = safe_load(found[0])
    if not isinstance(meta, dict) or "std" not in meta:
        raise c.fail(found[0], "has no 'std' entry", "give 3DDFA_V2's configs/param_mean_std_62d_120x120.pkl")
    std = c.vector(found[0], "std", meta["std"])
    if std.shape[0] != 62:
        raise c.fail(found[0], f"'std' has {std.shape[0]} values where 62 (12 pose + 40 shape + 10 expression) "
                     "were expected", "give 3DDFA_V2's configs/param_mean_std_62d_120x120.pkl")
    if k_shp < 40 or k_exp < 10:
        raise c.fail(path, f"has {k_shp} shape and {k_exp} expression columns, fewer than the 40 and 10 "
                     "3DDFA_V2's parameters use", "give the complete bfm_noneck_v3.pkl")
    return std[12:52], std[52:62]
