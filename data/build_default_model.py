"""Build ``data/default_model.h5``: the embedded default 3DMM (SYNTHETIC bases, NOT a statistical model).

No free statistical face model can be redistributed, so the default model that makes the
quickstart work without licensed files is assembled here from two ingredients:

1. The MEAN HEAD and its 68 iBUG landmarks from menpo3d 0.8.6's source distribution (BSD-3,
   Imperial College London): ``menpo3d/data/template.ply`` (an LSFM-topology mean head, 53,349
   vertices, 106,111 triangles, false colours) and ``menpo3d/data/template.ljson``. Both are read
   straight out of the sdist tarball; menpo3d is not installed or imported.
2. Hand-designed, SYNTHETIC linear bases written in this file: smooth, localised, NAMED
   displacement fields for identity shape and expression, and colour fields for albedo. They were
   not learned from any scans. They give plausible variety for a first look and for testing the
   pipeline; they carry no population statistics. For research results use a real model
   (BFM 2009/2017, LSFM, FaceWarehouse-derived expressions).

Usage::

    python data/build_default_model.py                       # pip-downloads the sdist to a temp dir
    python data/build_default_model.py menpo3d-0.8.6.tar.gz   # or give the tarball ...
    python data/build_default_model.py DIR                    # ... or a folder holding / to receive it
    python data/build_default_model.py --out other.h5 SRC

The download recipe (pip builds the sdist's metadata, so numpy, wheel and cython must be present):
``pip install numpy wheel cython && pip download --no-deps --no-build-isolation --no-binary :all:
menpo3d==0.8.6 -d DIR``. The build is deterministic: the same tarball gives the same bytes.

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

The bases
---------
Every mode is a displacement (or colour) field ``d`` over the vertices; it is stored as the unit
column ``d / |d|`` with ``std = amplitude * |d|`` (``pcaVariance = std**2``), so that
``mean + basis @ (std * coeffs)`` with ``coeffs ~ N(0, 1)`` applies ``amplitude * d`` at one
standard deviation. Columns have unit length; the modes are NOT mutually orthogonal (overlapping
regions such as "chin height" and "lower-face height" share directions); no tool should assume
they are. Localised fields use Gaussian falloffs ``g(c, s) = exp(-|v - c|^2 / 2 s^2)`` (optionally
anisotropic) around points defined by the landmarks, mirrored left/right for bilateral features;
values below 1e-4 of a field's peak are set to exactly 0 (a 0.1 micrometre step at most) so that
the file compresses. Below, "peak" is the largest displacement of a vertex at +1 std; "+2 std"
describes the intended extreme. ``L[i]`` is iBUG landmark i; "outward" means away from x = 0.

Identity shape (``shape/model``; 25 modes, millimetres):

* ``head size``: uniform scale about a point 60 mm behind the nasion (x = 0, y = mean of L[0],
  L[16], L[27]); 3% per std.
* ``face width``: x scaled about x = 0; 4.5% per std.
* ``face length``: y scaled about eye level; 4% per std.
* ``lower face height``: everything below the subnasale (L[33]) moves down in proportion to its
  depth below it (a softplus ramp with a 5 mm soft onset); 6% per std.
* ``jaw width``: outward x at the jaw angles (Gaussians s = 16 mm at the mean of L[12], L[13] and
  its mirror); peak 5 mm.
* ``chin height``: down (-y) around the chin (Gaussian s = 16 mm, 5 mm above and 3 mm behind
  L[8]); peak 4 mm.
* ``chin protrusion``: forward (+z), same region; peak 5 mm.
* ``nose length``: the tip and columella down and slightly forward (0, -1, 0.3) (Gaussian s =
  9 mm between L[30] and L[33]); peak 3.5 mm.
* ``nose tip projection``: +z at the nose tip (Gaussian s = 8 mm at L[30]); peak 3.5 mm.
* ``nose width``: alae outward (Gaussians s = 6 mm, 2 mm outside L[35] and its mirror); peak
  2.8 mm.
* ``nose bridge height``: +z along the dorsum (anisotropic Gaussians s = (5, 9, 8) mm at L[27],
  L[28], L[29]); peak 2.5 mm.
* ``brow ridge``: forward and slightly up (0, 0.3, 1) over the supra-orbital ridge (anisotropic
  Gaussians s = (10, 8, 8) mm at the brow landmarks L[17..26] moved 3 mm up, summed, not
  maxed, so the ridge is smooth); peak 2.5 mm.
* ``eye spacing``: both eye regions outward (Gaussians s = 11 mm at the eye centres); peak
  2 mm per side.
* ``eye size``: the eye region scaled in x and y about each eye centre with a flat-topped window
  ``exp(-(r / 13 mm)^4)``; 8% per std.
* ``eye tilt``: the eye regions rotated in the image plane about their centres, mirrored (outer
  corners up for +), same window; 4 degrees per std.
* ``cheekbone height``: up (+y) over the zygomas (Gaussians s = 13 mm, 15 mm below and 6 mm
  outside the outer eye corners); peak 3.5 mm.
* ``cheekbone width``: outward and forward (1, 0, 0.4) at the same points; peak 3.5 mm.
* ``cheek fullness``: horizontally away from the head's vertical axis (a smooth stand-in for the
  surface normal) on the mid-cheeks (Gaussians s = 15 mm between L[13] and L[35] and mirrored);
  peak 4.5 mm.
* ``forehead slope``: points above the brows move back in proportion to their height above
  them (softplus ramp, 6 mm onset, times a Gaussian in x with s = 45 mm); 5 degrees per std.
* ``lip thickness``: upper vermilion up and forward (0, 1, 0.5), lower vermilion down and
  forward (0, -1, 0.5) (anisotropic Gaussians s = (14, 5, 8) mm), split by the jaw weight
  (see ``jaw open``) so the two lips move apart; peak 1.6 mm.
* ``mouth width``: mouth corners outward (Gaussians s = 8 mm at L[48], L[54]); peak 3 mm.
* ``lip protrusion``: the mouth region forward (anisotropic Gaussian s = (20, 13, 15) mm); peak
  3.5 mm.
* ``midface depth``: forward over the mid-face (anisotropic Gaussian s = (30, 30, 25) mm, 5 mm
  below and 15 mm behind L[29]); peak 4 mm.
* ``ear height``: up around each ear (Gaussians s = 15 mm at the ear centre, found as the mean
  of the vertices more than 80 mm from x = 0, shifted onto the ear); peak 4 mm.
* ``ear protrusion``: outward in proportion to the distance beyond |x| = 72 mm (softplus), within
  Gaussians s = 20 mm around the ear centres; peak 4 mm.

Albedo (``color/model``; 10 modes, RGB in [0, 1]; sums are clipped to [0, 1] by the model):

The mean albedo replaces the false colours. It is painted by ``morph.model.albedo.paint`` (the same
painting gives models without a colour model their fixed albedo; the toolkit must be importable,
from an install or this checkout): skin (0.72, 0.53, 0.43); lips (0.64, 0.38, 0.36)
inside the outer lip contour L[48..59] (soft 1 mm edge) with a darker rim (0.45, 0.20, 0.20)
at the mouth slit; eyebrows (0.30, 0.22, 0.17) in a band 2.5 mm below the brow landmarks, 5.2
to 9.2 mm wide (thicker medially); inside the lid contours an eye: sclera (0.86, 0.82, 0.78),
pink inner corner, brown iris (0.30, 0.20, 0.14) of radius 5.6 mm with a dark limbus, black
pupil of radius 1.8 mm, and a dark lash line along the upper lid; dark nostrils (downward-facing
vertices just inside L[32], L[34]); and part of three modes below (1 std of redness, 1 std of
beard shadow, 1 std of under-eye darkness) so that their negative values stay plausible.
Masks: ``skin`` = 1 outside eyes, lips, brows and nostrils.

* ``skin tone``: light <-> dark, (0.125, 0.115, 0.10) per std on the skin (0.4 on the brows)
  and (0.14, 0.09, 0.08) on the lips: +2 std is very light skin (0.97, 0.76, 0.63), -2 std dark
  brown (0.47, 0.30, 0.23), -3 std very dark (0.35, 0.19, 0.13).
* ``undertone (olive vs pink)``: (0, 0.012, -0.018) per std on the skin.
* ``saturation``: the skin colour's chroma (skin minus its grey level) by 10% per std.
* ``cheek and nose redness``: (0.015, -0.006, -0.004) per std on the cheeks (Gaussians s = 16 mm
  below the outer eye corners) and the nose tip (s = 8 mm).
* ``lip tint``: (0.035, -0.02, -0.01) per std on the lips.
* ``lip darkness``: (-0.035, -0.035, -0.025) per std on the lips.
* ``brow darkness``: (-0.10, -0.08, -0.06) per std on the brows (negative: fair brows).
* ``beard shadow``: (-0.05, -0.042, -0.03) per std on the upper lip, chin, jaw and lower cheeks
  (Gaussians along L[2..14], at the chin and above the upper lip; not on the lips or nostrils);
  -1 std is clean-shaven, +2 std heavy stubble.
* ``under-eye darkness``: -0.025 (1, 0.68, 0.55) per std (a darkening with a hue between those
  of light and dark skin, so it does not redden either) on a ring of radius 9 mm around each
  eye (flattened above it), not in the eye opening or on the brows.
* ``iris lightness``: (0.045, 0.045, 0.05) per std on the iris: -2 std dark brown, +2 std
  hazel.

Expression (``expression/model``; 11 modes, millimetres; ``expression/model/mean`` is zero):

* ``jaw open``: the jaw rotates about a hinge axis parallel to x through the temporomandibular
  joints (15 mm below and 5 mm behind the mean of L[0], L[16]): displacement
  ``w * (e_x cross (v - hinge))`` per radian. ``w`` is a harmonic function on the mesh graph
  (uniform Laplacian) pinned to 1 on the lower rim of the mouth slit, within 15 mm of the chin
  L[8] and within 6 mm of the jaw line L[5..11], and to 0 on the upper rim, above the subnasale
  and behind z = 15 mm; the rims are pinned only more than 7 mm from the mouth corners, so the
  opening tapers towards them; then smoothed with 40 neighbour-averaging steps (re-pinning the
  rims) to remove kinks. 0.11 rad (6.3 degrees) per std: +2 std drops the lower lip about
  2 cm. Negative values push the lower lip into the upper lip, so sample it clipped at 0 (the
  file records ``coefficient_low``/``coefficient_high`` on ``expression/model``).
* ``smile``: mouth corners up, back and outward (0.6, 0.7, -0.4) (Gaussians s = 9 mm at L[48],
  L[54]) plus half as much cheek raise (0.2, 1, 0.3) (s = 14 mm below the outer eye corners);
  peak 4.5 mm.
* ``lip pucker``: the mouth region forward by 1 and contracted towards the mouth centre by
  0.035 (x) and 0.015 (y) per mm of distance, in an anisotropic Gaussian s = (16, 11, 12) mm;
  4 mm forward per std.
* ``brow raise``: up (0, 1, 0.1) in summed Gaussians s = (12, 10, 10) mm 4 mm above the brow
  landmarks (the upper lids and the forehead follow partly); peak 3.5 mm.
* ``brow furrow``: inner brows towards the midline and down (-1, -0.6, 0.2) (Gaussians s = 9 mm
  at L[22] and its mirror); peak 2.5 mm.
* ``eye closure``: with t the height above the lower lid contour and h the opening height at the
  same x (both from the lid landmarks), ``dy = -t`` inside the opening (0 < t < h) and
  ``dy = -h exp(-(t - h)^2 / 2 (5 mm)^2)`` above it (the upper lid skin follows), windowed to the
  eye's x-range; coefficient 1 closes the eye. 0.33 per std: +2 std two-thirds closed, +3 std
  closed; below -1 std the painted eye stretches visibly (recommended bounds -1 .. 2.7).
* ``cheek puff``: horizontally away from the head axis on the cheeks beside the mouth corners
  (Gaussians s = 15 mm); peak 4.5 mm.
* ``mouth sideways``: the mouth region shifted in +x (anisotropic Gaussian s = (18, 13, 15) mm);
  peak 4 mm.
* ``mouth corners down``: corners down and slightly back (0, -1, -0.2) (Gaussians s = 8 mm);
  peak 2.5 mm.
* ``sneer``: upper lip raised (0, 1, 0.2) (Gaussian s = (12, 6, 8) mm between L[33] and L[51],
  times 1 - jaw weight) and the nostril wings up (s = 6 mm at L[35] and mirror); peak 2.5 mm.
* ``mouth stretch``: corners outward, down and back (1, -0.3, -0.3) (Gaussians s = 10 mm) with
  the lips pulled back; peak 3 mm.

Known limitations: the mesh has no mouth interior (an open mouth shows what lies behind the
head), no eyeballs separate from the lids (the eye is painted on the lid-opening surface), and
it is cut off above the hairline and behind the ears; the head is bald.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The painting of the mean albedo is the toolkit's (morph/albedo.py, shared with models that
# have no colour model): this checkout's, whatever is installed.
_ROOT = Path(__file__).resolve().parents[1]
if (_ROOT / "morph" / "albedo.py").is_file() and str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))
from morph.model import albedo as paint_lib  # noqa: E402
from morph.model.albedo import SKIN, FaceRegions, smoothstep, vec, vertex_normals  # noqa: E402

MENPO3D_VERSION = "0.8.6"
SDIST = f"menpo3d-{MENPO3D_VERSION}.tar.gz"
PLY_MEMBER = f"menpo3d-{MENPO3D_VERSION}/menpo3d/data/template.ply"
LJSON_MEMBER = f"menpo3d-{MENPO3D_VERSION}/menpo3d/data/template.ljson"
LICENSE_MEMBER = f"menpo3d-{MENPO3D_VERSION}/LICENSE.txt"
UM_TO_MM = 1e-3
DEFAULT_OUT = Path(__file__).resolve().parent / "default_model.h5"
ZERO_BELOW = 1e-4  # field values below this fraction of the field's peak are set to 0


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


# --------------------------------------------------------------------------------------------
# modes
# --------------------------------------------------------------------------------------------

@dataclass
class Mode:
    name: str
    field: np.ndarray  # (N, 3): displacement in mm (or colour change) per unit coefficient
    amplitude: float   # coefficient at one standard deviation


def peak1(field: np.ndarray) -> np.ndarray:
    """The field scaled to a largest per-vertex displacement of 1."""
    return field / np.linalg.norm(field, axis=1).max()


def bilateral(head: Head, c, s, d) -> np.ndarray:
    """Gaussian at c moving along d plus its mirror image (x components mirrored)."""
    d = np.asarray(d, np.float64)
    dm = d * np.array([-1.0, 1, 1])
    return vec(head.gauss(c, s), d) + vec(head.gauss(head.mirrored(c), s), dm)


def identity_modes(h: Head) -> list[Mode]:
    v, L = h.v, h.L
    out = []
    centre = np.array([0.0, (L[0, 1] + L[16, 1] + L[27, 1]) / 3, L[27, 2] - 60.0])
    out.append(Mode("head size", v - centre, 0.03))
    out.append(Mode("face width", vec(v[:, 0], (1, 0, 0)), 0.045))
    eye_y = 0.5 * (L[36:48, 1].mean() + L[27, 1])
    out.append(Mode("face length", vec(v[:, 1] - eye_y, (0, 1, 0)), 0.04))
    out.append(Mode("lower face height", vec(softplus(L[33, 1] - v[:, 1], 5.0), (0, -1, 0)), 0.06))
    out.append(Mode("jaw width", peak1(bilateral(h, 0.5 * (L[12] + L[13]), 16.0, (1, 0, 0))), 5.0))
    chin_c = L[8] + np.array([0, 5.0, -3.0])
    out.append(Mode("chin height", peak1(vec(h.gauss(chin_c, 16.0), (0, -1, 0))), 4.0))
    out.append(Mode("chin protrusion", peak1(vec(h.gauss(chin_c, 16.0), (0, 0, 1))), 5.0))
    out.append(Mode("nose length", peak1(vec(h.gauss(0.5 * (L[30] + L[33]), 9.0), (0, -1, 0.3))), 3.5))
    out.append(Mode("nose tip projection", peak1(vec(h.gauss(L[30], 8.0), (0, 0, 1))), 3.5))
    out.append(Mode("nose width", peak1(bilateral(h, L[35] + np.array([2.0, 0, -1.0]), 6.0, (1, 0, 0))), 2.8))
    bridge = sum(h.gauss(L[i] - np.array([0, 0, 1.0]), (5.0, 9.0, 8.0)) for i in (27, 28, 29))
    out.append(Mode("nose bridge height", peak1(vec(bridge / bridge.max(), (0, 0, 1))), 2.5))
    brow = sum(h.gauss(L[i] + np.array([0, 3.0, -2.0]), (10.0, 8.0, 8.0)) for i in range(17, 27))
    out.append(Mode("brow ridge", peak1(vec(brow, (0, 0.3, 1))), 2.5))
    ec = h.eye_centre(+1)
    out.append(Mode("eye spacing", peak1(bilateral(h, ec, 11.0, (1, 0, 0))), 2.0))
    size = np.zeros((h.n, 3))
    tilt = np.zeros((h.n, 3))
    for side in (-1, 1):
        c = h.eye_centre(side)
        r = v - c
        w = np.exp(-(np.hypot(r[:, 0], r[:, 1]) / 13.0) ** 4) * smoothstep((v[:, 2] - (c[2] - 20.0)) / 8.0)
        size += w[:, None] * np.c_[r[:, 0], r[:, 1], np.zeros(h.n)]
        # rotation in the image plane, outer corner up for +: on the +x eye counter-clockwise
        tilt += side * w[:, None] * np.c_[-r[:, 1], r[:, 0], np.zeros(h.n)]
    out.append(Mode("eye size", size, 0.08))
    out.append(Mode("eye tilt", tilt, np.radians(4.0)))
    zyg = L[45] + np.array([6.0, -15.0, -4.0])
    out.append(Mode("cheekbone height", peak1(bilateral(h, zyg, 13.0, (0, 1, 0))), 3.5))
    out.append(Mode("cheekbone width", peak1(bilateral(h, zyg, 13.0, (1, 0, 0.4))), 3.5))
    cheek_c = 0.5 * (L[13] + L[35]) + np.array([0, 5.0, 5.0])
    w = h.gauss(cheek_c, 15.0) + h.gauss(h.mirrored(cheek_c), 15.0)
    out.append(Mode("cheek fullness", peak1(h.radial() * w[:, None]), 4.5))
    brow_y = L[17:27, 1].mean()
    fh = softplus(v[:, 1] - brow_y, 6.0) * np.exp(-0.5 * (v[:, 0] / 45.0) ** 2)
    out.append(Mode("forehead slope", vec(fh, (0, 0, -1)), np.tan(np.radians(5.0))))
    jw = h.jaw_weight
    up_c = 0.5 * (L[51] + L[62])
    lo_c = 0.5 * (L[57] + L[66])
    lips = (vec(h.gauss(up_c, (14.0, 5.0, 8.0)) * (1 - jw), (0, 1, 0.5))
            + vec(h.gauss(lo_c, (14.0, 5.0, 8.0)) * jw, (0, -1, 0.5)))
    out.append(Mode("lip thickness", peak1(lips), 1.6))
    out.append(Mode("mouth width", peak1(bilateral(h, L[54], 8.0, (1, 0, 0))), 3.0))
    mouth_c = L[48:68].mean(0)
    out.append(Mode("lip protrusion", peak1(vec(h.gauss(mouth_c, (20.0, 13.0, 15.0)), (0, 0, 1))), 3.5))
    mid = np.array([0.0, L[29, 1] - 5.0, L[29, 2] - 15.0])
    out.append(Mode("midface depth", peak1(vec(h.gauss(mid, (30.0, 30.0, 25.0)), (0, 0, 1))), 4.0))
    ear_c = ear_centre(h)
    out.append(Mode("ear height", peak1(bilateral(h, ear_c, 15.0, (0, 1, 0))), 4.0))
    ax = np.abs(v[:, 0])
    prot = softplus(ax - 72.0, 2.0) * (h.gauss(ear_c, 20.0) + h.gauss(h.mirrored(ear_c), 20.0))
    out.append(Mode("ear protrusion", peak1(vec(prot * h.outward(), (1, 0, 0))), 4.0))
    return out


def ear_centre(h: Head) -> np.ndarray:
    """Mean of the vertices more than 80 mm to the +x side: the rim of the +x ear."""
    m = h.v[:, 0] > 80.0
    c = h.v[m].mean(0)
    return c + np.array([-5.0, -7.0, 3.0])


def expression_modes(h: Head) -> list[Mode]:
    v, L = h.v, h.L
    out = []
    jw = h.jaw_weight
    hinge = np.array([0.0, 0.5 * (L[0, 1] + L[16, 1]) - 15.0, 0.5 * (L[0, 2] + L[16, 2]) - 5.0])
    r = v - hinge
    rot = np.c_[np.zeros(h.n), -r[:, 2], r[:, 1]]  # e_x cross r: opening moves the chin down and back
    out.append(Mode("jaw open", jw[:, None] * rot, 0.11))
    corner, outer = L[54], L[45]
    smile = bilateral(h, corner, 9.0, (0.6, 0.7, -0.4))
    smile += 0.5 * bilateral(h, outer + np.array([-8.0, -25.0, 5.0]), 14.0, (0.2, 1.0, 0.3))
    out.append(Mode("smile", peak1(smile), 4.5))
    mouth_c = L[48:68].mean(0)
    w = h.gauss(mouth_c, (16.0, 11.0, 12.0))
    pucker = w[:, None] * np.c_[-(v[:, 0] - mouth_c[0]) * 0.035, -(v[:, 1] - mouth_c[1]) * 0.015,
                                np.ones(h.n)]
    out.append(Mode("lip pucker", pucker, 4.0))
    brow = sum(h.gauss(L[i] + np.array([0, 4.0, -2.0]), (12.0, 10.0, 10.0)) for i in range(17, 27))
    out.append(Mode("brow raise", peak1(vec(brow, (0, 1, 0.1))), 3.5))
    fur = bilateral(h, L[22] + np.array([-2.0, 1.0, -1.0]), 9.0, (-1.0, -0.6, 0.2))
    out.append(Mode("brow furrow", peak1(fur), 2.5))
    close = np.zeros((h.n, 3))
    for side in (-1, 1):
        t, hh, wx = h.eye_opening(side)
        dy = np.where(t <= 0, 0.0, np.where(t <= hh, -t, -hh * np.exp(-0.5 * ((t - hh) / 5.0) ** 2)))
        close[:, 1] += dy * wx
    out.append(Mode("eye closure", close, 0.33))
    cheek_c = corner + np.array([14.0, 6.0, -12.0])
    w = h.gauss(cheek_c, 15.0) + h.gauss(h.mirrored(cheek_c), 15.0)
    out.append(Mode("cheek puff", peak1(h.radial() * w[:, None]), 4.5))
    out.append(Mode("mouth sideways", peak1(vec(h.gauss(mouth_c, (18.0, 13.0, 15.0)), (1, 0, 0))), 4.0))
    down = bilateral(h, corner + np.array([0, -2.0, 0]), 8.0, (0, -1, -0.2))
    out.append(Mode("mouth corners down", peak1(down), 2.5))
    ala = L[35]
    up_c = 0.5 * (L[33] + L[51])
    sneer = vec(h.gauss(up_c, (12.0, 6.0, 8.0)) * (1 - jw), (0, 1, 0.2))
    sneer += 0.6 * bilateral(h, ala, 6.0, (0.2, 1, 0))
    out.append(Mode("sneer", peak1(sneer), 2.5))
    stretch = bilateral(h, corner, 10.0, (1, -0.3, -0.3))
    stretch += vec(h.gauss(mouth_c, (12.0, 8.0, 8.0)), (0, 0, -0.4))
    out.append(Mode("mouth stretch", peak1(stretch), 3.0))
    return out


def albedo(h: Head) -> tuple[np.ndarray, list[Mode]]:
    """The mean albedo (N, 3) and the colour modes. The mean is painted by ``morph.model.albedo.paint``
    (the painting models without a colour model get too), with the mouth slit's rims as the line
    where the lips meet and +1 std of the redness, beard and under-eye modes."""
    col, m = paint_lib.paint(h, rim=h.rim_mask(), beard=True)
    lips, brows, eye, eyes_all = m["lips"], m["brows"], m["eye"], m["eyes_all"]
    skin_w, red, beard, under = m["skin_w"], m["red"], m["beard"], m["under"]

    tone_w = np.clip(skin_w + 0.4 * brows, 0, 1) * (1 - eyes_all) * (1 - lips)
    chroma = SKIN - SKIN.mean()
    modes = [
        Mode("skin tone", vec(tone_w, (0.125, 0.115, 0.10)) + vec(lips, (0.14, 0.09, 0.08)), 1.0),
        Mode("undertone (olive vs pink)", vec(tone_w, (0.0, 0.012, -0.018)), 1.0),
        Mode("saturation", vec(tone_w, chroma * 0.10), 1.0),
        Mode("cheek and nose redness", vec(red * skin_w, paint_lib.RED_STEP), 1.0),
        Mode("lip tint", vec(lips, (0.035, -0.02, -0.01)), 1.0),
        Mode("lip darkness", vec(lips, (-0.035, -0.035, -0.025)), 1.0),
        Mode("brow darkness", vec(brows, (-0.10, -0.08, -0.06)), 1.0),
        Mode("beard shadow", vec(beard, paint_lib.BEARD_STEP), 1.0),
        Mode("under-eye darkness", vec(under, paint_lib.UNDER_STEP), 1.0),
        Mode("iris lightness", vec(eye["iris"] * (1 - eye["pupil"]), (0.045, 0.045, 0.05)), 1.0),
    ]
    return col, modes


# --------------------------------------------------------------------------------------------
# assembly and output
# --------------------------------------------------------------------------------------------

def to_columns(modes: list[Mode]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(3N, K) unit columns, (K,) standard deviations, names."""
    cols, stds = [], []
    for m in modes:
        f = np.asarray(m.field, np.float64)
        peak = np.abs(f).max()
        f = np.where(np.abs(f) < ZERO_BELOW * peak, 0.0, f)
        norm = np.linalg.norm(f)
        cols.append((f / norm).reshape(-1))
        stds.append(m.amplitude * norm)
    basis = np.stack(cols, 1).astype(np.float32)
    return basis, np.asarray(stds, np.float64), [m.name for m in modes]


def recommended_bounds(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-mode coefficient bounds (std units) inside which the expression modes stay plausible."""
    low = np.full(len(names), -np.inf, np.float32)
    high = np.full(len(names), np.inf, np.float32)
    bounds = {"jaw open": (0.0, np.inf), "eye closure": (-1.0, 2.7)}
    for i, n in enumerate(names):
        low[i], high[i] = bounds.get(n, (-np.inf, np.inf))
    return low, high


def build(tarball: Path) -> dict:
    raw_ply = read_member(tarball, PLY_MEMBER)
    raw_lj = read_member(tarball, LJSON_MEMBER)
    verts_um, tris = parse_ply(raw_ply)
    lm_um = parse_ljson(raw_lj)
    if len(verts_um) != 53349 or len(tris) != 106111:
        raise ValueError(f"unexpected template size {len(verts_um)} vertices, {len(tris)} triangles")
    v = verts_um * UM_TO_MM
    lm = lm_um * UM_TO_MM
    # units check: outer eye corners ~ 80-110 mm apart, nasion-chin ~ 95-135 mm
    eyes = np.linalg.norm(lm[36] - lm[45])
    face = np.linalg.norm(lm[27] - lm[8])
    if not (70 < eyes < 120 and 90 < face < 140):
        raise ValueError(f"unexpected scale: eye corners {eyes:.1f} mm, nasion-chin {face:.1f} mm")
    # orientation checks: y up, face towards +z, x = 0 mid-sagittal
    if not (lm[19, 1] > lm[30, 1] > lm[8, 1] and lm[30, 2] > lm[0, 2] + 50 and abs(lm[30, 0]) < 3):
        raise ValueError("the template is not y-up / +z-facing as expected")
    # the modes below place bilateral features with the +x landmark and mirror it
    if not all(lm[i, 0] > 5 for i in (12, 13, 16, 22, 35, 45, 54)):
        raise ValueError("expected iBUG points 9-16, 22-26, 35, 42-47, 54 on the +x side")
    # winding: normals should point away from the head's vertical axis
    fn = np.cross(v[tris[:, 1]] - v[tris[:, 0]], v[tris[:, 2]] - v[tris[:, 0]])
    cen = v[tris].mean(1)
    axis_pt = np.array([0.0, 0.0, lm[0, 2]])
    radial = cen - axis_pt
    radial[:, 1] = 0
    outward = np.mean((fn * radial).sum(1) > 0)
    if outward < 0.5:
        tris = tris[:, ::-1].copy()
        outward = 1 - outward
    if outward < 0.9:
        raise ValueError(f"inconsistent winding: only {outward:.0%} of normals point outward")

    head = Head(v, tris, lm)
    shape_modes = identity_modes(head)
    exp_modes = expression_modes(head)
    col_mean, col_modes = albedo(head)
    return {"head": head, "tris": tris, "shape": shape_modes, "expression": exp_modes,
            "color_mean": col_mean, "color": col_modes, "outward_fraction": outward,
            "sha256": hashlib.sha256(tarball.read_bytes()).hexdigest(),
            "license": read_member(tarball, LICENSE_MEMBER).decode("utf-8")}


DESCRIPTION = (
    "GANFaces default 3DMM: SYNTHETIC hand-designed bases on the menpo3d LSFM-topology mean head; "
    "NOT a statistical model (no population statistics; the modes are named smooth localised "
    "fields, unit-length but not mutually orthogonal). Basel Face Model 2017 .h5 layout. Units: "
    "millimetres (y up, face towards +z, triangles counter-clockwise from the front), colours in "
    "[0, 1] RGB. vertices = shape/model/mean + shape/model/pcaBasis @ (sqrt(pcaVariance) * alpha) "
    "+ expression/model/pcaBasis @ (sqrt(pcaVariance) * beta); expression/model/mean is zero.")


def write_h5(result: dict, out: Path) -> None:
    import h5py

    head = result["head"]
    tmp = out.with_name(out.name + ".tmp")
    str_dt = h5py.string_dtype("utf-8")
    opts = dict(compression="gzip", compression_opts=9, shuffle=True, track_times=False)
    n3 = 3 * head.n
    with h5py.File(tmp, "w", libver="earliest", track_order=False) as f:
        f.attrs["description"] = DESCRIPTION
        f.attrs["source"] = (
            f"mean head and 68 landmarks: menpo3d {MENPO3D_VERSION} sdist ({SDIST}, sha256 "
            f"{result['sha256']}), files menpo3d/data/template.ply and template.ljson; "
            "bases: synthetic, data/build_default_model.py")
        f.attrs["licence"] = (
            "template geometry: BSD-3-Clause, Copyright (c) 2014 Imperial College London and "
            "others (menpo3d LICENSE.txt, reproduced in attribute 'template_licence'); synthetic "
            "bases and albedo: MIT, as the GANFaces toolkit")
        f.attrs["template_licence"] = result["license"]
        f.attrs["build_script"] = "data/build_default_model.py"
        f.attrs["units"] = "millimetres; colours in [0, 1] RGB"
        f.attrs["conversions"] = (
            "template micrometres x 1e-3 -> millimetres; orientation unchanged (already y up, +z "
            "towards the viewer, x = 0 mid-sagittal); winding unchanged (already counter-clockwise "
            "from outside); false colours replaced by synthetic albedo")
        f.attrs["landmarks"] = (
            "landmarks/ibug68: 0-based vertex index of each iBUG 68 point; template.ljson gives "
            "coordinates, mapped to the nearest vertex (inner-lip points 60-67 to the nearest "
            "vertex on the correct rim of the mouth slit)")
        cells = head.f.T.astype(np.int32)
        points = head.v.T.astype(np.float32)
        parts = {
            "shape": (head.v.reshape(-1), result["shape"]),
            "color": (result["color_mean"].reshape(-1), result["color"]),
            "expression": (np.zeros(n3), result["expression"]),
        }
        for gname, (mean, modes) in parts.items():
            basis, std, names = to_columns(modes)
            g = f.create_group(gname)
            m = g.create_group("model")
            m.create_dataset("mean", data=mean.astype(np.float32), chunks=(min(n3, 16384),), **opts)
            m.create_dataset("pcaBasis", data=basis, chunks=(min(n3, 16384), basis.shape[1]), **opts)
            m.create_dataset("pcaVariance", data=(std ** 2).astype(np.float32), track_times=False)
            m.create_dataset("noiseVariance", data=np.float32(0.0), track_times=False)
            m.create_dataset("names", data=np.array(names, dtype=object), dtype=str_dt, track_times=False)
            m.attrs["synthetic"] = ("yes: hand-designed named modes, not learned; "
                                    "see data/build_default_model.py")
            if gname == "expression":
                low, high = recommended_bounds(names)
                m.attrs["coefficient_low"] = low
                m.attrs["coefficient_high"] = high
                m.attrs["coefficient_bounds"] = (
                    "recommended clipping of the coefficients (std units) when sampling: 'jaw open' "
                    "below 0 pushes the lower lip into the upper lip; 'eye closure' below -1 "
                    "stretches the painted eye and above 2.7 folds the lid")
            r = g.create_group("representer")
            if gname == "shape":
                r.create_dataset("cells", data=cells, chunks=(3, min(cells.shape[1], 16384)), **opts)
                r.create_dataset("points", data=points, chunks=(3, min(points.shape[1], 16384)), **opts)
            else:  # hard links: the same datasets, stored once
                r["cells"] = f["shape/representer/cells"]
                r["points"] = f["shape/representer/points"]
        lmg = f.create_group("landmarks")
        lmg.create_dataset("ibug68", data=head.lm_idx.astype(np.int32), track_times=False)
        lmg["ibug68"].attrs["convention"] = ("iBUG 68-point markup, 0-based vertex indices; 0-16 jaw "
                                             "contour as placed on the 3-D template")
    tmp.replace(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", nargs="?", help=f"{SDIST}, or a folder holding it or to download it into "
                    "(default: pip-download into a temporary folder)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output .h5 (default: %(default)s)")
    args = ap.parse_args(argv)
    if args.source is None:
        with tempfile.TemporaryDirectory(prefix="menpo3d-sdist-") as tmp:
            result = build(find_sdist(tmp))
    else:
        result = build(find_sdist(args.source))
    write_h5(result, args.out)
    head = result["head"]
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): {head.n} vertices, "
          f"{len(head.f)} triangles, {len(result['shape'])} shape / {len(result['color'])} colour / "
          f"{len(result['expression'])} expression modes; landmark snap distance max "
          f"{head.lm_distance.max():.2f} mm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
