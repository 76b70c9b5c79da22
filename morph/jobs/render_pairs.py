"""`morph render-pairs`: real photos paired with renders of their fitted 3DMM parameters.

The paper trains G' as a pair-matching discriminator on a small set of real photos paired with
renders of their 3DMM fits (section 3.2, Eq. 6; section 4, Data: 300W-3D / 300W-LP and
AFLW2000-3D, about 5K images). This module turns such a folder into ``pairs.h5``.

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

Landmark check: ``landmark_error`` is the mean distance, in photo pixels, between the projected
model landmarks and the annotation (NaN without a 68-point annotation). An image is ``flagged``
when it exceeds ``--max-landmark-error`` pixels or, by default, 10% of the annotation's
inter-ocular distance (outer eye corners 36 and 45: the usual 300W failure threshold). Flagged
pairs are kept; filter them when training. Contour points of 3DMM fits follow the jaw less well
than inner points, so a few percent of error is normal on real data.

pairs.h5 (one chunk per image, gzip; root attributes from ``morph.base.h5io.provenance``)::

    real       (M, S, S, 3) uint8   the photo, cropped
    render     (M, S, S, 3) uint8   its 3DMM render, same crop (black where no face)
    mask       (M, S, S) bool       render coverage
    landmarks  (M, 68, 2) float32   projected model landmarks, crop pixels (centres at + 0.5)
    pt2d       (M, 68, 2) float32   the annotation's landmarks, crop pixels
    landmark_error (M,) float32     photo pixels;  landmark_threshold (M,) float32 photo pixels
    flagged    (M,) bool;  names (M,) str (path under ANNOTATED, no suffix)
    transform  (M, 2, 3) float64    photo pixels -> crop pixels (both centres at + 0.5)
    skipped    (K,) str             one line per skipped file

Resumable: written as ``NAME.partial`` (``morph.base.h5io.ImageWriter``); a re-run continues after the
last written pair. Every pair is computed on its own, so results do not depend on the batch size.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm import tqdm

from morph.base.errors import UserError
from morph.base.files import job_key, output_lock
from morph.model.morphable import MorphableModel
from morph.align.template import crop_template, warp_similarity

REQUIRED = ("Pose_Para", "Shape_Para", "Exp_Para", "Tex_Para", "Color_Para", "Illum_Para")
COEFFICIENTS = (("shape", "Shape_Para"), ("expression", "Exp_Para"), ("texture", "Tex_Para"))
#: Fraction of the inter-ocular distance above which a fit is flagged (without --max-landmark-error).
DEFAULT_IOD_FRACTION = 0.10
#: Order in which images sharing one name are preferred (300W-LP ships .jpg).
_PREFERRED = (".jpg", ".jpeg", ".png")
#: Albedo of models without a colour model (as the renderer).


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
    from morph.jobs.fit_priors import read_annotation

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


def landmark_check(projected: np.ndarray, annotated: np.ndarray, max_px: float | None):
    """Mean distance (photo pixels) over the points known in both, the threshold, and the flag."""
    ok = np.all(np.isfinite(projected), 1) & np.all(np.isfinite(annotated), 1)
    err = float(np.linalg.norm(projected[ok] - annotated[ok], axis=1).mean()) if ok.any() else math.nan
    if max_px is not None:
        thr = float(max_px)
    else:
        thr = DEFAULT_IOD_FRACTION * float(np.linalg.norm(annotated[36] - annotated[45]))
    flagged = bool(np.isfinite(err) and np.isfinite(thr) and err > thr)
    return err, thr, flagged


# ----------------------------------------------------------------------------- the job
def _job_key(folder: Path, items: list[Item], model_spec: str, model: MorphableModel, size: int,
             max_px: float | None, template: str) -> str:
    files = []
    for it in items:
        for p in [*it.images, *([it.mat] if it.mat else [])]:
            st = p.stat()
            files.append((p.relative_to(folder).as_posix(), st.st_size, st.st_mtime_ns))
    sources = []
    for src in sorted(set(model.sources.values())):
        st = Path(src).stat() if Path(src).is_file() else None
        sources.append((src, st.st_size if st else None, st.st_mtime_ns if st else None))
    return job_key(files, sources, model_spec, model.name, model.n_shape, model.n_expression, model.n_texture, size,
                   max_px, template)


def _default_report(line: str) -> None:
    tqdm.write(line, file=sys.stderr)


def render_pairs(annotated: Path, output: Path, model_spec: str, size: int | None = None,
                 max_landmark_error: float | None = None, batch_size: int = 32, progress: bool = True,
                 report=None, template: str | None = None) -> dict:
    """Write ``output`` (pairs.h5) from a 300W-LP / AFLW2000-3D folder; return a summary dict."""
    from morph.base.h5io import ImageWriter, completed_output, open_h5, provenance
    from morph.base.imageio import read_rgb
    from morph.formats.named import load_model

    report = report or _default_report
    folder = Path(annotated)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder; give a folder of 300W-LP / AFLW2000-3D images and .mat files.")
    items, n_images, n_orphans = scan(folder)
    if not any(it.mat is not None for it in items):
        if not items and not n_orphans:
            raise UserError(f"{folder}: holds no images or .mat files; give a folder in 300W-LP / AFLW2000-3D "
                            "layout (NAME.jpg next to NAME.mat).")
        raise UserError(f"{folder}: holds no image + .mat pairs ({n_images} images without a .mat, {n_orphans} "
                        ".mat files without an image); give a folder in 300W-LP / AFLW2000-3D layout "
                        "(NAME.jpg next to NAME.mat).")
    tpl = crop_template(template)
    size = size or tpl.size
    model = load_model(model_spec)
    renderer = PairRenderer(model, size, tpl.name)
    conv = raw_convention(model)
    key = _job_key(folder, items, str(model_spec), model, size, max_landmark_error, tpl.name)
    output = Path(output)
    with output_lock(output, "pairs file"):
        if completed_output(output, key, "pairs file"):
            if progress:
                print(f"{output}: already complete.")
            with open_h5(output, "pairs file") as f:
                return {"n_pairs": int(f.attrs.get("n_pairs", 0)), "n_skipped": int(f.attrs.get("n_skipped", 0)),
                        "n_flagged": int(f.attrs.get("n_flagged", 0)), "complete": True}

        s = size
        extra = {"real": ((s, s, 3), np.uint8), "render": ((s, s, 3), np.uint8), "mask": ((s, s), bool),
                 "landmarks": ((68, 2), np.float32), "pt2d": ((68, 2), np.float32),
                 "landmark_error": ((), np.float32), "landmark_threshold": ((), np.float32),
                 "flagged": ((), bool), "names": ((), h5py.string_dtype()), "transform": ((2, 3), np.float64)}
        rule = (f"landmark_error > {max_landmark_error:g} px" if max_landmark_error is not None else
                f"landmark_error > {DEFAULT_IOD_FRACTION:g} x inter-ocular distance of the annotation (points 36, 45)")
        attrs = provenance(model=str(model_spec), model_name=model.name, model_sources=model.sources,
                           annotated=str(folder), size=size, flag_rule=rule, crop_template=tpl.name,
                           coefficient_convention={k: v for k, v in conv.kind.items()}, n_candidates=len(items))
        writer = ImageWriter(output, len(items), size, attrs, key, extra, images=False, resizable=True)
        bar = tqdm(total=len(items), unit="img", desc="render-pairs", disable=not progress)
        try:
            f = writer.f
            if "skipped" not in f:
                f.create_dataset("skipped", (0,), h5py.string_dtype(), maxshape=(None,), chunks=True)
            skipped_seen = set(_strings(f["skipped"][()]))
            index = {it.name: i for i, it in enumerate(items)}
            start = index[_strings(f["names"][writer.n_done - 1:writer.n_done])[0]] + 1 if writer.n_done else 0

            def skip(line: str):
                if line in skipped_seen:
                    return
                skipped_seen.add(line)
                report(line)
                ds = f["skipped"]
                ds.resize(ds.shape[0] + 1, axis=0)
                ds[-1] = line

            bar.update(start)
            for b0 in range(start, len(items), batch_size):
                batch = items[b0:b0 + batch_size]
                rows = []
                for it in batch:
                    for extra_image in it.images[1:]:
                        skip(f"{extra_image}: another image ({it.images[0].name}) has the same name; skipped.")
                    if it.mat is None:
                        skip(f"{it.images[0]}: has no annotation {Path(it.name).name}.mat next to it; skipped.")
                        continue
                    try:
                        ann = read_pair_annotation(it.mat, model, conv)
                        image = read_rgb(it.images[0])
                    except UserError as e:
                        skip(f"{str(e).rstrip('.')}; skipped.")
                        continue
                    g = renderer.geometry(ann, image.shape[:2])
                    err, thr, flag = landmark_check(g["landmarks_photo"], ann.pt2d, max_landmark_error)
                    rows.append((it, image, ann, g, err, thr, flag))
                if rows:
                    renders, masks = renderer.render([r[3] for r in rows])
                    writer.write(writer.n_done, {
                        "real": np.stack([warp_similarity(r[1], r[3]["transform"], size)[0] for r in rows]),
                        "render": renders, "mask": masks,
                        "landmarks": np.stack([map_points(r[3]["landmarks_photo"], r[3]["transform"]) for r in rows]
                                              ).astype(np.float32),
                        "pt2d": np.stack([map_points(r[2].pt2d, r[3]["transform"]) for r in rows]).astype(np.float32),
                        "landmark_error": np.array([r[4] for r in rows], np.float32),
                        "landmark_threshold": np.array([r[5] for r in rows], np.float32),
                        "flagged": np.array([r[6] for r in rows], bool),
                        "names": np.array([r[0].name for r in rows], dtype=object),
                        "transform": np.stack([r[3]["transform"] for r in rows])})
                else:
                    f.flush()
                bar.update(len(batch))
            bar.close()
            n_rows = writer.n_done
            n_skipped = int(f["skipped"].shape[0])
            if n_rows == 0:
                writer.close()
                writer.tmp.unlink()
                raise UserError(f"{folder}: none of the {len(items)} images gave a pair ({n_skipped} skipped, see above); "
                                "fix the files named above or give another folder.")
            n_flagged = int(np.count_nonzero(f["flagged"][:n_rows]))
            f.attrs["n_pairs"] = n_rows
            f.attrs["n_skipped"] = n_skipped
            f.attrs["n_flagged"] = n_flagged
            f.attrs["n_mat_without_image"] = n_orphans
            writer.finish(n_rows)
        finally:
            bar.close()  # also on failure: an open bar garbles every later message
            writer.close()
        return {"n_pairs": n_rows, "n_skipped": n_skipped, "n_flagged": n_flagged, "n_mat_without_image": n_orphans,
                "complete": False}


def _strings(a) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else str(x) for x in np.asarray(a).reshape(-1)]
