"""`morph render-pairs`: real photos paired with renders of their fitted 3DMM parameters.

The paper trains G' as a pair-matching discriminator on a small set of real photos paired with
renders of their 3DMM fits (section 3.2, Eq. 6; section 4, Data: 300W-3D / 300W-LP and
AFLW2000-3D, about 5K images). This module turns such a folder into ``pairs.h5``.

Input: a 300W-LP / AFLW2000-3D folder (``morph.w300lp`` reads and converts its annotations and
renders each fit into its photo's crop).

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
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from morph.base.errors import UserError
from morph.base.files import job_key, output_lock
from morph.model.morphable import MorphableModel
from morph.align.template import crop_template, warp_similarity

#: Fraction of the inter-ocular distance above which a fit is flagged (without --max-landmark-error).
DEFAULT_IOD_FRACTION = 0.10
from morph.w300lp import Item, PairRenderer, map_points, raw_convention, read_pair_annotation, scan


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


def render_fit_pairs(fits: Path, output: Path, model_spec: str | None = None, batch_size: int = 32,
                     progress: bool = True) -> dict:
    """pairs.h5 from a ``morph fit`` file: each aligned photo beside the render of its fit in the
    same crop (``morph.fitting.pairs``), with the model the fits were made with unless given."""
    from morph.base.h5io import ImageWriter, completed_output, open_h5, provenance, require
    from morph.fitting.pairs import FitRenderer
    from morph.formats.named import load_model

    keys = ("images", "landmarks5", "source", "identity/alpha", "identity/gamma", "image/beta", "image/pose",
            "image/sh", "fit_scale", "fit_translation")
    with open_h5(fits, "fits file") as f:
        require(f, keys, "fits file", "make one with 'morph fit PHOTOS -o fits.h5'.")
        n, size = f["images"].shape[0], f["images"].shape[1]
        spec = model_spec or str(f.attrs.get("model", "default"))
        template = str(f.attrs.get("crop_template", "ganfaces108"))
        sha = job_key(*(f[k][()] for k in keys if k != "source"))
        dims = (f["identity/alpha"].shape[1], f["image/beta"].shape[1])
    model = load_model(spec)
    if (model.n_shape, model.n_expression) != dims:
        raise UserError(f"{fits}: was fitted with another model than {spec} (its coefficients do not match); "
                        "give the model it was fitted with (--model).")
    renderer = FitRenderer(model, size, template)
    key = job_key(sha, spec, model.name, size, template)
    output = Path(output)
    with output_lock(output, "pairs file"):
        if completed_output(output, key, "pairs file"):
            return {"n_pairs": n, "complete": True}
        extra = {"real": ((size, size, 3), np.uint8), "render": ((size, size, 3), np.uint8),
                 "mask": ((size, size), bool), "landmarks": ((68, 2), np.float32),
                 "names": ((), h5py.string_dtype()), "transform": ((2, 3), np.float64)}
        attrs = provenance(model=str(spec), model_name=model.name, model_sources=model.sources, fits=str(fits),
                           size=size, crop_template=template)
        writer = ImageWriter(output, n, size, attrs, key, extra, images=False)
        bar = tqdm(total=n, initial=writer.n_done, unit="img", desc="render-pairs", disable=not progress)
        try:
            with open_h5(fits, "fits file") as f:
                for start in range(writer.n_done, n, batch_size):
                    sl = slice(start, min(start + batch_size, n))
                    rows = {k: f[k][sl] for k in keys if k != "source"}
                    out = renderer.render(rows)
                    writer.write(start, {"real": rows["images"], "render": out["render"], "mask": out["mask"],
                                         "landmarks": out["landmarks"], "transform": out["transform"],
                                         "names": np.array(f["source"].asstr()[sl], dtype=object)})
                    bar.update(sl.stop - sl.start)
            bar.close()
            writer.finish()
        finally:
            bar.close()
            writer.close()
    return {"n_pairs": n, "complete": False}

