"""Declarative distributions for everything sampled per identity and per image.

Written like the Basel parametric-face-image-generator's config: one distribution per
parameter, a format version, read from YAML. The paper's scheme (section 4, Data): shape and
colour of a new identity come from the model's own Gaussian; expression, pose and lighting from
a Gaussian fitted to real annotations (300W-LP / AFLW2000-3D, see ``morph fit-priors``).

Every parameter group is a (possibly truncated) Gaussian::

    pose:                       # degrees: pitch, yaw, roll
      mean: [0, 0, 0]
      std: [10, 25, 6]          # diagonal, or
      cov: [[...], ...]         # a full covariance (fitted priors)
      low: [-45, -75, -30]      # optional bounds: draws are clipped into [low, high]
      high: [45, 75, 30]

``shape``, ``texture`` and ``expression`` may instead give ``std_scale: s`` meaning
N(0, s^2 I) in the model's standard-deviation units (coefficients are always in std units; see
``morph.model.morphable``). A fitted expression prior is only meaningful for the basis it was fitted in:
``basis`` names it (e.g. ``face3d-exp29``) and the sampler checks the dimension.
"""
from __future__ import annotations

import math

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import numpy as np
import yaml

from morph.base.errors import UserError

FORMAT_VERSION = 1

#: group name -> (dimension or None when it follows the model, meaning)
GROUPS = {
    "shape": (None, "identity shape coefficients, model std units"),
    "texture": (None, "identity colour coefficients, model std units"),
    "expression": (None, "per-image expression coefficients, model std units"),
    "pose": (3, "per-image pitch, yaw, roll in degrees"),
    "sh": (27, "per-image spherical-harmonics lighting, 9 coefficients x RGB (band-major)"),
    "camera_distance": (1, "per-image camera distance in millimetres"),
}
PER_IDENTITY = ("shape", "texture")
#: Bounds that keep renders faces: std_scale multiplies a model's standard deviations; the camera
#: distance is in mm from the face centre
MAX_STD_SCALE = 100.0
CAMERA_MM = (100.0, 100_000.0)
PER_IMAGE = ("expression", "pose", "sh", "camera_distance")
_KEYS = {"mean", "std", "cov", "low", "high", "std_scale", "basis", "fitted_from"}


@dataclass
class Gaussian:
    """N(mean, cov) clipped into [low, high]; ``chol`` is the lower Cholesky factor of cov
    (``cholesky_psd``)."""

    mean: np.ndarray
    chol: np.ndarray
    low: np.ndarray | None = None
    high: np.ndarray | None = None
    std_scale: float | None = None  # set for model-unit groups given as N(0, s^2 I)
    basis: str | None = None

    def dim(self, model_dim: int | None = None) -> int:
        return model_dim if self.std_scale is not None else int(self.mean.shape[0])

    def draw(self, rng: np.random.Generator, model_dim: int | None = None) -> np.ndarray:
        """One draw in float64, ``mean + chol z``, bit-identical whatever the batching and on any
        CPU: ``chol z`` is summed exactly rounded (``math.fsum``), not by the BLAS, whose kernels
        differ by instruction set."""
        if self.std_scale is not None:
            return rng.standard_normal(model_dim) * self.std_scale
        z = rng.standard_normal(self.mean.shape[0])
        x = self.mean + np.array([math.fsum(row) for row in self.chol * z])
        if self.low is not None:
            x = np.maximum(x, self.low)
        if self.high is not None:
            x = np.minimum(x, self.high)
        return x


@dataclass
class Priors:
    groups: dict[str, Gaussian]
    text: str  # the YAML it was read from, recorded in every output file
    source: str = ""

    def __getitem__(self, name: str) -> Gaussian:
        return self.groups[name]


def default_priors_path() -> Path:
    return Path(str(files("ganfaces_data") / "priors_default.yaml"))


def load_priors(path: str | Path | None = None) -> Priors:
    """Read and validate a priors YAML (the embedded default when ``path`` is None)."""
    p = default_priors_path() if path in (None, "default") else Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such priors file; check the path or omit --priors for the default.")
    text = p.read_text()
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UserError(f"{p}: not valid YAML ({str(e).splitlines()[0]}); fix the syntax.") from None
    return parse_priors(doc, text, str(p))


def parse_priors(doc, text: str = "", source: str = "<priors>") -> Priors:
    if not isinstance(doc, dict):
        raise UserError(f"{source}: a priors file must be a mapping of parameter groups.")
    version = doc.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise UserError(f"{source}: format_version {version} is not supported (this version reads {FORMAT_VERSION}).")
    unknown = set(doc) - set(GROUPS) - {"format_version", "description"}
    if unknown:
        raise UserError(
            f"{source}: unknown parameter {', '.join(sorted(unknown))}; "
            f"allowed: {', '.join(GROUPS)}."
        )
    missing = [g for g in GROUPS if g not in doc]
    if missing:
        raise UserError(f"{source}: missing parameter group {', '.join(missing)}.")
    groups = {name: _parse_group(name, doc[name], source) for name in GROUPS}
    _check_camera(groups["camera_distance"], source)
    if not text:
        text = yaml.safe_dump(doc, sort_keys=False)
    return Priors(groups=groups, text=text, source=source)


def _parse_group(name: str, spec, source: str) -> Gaussian:
    where = f"{source}: '{name}'"
    if not isinstance(spec, dict):
        raise UserError(f"{where} must be a mapping with mean/std or std_scale.")
    unknown = set(spec) - _KEYS
    if unknown:
        raise UserError(f"{where} has unknown key {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_KEYS))}.")
    dim, _ = GROUPS[name]
    if "std_scale" in spec:
        if dim is not None:
            raise UserError(f"{where}: std_scale applies to shape, texture and expression only; give mean and std.")
        s = _number(spec["std_scale"], where + " std_scale")
        if not 0 <= s <= MAX_STD_SCALE:
            raise UserError(f"{where}: std_scale is {s:g}; it scales the model's standard deviations and must be "
                            f"in [0, {MAX_STD_SCALE:g}].")
        return Gaussian(mean=np.zeros(0), chol=np.zeros((0, 0)), std_scale=s, basis=spec.get("basis"))
    if "mean" not in spec or ("std" not in spec and "cov" not in spec):
        raise UserError(f"{where} needs 'mean' and one of 'std' or 'cov' (or 'std_scale').")
    mean = _vector(spec["mean"], where + " mean")
    d = mean.shape[0]
    if dim is not None and d != dim:
        raise UserError(f"{where}: mean has {d} values, expected {dim} ({GROUPS[name][1]}).")
    if "std" in spec and "cov" in spec:
        raise UserError(f"{where}: give either 'std' or 'cov', not both.")
    if "std" in spec:
        std = _vector(spec["std"], where + " std", d)
        if np.any(std < 0):
            raise UserError(f"{where}: std has a negative value; standard deviations must be >= 0.")
        chol = np.diag(std)
    else:
        try:
            cov = np.asarray(spec["cov"], dtype=np.float64)
        except (TypeError, ValueError):
            raise UserError(f"{where}: cov must be a {d}x{d} matrix of numbers.") from None
        if cov.shape != (d, d) or not np.all(np.isfinite(cov)):
            raise UserError(f"{where}: cov must be a finite {d}x{d} matrix.")
        if np.any(np.diag(cov) < 0):
            raise UserError(f"{where}: cov has a negative variance on its diagonal; variances must be >= 0.")
        if not np.allclose(cov, cov.T, atol=1e-8 * max(1.0, np.abs(cov).max())):
            raise UserError(f"{where}: cov is not symmetric.")
        w = np.linalg.eigvalsh(cov)
        if w.min() < -1e-8 * max(1.0, w.max()):
            raise UserError(f"{where}: cov is not positive semi-definite (eigenvalue {w.min():.3g}).")
        chol = cholesky_psd(cov)
    low = _vector(spec["low"], where + " low", d) if "low" in spec else None
    high = _vector(spec["high"], where + " high", d) if "high" in spec else None
    if low is not None and high is not None and np.any(low > high):
        raise UserError(f"{where}: low is above high for some value.")
    return Gaussian(mean=mean, chol=chol, low=low, high=high, basis=spec.get("basis"))


def _check_camera(g: Gaussian, source: str) -> None:
    """A camera at or behind the face, or so far that it is a dot, renders a blank image."""
    mean = float(g.mean[0])
    std = float(abs(g.chol[0, 0]))
    low = None if g.low is None else float(g.low[0])
    if not CAMERA_MM[0] <= mean <= CAMERA_MM[1]:
        raise UserError(f"{source}: 'camera_distance' mean is {mean:g} mm; give {CAMERA_MM[0]:g} to {CAMERA_MM[1]:g} mm "
                        "(the face is ~200 mm tall; 800 mm frames it like a portrait).")
    if (low is None or low <= 0) and mean - 6 * std <= 0:
        raise UserError(f"{source}: 'camera_distance' can be drawn at or behind the face (mean {mean:g}, std {std:g} mm); "
                        "add a positive 'low', e.g. low: [400].")
    if g.high is None and std > mean:
        raise UserError(f"{source}: 'camera_distance' std {std:g} mm is larger than its mean {mean:g} mm; lower it or "
                        "add a 'high'.")
    if g.high is not None and float(g.high[0]) > CAMERA_MM[1]:
        raise UserError(f"{source}: 'camera_distance' high is {float(g.high[0]):g} mm; keep it at most "
                        f"{CAMERA_MM[1]:g} mm.")


def cholesky_psd(cov: np.ndarray) -> np.ndarray:
    """Lower-triangular L with L L^T = cov, for a positive SEMI-definite cov, the same bits on
    every CPU.

    The Cholesky-Crout recurrence in float64 with exactly rounded sums (``math.fsum``), so no
    LAPACK or BLAS kernel (chosen by instruction set) takes part; a pivot at or below 1e-12 of
    the largest variance is a zero direction and leaves its column zero (a singular cov, e.g.
    colour channels that always move together). The factor a square root of cov is taken from
    decides which sample a seed gives: an eigendecomposition's square root (the earlier code) is
    not unique for repeated eigenvalues, and gave lighting draws 0.67 apart between OpenBLAS's
    Haswell and SkylakeX kernels for the default priors' ``sh``.
    """
    d = cov.shape[0]
    tol = 1e-12 * max(float(np.max(np.diag(cov))), 0.0)
    L = np.zeros((d, d))
    for j in range(d):
        pivot = cov[j, j] - math.fsum(L[j, :j] * L[j, :j])
        if pivot <= tol:
            continue
        L[j, j] = math.sqrt(pivot)
        for i in range(j + 1, d):
            L[i, j] = (cov[i, j] - math.fsum(L[i, :j] * L[j, :j])) / L[j, j]
    return L


def _number(x, where: str) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise UserError(f"{where}: expected a number, got {x!r}.") from None
    if not np.isfinite(v):
        raise UserError(f"{where}: expected a finite number, got {x!r}.")
    return v


def _vector(x, where: str, d: int | None = None) -> np.ndarray:
    if isinstance(x, (int, float)):
        x = [x]
    try:
        v = np.asarray(x, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise UserError(f"{where}: expected a list of numbers.") from None
    if not np.all(np.isfinite(v)):
        raise UserError(f"{where}: values must be finite numbers.")
    if d is not None and v.shape[0] != d:
        raise UserError(f"{where}: has {v.shape[0]} values, expected {d}.")
    return v


def gaussian_entry(x: np.ndarray, **extra) -> dict:
    """A priors-YAML group fitted to samples x (N, D): their mean and (unbiased) covariance, plus
    ``extra`` keys (bounds as arrays, ``basis``, ``fitted_from``)."""
    mean = x.mean(0)
    cov = np.cov(x.T, ddof=1).reshape(x.shape[1], x.shape[1])
    cov = (cov + cov.T) / 2
    out = {"mean": [float(v) for v in mean], "cov": [[float(v) for v in row] for row in cov]}
    for k, v in extra.items():
        out[k] = [float(t) for t in v] if isinstance(v, np.ndarray) else v
    return out
