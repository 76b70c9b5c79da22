"""The menpo3d mean head, read straight out of the menpo3d 0.8.6 sdist (menpo3d is not installed
or imported), in millimetres with its 68 iBUG landmark vertices and the regions the synthetic
modes of ``build_default_model.py`` are drawn on.

Conversions applied to the template
-----------------------------------
* Units: the template is in MICROMETRES (outer eye corners 87,292 units apart, chin to nasion
  109,438 units); positions are multiplied by 1e-3 to get MILLIMETRES. The build checks the
  converted distances are anatomically plausible.
* Orientation: already y up, x to the face's left (image right), face looking towards +z (nose
  tip has the largest z); the origin is kept (x = 0 on the mid-sagittal plane, close to the frame
  of the Basel Face Model 2017). The build checks this.
* Winding: triangles are already counter-clockwise seen from outside (front faces towards the
  viewer); the build checks that at least 90% of face normals point away from the head's axis
  and would flip all triangles otherwise (it does not need to).
* Colours: the template's RGBA false colours are discarded and replaced by the synthetic albedo.
* Landmarks: ``template.ljson`` stores the 68 points as 3-D COORDINATES (in micrometres, group
  ``LJSON``, iBUG order with labels jaw/eyebrows/nose/eyes/mouth), not vertex indices. Each is
  mapped to its nearest vertex (max distance 1.1 mm, mean 0.44 mm), except the 8 inner-lip points
  60-67: the mouth is an open slit in the mesh (a boundary loop of 75 vertices) whose upper and
  lower rims touch, so those points are mapped to the nearest vertex of the correct rim: 60 and
  64 to the slit's corners, 61-63 to the upper rim, 65-67 to the lower rim.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

from morph.model.albedo import FaceRegions, vertex_normals

MENPO3D_VERSION = "0.8.6"
SDIST = f"menpo3d-{MENPO3D_VERSION}.tar.gz"
PLY_MEMBER = f"menpo3d-{MENPO3D_VERSION}/menpo3d/data/template.ply"
LJSON_MEMBER = f"menpo3d-{MENPO3D_VERSION}/menpo3d/data/template.ljson"
LICENSE_MEMBER = f"menpo3d-{MENPO3D_VERSION}/LICENSE.txt"
UM_TO_MM = 1e-3


# --------------------------------------------------------------------------------------------
# source: the menpo3d sdist
# --------------------------------------------------------------------------------------------

def find_sdist(src: str | Path) -> Path:
    """The tarball: SRC itself, SRC/menpo3d-0.8.6.tar.gz, or pip-download it into the folder SRC."""
    if Path(src).is_file():
        return Path(src)
    folder = Path(src)
    tarball = folder / SDIST
    if tarball.is_file():
        return tarball
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation",
           "--no-binary", ":all:", f"menpo3d=={MENPO3D_VERSION}", "-d", str(folder)]
    print("downloading:", " ".join(cmd), file=sys.stderr)
    try:
        subprocess.run(cmd, check=True)
    except subprocess.CalledProcessError as err:
        sys.exit(f"pip download failed ({err}); pip builds the sdist's metadata, so first run "
                 "'pip install numpy wheel cython', or give the path of menpo3d-0.8.6.tar.gz.")
    if not tarball.is_file():
        sys.exit(f"{tarball}: not found after pip download.")
    return tarball


def read_member(tarball: Path, name: str) -> bytes:
    with tarfile.open(tarball, "r:gz") as tf:
        f = tf.extractfile(name)
        if f is None:
            sys.exit(f"{tarball}: has no file {name}; is it menpo3d {MENPO3D_VERSION}'s sdist?")
        return f.read()


_PLY_TYPES = {"char": "i1", "uchar": "u1", "short": "i2", "ushort": "u2", "int": "i4",
              "uint": "u4", "float": "f4", "double": "f8", "int8": "i1", "uint8": "u1",
              "int16": "i2", "uint16": "u2", "int32": "i4", "uint32": "u4", "float32": "f4",
              "float64": "f8"}


def parse_ply(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (N, 3) float64 and triangles (F, 3) int64 from a binary little-endian PLY whose
    faces are all triangles (the only layout this template uses; anything else is refused)."""
    end = raw.index(b"end_header")
    end = raw.index(b"\n", end) + 1
    lines = raw[:end].decode("ascii").splitlines()
    if lines[0] != "ply" or "format binary_little_endian 1.0" not in lines:
        raise ValueError("expected a binary little-endian PLY")
    elements = []  # [name, count, [(prop, dtype) | ("list", count_t, item_t, name)]]
    for line in lines:
        tok = line.split()
        if tok[0] == "element":
            elements.append([tok[1], int(tok[2]), []])
        elif tok[0] == "property":
            if tok[1] == "list":
                elements[-1][2].append(("list", _PLY_TYPES[tok[2]], _PLY_TYPES[tok[3]], tok[4]))
            else:
                elements[-1][2].append((tok[2], _PLY_TYPES[tok[1]]))
    off = end
    verts = tris = None
    for name, count, props in elements:
        if name == "vertex":
            dt = np.dtype([(p[0], "<" + p[1]) for p in props])
            v = np.frombuffer(raw, dt, count, off)
            off += count * dt.itemsize
            verts = np.stack([v["x"], v["y"], v["z"]], 1).astype(np.float64)
        elif name == "face":
            if len(props) != 1 or props[0][0] != "list":
                raise ValueError("expected faces as one list property")
            _, ct, it, _ = props[0]
            dt = np.dtype([("n", "<" + ct), ("i", "<" + it, 3)])
            f = np.frombuffer(raw, dt, count, off)
            if np.any(f["n"] != 3):
                raise ValueError("expected triangles only")
            off += count * dt.itemsize
            tris = f["i"].astype(np.int64)
        else:
            raise ValueError(f"unexpected PLY element {name}")
    if off != len(raw):
        raise ValueError(f"PLY size mismatch: parsed {off} of {len(raw)} bytes")
    return verts, tris


def parse_ljson(raw: bytes) -> np.ndarray:
    d = json.loads(raw)
    pts = np.asarray(d["groups"]["LJSON"]["landmarks"]["points"], np.float64)
    if pts.shape != (68, 3):
        raise ValueError(f"expected 68 3-D landmarks, found {pts.shape}")
    return pts


# --------------------------------------------------------------------------------------------
# mesh helpers
# --------------------------------------------------------------------------------------------

def boundary_loops(f: np.ndarray) -> list[np.ndarray]:
    """Ordered vertex loops along the mesh's boundary edges (edges used by one triangle)."""
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    key = np.sort(e, 1)
    _, inv, cnt = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    b = e[cnt[inv.ravel()] == 1]  # directed boundary edges
    nxt = {int(a): int(c) for a, c in b}
    loops, seen = [], set()
    for start in sorted(nxt):
        if start in seen:
            continue
        loop, cur = [], start
        while cur not in seen:
            seen.add(cur)
            loop.append(cur)
            cur = nxt[cur]
        loops.append(np.array(loop))
    return loops


def graph_laplacian(n: int, f: np.ndarray):
    import scipy.sparse as sp

    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    e = np.unique(np.sort(e, 1), axis=0)
    a = sp.coo_matrix((np.ones(2 * len(e)), (np.r_[e[:, 0], e[:, 1]], np.r_[e[:, 1], e[:, 0]])),
                      shape=(n, n)).tocsr()
    return sp.diags(np.asarray(a.sum(1)).ravel()) - a, a


def harmonic(lap, fixed: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Solve the graph Laplace equation with Dirichlet values at the fixed vertices."""
    from scipy.sparse.linalg import spsolve

    n = lap.shape[0]
    out = np.zeros(n)
    out[fixed] = values
    free = np.setdiff1d(np.arange(n), fixed)
    rhs = -lap[free][:, fixed] @ values
    out[free] = spsolve(lap[free][:, free].tocsc(), rhs)
    return out


def smooth(adj, x: np.ndarray, iters: int) -> np.ndarray:
    """Average with graph neighbours ``iters`` times (removes the kinks of harmonic fields)."""
    deg = np.asarray(adj.sum(1)).ravel()[:, None] if x.ndim == 2 else np.asarray(adj.sum(1)).ravel()
    for _ in range(iters):
        x = 0.5 * x + 0.5 * (adj @ x) / deg
    return x


def softplus(t: np.ndarray, width: float) -> np.ndarray:
    return width * np.logaddexp(0.0, t / width)


# --------------------------------------------------------------------------------------------
# the template with its derived regions
# --------------------------------------------------------------------------------------------

class Head(FaceRegions):
    """The template in millimetres plus the landmark-defined points and masks the modes use.
    The landmark regions (eyes, lids, lips, brows, nostrils: ``morph.model.albedo.FaceRegions``) are
    the toolkit's, at scale 1 (the sizes there are this head's millimetres)."""

    def __init__(self, verts_mm: np.ndarray, tris: np.ndarray, lm_points_mm: np.ndarray):
        from scipy.spatial import cKDTree

        super().__init__(verts_mm, vertex_normals(verts_mm, tris), None, scale=1.0, soft=0.0)
        self.f = tris
        self.lap, self.adj = graph_laplacian(self.n, tris)
        # the mouth slit: the boundary loop nearest the mouth landmarks
        loops = boundary_loops(tris)
        mouth_c = lm_points_mm[48:68].mean(0)
        loop = min(loops, key=lambda lp: np.linalg.norm(verts_mm[lp].mean(0) - mouth_c))
        if len(loop) > 200 or np.linalg.norm(verts_mm[loop].mean(0) - mouth_c) > 10:
            raise ValueError("could not find the mouth slit in the template")
        xs = verts_mm[loop, 0]
        i0, i1 = int(np.argmin(xs)), int(np.argmax(xs))
        if i0 > i1:
            i0, i1 = i1, i0
        chain_a, chain_b = loop[i0:i1 + 1], np.r_[loop[i1:], loop[:i0 + 1]]
        if verts_mm[chain_a[1:-1], 1].mean() > verts_mm[chain_b[1:-1], 1].mean():
            self.upper_rim, self.lower_rim = chain_a[1:-1], chain_b[1:-1]
        else:
            self.upper_rim, self.lower_rim = chain_b[1:-1], chain_a[1:-1]
        self.slit_corners = np.array([loop[i0], loop[i1]])
        if verts_mm[self.slit_corners[0], 0] > verts_mm[self.slit_corners[1], 0]:
            self.slit_corners = self.slit_corners[::-1]
        # landmarks: nearest vertex; inner lip points on the correct rim of the slit
        _, idx = cKDTree(verts_mm).query(lm_points_mm)
        idx = idx.astype(np.int64)
        self.lm_distance = np.linalg.norm(verts_mm[idx] - lm_points_mm, axis=1)

        def nearest_in(cands, p):
            return int(cands[np.argmin(np.linalg.norm(verts_mm[cands] - p, axis=1))])

        idx[60], idx[64] = self.slit_corners
        for i in (61, 62, 63):
            idx[i] = nearest_in(self.upper_rim, lm_points_mm[i])
        for i in (65, 66, 67):
            idx[i] = nearest_in(self.lower_rim, lm_points_mm[i])
        self.lm_idx = idx
        self.L = verts_mm[idx]
        self.jaw_weight = self._jaw_weight()

    def radial(self) -> np.ndarray:
        """Unit horizontal direction away from the head's vertical axis (x = 0, z = z of L[0]):
        a smooth stand-in for the surface normal on the cheeks (vertex normals are noisy and
        point into the mouth at the lip rims)."""
        r = self.v - np.array([0.0, 0.0, self.L[0, 2]])
        r[:, 1] = 0.0
        return r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-9)

    def outward(self) -> np.ndarray:
        """Unit x direction away from the mid-sagittal plane, per vertex."""
        return np.where(self.v[:, 0] >= 0, 1.0, -1.0)

    def _jaw_weight(self) -> np.ndarray:
        """1 on what moves with the mandible, 0 on the skull; harmonic in between (mesh graph)."""
        v, L = self.v, self.L
        # rims are pinned only away from the corners, so the opening tapers towards them
        cx = v[self.slit_corners, 0]
        away = lambda ids: ids[(v[ids, 0] > cx[0] + 7.0) & (v[ids, 0] < cx[1] - 7.0)]  # noqa: E731
        self.pinned_lower, self.pinned_upper = away(self.lower_rim), away(self.upper_rim)
        one = np.zeros(self.n, bool)
        one[self.pinned_lower] = True
        one |= np.linalg.norm(v - L[8], axis=1) < 15.0
        for i in range(5, 12):
            one |= np.linalg.norm(v - L[i], axis=1) < 6.0
        zero = np.zeros(self.n, bool)
        zero[self.pinned_upper] = True
        zero |= v[:, 1] > L[33, 1]
        zero |= v[:, 2] < 15.0
        zero &= ~one
        fixed = np.flatnonzero(one | zero)
        w = harmonic(self.lap, fixed, one[fixed].astype(np.float64))
        # soften the kinks at the constraint borders, keeping the rims exact
        for _ in range(4):
            w = smooth(self.adj, w, 10)
            w[self.pinned_lower] = 1.0
            w[self.pinned_upper] = 0.0
        return np.clip(w, 0.0, 1.0)

    def rim_mask(self) -> np.ndarray:
        from scipy.spatial import cKDTree

        rims = np.r_[self.upper_rim, self.lower_rim]
        d, _ = cKDTree(self.v[rims]).query(self.v)
        return np.exp(-0.5 * (d / 1.0) ** 2) * self.lip_mask()
