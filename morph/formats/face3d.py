"""3DDFA / face3d files: the FaceWarehouse-derived expression basis ``Model_Expression.mat`` of
3DDFA (Zhu et al. CVPR 2016) and face3d's combined ``BFM.mat`` (YadiraF/face3d,
``examples/Data/BFM/generate.m``), both on the 3DDFA-trimmed BFM 2009 mesh (N = 53,215 vertices,
F = 105,840 triangles), in BFM 2009 units (micrometres, colours 0..255).

``Model_Expression.mat`` (top-level variables):

    mu_exp     (3N, 1)   mean expression DEFORMATION (an offset added to the shape), um
    w_exp      (3N, 29)  expression basis as stored (columns not unit length)
    sigma_exp  (29, 1)   standard deviation of the raw coefficient multiplying each column

``BFM.mat``: one struct ``model`` (scipy: ``loadmat(...)['model'][0, 0]``) with fields

    shapeMU (3N, 1) um   shapePC (3N, 199)   shapeEV (199, 1)  std devs (um)
    expMU   (3N, 1) um   expPC   (3N, 29)    expEV   (29, 1)   = mu_exp, w_exp, sigma_exp
    texMU   (3N, 1) 0..255   texPC (3N, 199)  texEV (199, 1)   std devs (0..255)
    tri       (3, F)   1-based triangles (face3d's loader transposes and subtracts 1)
    tri_mouth (3, 114) 1-based extra triangles closing the mouth (not used: LSFM lacks them)
    kpt_ind   (1, 68)  1-based vertex index of each iBUG landmark

How face3d builds a face (``load.load_BFM`` + ``MorphabelModel.generate_vertices``), which is
also how the 300W-LP / AFLW2000-3D annotations ``Shape_Para`` (199) and ``Exp_Para`` (29) are
meant to be used - RAW coefficients multiplied straight into the stored bases:

    vertices_um = shapeMU + expMU + shapePC @ Shape_Para + expPC @ Exp_Para
    colours     = (texMU + texPC @ Tex_Para) / 255        (300W-LP's MATLAB example: raw)

(face3d's own ``generate_colors`` multiplies ``Tex_Para`` by ``texEV`` first, i.e. treats it as
already normalised; the dataset's example does not, and ``raw_to_normalized`` follows the dataset.)

face3d's fitting regularises the raw coefficients with ``shapeEV`` / ``expEV`` as their standard
deviations, so sigma is the std of the raw coefficient whatever the column length.

Our conversion (``morph.formats._common.pca_part``): for each part with stored basis W and raw
std sigma, ``basis[:, k] = W[:, k] / |W[:, k]|`` and ``std_k = |W[:, k]| * sigma_k / 1000`` (mm),
so that ``basis[:, k] * std_k * c_k == W[:, k] * r_k / 1000`` exactly when

    c_k = r_k / sigma_k          (see raw_to_normalized; column lengths cancel)

The shape mean is ``shapeMU / 1000`` and ``expression.mean`` is the offset ``expMU / 1000``,
which ``MorphableModel.vertices`` adds: together ``(shapeMU + expMU) / 1000`` as face3d uses it.
An expression-only ``Model_Expression.mat`` loads as a model whose shape part has no modes and a
zero mean, and no triangles, so that ``compose(shape=..., expression=...)`` can take its
expression part, ``mu_exp`` offset included.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from morph.base.errors import UserError
from morph.formats import _common as c
from morph.model.morphable import MorphableModel

UM_TO_MM = 1e-3
BFM_FIELDS = ("shapeMU", "shapePC", "shapeEV", "expMU", "expPC", "expEV", "texMU", "texPC", "texEV", "tri")
EXPRESSION_KEYS = ("mu_exp", "w_exp", "sigma_exp")


def load_bfm(path, name: str = "") -> MorphableModel:
    """face3d's combined ``BFM.mat`` (struct ``model``)."""
    path = c.existing(path)
    data = c.read_mat(path, ["model"])
    c.need(path, data, ["model"], "face3d BFM.mat")
    m = data["model"]
    if not isinstance(m, dict):
        raise c.fail(path, "'model' is not a MATLAB struct", "give face3d's BFM.mat (examples/Data/BFM/Out)")
    c.need(path, m, BFM_FIELDS, "face3d BFM.mat", where="model.")
    shape_mu = c.vector(path, "model.shapeMU", m["shapeMU"])
    if shape_mu.shape[0] % 3:
        raise c.fail(path, f"'model.shapeMU' has {shape_mu.shape[0]} values, not a multiple of 3", "the file is corrupt")
    n3 = shape_mu.shape[0]
    exp_mu = c.vector(path, "model.expMU", m["expMU"], n3)
    shape_pc = c.matrix(path, "model.shapePC", m["shapePC"], n3)
    exp_pc = c.matrix(path, "model.expPC", m["expPC"], n3)
    tex_pc = c.matrix(path, "model.texPC", m["texPC"], n3)
    shape = c.pca_part(path, shape_mu, shape_pc,
                       c.vector(path, "model.shapeEV", m["shapeEV"], shape_pc.shape[1]), scale=UM_TO_MM)
    expression = c.pca_part(path, exp_mu, exp_pc, c.vector(path, "model.expEV", m["expEV"], exp_pc.shape[1]),
                            scale=UM_TO_MM)
    texture = c.pca_part(path, c.vector(path, "model.texMU", m["texMU"], n3), tex_pc,
                         c.vector(path, "model.texEV", m["texEV"], tex_pc.shape[1]), scale=1 / 255.0)
    tris = c.orient_front_ccw(shape.mean, c.triangles(path, "model.tri", m["tri"], n3 // 3, base=1))
    landmarks = None
    if m.get("kpt_ind") is not None:
        landmarks = c.landmarks_from(path, m["kpt_ind"], n3 // 3, base=1)
    return MorphableModel(shape=shape, triangles=tris, texture=texture, expression=expression,
                          landmarks=landmarks, name=name or path.stem,
                          sources={"shape": str(path), "texture": str(path), "expression": str(path)})


def load_expression(path, name: str = "") -> MorphableModel:
    """3DDFA's ``Model_Expression.mat``: expression part only (see the module docstring)."""
    path = c.existing(path)
    data = c.read_mat(path, list(EXPRESSION_KEYS))
    c.need(path, data, EXPRESSION_KEYS, "3DDFA expression model (Model_Expression.mat)")
    mu = c.vector(path, "mu_exp", data["mu_exp"])
    if mu.shape[0] % 3:
        raise c.fail(path, f"'mu_exp' has {mu.shape[0]} values, not a multiple of 3", "the file is corrupt")
    w = c.matrix(path, "w_exp", data["w_exp"], mu.shape[0])
    sigma = c.vector(path, "sigma_exp", data["sigma_exp"], w.shape[1])
    expression = c.pca_part(path, mu, w, sigma, scale=UM_TO_MM)
    return MorphableModel(shape=c.mean_only(path, np.zeros_like(mu)), triangles=np.zeros((0, 3), np.int64),
                          expression=expression, name=name or path.stem, sources={"expression": str(path)})


def load(path, name: str = "") -> MorphableModel:
    path = c.existing(path)
    keys = c.mat_keys(path)
    if "model" in keys:
        return load_bfm(path, name)
    return load_expression(path, name)


# ------------------------------------------------------- raw (300W-LP) coefficients --

@lru_cache(maxsize=4)
def _raw_std_cached(path: str, mtime: float) -> dict:
    p = Path(path)
    keys = c.mat_keys(p)
    if "model" in keys:
        m = c.read_mat(p, ["model"])["model"]
        c.need(p, m, ("shapeEV", "expEV", "texEV"), "face3d BFM.mat", where="model.")
        return {"shape": c.vector(p, "model.shapeEV", m["shapeEV"]),
                "expression": c.vector(p, "model.expEV", m["expEV"]),
                "texture": c.vector(p, "model.texEV", m["texEV"])}
    if "sigma_exp" in keys:
        return {"expression": c.vector(p, "sigma_exp", c.read_mat(p, ["sigma_exp"])["sigma_exp"])}
    if "shapeEV" in keys:  # 01_MorphableModel.mat: the same raw convention for shape and colour
        d = c.read_mat(p, ["shapeEV", "texEV"])
        return {"shape": c.vector(p, "shapeEV", d["shapeEV"]), "texture": c.vector(p, "texEV", d["texEV"])}
    raise c.fail(p, "holds no standard deviations of raw coefficients (shapeEV, expEV or sigma_exp)",
                 "give face3d's BFM.mat, 3DDFA's Model_Expression.mat or BFM 2009's 01_MorphableModel.mat")


def raw_std(path) -> dict:
    """Standard deviations of the raw coefficients per part ("shape", "expression", "texture")
    stored in a face3d ``BFM.mat``, ``Model_Expression.mat`` or ``01_MorphableModel.mat``."""
    p = c.existing(path).resolve()
    return _raw_std_cached(str(p), p.stat().st_mtime)


def raw_to_normalized(part: str, raw, sigma) -> np.ndarray:
    """Our coefficients (units of standard deviations) from raw face3d / 300W-LP coefficients.

    part:  "shape" (``Shape_Para``), "expression" (``Exp_Para``) or "texture" (``Tex_Para``)
    raw:   (..., K) raw coefficients, as multiplied straight into the file's basis
    sigma: the file the model was loaded from (face3d ``BFM.mat``, ``Model_Expression.mat``,
           ``01_MorphableModel.mat``) or the (K,) raw standard deviations themselves (e.g.
           3DDFA_V2's ``param_mean_std`` std).

    Returns ``raw / sigma`` (K,) per coefficient: exact for models loaded by this package, since
    loaders set ``basis_k * std_k = W_k * sigma_k * unit`` (see the module docstring). Only the
    first ``len(raw)`` coefficients are used when ``raw`` is shorter than sigma, e.g. 3DDFA's 40
    shape parameters; truncate the model to the same number of components.
    """
    if part not in ("shape", "expression", "texture"):
        raise UserError(f"raw_to_normalized: part must be 'shape', 'expression' or 'texture', not {part!r}.")
    if isinstance(sigma, (str, Path)):
        stds = raw_std(sigma)
        if part not in stds:
            raise UserError(f"{sigma}: has no {part} standard deviations; give the file the {part} model came from.")
        sigma = stds[part]
    sigma = np.asarray(sigma, np.float64).reshape(-1)
    raw = np.asarray(raw, np.float64)
    if raw.ndim >= 2 and raw.shape[-1] == 1 and raw.shape[0] > 1:
        raw = raw[..., 0]  # 300W-LP stores (K, 1) columns
    k = raw.shape[-1]
    if k > sigma.shape[0]:
        raise UserError(f"raw_to_normalized: {k} raw {part} coefficients but the model has only "
                        f"{sigma.shape[0]}; use the model the coefficients were fitted with.")
    if np.any(sigma[:k] <= 0):
        raise UserError(f"raw_to_normalized: zero standard deviation for some {part} modes; cannot normalise.")
    return raw / sigma[:k]
