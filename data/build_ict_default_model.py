"""Build ``data/ict_default_model.h5``: the embedded default 3DMM (``--model default``), from the ICT
Face Model Light of ICT-FaceKit (github.com/ICT-VGL/ICT-FaceKit, MIT, (c) 2020 USC Institute for
Creative Technologies) at commit ``ICT_COMMIT``, with a SYNTHETIC colour model painted here.

Usage::

    python data/build_ict_default_model.py ICT-FaceKit            # a git checkout of ICT-FaceKit
    python data/build_ict_default_model.py /path/to/mirror.git    # or a bare clone / mirror of it
    python data/build_ict_default_model.py --out other.h5 SRC

The script reads ``FaceXModel/`` and ``LICENSE`` at commit ``ICT_COMMIT`` out of the repository
with ``git archive`` (whatever the checkout's working tree holds), so the same repository gives the
same bytes; ``--commit`` builds from another commit (the file records which).

What the file holds (Basel Face Model 2017 ``.h5`` layout, see ``morph/formats/bfm2017.py``):

* Mesh: the parts of ``morph.formats.ict.FACE_RENDER_PARTS`` (face, head and neck, mouth socket,
  eye sockets, gums and tongue, teeth, eyeballs: 24,591 vertices), polygons fanned into 48,836
  triangles, in millimetres, as ``morph.formats.ict.load`` reads them; the 68 iBUG landmarks of
  ``vertex_indices.json``.
* ``shape/model``: the neutral head as mean (float32) and the 100 ICT identity modes (each file is
  one standard deviation, see ``morph.formats.ict``), as unit columns in float16 with
  ``pcaVariance`` = std^2 in float32. float16 keeps 11 significant bits: a displacement is off by
  at most 2^-12 of itself (0.7 micrometres at 3 mm), far below a pixel at any render size.
* ``expression/model``: the 53 ICT blendshapes (ARKit names), zero mean, unit float16 columns.
  A blendshape weight runs from 0 to 1; the file's standard deviation of blendshape j is
  ``AMPLITUDE[j]`` times the full blendshape, so a coefficient c ~ N(0, s) (the priors'
  ``std_scale`` s) is the weight ``AMPLITUDE[j] * c``, clipped to [0, 1] by the bounds
  ``coefficient_low`` = 0 and ``coefficient_high`` = 1 / AMPLITUDE[j]. The amplitudes are chosen
  so that the default priors (s = 0.7) give natural faces: gaze, small smiles, a slightly open
  mouth now and then; blinks and jaw shifts seldom.
* ``color/model``: SYNTHETIC, not learned from any scan (ICT's colour data is not public): the
  mean is painted by ``morph.model.albedo.paint`` on the face and head and neck (skin, lips, brows,
  lash lines, cheek redness, beard shadow and under-eye +1 std, as on the previous default),
  with the painted eye off (this mesh has eyeballs) and the painted nostrils off (the mesh models
  them as cavities, which the baked occlusion below darkens), short hair above a ``HAIRLINE``
  (``hair_mask``), and fixed colours on the
  other parts: eyeball sclera, iris with pupil and limbus (``iris_fields``), eye sockets, mouth
  socket, gums and teeth darkening with depth behind the lips. 13 named, smooth modes (RGB per
  std): the 10 of the previous default (skin tone, undertone, saturation, cheek and nose redness,
  lip tint, lip darkness, brow darkness, beard shadow, under-eye darkness, iris lightness), iris
  colour (brown to blue-grey), hair lightness and hair redness. The sclera is greyer than the
  previous default's and the lash lines stronger, and the hair is there, because MTCNN found
  exactly one face in more renders so (``bench/identities.py``; numbers in ``data/README.md``).
  Mean and modes are then multiplied by baked ambient occlusion (``ambient_occlusion``,
  ``occlusion_shade``): our renderer casts no shadows, and unshaded the nostrils' insides
  rendered white when seen from below and the teeth between parted lips as bright specks.

Determinism: no randomness; HDF5 written with ``track_times=False`` and fixed chunking, so the
same commit gives a byte-identical file (``tests/test_ict_default_model.py`` checks it when
``ICT_FACEKIT`` names an ICT-FaceKit checkout).
"""
from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # the toolkit of this checkout: its loader and its painting
    sys.path.insert(0, str(_ROOT))

from morph.model import albedo as paint_lib  # noqa: E402
from morph.model.albedo import FaceRegions, vec, smoothstep  # noqa: E402
from morph.formats import ict  # noqa: E402

ICT_REPO = "https://github.com/ICT-VGL/ICT-FaceKit"
ICT_COMMIT = "da5f95a607f5e6b37755b38d3385d7f2853732e5"
DEFAULT_OUT = Path(__file__).resolve().parent / "ict_default_model.h5"

#: blendshape weight at one standard deviation (see the module docstring); others: 0.15
AMPLITUDE = {
    "eyeLookDown_L": 0.3, "eyeLookDown_R": 0.3, "eyeLookIn_L": 0.3, "eyeLookIn_R": 0.3,
    "eyeLookOut_L": 0.3, "eyeLookOut_R": 0.3, "eyeLookUp_L": 0.3, "eyeLookUp_R": 0.3,
    "mouthSmile_L": 0.3, "mouthSmile_R": 0.3, "jawOpen": 0.2, "browInnerUp_L": 0.2,
    "browInnerUp_R": 0.2, "eyeBlink_L": 0.1, "eyeBlink_R": 0.1, "jawLeft": 0.08, "jawRight": 0.08,
    "jawForward": 0.08, "mouthClose": 0.05, "cheekPuff_L": 0.1, "cheekPuff_R": 0.1,
}
DEFAULT_AMPLITUDE = 0.15

# colours of the parts without skin, RGB in [0, 1]
SCLERA = (0.74, 0.69, 0.65)
IRIS_MM, PUPIL_MM = 6.0, 2.0  # radii
PUPIL = (0.03, 0.03, 0.03)
LIMBUS = (0.12, 0.08, 0.06)
EYE_SOCKET = (0.55, 0.32, 0.30)
MOUTH = (0.42, 0.16, 0.15)      # just behind the lips; darkens towards MOUTH_DEEP
MOUTH_DEEP = (0.08, 0.03, 0.03)
GUMS = (0.66, 0.32, 0.31)
TEETH = (0.86, 0.82, 0.72)
HAIR = (0.13, 0.09, 0.07)
#: hairline height (mm, relative to the brows) by angle round the head's vertical axis (degrees,
#: 0 = the front): forehead, temples, above the ears, behind the ears, nape
HAIRLINE = ((0.0, 45.0), (50.0, 25.0), (90.0, -10.0), (120.0, -25.0), (180.0, -80.0))
#: ambient occlusion baked into the albedo (``occlusion_shade``): directions, depth-map size, the
#: visibility at and above which a vertex keeps its colour, and the darkest factor (a closed cavity)
AO_DIRECTIONS, AO_RESOLUTION, AO_OPEN, AO_FLOOR = 256, 768, 0.8, 0.15
#: the mouth's interior is shaded with the jaw this far open (blendshape weight), as it is seen
AO_JAW_OPEN = 0.5


# --------------------------------------------------------------------------------------------
# source: ICT-FaceKit at a commit
# --------------------------------------------------------------------------------------------

def git_dir(src: Path) -> Path:
    """The git directory of a checkout (``src/.git``) or of a bare repository (``src``)."""
    for g in (src / ".git", src):
        if (g / "HEAD").is_file() and (g / "objects").is_dir():
            return g
    raise SystemExit(f"{src}: not a git checkout or bare repository of ICT-FaceKit; clone {ICT_REPO}.")


def extract(src: Path, commit: str, into: Path) -> tuple[Path, str]:
    """``FaceXModel/`` and ``LICENSE`` of ``commit`` unpacked into ``into``; (folder, licence text)."""
    g = git_dir(src)
    raw = subprocess.run(["git", "--git-dir", str(g), "archive", "--format=tar", commit, "FaceXModel", "LICENSE"],
                         check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        tar.extractall(into, filter="data")
    return into / "FaceXModel", (into / "LICENSE").read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------
# the synthetic colour model
# --------------------------------------------------------------------------------------------

class SkinRegions(FaceRegions):
    """``FaceRegions`` of the face and head-and-neck parts: the painted eye (sclera, iris ...) is
    off because this mesh has eyeballs; only the lash lines along the lids stay."""

    def eye_paint(self):
        parts = super().eye_paint()
        return {k: (v if k in ("lashes", "lower_lashes") else np.zeros_like(v)) for k, v in parts.items()}


def part_mask(model_parts: list[str], names) -> np.ndarray:
    """Boolean mask over the kept vertices of the named parts (kept vertices are in part order)."""
    sizes = [ict.PARTS[p][1] - ict.PARTS[p][0] + 1 for p in model_parts]
    return np.concatenate([np.full(s, p in names) for p, s in zip(model_parts, sizes)])


def iris_fields(v: np.ndarray, parts: list[str]) -> dict:
    """Per-vertex iris, pupil and limbus weights on the eyeballs, by distance r from the eye's axis
    on its front half. Both halves of each eyeball part (README, "Eyeball Details": 770 sclera then
    800 iris vertices) are balls of about 15 mm radius round one centre, so the file does not say
    where the iris is: the neutral eyes look straight ahead (+z), so the axis is the line through
    the eyeball's centre (least-squares sphere through its sclera vertices) along +z, and the colour
    goes on every eyeball vertex: iris r < IRIS_MM, pupil r < PUPIL_MM, a dark limbus ring at the
    iris' edge (adult irises are 11-12.5 mm across, pupils 2-8 mm)."""
    out = {k: np.zeros(len(v)) for k in ("iris", "pupil", "limbus")}
    starts = np.cumsum([0] + [ict.PARTS[p][1] - ict.PARTS[p][0] + 1 for p in parts])
    for side in ("eyeball left", "eyeball right"):
        a = starts[parts.index(side)]
        ball, sclera = np.arange(a, a + 1570), v[a:a + 770]
        # sphere |x|^2 = 2 c.x + k, linear in (c, k)
        sol = np.linalg.lstsq(np.c_[2 * sclera, np.ones(len(sclera))], (sclera ** 2).sum(1), rcond=None)[0]
        rel = v[ball] - sol[:3]
        r, front = np.hypot(rel[:, 0], rel[:, 1]), rel[:, 2] > 0
        out["iris"][ball] = smoothstep((IRIS_MM - r) / 0.4) * front
        out["pupil"][ball] = smoothstep((PUPIL_MM - r) / 0.3) * front
        out["limbus"][ball] = np.exp(-0.5 * ((r - IRIS_MM + 0.3) / 0.35) ** 2) * front
    return out


def hair_mask(v: np.ndarray, L: np.ndarray) -> np.ndarray:
    """Short hair on the scalp: 1 above the ``HAIRLINE`` (by angle round the vertical axis through
    the head's middle, between the nose tip's depth and the back of the head), a 4 mm soft edge."""
    zc = 0.5 * (L[30, 2] + v[:, 2].min())
    phi = np.degrees(np.abs(np.arctan2(v[:, 0], v[:, 2] - zc)))
    a, h = np.array(HAIRLINE).T
    line = L[17:27, 1].mean() + np.interp(phi, a, h)
    return smoothstep((v[:, 1] - line) / 4.0)


def fibonacci_sphere(k: int) -> np.ndarray:
    """(k, 3) unit directions spread evenly over the sphere (the golden-angle spiral)."""
    i = np.arange(k) + 0.5
    z = 1 - 2 * i / k
    r, phi = np.sqrt(1 - z * z), np.pi * (1 + 5 ** 0.5) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)


def ambient_occlusion(v: np.ndarray, tris: np.ndarray, normals: np.ndarray, bias_mm: float = 0.3) -> np.ndarray:
    """(N,) share of each vertex's hemisphere, cosine-weighted, from which it can be seen: 1 on an
    open surface, 0 deep in a cavity. Seen from each of ``AO_DIRECTIONS`` directions the mesh is
    rasterised orthographically into a depth map of ``AO_RESOLUTION`` pixels a side (our CPU
    rasteriser, ``morph.render.raster_cpu.rasterize_numpy``); a vertex is seen from there when it is
    no deeper than ``bias_mm`` behind the farthest of the depths in its 3x3 pixels (so that a vertex
    on a silhouette or a steep slope is not shadowed by its own triangles)."""
    from morph.render.raster_cpu import rasterize_numpy

    c = v.mean(0)
    rad = np.linalg.norm(v - c, axis=1).max() * 1.01
    dirs = fibonacci_sphere(AO_DIRECTIONS)
    res, seen = AO_RESOLUTION, np.zeros((len(v), len(dirs)), bool)
    for s in range(0, len(dirs), 16):
        views = []
        for d in dirs[s:s + 16]:  # a frame whose third axis points from the mesh to the camera
            e1 = np.cross(d, [1.0, 0, 0] if abs(d[0]) < 0.9 else [0, 1.0, 0])
            e1 /= np.linalg.norm(e1)
            e2 = np.cross(d, e1)
            p = v - c
            # elementwise products and sums of three, not BLAS: the same bits on any CPU
            views.append(np.stack([(p * e1).sum(1) / rad, (p * e2).sum(1) / rad, 2 * rad - (p * d).sum(1)], 1))
        P = np.stack(views).astype(np.float32)
        z = rasterize_numpy(P, tris.astype(np.int32), (res, res))[1][..., 0]
        z = np.where(z < 0, np.inf, z)  # background: nothing in front
        # the pixel of each vertex (NDC +x is left and +y up, ``pixel_centres_ndc``)
        col = np.round((1 - P[..., 0]) / 2 * res - 0.5).astype(np.int64)
        row = np.round((1 - P[..., 1]) / 2 * res - 0.5).astype(np.int64)
        for b in range(len(P)):
            far = np.full(len(v), -np.inf)
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    far = np.maximum(far, z[b, np.clip(row[b] + dr, 0, res - 1), np.clip(col[b] + dc, 0, res - 1)])
            seen[:, s + b] = P[b, :, 2] <= far + bias_mm
    w = np.clip((normals[:, None, :] * dirs[None]).sum(2), 0, None)
    return (w * seen).sum(1) / np.maximum(w.sum(1), 1e-12)


def occlusion_shade(ao: np.ndarray) -> np.ndarray:
    """The factor on albedo for ambient occlusion ``ao``: 1 from ``AO_OPEN`` up, ``AO_FLOOR`` at 0.
    Our renderer casts no shadows, so without it a cavity lit from the front is as bright as a
    cheek: nostrils looked white from below, and teeth between parted lips looked like specks."""
    return AO_FLOOR + (1 - AO_FLOOR) * smoothstep(ao / AO_OPEN)


def colour_model(v: np.ndarray, tris: np.ndarray, lm: np.ndarray, parts: list[str],
                 shade: np.ndarray | None = None):
    """(N, 3) mean albedo and the named colour modes [(name, (N, 3) field per std)]; ``shade``
    (N,) multiplies both (``occlusion_shade``), so that any sampled colour is shaded alike."""
    L = v[lm]
    skin_part = part_mask(parts, ("face", "head and neck"))
    iod = np.linalg.norm(L[42:48].mean(0) - L[36:42].mean(0))
    normals = paint_lib.vertex_normals(v, tris)
    regions = SkinRegions(v, normals, L, scale=iod / paint_lib.REFERENCE_IOD_MM, soft=1.0)
    # the nostrils are modelled as cavities that shade dark by themselves: painting them as well
    # (nostril_facing_down > 1 turns it off) gave dark blotches beside the alae of some noses
    col, m = paint_lib.paint(regions, beard=True, lash_weight=1.0, lower_lash_weight=0.5, nostril_facing_down=2.0)
    hair = hair_mask(v, L) * skin_part
    col = col * (1 - hair[:, None]) + np.asarray(HAIR)[None] * hair[:, None]
    bare = skin_part * (1 - hair)
    lips, brows, skin_w = m["lips"] * bare, m["brows"] * bare, m["skin_w"] * bare

    # behind the lips the mouth darkens with depth (distance behind the inner lip contour)
    lip_z = L[60:68, 2].mean()
    deep = smoothstep((lip_z - v[:, 2]) / 25.0)

    def paint_part(names, colour):
        sel = part_mask(parts, names)
        col[sel] = np.asarray(colour)[None]
        return sel

    mouth = paint_part(("mouth socket",), MOUTH)
    col[mouth] = (1 - deep[mouth, None]) * np.asarray(MOUTH) + deep[mouth, None] * np.asarray(MOUTH_DEEP)
    gums = paint_part(("gums and tongue",), GUMS)
    col[gums] *= (1 - 0.7 * deep[gums])[:, None]
    teeth = paint_part(("teeth",), TEETH)
    # back teeth lie in the mouth's shadow: towards the dark of the mouth, not towards grey, which
    # beside the red of the mouth reads as green
    col[teeth] = (1 - 0.8 * deep[teeth, None]) * col[teeth] + 0.8 * deep[teeth, None] * np.asarray(MOUTH_DEEP)
    paint_part(("eye socket left", "eye socket right"), EYE_SOCKET)
    paint_part(("eyeball left", "eyeball right"), SCLERA)
    eye = iris_fields(v, parts)
    iris = eye["iris"]
    for w, colour in ((iris, paint_lib.IRIS), (eye["limbus"] * 0.7, LIMBUS), (eye["pupil"], PUPIL)):
        col = col * (1 - w[:, None]) + np.asarray(colour)[None] * w[:, None]
    col = np.clip(col, 0.0, 1.0)

    tone_w = np.clip(skin_w + 0.4 * brows, 0, 1) * (1 - lips)
    chroma = paint_lib.SKIN - paint_lib.SKIN.mean()
    iris_only = iris * (1 - eye["pupil"])
    modes = [
        ("skin tone", vec(tone_w, (0.125, 0.115, 0.10)) + vec(lips, (0.14, 0.09, 0.08))),
        ("undertone (olive vs pink)", vec(tone_w, (0.0, 0.012, -0.018))),
        ("saturation", vec(tone_w, chroma * 0.10)),
        ("cheek and nose redness", vec(m["red"] * skin_w, paint_lib.RED_STEP)),
        ("lip tint", vec(lips, (0.035, -0.02, -0.01))),
        ("lip darkness", vec(lips, (-0.035, -0.035, -0.025))),
        ("brow darkness", vec(brows, (-0.10, -0.08, -0.06))),
        ("beard shadow", vec(m["beard"] * bare, paint_lib.BEARD_STEP)),
        ("under-eye darkness", vec(m["under"] * bare, paint_lib.UNDER_STEP)),
        ("iris lightness", vec(iris_only, (0.045, 0.045, 0.05))),
        ("iris colour (brown to blue-grey)", vec(iris_only, (-0.04, 0.0, 0.06))),
        ("hair lightness", vec(hair, (0.07, 0.06, 0.045))),
        ("hair redness", vec(hair, (0.03, 0.0, -0.015))),
    ]
    if shade is not None:
        col, modes = col * shade[:, None], [(name, f * shade[:, None]) for name, f in modes]
    return col, modes


# --------------------------------------------------------------------------------------------
# assembly and output
# --------------------------------------------------------------------------------------------

def unit_columns(fields) -> tuple[np.ndarray, np.ndarray]:
    """(3N, K) unit columns as float16, and (K,) their lengths (the std at coefficient scale 1).
    The length is measured on the float16 column, so ``unit @ std`` reproduces each field."""
    cols = [np.asarray(f, np.float64).reshape(-1) for f in fields]
    unit = np.stack([c / np.linalg.norm(c) for c in cols], 1).astype(np.float16)
    std = np.array([np.linalg.norm(c) / np.linalg.norm(unit[:, k].astype(np.float64)) for k, c in enumerate(cols)])
    return unit, std


def occlusion(model, v: np.ndarray, parts: list[str]) -> np.ndarray:
    """``occlusion_shade`` per vertex: of the neutral head on skin and eyes, and of the head with
    the jaw ``AO_JAW_OPEN`` open inside the mouth (closed, every tooth would be black). The
    eye sockets need no more: they are hidden behind the eyeballs."""
    shade = occlusion_shade(ambient_occlusion(v, model.triangles, paint_lib.vertex_normals(v, model.triangles)))
    j = model.expression.names.index("jawOpen")
    open_v = v + AO_JAW_OPEN * (model.expression.basis[:, j] * model.expression.std[j]).reshape(-1, 3)
    inside = part_mask(parts, ("mouth socket", "gums and tongue", "teeth"))
    ao_open = ambient_occlusion(open_v, model.triangles, paint_lib.vertex_normals(open_v, model.triangles))
    shade[inside] = occlusion_shade(ao_open)[inside]
    # each eyeball is two coincident balls (``iris_fields``): each would hide the other, so the
    # eyeballs are shaded by the rest of the head alone (lids and sockets)
    eyes = part_mask(parts, ("eyeball left", "eyeball right"))
    rest = model.triangles[~eyes[model.triangles].any(1)]
    shade[eyes] = occlusion_shade(ambient_occlusion(v, rest, paint_lib.vertex_normals(v, model.triangles)))[eyes]
    return shade


def build(folder: Path) -> dict:
    model = ict.load(folder, parts=ict.FACE_RENDER_PARTS)
    parts = list(ict.FACE_RENDER_PARTS)
    v = model.shape.mean.reshape(-1, 3).astype(np.float64)
    shape_basis, shape_std = unit_columns(model.shape.basis.T * model.shape.std[:, None])
    exp_names = model.expression.names
    amp = np.array([AMPLITUDE.get(n, DEFAULT_AMPLITUDE) for n in exp_names])
    exp_basis, exp_full = unit_columns(model.expression.basis.T * model.expression.std[:, None])
    col_mean, col_modes = colour_model(v, model.triangles, model.landmarks, parts, occlusion(model, v, parts))
    col_basis, col_std = unit_columns([f for _, f in col_modes])
    return {"v": v, "tris": model.triangles, "landmarks": model.landmarks,
            "shape": (v.reshape(-1), shape_basis, shape_std, model.shape.names, None),
            "expression": (np.zeros(v.size), exp_basis, amp * exp_full, exp_names, (np.zeros(len(amp)), 1.0 / amp)),
            "color": (col_mean.reshape(-1), col_basis, col_std, [n for n, _ in col_modes], None)}


DESCRIPTION = (
    "GANFaces default 3DMM: the ICT Face Model Light (ICT-FaceKit, USC ICT, MIT) - its neutral head, "
    "100 identity PCA modes and 53 expression blendshapes - on its face, head and neck, mouth socket, "
    "teeth, gums and tongue, eye sockets and eyeballs; plus a SYNTHETIC colour model (hand-painted "
    "named modes, not learned from scans). Basel Face Model 2017 .h5 layout. Units: millimetres (y up, "
    "face towards +z, triangles counter-clockwise from the front), colours in [0, 1] RGB. Expression "
    "coefficients are blendshape weights / amplitude, clipped to coefficient_low..coefficient_high.")


def write_h5(result: dict, out: Path, commit: str, licence: str) -> None:
    import h5py

    tmp = out.with_name(out.name + ".tmp")
    str_dt = h5py.string_dtype("utf-8")
    opts = dict(compression="gzip", compression_opts=9, shuffle=True, track_times=False)
    v, tris = result["v"], result["tris"]
    n3 = v.size
    with h5py.File(tmp, "w", libver="earliest", track_order=False) as f:
        f.attrs["description"] = DESCRIPTION
        f.attrs["source"] = (f"shape, expression and landmarks: ICT Face Model Light, {ICT_REPO} at commit {commit}, "
                             "FaceXModel/*.obj and vertex_indices.json; colour model: synthetic, "
                             "data/build_ict_default_model.py")
        f.attrs["licence"] = ("ICT Face Model Light geometry: MIT, Copyright (c) 2020 USC Institute for Creative "
                              "Technologies (notice in attribute 'ict_licence'); synthetic colour model: MIT, as "
                              "the GANFaces toolkit")
        f.attrs["ict_licence"] = licence
        f.attrs["ict_commit"] = commit
        f.attrs["build_script"] = "data/build_ict_default_model.py"
        f.attrs["units"] = "millimetres; colours in [0, 1] RGB"
        f.attrs["conversions"] = ("centimetres x 10 -> millimetres; orientation and origin kept (y up, +z towards "
                                  "the viewer, x = 0 mid-sagittal); quads fanned into triangles keeping the "
                                  "counter-clockwise winding; parts: " + ", ".join(ict.FACE_RENDER_PARTS))
        f.attrs["landmarks"] = "landmarks/ibug68: vertex_indices.json 'idx_to_landmark_verts', renumbered"
        for gname in ("shape", "color", "expression"):
            mean, basis, std, names, bounds = result[gname]
            g = f.create_group(gname)
            m = g.create_group("model")
            m.create_dataset("mean", data=mean.astype(np.float32), chunks=(min(n3, 16384),), **opts)
            # one chunk per mode: a mode's neighbouring coordinates are alike, so gzip packs the
            # 100 identity modes into 11.1 MB instead of 12.2 with row blocks of every mode
            m.create_dataset("pcaBasis", data=basis, chunks=(n3, 1), **opts)
            m.create_dataset("pcaVariance", data=(std ** 2).astype(np.float32), track_times=False)
            m.create_dataset("noiseVariance", data=np.float32(0.0), track_times=False)
            m.create_dataset("names", data=np.array(names, dtype=object), dtype=str_dt, track_times=False)
            m.attrs["synthetic"] = ("yes: hand-painted named modes, not learned; see data/build_ict_default_model.py"
                                    if gname == "color" else "no: ICT Face Model Light")
            if bounds is not None:
                m.attrs["coefficient_low"] = bounds[0].astype(np.float32)
                m.attrs["coefficient_high"] = bounds[1].astype(np.float32)
                m.attrs["coefficient_bounds"] = ("blendshape weight 0..1 in std units: weight = coefficient * "
                                                 "sqrt(pcaVariance) / |full blendshape|")
            r = g.create_group("representer")
            if gname == "shape":
                r.create_dataset("cells", data=tris.T.astype(np.int32), chunks=(3, min(len(tris), 16384)), **opts)
                r.create_dataset("points", data=v.T.astype(np.float32), chunks=(3, min(len(v), 16384)), **opts)
            else:  # hard links: stored once
                r["cells"] = f["shape/representer/cells"]
                r["points"] = f["shape/representer/points"]
        lmg = f.create_group("landmarks")
        lmg.create_dataset("ibug68", data=result["landmarks"].astype(np.int32), track_times=False)
    tmp.replace(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="a git checkout or bare clone of ICT-FaceKit")
    ap.add_argument("--commit", default=ICT_COMMIT, help="the commit to read (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output .h5 (default: %(default)s)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ict-facekit-") as tmp:
        folder, licence = extract(args.source, args.commit, Path(tmp))
        result = build(folder)
    commit = subprocess.run(["git", "--git-dir", str(git_dir(args.source)), "rev-parse", args.commit],
                            check=True, capture_output=True, text=True).stdout.strip()
    write_h5(result, args.out, commit, licence)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) from ICT-FaceKit {commit}: "
          f"{len(result['v'])} vertices, {len(result['tris'])} triangles, {result['shape'][1].shape[1]} shape / "
          f"{result['color'][1].shape[1]} colour / {result['expression'][1].shape[1]} expression modes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
