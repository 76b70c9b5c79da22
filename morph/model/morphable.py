"""The 3D morphable model (3DMM) as one object, whatever file it came from, and the reference
implementation of its maths: ``MorphableModel.vertices`` is S(alpha, beta) and
``MorphableModel.colors`` is T(gamma). Every other place that forms a face - the renderer's numba
and torch engines (``morph.render``), the pair renderer (``morph.jobs.render_pairs``) - is a fast or batched
copy held to these two by ``tests/test_render.py``, on a model whose expression mean is not zero.

A model is three linear (PCA) parts on one mesh (Blanz & Vetter 1999; paper section 3.1):

    S(alpha, beta) = S_mean + U_id  (sigma_id  * alpha) + E_mean + U_exp (sigma_exp * beta)  (shape)
    T(gamma)       = T_mean + U_tex (sigma_tex * gamma)                                (colour)

where E_mean is the expression model's mean deformation (an offset: FaceWarehouse/3DDFA's
``mu_exp``, zero for blendshapes), and alpha, beta, gamma ~ N(0, I): coefficients are always in units of standard deviations, so
that sampling "from the Gaussian of the original model" (paper section 4, Data) is
``rng.standard_normal(k)`` for every model. Loaders convert each file's own convention
(orthonormal basis + eigenvalues, pre-scaled basis, variances ...) into this one.

Units: vertex positions in millimetres, colours in [0, 1] RGB. Vertices are stored flat as
(x0, y0, z0, x1, ...), matching every file format we read. Triangles are 0-based int64,
counter-clockwise seen from the front (+z looks towards the camera).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from morph.base.errors import UserError

#: iBUG 68-point indices (0-based) of the five points MTCNN predicts, eye centres from the
#: eye contours: left eye (image left) 36-41, right eye 42-47, nose tip 30, mouth corners 48, 54.
FIVE_POINT_GROUPS = ((36, 37, 38, 39, 40, 41), (42, 43, 44, 45, 46, 47), (30,), (48,), (54,))


@dataclass
class PCAModel:
    """One linear part: ``mean + basis @ (std * coeffs)``.

    mean:  (3N,) float32
    basis: (3N, K) float32, columns of unit length for PCA models (scaled bases are normalised
           by the loader, moving the scale into ``std``)
    std:   (K,) float32, standard deviation of each coefficient
    names: optional K names of the modes (e.g. "jaw open")
    low, high: optional (K,) bounds on the coefficients that the model's maker recommends for
           sampling (e.g. a synthetic "jaw open" mode is meaningless below 0); the sampler clips
           draws into them.
    """

    mean: np.ndarray
    basis: np.ndarray
    std: np.ndarray
    names: list[str] | None = None
    source: str = ""
    low: np.ndarray | None = None
    high: np.ndarray | None = None

    def __post_init__(self):
        self.mean = np.ascontiguousarray(self.mean, dtype=np.float32).reshape(-1)
        self.basis = np.ascontiguousarray(self.basis, dtype=np.float32).reshape(self.mean.shape[0], -1)
        self.std = np.ascontiguousarray(self.std, dtype=np.float32).reshape(-1)
        if self.basis.shape[1] != self.std.shape[0]:
            raise UserError(
                f"{self.source or 'model'}: basis has {self.basis.shape[1]} components but "
                f"{self.std.shape[0]} standard deviations; the file is inconsistent."
            )
        for bound in ("low", "high"):
            v = getattr(self, bound)
            if v is not None:
                v = np.asarray(v, np.float64).reshape(-1)
                if v.shape[0] != self.std.shape[0]:
                    raise UserError(f"{self.source or 'model'}: {v.shape[0]} coefficient bounds for "
                                    f"{self.std.shape[0]} components; the file is inconsistent.")
                setattr(self, bound, v)
        if not np.all(np.isfinite(self.std)) or np.any(self.std < 0):
            raise UserError(f"{self.source or 'model'}: negative or non-finite standard deviations.")

    @property
    def n_components(self) -> int:
        return int(self.std.shape[0])

    def scaled_basis(self) -> np.ndarray:
        """(3N, K) basis times standard deviations: ``mean + scaled_basis @ coeffs`` (computed
        once per model: a BFM basis is ~130 MB)."""
        cached = self.__dict__.get("_scaled")
        if cached is None:
            cached = self.basis * self.std[None, :]
            cached.setflags(write=False)
            self.__dict__["_scaled"] = cached
        return cached

    def truncate(self, k: int) -> "PCAModel":
        return replace(self, basis=self.basis[:, :k], std=self.std[:k],
                       names=None if self.names is None else self.names[:k],
                       low=None if self.low is None else self.low[:k],
                       high=None if self.high is None else self.high[:k])

    def clip(self, coeffs: np.ndarray) -> np.ndarray:
        """Coefficients clipped into the model's recommended bounds (unchanged without bounds)."""
        if self.low is not None:
            coeffs = np.maximum(coeffs, self.low)
        if self.high is not None:
            coeffs = np.minimum(coeffs, self.high)
        return coeffs


@dataclass
class MorphableModel:
    """Shape, colour and expression models on one triangle mesh.

    triangles: (F, 3) int64, 0-based
    landmarks: (68,) int64 vertex index per iBUG point, -1 where unknown (None if none known)
    texture / expression may be None (e.g. the SFM shape model has no colour model).
    paint_albedo: what a model without a colour model looks like (``fixed_albedo``): True paints
        one fixed albedo from its landmarks (``morph.model.albedo``: skin, lips, brows, eyes, nostrils),
        False (the default for models built in code) a uniform grey. ``morph.formats.named.load_model``
        (every ``morph`` command) sets it True. It changes nothing for models with a colour model.
    """

    shape: PCAModel
    triangles: np.ndarray
    texture: PCAModel | None = None
    expression: PCAModel | None = None
    landmarks: np.ndarray | None = None
    name: str = ""
    sources: dict = field(default_factory=dict)
    paint_albedo: bool = False
    _fixed_albedo: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        self.triangles = np.ascontiguousarray(self.triangles, dtype=np.int64).reshape(-1, 3)
        n = self.n_vertices
        for part_name in ("texture", "expression"):
            part = getattr(self, part_name)
            if part is not None and part.mean.shape[0] != 3 * n:
                raise UserError(
                    f"{part.source or part_name}: {part_name} model has {part.mean.shape[0] // 3} "
                    f"vertices but the shape model {self.shape.source or ''} has {n}; "
                    "use models of the same topology."
                )
        if self.triangles.size and (self.triangles.min() < 0 or self.triangles.max() >= n):
            raise UserError(
                f"{self.shape.source or self.name}: triangle indices run from {self.triangles.min()} "
                f"to {self.triangles.max()} but there are {n} vertices (wrong index base?)."
            )
        if self.landmarks is not None:
            self.landmarks = np.asarray(self.landmarks, dtype=np.int64).reshape(-1)

    @property
    def n_vertices(self) -> int:
        return self.shape.mean.shape[0] // 3

    @property
    def n_shape(self) -> int:
        return self.shape.n_components

    @property
    def n_texture(self) -> int:
        return 0 if self.texture is None else self.texture.n_components

    @property
    def n_expression(self) -> int:
        return 0 if self.expression is None else self.expression.n_components

    def vertices(self, alpha: np.ndarray, beta: np.ndarray | None = None) -> np.ndarray:
        """S(alpha, beta): (B, N, 3) vertex positions (mm) for shape coefficients alpha (B, K_id)
        and expression coefficients beta (B, K_exp; None: neutral), the expression model's mean
        deformation E_mean included. The reference the renderers are held to."""
        alpha = np.atleast_2d(alpha).astype(np.float32)
        flat = self.shape.mean[None] + alpha @ self.shape.scaled_basis().T
        if self.expression is not None:
            flat = flat + self.expression.mean[None]  # the expression model's mean deformation
            if beta is not None:
                beta = np.atleast_2d(beta).astype(np.float32)
                flat = flat + beta @ self.expression.scaled_basis().T
        return flat.reshape(flat.shape[0], -1, 3)

    def colors(self, gamma: np.ndarray) -> np.ndarray:
        """T(gamma): (B, N, 3) per-vertex albedo in [0, 1] for colour coefficients gamma (B, K_tex);
        ``fixed_albedo()`` for every row when the model has no colour model (K_tex = 0). The
        reference the renderers are held to."""
        gamma = np.atleast_2d(gamma).astype(np.float32)
        if self.texture is None:
            return np.repeat(self.fixed_albedo()[None], gamma.shape[0], axis=0)
        flat = self.texture.mean[None] + gamma @ self.texture.scaled_basis().T
        return np.clip(flat.reshape(flat.shape[0], -1, 3), 0.0, 1.0)

    def fixed_albedo(self) -> np.ndarray:
        """(N, 3) float32 albedo of a model without a colour model: painted from the landmarks
        on the mean shape when ``paint_albedo`` is set and the landmarks L[17..59] are known
        (``morph.model.albedo.painted_albedo``), else uniform grey 0.7. Computed once per model (a copy
        is returned); the model's ``texture`` stays None, so every identity gets this albedo."""
        if self._fixed_albedo is None:
            from morph.model import albedo

            painted = albedo.painted_albedo(self) if self.paint_albedo else None
            if painted is None:
                painted = np.full((self.n_vertices, 3), albedo.GREY, np.float32)
            painted.setflags(write=False)
            self._fixed_albedo = painted
        return self._fixed_albedo.copy()

    def five_point_vertices(self) -> list[np.ndarray]:
        """Vertex index groups whose mean gives the 5 MTCNN points (eyes, nose, mouth corners)."""
        if self.landmarks is None or np.any(self.landmarks[[i for g in FIVE_POINT_GROUPS for i in g]] < 0):
            raise UserError(
                f"{self.name}: the model has no 68-point landmark indices, which alignment needs; "
                "give them with 'landmarks: FILE' in the model YAML."
            )
        return [self.landmarks[list(g)] for g in FIVE_POINT_GROUPS]


def compose(shape: MorphableModel, texture: MorphableModel | None = None,
            expression: MorphableModel | None = None, name: str = "") -> MorphableModel:
    """One model from several sources, as the paper does (LSFM shape + BFM texture +
    FaceWarehouse expression, section 4). All must share one topology: the same vertex count and
    the same triangle list."""
    parts = {"texture": texture, "expression": expression}
    for role, other in parts.items():
        if other is None:
            continue
        if other.n_vertices != shape.n_vertices:
            raise UserError(
                f"compose: the {role} source {_src(other)} has {other.n_vertices} vertices but the "
                f"shape source {_src(shape)} has {shape.n_vertices}; both must use the same mesh."
            )
        if other.triangles.size and not np.array_equal(other.triangles, shape.triangles):
            raise UserError(
                f"compose: the {role} source {_src(other)} and the shape source {_src(shape)} have "
                "different triangle lists; both must use the same mesh."
            )
    tex = texture.texture if texture is not None else shape.texture
    exp = expression.expression if expression is not None else shape.expression
    if texture is not None and texture.texture is None:
        raise UserError(f"compose: the texture source {_src(texture)} has no colour model.")
    if expression is not None and expression.expression is None:
        raise UserError(f"compose: the expression source {_src(expression)} has no expression model.")
    landmarks = shape.landmarks
    for other in (texture, expression):
        if landmarks is None and other is not None:
            landmarks = other.landmarks
    sources = dict(shape.sources)
    sources.update({"shape": _src(shape)})
    if texture is not None:
        sources["texture"] = _src(texture)
    if expression is not None:
        sources["expression"] = _src(expression)
    return MorphableModel(shape=shape.shape, triangles=shape.triangles, texture=tex, expression=exp,
                          landmarks=landmarks, name=name or shape.name, sources=sources)


def _src(m: MorphableModel) -> str:
    return m.shape.source or m.name or "<model>"


def require_file(path: str | Path, what: str = "file") -> Path:
    """The path, or a UserError naming it when it does not exist."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such {what}; check the path.")
    if p.is_dir():
        raise UserError(f"{p}: is a folder, expected a {what}.")
    return p
