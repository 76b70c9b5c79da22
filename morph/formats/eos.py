"""eos / Surrey Face Model ``.bin`` files (cereal binary archives), read through ``eos-py``.

Model files (e.g. ``sfm_shape_3448.bin``; ``eos.morphablemodel.load_model``):

    shape model   get_mean() (3N,) mm, get_orthonormal_pca_basis() (3N, K) unit columns,
                  get_eigenvalues() (K,) VARIANCES (eos' rescaled basis = orthonormal basis *
                  sqrt(eigenvalues)), get_triangle_list() (F, 3) 0-based, counter-clockwise
                  seen from +z (OpenGL convention)
    colour model  optional, same accessors, colours in [0, 1]
    expression    optional: a PCA model (as above) or a list of blendshapes
    landmark definitions  optional name -> vertex index; used when the names are "1".."68"

The SFM is in millimetres (the 3,448-vertex mean is about 150 mm wide and 190 mm high) and has
no colour model. ``std = sqrt(eigenvalues)``.

Blendshape files (e.g. ``expression_blendshapes_3448.bin``; ``eos.morphablemodel.load_blendshapes``)
hold named deformations d_i (3N,) in mm. They are not a PCA model: we represent them as an
expression part with ``basis[:, i] = d_i / |d_i|`` and ``std_i = |d_i|``, so coefficient 1 is the
full blendshape, 0 none, and ``vertices(alpha, beta)`` adds ``sum_i beta_i d_i`` exactly as eos
does; names are the blendshape names. The columns are not orthogonal, and sampling beta from
N(0, s) draws are clipped into [0, 1] (``PCAModel.low``/``high``).

Landmarks: eos keeps the iBUG mapping beside the model, as ``ibug_to_sfm.txt`` (TOML:
``[landmark_mappings]`` with ``<iBUG number 1..68> = <0-based vertex id>``). When the model's
folder has exactly one ``ibug_to_*.txt`` file, it is read; unmapped points are -1.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from morph.formats import _common as c
from morph.model.morphable import MorphableModel, PCAModel


def _eos(path: Path):
    """The ``eos`` module, or a clear error saying how to get it."""
    try:
        import eos
    except ImportError:
        raise c.fail(path, "is an eos/Surrey .bin model, which is read through eos-py",
                     "pip install 'ganfaces[sfm]' (eos-py 1.5.0 has wheels for Python 3.12 and "
                     "older only), or convert the model to .h5/.mat") from None
    return eos


def load(path, name: str = "") -> MorphableModel:
    """An eos model or blendshapes file, told apart by trying the model reader first."""
    path = c.existing(path)
    if "blendshape" in path.name.lower() and _looks_like_blendshapes(path):
        return load_blendshapes(path, name)
    eos = _eos(path)

    try:
        model = eos.morphablemodel.load_model(str(path))
    except RuntimeError as err:
        if "version number" in str(err) and _looks_like_blendshapes(path):
            return load_blendshapes(path, name)
        raise c.corrupt(path, "eos model (.bin)", err) from None
    return _from_model(path, model, name)


def _from_model(path: Path, model, name: str) -> MorphableModel:
    eos = _eos(path)

    shape = _pca(path, model.get_shape_model())
    n3 = shape.mean.shape[0]
    tris = c.triangles(path, "triangle list", np.array(model.get_shape_model().get_triangle_list(), np.int64)
                       .reshape(-1, 3), n3 // 3, base=0)
    tris = c.orient_front_ccw(shape.mean, tris)
    texture = _pca(path, model.get_color_model()) if model.has_color_model() else None
    expression = None
    if model.has_separate_expression_model():
        exp = model.get_expression_model()
        if isinstance(exp, eos.morphablemodel.PcaModel):
            expression = _pca(path, exp)
        else:
            expression = _blendshape_part(path, list(exp), n3)
    landmarks, lm_source = _landmarks(path, model, n3 // 3)
    sources = {"shape": str(path)}
    if lm_source:
        sources["landmarks"] = lm_source
    return MorphableModel(shape=shape, triangles=tris, texture=texture, expression=expression,
                          landmarks=landmarks, name=name or path.stem, sources=sources)


def _pca(path, pca) -> PCAModel:
    mean = np.asarray(pca.get_mean(), np.float64)
    basis = np.asarray(pca.get_orthonormal_pca_basis())
    var = np.asarray(pca.get_eigenvalues(), np.float64)
    if basis.ndim != 2 or basis.shape[0] != mean.shape[0] or np.any(var < 0):
        raise c.fail(path, "holds an inconsistent PCA model", "the file is corrupt; download it again")
    return c.pca_part(path, mean, basis, np.sqrt(var))


def _looks_like_blendshapes(path: Path) -> bool:
    """cereal's std::vector<Blendshape>: uint64 count, then uint64 name length and the name."""
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) < 16:
        return False
    count, name_len = struct.unpack("<QQ", head)
    return 0 < count < 100_000 and name_len < 4096


def load_blendshapes(path, name: str = "") -> MorphableModel:
    """An expression-only model from an eos blendshapes file (see the module docstring)."""
    path = c.existing(path)
    eos = _eos(path)
    try:
        shapes = eos.morphablemodel.load_blendshapes(str(path))
    except (RuntimeError, MemoryError) as err:
        raise c.corrupt(path, "eos blendshapes (.bin)", err) from None
    if not shapes:
        raise c.fail(path, "holds no blendshapes", "give a non-empty eos blendshapes file")
    n3 = len(np.asarray(shapes[0].deformation))
    expression = _blendshape_part(path, shapes, n3)
    return MorphableModel(shape=c.mean_only(path, np.zeros(n3)), triangles=np.zeros((0, 3), np.int64),
                          expression=expression, name=name or path.stem, sources={"expression": str(path)})


def _blendshape_part(path, shapes, n3: int) -> PCAModel:
    cols = []
    for b in shapes:
        d = np.asarray(b.deformation, np.float64).reshape(-1)
        if d.shape[0] != n3:
            raise c.fail(path, f"blendshape '{b.name}' has {d.shape[0] // 3} vertices, not {n3 // 3}",
                         "all blendshapes must belong to one mesh")
        cols.append(d)
    basis = np.stack(cols, axis=1)
    part = c.pca_part(path, np.zeros(n3), basis, np.ones(basis.shape[1]), names=[str(b.name) for b in shapes])
    # Blendshapes are weights between none (0) and the full expression (1): negative weights
    # turn faces inside out, so the sampler clips draws into [0, 1].
    part.low = np.zeros(basis.shape[1])
    part.high = np.ones(basis.shape[1])
    return part


# ------------------------------------------------------------------------- landmarks --

def _landmarks(path: Path, model, n_vertices: int):
    candidates = sorted(path.parent.glob("ibug_to_*.txt"))
    if len(candidates) == 1:
        return read_ibug_mapping(candidates[0], n_vertices), str(candidates[0])
    defs = model.get_landmark_definitions()
    if defs:
        lm = np.full(68, -1, np.int64)
        for key, vid in dict(defs).items():
            if str(key).isdigit() and 1 <= int(key) <= 68:
                lm[int(key) - 1] = int(vid)
        if np.any(lm >= 0):
            return c.landmarks_from(path, lm, n_vertices, base=0), str(path)
    return None, None


def read_ibug_mapping(path, n_vertices: int | None = None) -> np.ndarray:
    """(68,) 0-based vertex ids from an eos ``ibug_to_*.txt`` mapping (TOML), -1 where unmapped."""
    import tomllib

    path = c.existing(path)
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise c.fail(path, f"is not a valid eos landmark mapping (TOML: {err})", "fix or replace the file") from None
    mapping = table.get("landmark_mappings")
    if not isinstance(mapping, dict):
        raise c.fail(path, "has no [landmark_mappings] table", "give an eos ibug_to_*.txt mapping file")
    lm = np.full(68, -1, np.int64)
    for key, vid in mapping.items():
        if not (str(key).isdigit() and 1 <= int(key) <= 68) or not isinstance(vid, int) or vid < 0:
            raise c.fail(path, f"has an invalid mapping '{key} = {vid}'",
                         "keys must be iBUG point numbers 1..68 and values vertex ids")
        lm[int(key) - 1] = vid
    if n_vertices is not None:
        lm = c.landmarks_from(path, lm, n_vertices, base=0)
    return lm
