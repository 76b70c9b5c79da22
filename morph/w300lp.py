"""300W-LP and AFLW2000-3D annotations (the paper's pairs and priors; section 4, Data) in this
toolkit's conventions: coefficients in a model's standard deviations, poses as (pitch, yaw, roll),
Phong light as spherical harmonics, and a fit rendered into the crop of its photo.

Input layout (300W-LP / AFLW2000-3D): ``NAME.jpg`` (or any image ``morph.base.imageio`` reads, e.g.
``.png``) next to ``NAME.mat``, in any sub-folder. The ``.mat`` holds

    Pose_Para  (1, 7)   [pitch, yaw, roll, tx, ty, tz, s], radians; s maps micrometres to pixels
    Shape_Para (199, 1) raw shape coefficients     Exp_Para (29, 1) raw expression coefficients
    Tex_Para   (199, 1) raw colour coefficients    Color_Para (1, 7)  Illum_Para (1, 10)
    pt2d       (2, 68)  annotated landmarks (AFLW2000-3D: 21 AFLW points; its ``pt3d_68`` (3, 68)
                        is used instead)

Image files whose ``.mat`` is missing, unreadable or incomplete, and images that cannot be
decoded, are skipped with one line each (printed, and kept in the ``skipped`` dataset); ``.mat``
files without an image (e.g. 300W-LP's ``landmarks/`` folder) are ignored.

Coefficient convention ("raw" coefficients, as the dataset's MATLAB example uses them)
- The annotations are raw coefficients of face3d's BFM (``BFM.mat``: BFM 2009 shape and colour,
  3DDFA's FaceWarehouse expression), multiplied straight into the stored bases:
  ``vertices_um = shapeMU + expMU + shapePC Shape_Para + expPC Exp_Para`` and
  ``colour_0..255 = texMU + texPC Tex_Para``. For a model part whose file (``model.sources[part]``)
  holds the raw standard deviations (face3d ``BFM.mat``, 3DDFA ``Model_Expression.mat``, BFM 2009
  ``01_MorphableModel.mat``), ours are ``c = raw / sigma_raw``
  (``morph.formats.face3d.raw_to_normalized``).
- Any other model (e.g. the embedded default model): raw coefficients are defined along the unit
  basis columns in the same units, ``raw_k = c_k std_k 1000`` (micrometres) for shape and
  expression and ``raw_k = c_k std_k 255`` (colour 0..255) for colour, with vertex positions in
  micrometres = millimetres * 1000, so that ``Pose_Para``'s scale means the same thing.
- A vector longer than the model's components is skipped with a clear line; a shorter one is
  zero-padded (3DDFA-style fits use only the leading components, e.g. 40 shape coefficients).

Rendering (the dataset's own MATLAB example, ``morph.render.camera`` / ``shading``)
- geometry: ``P = s R v + t`` with R from ``rotation_300wlp``; the photo's MATLAB pixel is
  ``(P_x, H + 1 - P_y)``, i.e. ``u = P_x - 0.5``, ``v = H + 0.5 - P_y`` in our frame (pixel centres
  at integer + 0.5; ``weak_perspective_300wlp``);
- colour: 300W-LP's Phong + colour transform (``phong_300wlp``) on the unposed normals; the
  albedo is clipped to [0, 1] before lighting (as ``MorphableModel.colors``).
- ``pt2d`` is taken as MATLAB 1-based pixel coordinates, the frame of that example (the centre
  of the top-left pixel is (1, 1)); in our frame ``pt2d - 0.5``.

Crop: the 5 MTCNN points of the *projected model landmarks* (eye centres = means of iBUG 36-41
and 42-47, nose tip 30, mouth corners 48 and 54: ``MorphableModel.five_point_vertices``) define the
least-squares similarity onto ``morph.align.template.five_point_template(size)``. The photo is warped
with it (bilinear, black outside the photo, as ``morph align`` crops real photos), and the
projected vertices are mapped by the same similarity and rasterized straight into the crop: the
same image as rendering in the photo frame and warping, without resampling the render twice, so
the pair is pixel-aligned and the render looks like ``morph render``'s.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
import torch

from morph.base.errors import UserError
from morph.model.morphable import MorphableModel

REQUIRED = ("Pose_Para", "Shape_Para", "Exp_Para", "Tex_Para", "Color_Para", "Illum_Para")
COEFFICIENTS = (("shape", "Shape_Para"), ("expression", "Exp_Para"), ("texture", "Tex_Para"))
#: Order in which images sharing one name are preferred (300W-LP ships .jpg).
_PREFERRED = (".jpg", ".jpeg", ".png")
POSE_KEY = "Pose_Para"


def matrix_to_pose(rot: np.ndarray) -> np.ndarray:
    """(B, 3) [pitch, yaw, roll] degrees with ``rot = Rz(roll) Ry(yaw) Rx(pitch)`` (yaw in [-90, 90])."""
    r = np.asarray(rot, np.float64).reshape(-1, 3, 3)
    yaw = np.arcsin(np.clip(-r[:, 2, 0], -1.0, 1.0))
    pitch = np.arctan2(r[:, 2, 1], r[:, 2, 2])
    roll = np.arctan2(r[:, 1, 0], r[:, 0, 0])
    return np.degrees(np.stack([pitch, yaw, roll], 1))


def _sphere_directions(n: int = 4096) -> np.ndarray:
    """Fibonacci-lattice unit vectors: near-uniform on the sphere, deterministic."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (1 + 5 ** 0.5) * i
    r = np.sqrt(1 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)


def phong_to_sh(illum: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """(9, 3) SH coefficients whose irradiance best matches ``amb + dir * max(0, n.l)`` (least squares
    over the sphere), with the light direction ``l`` of ``Illum_Para`` turned by the head rotation."""
    import torch

    from morph.render.shading import sh_basis

    illum = np.asarray(illum, np.float64).reshape(-1)
    amb, direct, theta, phi = illum[0:3], illum[3:6], illum[6], illum[7]
    light = np.array([math.cos(theta) * math.sin(phi), math.sin(theta), math.cos(theta) * math.cos(phi)])
    light = np.asarray(rot, np.float64).reshape(3, 3) @ light
    n = _sphere_directions()
    y = sh_basis(torch.from_numpy(n)).numpy()  # (P, 9)
    target = amb[None] + np.clip(n @ light, 0, None)[:, None] * direct[None]  # (P, 3)
    coef, *_ = np.linalg.lstsq(y, target, rcond=None)
    return coef


def read_annotation(path: Path) -> dict:
    try:
        return scipy.io.loadmat(path)
    except Exception as e:  # scipy raises several types for truncated or foreign files
        raise UserError(f"{path}: cannot be read as a .mat file ({e}); re-extract it.") from None


# ----------------------------------------------------------------------------- coefficients
@dataclass
class RawConvention:
    """How one model reads raw 300W-LP coefficients: ``c = raw / sigma[part]`` (zero-padded)."""

    sigma: dict
    kind: dict
    sizes: dict

    def normalise(self, part: str, raw: np.ndarray) -> np.ndarray:
        k = self.sizes[part]
        out = np.zeros(k, np.float64)
        out[:len(raw)] = np.asarray(raw, np.float64) / self.sigma[part][:len(raw)]
        return out


def raw_convention(model: MorphableModel) -> RawConvention:
    """The raw-coefficient convention of each part of ``model`` (see the module docstring)."""
    sigma, kind, sizes = {}, {}, {}
    for part, _ in COEFFICIENTS:
        pca = getattr(model, part)
        k = 0 if pca is None else pca.n_components
        sizes[part] = k
        if k == 0:
            sigma[part], kind[part] = np.ones(0), "none"
            continue
        raw = _face3d_sigma(model.sources.get(part) or pca.source, part, k)
        if raw is not None:
            sigma[part], kind[part] = raw, f"face3d raw ({Path(model.sources.get(part) or pca.source).name})"
        else:
            unit = 255.0 if part == "texture" else 1000.0
            sigma[part] = pca.std.astype(np.float64) * unit
            kind[part] = "raw_k = c_k std_k " + ("255" if part == "texture" else "1000")
        if np.any(sigma[part] <= 0):
            raise UserError(f"{model.name}: zero standard deviation in the {part} model; "
                            "raw 300W-LP coefficients cannot be converted.")
    return RawConvention(sigma, kind, sizes)


def _face3d_sigma(source: str, part: str, k: int):
    """The raw standard deviations a face3d / BFM 2009 .mat file holds for ``part``, or None."""
    from morph.formats import face3d

    if not source:
        return None
    p = Path(source)
    if p.suffix.lower() != ".mat" or not p.is_file():
        return None
    try:
        s = face3d.raw_std(p).get(part)
    except (UserError, OSError, ValueError):
        return None
    if s is None or len(s) < k:
        return None
    return np.asarray(s[:k], np.float64)


# ----------------------------------------------------------------------------- inputs
@dataclass
class Item:
    name: str  # relative path without suffix, '/'-separated
    images: list  # image paths with this name, preferred first
    mat: Path | None


def scan(folder: Path) -> tuple[list[Item], int, int]:
    """Items (one per image name, sorted), the number of images and of .mat files without a partner."""
    from morph.base.imageio import IMAGE_SUFFIXES

    images, mats = {}, {}
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        suffix = p.suffix.lower()
        name = rel.with_suffix("").as_posix()
        if suffix == ".mat":
            mats[name] = p
        elif suffix in IMAGE_SUFFIXES:
            images.setdefault(name, []).append(p)
    rank = {s: i for i, s in enumerate(_PREFERRED)}
    items = [Item(n, sorted(ps, key=lambda q: (rank.get(q.suffix.lower(), len(rank)), q.name)), mats.get(n))
             for n, ps in sorted(images.items())]
    orphans = sum(1 for n in mats if n not in images)
    return items, sum(len(v) for v in images.values()), orphans


@dataclass
class Annotation:
    pose: np.ndarray  # (7,)
    coeffs: dict  # part -> our std units, zero-padded
    color: np.ndarray  # (7,)
    illum: np.ndarray  # (10,)
    pt2d: np.ndarray  # (68, 2) our pixel frame, NaN where unknown


def read_pair_annotation(mat: Path, model: MorphableModel, conv: RawConvention) -> Annotation:
    """One .mat, checked; UserError naming the file and the problem."""
    d = read_annotation(mat)
    missing = [k for k in REQUIRED if k not in d]
    if missing:
        raise UserError(f"{mat}: has no {', '.join(missing)}")

    def vec(key, n=None):
        v = np.asarray(d[key], np.float64).reshape(-1)
        if n is not None and v.shape[0] != n:
            raise UserError(f"{mat}: {key} has {v.shape[0]} values, expected {n}")
        if not np.all(np.isfinite(v)):
            raise UserError(f"{mat}: {key} holds NaN or infinite values")
        return v

    pose = vec("Pose_Para", 7)
    if pose[6] <= 0:
        raise UserError(f"{mat}: Pose_Para's scale (7th value) is {pose[6]:g}, expected > 0")
    coeffs = {}
    for part, key in COEFFICIENTS:
        raw = vec(key)
        k = conv.sizes[part]
        if raw.shape[0] > k:
            raise UserError(f"{mat}: {key} has {raw.shape[0]} coefficients but the model {model.name} has "
                            f"{k} {part} components; render with the model the annotations were fitted with "
                            "(300W-LP / AFLW2000-3D: face3d's BFM.mat)")
        coeffs[part] = conv.normalise(part, raw)
    return Annotation(pose, coeffs, vec("Color_Para", 7), vec("Illum_Para", 10), _landmarks_2d(d))


def _landmarks_2d(d: dict) -> np.ndarray:
    """(68, 2) annotated landmarks in our pixel frame: ``pt2d`` (2, 68), else AFLW2000-3D's
    ``pt3d_68`` (3, 68); MATLAB 1-based coordinates, so minus 0.5. NaN when neither is there."""
    for key, rows in (("pt2d", 2), ("pt3d_68", 3)):
        if key in d:
            a = np.asarray(d[key], np.float64)
            if a.shape == (rows, 68):
                return a[:2].T - 0.5
            if a.shape == (68, rows):
                return a[:, :2] - 0.5
    return np.full((68, 2), np.nan)


# ----------------------------------------------------------------------------- one pair
class PairRenderer:
    """A model's arrays laid out for rendering many annotations, one at a time."""

    def __init__(self, model: MorphableModel, size: int, template: str | None = None):
        from morph.align.template import five_point_template

        self.model = model
        self.size = size
        self.groups = model.five_point_vertices()  # UserError when the model has no landmarks
        self.triangles32 = np.ascontiguousarray(model.triangles, np.int32)
        self.lm = model.landmarks
        self.template = five_point_template(size, template)

    def geometry(self, ann: Annotation, image_hw: tuple[int, int]) -> dict:
        """Vertices projected into the photo and into the crop, shaded colours, landmarks."""
        from morph.render import camera as cam
        from morph.render.cpu import vertex_normals
        from morph.render.shading import phong_300wlp
        from morph.align.template import similarity_from_points

        # S(alpha, beta) and T(gamma) of the reference (a shape-only model: its landmark-painted
        # albedo, morph.model.albedo, as 'morph render')
        verts = self.model.vertices(ann.coeffs["shape"][None], ann.coeffs["expression"][None])[0]  # mm
        albedo = self.model.colors(ann.coeffs["texture"][None])[0]
        normals = np.empty_like(verts)
        vertex_normals(verts, self.triangles32, normals)  # numba, as the renderer's CPU engine
        colors = phong_300wlp(torch.from_numpy(albedo)[None], torch.from_numpy(normals)[None],
                              torch.from_numpy(ann.illum.astype(np.float32))[None],
                              torch.from_numpy(ann.color.astype(np.float32))[None])[0]
        pose = torch.from_numpy(ann.pose)[None]
        rot = torch.from_numpy(cam.rotation_300wlp(ann.pose[None]).astype(np.float64))
        # Pose_Para's scale maps micrometres to pixels; our vertices are millimetres
        pix, depth = cam.weak_perspective_300wlp(torch.from_numpy(verts)[None].double(), pose[:, 6] * 1000.0, rot,
                                                 pose[:, 3:5], image_hw[0])
        pix = pix[0].numpy()
        five = np.stack([pix[g].mean(0) for g in self.groups])
        transform = similarity_from_points(five, self.template)  # (2, 3) photo -> crop
        lm = np.full((68, 2), np.nan)
        if self.lm is not None:
            known = self.lm >= 0
            lm[known] = pix[self.lm[known]]
        return {"pix": map_points(pix, transform).astype(np.float32), "depth": depth[0].float().numpy(),
                "colors": colors.numpy(), "transform": transform, "landmarks_photo": lm}

    def render(self, geoms: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        """(B, S, S, 3) uint8 renders and (B, S, S) bool masks in the crop frame."""
        from morph.render import RenderSettings, render_projected
        from morph.render.output import to_uint8

        settings = RenderSettings(image_size=self.size, align=False, outputs=("image", "mask"))
        out = render_projected(np.stack([g["pix"] for g in geoms]), np.stack([g["depth"] for g in geoms]),
                               np.stack([g["colors"] for g in geoms]), self.triangles32, settings)
        return to_uint8(out.image.cpu().numpy()), out.mask.cpu().numpy()[:, 0].astype(bool)


def map_points(points: np.ndarray, transform: np.ndarray) -> np.ndarray:
    return points @ transform[:, :2].T + transform[:, 2]

