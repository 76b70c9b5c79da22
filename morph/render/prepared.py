"""A model's arrays laid out for the renderer's engines, and a batch's parameters checked and
scaled: the shared input of the numba and torch vertex stages (``morph.render.renderer``)."""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import numpy as np
import torch

from morph.base.errors import UserError
from morph.model.morphable import MorphableModel


@dataclass
class Prepared:
    """A model's arrays laid out for rendering: transposed bases (K, 3N) so that the blend
    streams rows, shape and expression concatenated, triangles as int32 for the kernels."""

    n_vertices: int
    triangles: np.ndarray
    shape_mean: np.ndarray
    shape_basis_t: np.ndarray
    shape_std: np.ndarray
    n_shape: int
    n_expression: int
    tex_mean: np.ndarray | None
    tex_basis_t: np.ndarray | None
    tex_std: np.ndarray | None
    albedo: np.ndarray | None  # (N, 3) fixed albedo of a model without a colour model
    landmarks: np.ndarray | None
    five_groups: list[np.ndarray] | None
    on_device: dict = field(default_factory=dict)

    def tensors(self, device: torch.device) -> dict[str, torch.Tensor]:
        key = str(device)
        if key not in self.on_device:
            names = ("triangles", "shape_mean", "shape_basis_t", "shape_std", "tex_mean", "tex_basis_t", "tex_std",
                     "albedo")
            self.on_device[key] = {n: torch.from_numpy(getattr(self, n)).to(device)
                                   for n in names if getattr(self, n) is not None}
            self.on_device[key]["triangles"] = self.on_device[key]["triangles"].long()
        return self.on_device[key]


_PREPARED: dict[int, Prepared] = {}


def prepare_model(model: MorphableModel) -> Prepared:
    key = id(model)
    if key in _PREPARED:
        return _PREPARED[key]
    parts = [model.shape] + ([model.expression] if model.expression is not None else [])
    basis_t = np.concatenate([p.basis.T for p in parts], 0)
    five = None
    if model.landmarks is not None:
        try:
            five = model.five_point_vertices()
        except UserError:
            five = None
    tex = model.texture
    shape_mean = model.shape.mean  # S_mean + E_mean (MorphableModel.vertices)
    if model.expression is not None:
        shape_mean = (shape_mean.astype(np.float64) + model.expression.mean).astype(np.float32)
    prep = Prepared(
        n_vertices=model.n_vertices,
        triangles=np.ascontiguousarray(model.triangles, np.int32),
        shape_mean=shape_mean,
        shape_basis_t=np.ascontiguousarray(basis_t, np.float32),
        shape_std=np.concatenate([p.std for p in parts]).astype(np.float32),
        n_shape=model.n_shape, n_expression=model.n_expression,
        tex_mean=None if tex is None else tex.mean,
        tex_basis_t=None if tex is None else np.ascontiguousarray(tex.basis.T),
        tex_std=None if tex is None else tex.std,
        albedo=model.fixed_albedo() if tex is None else None,
        landmarks=None if model.landmarks is None else model.landmarks.copy(),
        five_groups=five)
    _PREPARED[key] = prep
    weakref.finalize(model, _PREPARED.pop, key, None)
    return prep


# ----------------------------------------------------------------------------- parameters
@dataclass
class RenderParams:
    shape_coeffs: np.ndarray  # (B, K_id + K_exp) = [sigma_id alpha, sigma_exp beta]
    tex_coeffs: np.ndarray  # (B, K_tex) = sigma_tex gamma
    pose: np.ndarray  # (B, 3) degrees
    distance: np.ndarray  # (B,) mm
    sh: np.ndarray  # (B, 9, 3)

    @property
    def n(self) -> int:
        return self.pose.shape[0]


def check_params(model: MorphableModel, prep: Prepared, params: dict[str, np.ndarray]) -> RenderParams:
    known = {"alpha", "beta", "gamma", "pose", "camera_distance", "sh"}
    unknown = set(params) - known
    if unknown:
        raise UserError(f"render parameters: unknown keys {sorted(unknown)}; expected {sorted(known)}.")
    missing = {"alpha", "pose", "camera_distance", "sh"} - set(params)
    if missing:
        raise UserError(f"render parameters: missing {sorted(missing)}.")

    def arr(name, tail):
        a = np.asarray(params[name], np.float32)
        if a.ndim == len(tail):  # one image
            a = a[None]
        if a.shape[1:] != tail:
            raise UserError(f"render parameter '{name}' has shape {a.shape}; expected (B, "
                            f"{', '.join(map(str, tail))}) for model {model.name or '?'}.")
        return np.ascontiguousarray(a)

    alpha = arr("alpha", (prep.n_shape,))
    n = alpha.shape[0]
    beta = arr("beta", (prep.n_expression,)) if "beta" in params else np.zeros((n, prep.n_expression), np.float32)
    n_tex = 0 if prep.tex_std is None else prep.tex_std.shape[0]
    gamma = arr("gamma", (n_tex,)) if "gamma" in params else np.zeros((n, n_tex), np.float32)
    pose = arr("pose", (3,))
    distance = np.ascontiguousarray(np.asarray(params["camera_distance"], np.float32).reshape(-1))
    sh = arr("sh", (9, 3))
    for name, a in (("beta", beta), ("gamma", gamma), ("pose", pose), ("camera_distance", distance), ("sh", sh)):
        if a.shape[0] != n:
            raise UserError(f"render parameters: 'alpha' has {n} rows but '{name}' has {a.shape[0]}.")
    coeffs = np.concatenate([alpha, beta], 1) * prep.shape_std[None]
    tex = gamma * prep.tex_std[None] if prep.tex_std is not None else gamma
    return RenderParams(np.ascontiguousarray(coeffs, np.float32), np.ascontiguousarray(tex, np.float32),
                   pose, distance, sh)
