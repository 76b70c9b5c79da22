"""The ICT Face Model Light: the ``FaceXModel/`` folder of ICT-FaceKit (github.com/ICT-VGL/ICT-FaceKit,
MIT, (c) 2020 USC Institute for Creative Technologies; read at commit da5f95a).

The folder holds Wavefront OBJ files that all share one polygon mesh of 26,719 vertices in
CENTIMETRES (y up, the face looking towards +z, x = 0 on the mid-sagittal plane):

    generic_neutral_mesh.obj    the neutral head: ``v``, ``vt``, ``usemtl`` and ``f v/vt ...``
                                polygons (quads and some triangles)
    identity000.obj ...         one file per identity PCA mode, numbered from 000 without gaps
    <name>.obj                  one file per expression blendshape (browDown_L, jawOpen, ...)
    vertex_indices.json         ``expressions`` (the blendshape names, in order),
                                ``idx_to_landmark_verts`` (68 iBUG points, 0-based vertex
                                indices), and fitting/rigid vertex lists we do not use

How they combine (``Scripts/ict_face_model.py``, ``FaceModel.deform_mesh``): vertices = neutral +
sum_k w_k (identity_k - neutral) + sum_j e_j (expression_j - neutral). Identity weights are drawn
from N(0, 1) (``FaceModel.randomize_identity``: ``np.random.normal``), so each identity file is the
neutral head moved by one standard deviation of its mode; expression weights are blendshape
weights between 0 (none) and 1 (the full shape). Identity files are read as ``identity{:03d}.obj``
from 000 until the first missing number, and expressions in the order of the ``expressions`` list
(``Scripts/face_model_io.py``, ``_DirectoryModelLoader._read_identity_morph_targets`` and
``_read_expression_morph_targets``). The 68 landmarks are the Multi-PIE/iBUG points listed in
the repository's README ("Facial Landmarks"), the same as ``idx_to_landmark_verts``.

The mesh is 17 parts, each a contiguous range of vertex indices (README, "Face Model Topology"):
face, head and neck, mouth socket, the two eye sockets, gums and tongue, teeth, the two eyeballs
(sclera then iris), lacrimal fluid, eye blend, eye occlusion and eyelashes (left and right each).
Lacrimal fluid, eye blend and eye occlusion are thin transparent overlays made for Unreal
Engine's eye shaders and eyelashes are alpha-textured strips (README, "Eyeball Details"); drawn
opaque they hide the eyes, so ``FACE_RENDER_PARTS``, the default, leaves them out.

What ``load`` makes of it (the conventions of ``morph.model.morphable``): positions x 10 -> millimetres;
only the chosen parts' vertices, renumbered in file order, and the polygons whose vertices all
lie in them (360 of the 26,384 polygons join two parts, e.g. face and head and neck along their
seam, and stay when both parts do); each polygon (v0, v1, ..., vn) split into the fan (v0, vi, vi+1), which keeps the
file's counter-clockwise winding; identity part = ``pca_part`` of the deltas with sigma 1
(unit columns, ``std_k`` = |identity_k - neutral| in mm); expression part = the blendshape deltas
with ``std_j`` = |delta_j| and bounds [0, 1], as for eos blendshapes (``morph.formats.eos``), so
beta_j = 1 is the full blendshape; no colour model (``morph.model.albedo`` paints one from the
landmarks).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from morph.base.errors import UserError
from morph.formats import _common as c
from morph.model.morphable import MorphableModel

CM_TO_MM = 10.0
N_VERTICES = 26719
NEUTRAL = "generic_neutral_mesh.obj"
CONFIG = "vertex_indices.json"

#: name -> (first, last) vertex index, inclusive, from the ICT-FaceKit README's topology table.
PARTS = {
    "face": (0, 9408),
    "head and neck": (9409, 11247),
    "mouth socket": (11248, 13293),
    "eye socket left": (13294, 13677),
    "eye socket right": (13678, 14061),
    "gums and tongue": (14062, 17038),
    "teeth": (17039, 21450),
    "eyeball left": (21451, 23020),
    "eyeball right": (23021, 24590),
    "lacrimal fluid left": (24591, 24794),
    "lacrimal fluid right": (24795, 24998),
    "eye blend left": (24999, 25022),
    "eye blend right": (25023, 25046),
    "eye occlusion left": (25047, 25198),
    "eye occlusion right": (25199, 25350),
    "eyelashes left": (25351, 26034),
    "eyelashes right": (26035, 26718),
}
#: the opaque parts a face image shows (see the module docstring for why the others are left out)
FACE_RENDER_PARTS = ("face", "head and neck", "mouth socket", "eye socket left", "eye socket right",
                     "gums and tongue", "teeth", "eyeball left", "eyeball right")


def is_ict_folder(path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / NEUTRAL).is_file() and (p / CONFIG).is_file()


def load(path, name: str = "", parts=FACE_RENDER_PARTS, expressions=None) -> MorphableModel:
    """The ICT Face Model Light in the ``FaceXModel`` folder ``path`` (see the module docstring).

    parts: names from ``PARTS`` (case and ``_`` for spaces do not matter); default the parts a
        face render needs.
    expressions: blendshape names to keep, in this order; None keeps all of the ``expressions``
        list of ``vertex_indices.json``; an empty list gives a model without expressions.
    """
    folder = Path(path).expanduser()
    if not is_ict_folder(folder):
        missing = [f for f in (NEUTRAL, CONFIG) if not (folder / f).is_file()]
        raise UserError(f"{folder}: is not an ICT-FaceKit FaceXModel folder ({' and '.join(missing)} "
                        f"missing); give the FaceXModel folder of a checkout of "
                        f"github.com/ICT-VGL/ICT-FaceKit.")
    keep = _vertex_selection(folder, parts)
    config = _read_config(folder / CONFIG)
    neutral, polygons = read_obj(folder / NEUTRAL, with_polygons=True)
    tris = _triangles(folder / NEUTRAL, polygons, keep)
    new_index = np.full(N_VERTICES, -1, np.int64)
    new_index[keep] = np.arange(keep.size)
    tris = new_index[tris]
    mean = neutral[keep] * CM_TO_MM

    id_files = []
    while (folder / f"identity{len(id_files):03d}.obj").is_file():
        id_files.append(folder / f"identity{len(id_files):03d}.obj")
    id_deltas = _deltas(id_files, neutral, keep)
    shape = c.pca_part(folder / "identity000.obj" if id_files else folder / NEUTRAL, mean.reshape(-1),
                       id_deltas, np.ones(len(id_files)), names=[f.stem for f in id_files])

    names = list(config["expressions"]) if expressions is None else list(expressions)
    unknown = [n for n in names if n not in config["expressions"]]
    if unknown:
        raise UserError(f"{folder / CONFIG}: no expression(s) {', '.join(unknown)} in its 'expressions' list; "
                        f"choose from {', '.join(config['expressions'])}.")
    expression = None
    if names:
        ex_files = [c.existing(folder / f"{n}.obj") for n in names]
        # blendshape weights run from none (0) to the full shape (1), as for eos blendshapes
        expression = c.pca_part(folder / f"{names[0]}.obj", np.zeros(mean.size), _deltas(ex_files, neutral, keep),
                                np.ones(len(names)), names=names)
        expression.low = np.zeros(len(names))
        expression.high = np.ones(len(names))

    landmarks = new_index[np.asarray(config["idx_to_landmark_verts"], np.int64)]
    dropped = np.flatnonzero(landmarks < 0)
    if dropped.size:
        raise UserError(f"{folder / CONFIG}: landmark vertices of iBUG points {', '.join(map(str, dropped))} are "
                        f"not in the chosen parts; keep the part 'face'.")
    return MorphableModel(shape=shape, triangles=tris, expression=expression, landmarks=landmarks,
                          name=name or "ict-face-model-light",
                          sources={"shape": str(folder), **({"expression": str(folder)} if names else {}),
                                   "landmarks": str(folder / CONFIG)})


def read_obj(path: Path, with_polygons: bool = False):
    """(26719, 3) float64 positions in the file's centimetres, and (with_polygons) the list of
    0-based vertex-index arrays of its ``f`` lines (texture indices after ``/`` dropped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise c.corrupt(path, "Wavefront OBJ", err) from None
    lines = text.splitlines()
    try:
        verts = np.array([ln.split()[1:4] for ln in lines if ln.startswith("v ")], np.float64)
    except ValueError as err:
        raise c.corrupt(path, "Wavefront OBJ", err) from None
    if verts.shape != (N_VERTICES, 3):
        raise c.fail(path, f"has {len(verts)} vertices where the ICT Face Model has {N_VERTICES}",
                     "give the files of an unmodified ICT-FaceKit FaceXModel folder")
    if not with_polygons:
        return verts
    try:
        polys = [np.array([int(t.split("/")[0]) - 1 for t in ln.split()[1:]], np.int64)
                 for ln in lines if ln.startswith("f ")]
    except ValueError as err:
        raise c.corrupt(path, "Wavefront OBJ", err) from None
    return verts, polys


def _vertex_selection(folder: Path, parts) -> np.ndarray:
    wanted = [str(p).replace("_", " ").lower().strip() for p in parts]
    unknown = [p for p in wanted if p not in PARTS]
    if unknown or not wanted:
        raise UserError(f"{folder}: unknown ICT part(s) {', '.join(unknown) or '(none given)'}; "
                        f"choose from {', '.join(PARTS)}.")
    return np.concatenate([np.arange(PARTS[p][0], PARTS[p][1] + 1) for p in sorted(set(wanted), key=list(PARTS).index)])


def _triangles(path: Path, polygons, keep: np.ndarray) -> np.ndarray:
    """Fan triangles (v0, vi, vi+1) of the polygons that lie wholly in the kept vertices."""
    kept = np.zeros(N_VERTICES, bool)
    kept[keep] = True
    tris = []
    for poly in polygons:
        if poly.size < 3 or poly.min() < 0 or poly.max() >= N_VERTICES:
            raise c.fail(path, f"has a face with vertex indices {(poly + 1).tolist()}",
                         "give the files of an unmodified ICT-FaceKit FaceXModel folder")
        if kept[poly].all():
            tris.extend((poly[0], poly[i], poly[i + 1]) for i in range(1, poly.size - 1))
    return np.array(tris, np.int64).reshape(-1, 3)


def _deltas(files, neutral: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """(3N, K) millimetre displacements from the neutral head, one column per file."""
    out = np.empty((3 * keep.size, len(files)), np.float64)
    for k, f in enumerate(files):
        out[:, k] = ((read_obj(f) - neutral)[keep] * CM_TO_MM).reshape(-1)
    return out


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise c.corrupt(path, "JSON", err) from None
    for key in ("expressions", "idx_to_landmark_verts"):
        if not isinstance(config, dict) or key not in config:
            raise c.fail(path, f"has no '{key}' entry", "give the vertex_indices.json of ICT-FaceKit's FaceXModel")
    if len(config["idx_to_landmark_verts"]) != 68:
        raise c.fail(path, f"'idx_to_landmark_verts' has {len(config['idx_to_landmark_verts'])} entries, not 68",
                     "give the vertex_indices.json of ICT-FaceKit's FaceXModel")
    return config
