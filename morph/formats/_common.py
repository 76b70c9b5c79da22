"""Shared pieces of the model-file loaders: reading .mat files, checking arrays, and turning a
file's own PCA convention into ours (see ``morph.model.morphable``).

Every loader funnels its arrays through :func:`pca_part`, so the conversion rule is written once:

    file:  x = mean + W @ r,   r_k ~ N(0, sigma_k^2)       (W as stored, any column scale)
    ours:  x = mean + U @ (std * c),  c ~ N(0, 1)
    with   U[:, k] = W[:, k] / |W[:, k]|,   std_k = |W[:, k]| * sigma_k,   c_k = r_k / sigma_k

and every length is multiplied by the format's unit factor (to millimetres) and every colour by
its factor (to [0, 1]).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from morph.base.errors import UserError
from morph.model.morphable import PCAModel, require_file

#: Exceptions that mean "this file is not what it claims to be" while parsing it.
PARSE_ERRORS = (OSError, ValueError, TypeError, KeyError, IndexError, EOFError, AttributeError,
                NotImplementedError, RuntimeError, OverflowError, UnicodeDecodeError)


def fail(path, problem: str, fix: str) -> UserError:
    """A UserError in the house style: "<file>: <what is wrong>; <how to fix it>."."""
    return UserError(f"{path}: {problem}; {fix}.")


def corrupt(path, kind: str, err: BaseException) -> UserError:
    detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    detail = detail.replace("! ", ", ").rstrip(".!")
    article = "an" if kind[:1] in "aeioHE" else "a"
    return fail(path, f"cannot be read as {article} {kind} file, it looks truncated or corrupt ({detail[:200]})",
                "download or export it again")


def existing(path) -> Path:
    return require_file(Path(path).expanduser(), "model file")


# ---------------------------------------------------------------- .mat (MATLAB v5 and v7.3) --

def mat_version(path: Path) -> int:
    """7 for the HDF5-based MATLAB v7.3 format, 5 for the classic one (scipy reads v4-v7)."""
    from scipy.io.matlab import matfile_version

    try:
        with open(path, "rb") as f:
            major, _ = matfile_version(f)
    except PARSE_ERRORS as err:
        raise corrupt(path, "MATLAB .mat", err) from None
    return 7 if major == 2 else 5


def mat_keys(path: Path) -> list[str]:
    """Names of the top-level variables, without reading the data."""
    if mat_version(path) == 7:
        import h5py

        try:
            with h5py.File(path, "r") as f:
                return [k for k in f.keys() if not k.startswith("#")]
        except PARSE_ERRORS as err:
            raise corrupt(path, "MATLAB v7.3 .mat", err) from None
    from scipy.io import whosmat

    try:
        return [name for name, _, _ in whosmat(str(path))]
    except PARSE_ERRORS as err:
        raise corrupt(path, "MATLAB .mat", err) from None


def read_mat(path: Path, names: list[str] | None = None) -> dict:
    """Variables of a .mat file as numpy arrays, MATLAB structs as dicts, in MATLAB's shapes
    (v7.3 datasets are transposed back, since HDF5 stores MATLAB's column-major arrays reversed)."""
    if mat_version(path) == 7:
        return _read_mat73(path, names)
    from scipy.io import loadmat

    try:
        raw = loadmat(str(path), variable_names=names)
    except PARSE_ERRORS as err:
        raise corrupt(path, "MATLAB .mat", err) from None
    except Exception as err:  # zlib.error and friends from compressed, cut-off variables
        raise corrupt(path, "MATLAB .mat", err) from None
    return {k: _unwrap(v) for k, v in raw.items() if not k.startswith("__")}


def _unwrap(v):
    """scipy returns a struct as a (1, 1) record array of object cells: make it a dict."""
    if isinstance(v, np.ndarray) and v.dtype.names:
        cell = v.reshape(-1)[0] if v.size else None
        return {n: _unwrap(cell[n]) if cell is not None else None for n in v.dtype.names}
    if isinstance(v, np.ndarray) and v.dtype == object and v.size == 1:
        return _unwrap(v.reshape(-1)[0])
    return v


def _read_mat73(path: Path, names) -> dict:
    import h5py

    def conv(node):
        if isinstance(node, h5py.Group):
            return {k: conv(node[k]) for k in node.keys() if not k.startswith("#")}
        arr = np.asarray(node[()])
        return arr.T if arr.ndim >= 2 else arr

    try:
        with h5py.File(path, "r") as f:
            keys = [k for k in f.keys() if not k.startswith("#")]
            return {k: conv(f[k]) for k in keys if names is None or k in names}
    except PARSE_ERRORS as err:
        raise corrupt(path, "MATLAB v7.3 .mat", err) from None


# ------------------------------------------------------------------------ array checking --

def need(path, data: dict, keys, what: str, where: str = "") -> None:
    """UserError naming the missing keys when ``data`` lacks any of ``keys``."""
    missing = [k for k in keys if k not in data]
    if missing:
        found = ", ".join(sorted(map(str, data))) or "nothing"
        raise fail(path, f"is not a {what} file: {where}{', '.join(missing)} missing (found: {found})",
                   f"give the {what} file itself, not another file")


def vector(path, name: str, arr, length: int | None = None) -> np.ndarray:
    """A (n,), (n, 1) or (1, n) array as (n,) float64, checking n when given."""
    a = np.asarray(arr)
    if a.dtype.kind not in "fiu" or (a.ndim == 2 and 1 not in a.shape) or a.ndim > 2:
        raise fail(path, f"'{name}' should be a numeric vector but has shape {a.shape} and type {a.dtype}",
                   "the file is not in the expected layout; export it again")
    a = a.reshape(-1).astype(np.float64)
    if length is not None and a.shape[0] != length:
        raise fail(path, f"'{name}' has {a.shape[0]} values where {length} were expected",
                   "the file is inconsistent or not in the expected layout")
    return a


def matrix(path, name: str, arr, rows: int, cols: int | None = None, allow_transposed=False) -> np.ndarray:
    """A 2-D array with ``rows`` rows (and ``cols`` columns when given), as stored."""
    a = np.asarray(arr)
    if allow_transposed and a.ndim == 2 and a.shape[0] != rows and a.shape[1] == rows:
        a = a.T
    ok = a.ndim == 2 and a.dtype.kind in "fiu" and a.shape[0] == rows and (cols is None or a.shape[1] == cols)
    if not ok:
        want = f"({rows}, {cols if cols is not None else 'K'})"
        raise fail(path, f"'{name}' has shape {a.shape} (type {a.dtype}) where {want} was expected",
                   "the file is inconsistent or not in the expected layout")
    return a


def triangles(path, name: str, arr, n_vertices: int, base: int) -> np.ndarray:
    """(F, 3) int64 0-based triangles from an (F, 3) or (3, F) array with index base ``base``."""
    a = np.asarray(arr)
    if a.ndim == 2 and a.shape[0] == 3 and a.shape[1] != 3:
        a = a.T
    if a.ndim != 2 or a.shape[1] != 3 or a.dtype.kind not in "fiu":
        raise fail(path, f"'{name}' should be an (F, 3) triangle list but has shape {a.shape}",
                   "the file is not in the expected layout")
    if a.dtype.kind == "f" and not np.all(a == np.round(a)):
        raise fail(path, f"'{name}' holds non-integer vertex indices", "the file is corrupt")
    t = a.astype(np.int64) - base
    if t.size and (t.min() < 0 or t.max() >= n_vertices):
        raise fail(path, f"'{name}' has vertex indices {t.min() + base}..{t.max() + base} but the mesh has "
                   f"{n_vertices} vertices ({base}-based indices expected)",
                   "the triangles do not belong to this model; use the matching file")
    return t


# ----------------------------------------------------------------- convention conversion --

def pca_part(path, mean, basis, sigma, *, scale: float = 1.0, names=None) -> PCAModel:
    """Our PCAModel from a file's ``mean + basis @ r`` with ``r_k ~ N(0, sigma_k^2)``.

    Columns are normalised to unit length and their length moves into ``std``; ``scale``
    converts the file's units (lengths to millimetres, colours to [0, 1]).
    """
    basis = np.asarray(basis)
    sigma = np.asarray(sigma, dtype=np.float64).reshape(-1)
    if basis.shape[1] != sigma.shape[0]:
        raise fail(path, f"the basis has {basis.shape[1]} components but there are {sigma.shape[0]} "
                   "standard deviations/variances", "the file is inconsistent; export it again")
    if not np.all(np.isfinite(sigma)) or np.any(sigma < 0):
        raise fail(path, "negative or non-finite standard deviations/variances", "the file is corrupt")
    norms = np.sqrt(np.einsum("ij,ij->j", basis, basis, dtype=np.float64))
    safe = np.where(norms > 0, norms, 1.0)
    unit = (basis / safe.astype(basis.dtype if basis.dtype.kind == "f" else np.float64)).astype(np.float32, copy=False)
    return PCAModel(mean=np.asarray(mean, np.float64).reshape(-1) * scale, basis=unit,
                    std=norms * sigma * abs(scale), names=names, source=str(path))


def mean_only(path, mean) -> PCAModel:
    """A part with no modes (e.g. the placeholder shape of an expression-only file)."""
    m = np.asarray(mean, np.float64).reshape(-1)
    return PCAModel(mean=m, basis=np.zeros((m.shape[0], 0), np.float32), std=np.zeros(0), source=str(path))


def orient_front_ccw(mean_mm: np.ndarray, tris: np.ndarray) -> np.ndarray:
    """Triangles wound counter-clockwise seen from +z (the face looks towards +z in every format we
    read), flipping the whole list when it is wound the other way.

    The test sums the z-components of the (area-weighted) normals of the triangles in front of the
    mesh's middle depth. For an open face mask and for a closed head alike this is positive when
    front faces are counter-clockwise (for a closed surface it equals the area of the cross-section).
    """
    if tris.size == 0:
        return tris
    v = np.asarray(mean_mm, np.float64).reshape(-1, 3)
    a, b, c = v[tris[:, 0]], v[tris[:, 1]], v[tris[:, 2]]
    nz = np.cross(b - a, c - a)[:, 2]
    cz = (a[:, 2] + b[:, 2] + c[:, 2]) / 3.0
    used = v[np.unique(tris)]
    z_mid = 0.5 * (used[:, 2].min() + used[:, 2].max())
    if nz[cz >= z_mid].sum() < 0:
        return np.ascontiguousarray(tris[:, [0, 2, 1]])
    return tris


def landmarks_from(path, idx, n_vertices: int, base: int) -> np.ndarray:
    """(68,) int64 0-based vertex indices, -1 kept for unknown points."""
    a = np.asarray(idx).reshape(-1)
    if a.shape[0] != 68 or a.dtype.kind not in "fiu":
        raise fail(path, f"the landmark indices have {a.shape[0]} entries where the 68 iBUG points were expected",
                   "give a 68-point landmark list")
    a = a.astype(np.int64)
    out = np.where(a < 0, -1, a - base)
    if np.any(out >= n_vertices) or np.any((a >= 0) & (out < 0)):
        raise fail(path, f"landmark vertex indices run up to {a.max()} but the mesh has {n_vertices} vertices "
                   f"({base}-based indices expected)", "use the landmark list that belongs to this model")
    return out
