"""Tiny model files in the exact on-disk layout of each format we read (same variable names,
dimension order, dtypes, index base, units and struct nesting), on a 6 x 6-vertex face patch.

Each writer returns the raw arrays it wrote, so tests can compute the expected geometry from the
file's own numbers, independently of the loaders.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import h5py
import numpy as np
from scipy.io import savemat

GRID = 6
N = GRID * GRID          # vertices
F = 2 * (GRID - 1) ** 2  # triangles


def face_patch():
    """(N, 3) mm vertices of a patch 150 mm wide bulging towards +z, and (F, 3) 0-based triangles
    wound counter-clockwise seen from +z."""
    xs = np.linspace(-75.0, 75.0, GRID)
    x, y = np.meshgrid(xs, xs * 1.2)
    z = 40.0 * (1.0 - (x ** 2 + (y / 1.2) ** 2) / (2 * 75.0 ** 2))
    verts = np.stack([x.ravel(), y.ravel(), z.ravel()], 1)
    tris = []
    for j in range(GRID - 1):
        for i in range(GRID - 1):
            p00, p10, p01, p11 = j * GRID + i, j * GRID + i + 1, (j + 1) * GRID + i, (j + 1) * GRID + i + 1
            tris += [(p00, p10, p11), (p00, p11, p01)]
    return verts, np.array(tris, np.int64)


def other_diagonal():
    """The same vertices meshed along the other diagonal of each quad (a different topology)."""
    tris = []
    for j in range(GRID - 1):
        for i in range(GRID - 1):
            p00, p10, p01, p11 = j * GRID + i, j * GRID + i + 1, (j + 1) * GRID + i, (j + 1) * GRID + i + 1
            tris += [(p00, p10, p01), (p10, p11, p01)]
    return np.array(tris, np.int64)


def orthonormal(rng, rows, k):
    q, _ = np.linalg.qr(rng.standard_normal((rows, k)))
    return q


def _flat(v):
    return v.reshape(-1, 1)


# ----------------------------------------------------------------------------- BFM 2009 --

def write_bfm2009(path: Path, k: int = 5, seed: int = 0, v73: bool = False) -> dict:
    """01_MorphableModel.mat: um, 0..255 colours, std devs, 1-based clockwise ``tl``."""
    rng = np.random.default_rng(seed)
    verts, tris = face_patch()
    d = {
        "shapeMU": _flat(verts * 1000.0).astype(np.float32),
        "shapePC": orthonormal(rng, 3 * N, k).astype(np.float32),
        "shapeEV": np.linspace(9000.0, 1000.0, k).reshape(k, 1).astype(np.float32),
        "texMU": _flat(rng.uniform(80, 200, (N, 3))).astype(np.float32),
        "texPC": orthonormal(rng, 3 * N, k).astype(np.float32),
        "texEV": np.linspace(40.0, 5.0, k).reshape(k, 1).astype(np.float32),
        "tl": (tris[:, [0, 2, 1]] + 1).astype(np.float64),  # clockwise seen from the front, as BFM's
        "segbin": np.zeros((N, 4), np.float64),
    }
    if v73:
        write_mat73(path, d)
    else:
        savemat(str(path), d)
    return d


def write_mat73(path: Path, variables: dict) -> None:
    """A MATLAB v7.3 file: HDF5 with a 512-byte user block holding MATLAB's header, arrays stored
    transposed (MATLAB is column-major), structs as groups."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, value in variables.items():
            _put73(f, name, value)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    with open(path, "r+b") as f:
        f.write(header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM")


def _put73(group, name, value):
    if isinstance(value, dict):
        sub = group.create_group(name)
        sub.attrs["MATLAB_class"] = np.bytes_("struct")
        for k, v in value.items():
            _put73(sub, k, v)
        return
    arr = np.asarray(value)
    ds = group.create_dataset(name, data=arr.T)
    ds.attrs["MATLAB_class"] = np.bytes_("double" if arr.dtype == np.float64 else "single")


# ----------------------------------------------------------------------------- BFM 2017 --

def write_bfm2017(path: Path, k: int = 4, ke: int = 3, seed: int = 1, parts=("color", "expression"),
                  names: bool = True, landmarks: bool = True, tris=None) -> dict:
    """BFM 2017 .h5: mm, [0, 1] colours, variances, (3, F) 0-based cells (+ our optional groups)."""
    rng = np.random.default_rng(seed)
    verts, t = face_patch()
    t = t if tris is None else tris
    d = {"shape/model/mean": verts.reshape(-1).astype(np.float32),
         "shape/model/pcaBasis": orthonormal(rng, 3 * N, k).astype(np.float32),
         "shape/model/pcaVariance": np.linspace(25.0, 1.0, k).astype(np.float32),
         "shape/model/noiseVariance": np.float32(0.01),
         "shape/representer/points": verts.T.astype(np.float32),
         "shape/representer/cells": t.T.astype(np.int32)}
    if "color" in parts:
        d.update({"color/model/mean": rng.uniform(0.3, 0.8, 3 * N).astype(np.float32),
                  "color/model/pcaBasis": orthonormal(rng, 3 * N, k).astype(np.float32),
                  "color/model/pcaVariance": np.linspace(0.02, 0.001, k).astype(np.float32)})
    if "expression" in parts:
        d.update({"expression/model/mean": rng.normal(0, 0.5, 3 * N).astype(np.float32),
                  "expression/model/pcaBasis": orthonormal(rng, 3 * N, ke).astype(np.float32),
                  "expression/model/pcaVariance": np.linspace(9.0, 1.0, ke).astype(np.float32)})
    if names:
        d["shape/model/names"] = np.array([f"identity {i}" for i in range(k)], dtype=h5py.string_dtype("utf-8"))
        if "expression" in parts:
            d["expression/model/names"] = np.array(["jaw open", "smile", "brows ü"][:ke],
                                                   dtype=h5py.string_dtype("utf-8"))
    if landmarks:
        lm = rng.integers(0, N, 68)
        lm[60] = lm[64] = -1
        d["landmarks/ibug68"] = lm.astype(np.int32)
    with h5py.File(path, "w") as f:
        for key, value in d.items():
            f.create_dataset(key, data=value)
    return d


# --------------------------------------------------------------------------------- LSFM --

def write_lsfm(path: Path, k: int = 4, seed: int = 2, unit: float = 1.0) -> dict:
    """LSFM .mat as menpo/lsfm's export_lsfm_model writes it: 1-D vectors (savemat makes them
    rows), (3N, K) unit components, variances, 0-based (F, 3) trilist. ``unit`` = file units per mm."""
    rng = np.random.default_rng(seed)
    verts, tris = face_patch()
    ev = np.linspace(30.0, 2.0, k) * unit ** 2
    d = {"components": orthonormal(rng, 3 * N, k), "eigenvalues": ev,
         "cumulative_explained_variance": np.cumsum(ev) / ev.sum() * 0.998,
         "mean": verts.reshape(-1) * unit, "n_training_samples": 8402, "trilist": tris.astype(np.uint32)}
    savemat(str(path), d)
    return d


# ------------------------------------------------------------------------------ face3d --

def _face3d_arrays(seed: int, k: int, ke: int):
    rng = np.random.default_rng(seed)
    verts, tris = face_patch()
    col_scale = rng.uniform(0.97, 1.0, k)  # trimmed BFM rows: columns no longer exactly unit
    return rng, verts, tris, {
        "shapeMU": _flat(verts * 1000.0),
        "shapePC": orthonormal(rng, 3 * N, k) * col_scale,
        "shapeEV": np.linspace(8e4, 1e4, k).reshape(k, 1),
        "expMU": _flat(rng.normal(0, 300.0, 3 * N)),
        "expPC": orthonormal(rng, 3 * N, ke) * rng.uniform(2e4, 6e4, ke),  # scaled columns
        "expEV": np.linspace(1.5, 0.3, ke).reshape(ke, 1),
        "texMU": _flat(rng.uniform(80, 200, 3 * N)),
        "texPC": orthonormal(rng, 3 * N, k),
        "texEV": np.linspace(40.0, 5.0, k).reshape(k, 1),
    }


def write_face3d_bfm(path: Path, k: int = 5, ke: int = 4, seed: int = 3, tris=None) -> dict:
    """face3d's BFM.mat: one struct ``model``; um; (3, F) 1-based tri; (1, 68) 1-based kpt_ind."""
    rng, _, t, d = _face3d_arrays(seed, k, ke)
    t = t if tris is None else tris
    d["tri"] = (t[:, [0, 2, 1]] + 1).T.astype(np.float64)   # clockwise, (3, F), 1-based
    d["tri_mouth"] = np.array([[1, 2], [2, 3], [7, 8]], np.float64)
    d["kpt_ind"] = rng.integers(1, N + 1, (1, 68)).astype(np.float64)
    savemat(str(path), {"model": d})
    return d


def write_model_expression(path: Path, ke: int = 4, seed: int = 3) -> dict:
    """3DDFA's Model_Expression.mat: mu_exp (3N, 1), w_exp (3N, 29-like), sigma_exp (K, 1)."""
    _, _, _, a = _face3d_arrays(seed, 5, ke)
    d = {"mu_exp": a["expMU"], "w_exp": a["expPC"], "sigma_exp": a["expEV"]}
    savemat(str(path), d)
    return d


# ---------------------------------------------------------------------------- 3DDFA_V2 --

def write_tddfa_v2(folder: Path, seed: int = 4, with_params: bool = True, with_tri_pkl: bool = False) -> dict:
    """bfm_noneck_v3.pkl (+ param_mean_std_62d_120x120.pkl): a pickled dict of numpy arrays in um."""
    rng = np.random.default_rng(seed)
    verts, tris = face_patch()
    kp_vertex = rng.integers(0, N, 68)
    d = {"u": _flat(verts * 1000.0).astype(np.float32),
         "w_shp": (orthonormal(rng, 3 * N, 45) * 0.99).astype(np.float32),
         "w_exp": (orthonormal(rng, 3 * N, 12) * rng.uniform(1e4, 3e4, 12)).astype(np.float32),
         "tri": tris.T.astype(np.int32),
         "keypoints": np.stack([3 * kp_vertex, 3 * kp_vertex + 1, 3 * kp_vertex + 2], 1).reshape(-1)}
    with open(folder / "bfm_noneck_v3.pkl", "wb") as f:
        pickle.dump(d, f, protocol=2)
    params = {"mean": rng.normal(0, 1, 62).astype(np.float32),
              "std": np.concatenate([np.full(12, 1e-4), np.linspace(2e5, 1e4, 40), np.linspace(2.0, 0.2, 10)])
              .astype(np.float32)}
    if with_params:
        with open(folder / "param_mean_std_62d_120x120.pkl", "wb") as f:
            pickle.dump(params, f)
    if with_tri_pkl:
        with open(folder / "tri.pkl", "wb") as f:
            pickle.dump(tris[:, [0, 2, 1]].T.astype(np.int32), f)
    return {**d, "params": params, "kp_vertex": kp_vertex}


# ------------------------------------------------------------------ ICT-FaceKit FaceXModel --

#: the licence banner every ICT-FaceKit OBJ file starts with (shortened: the parser skips comments)
_ICT_BANNER = "#" * 90 + "\n# ICT FaceKit" + " " * 76 + "#\n" + "#" * 90 + "\n\nmtllib ICTFaceModelMaterial.mtl\n"
#: the material (ICTFaceModelMaterial.mtl) of each part's polygons in the real OBJ files
_ICT_MATERIALS = {"face": "M_Face", "head and neck": "M_BackHead", "mouth socket": "M_BackHead",
                  "eye socket": "M_BackHead", "gums and tongue": "M_GumsTongue", "teeth": "M_Teeth",
                  "eyeball": "M_ScleraLeft", "lacrimal fluid": "M_LacrimalFluid", "eye blend": "M_EyeBlend",
                  "eye occlusion": "M_EyeOcclusion", "eyelashes": "M_EyeLashes"}
ICT_EXPRESSIONS = ("browDown_L", "eyeBlink_R", "jawOpen", "mouthSmile_L")  # real names, cut-down list


def ict_polygons(rng) -> list[tuple[str, list[int]]]:
    """(material, 0-based vertex ids) of the fixture's polygons: in every ICT part one quad and one
    triangle on vertices of that part, plus a quad across the face / head-and-neck seam (the real
    mesh has 360 polygons joining two parts). No vertex is used twice, so every triangle a loader
    makes belongs to exactly one polygon."""
    from morph.formats.ict import PARTS

    seam = [9400, 9401, 9409, 9410]
    polys, used = [], set(seam)
    for part, (first, last) in PARTS.items():
        for size in (4, 3):
            ids = [int(i) for i in rng.choice(np.arange(first, last + 1), size, replace=False)]
            while used.intersection(ids):
                ids = [int(i) for i in rng.choice(np.arange(first, last + 1), size, replace=False)]
            used.update(ids)
            polys.append((_ICT_MATERIALS[part.split(" left")[0].split(" right")[0]], ids))
    polys.insert(2, ("M_Face", seam))
    return polys


def _write_ict_obj(path: Path, verts_cm: np.ndarray, polys) -> np.ndarray:
    """One OBJ as ICT-FaceKit writes them: banner, ``mtllib``, ``v`` (%g, 6 digits), ``vt``, then
    ``usemtl`` groups of 1-based ``f v/vt`` polygons. Returns the positions as written."""
    text = [f"{x:.6g}" for x in verts_cm.reshape(-1)]
    lines = [_ICT_BANNER]
    lines += [f"v {x} {y} {z}\n" for x, y, z in zip(text[0::3], text[1::3], text[2::3])]
    n_corners = sum(len(p) for _, p in polys)
    lines += [f"vt {u:.6f} {v:.6f}\n" for u, v in np.linspace(0.01, 0.99, 2 * n_corners).reshape(-1, 2)]
    material, vt = None, 1
    for mat, ids in polys:
        if mat != material:
            lines.append(f"usemtl {mat}\n")
            material = mat
        lines.append("f " + " ".join(f"{i + 1}/{vt + k}" for k, i in enumerate(ids)) + "\n")
        vt += len(ids)
    path.write_text("".join(lines), encoding="utf-8")
    return np.array(text, np.float64).reshape(verts_cm.shape)


def write_ict(folder: Path, n_identities: int = 3, seed: int = 0) -> dict:
    """A FaceXModel folder in ICT-FaceKit's exact layout: OBJ files with the real 26,719 vertices
    (in centimetres, 6 significant digits, as in the real files) but a cut-down polygon list, and
    ``vertex_indices.json`` with the published keys (shortened lists; the landmarks lie in the face
    part). Returns the vertex arrays as written (at the files' precision), the polygons and
    the config."""
    from morph.formats.ict import N_VERTICES

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    polys = ict_polygons(rng)

    neutral = _write_ict_obj(folder / "generic_neutral_mesh.obj", rng.uniform(-12.0, 12.0, (N_VERTICES, 3)), polys)
    identities = [_write_ict_obj(folder / f"identity{k:03d}.obj", neutral + rng.normal(0.0, 0.3, neutral.shape), polys)
                  for k in range(n_identities)]
    expressions = {name: _write_ict_obj(folder / f"{name}.obj", neutral + rng.normal(0.0, 0.2, neutral.shape), polys)
                   for name in ICT_EXPRESSIONS}
    config = {
        "expressions": list(ICT_EXPRESSIONS),
        "fitting_expressions": list(ICT_EXPRESSIONS),
        "incompatibilities": [],
        "idx_to_fitting_verts": [5513, 5514, 0, 1],
        "idx_to_rigid_verts": [8786, 8792],
        "idx_to_lap_rigid_verts": [4576, 4578],
        "idx_to_landmark_verts": [int(i) for i in rng.choice(9409, 68, replace=False)],
        "idx_to_rigid_landmark_idx": [0, 36, 39, 42, 45, 16, 28, 31, 35],
    }
    (folder / "vertex_indices.json").write_text(json.dumps(config), encoding="utf-8")
    return {"neutral": neutral, "identities": identities, "expressions": expressions,
            "polygons": polys, "config": config}
