"""A folder of photos -> an image set of 108x108 faces aligned like the renders (``morph align``,
``morph fit``).

Every photo goes through the same crop rule as the renders (``morph.align.template``): MTCNN finds
the face (paper section 4, Data: "All images are aligned by MTCNN and centre cropped to the size
of 108x108"), and its 5 points are mapped onto the 5-point template by a similarity transform.
By default (``landmarks="ibug68"``) the 5 points are first refined to the 68 iBUG points and
taken by the renders' own definition (eye centres, nose tip, mouth corners of the 68;
``morph.align.landmarks68``), so photos and renders are framed by the same points; ``"mtcnn"`` keeps
MTCNN's points, as the paper's code did.

- Labels: each photo's folder relative to PHOTOS is its identity (CASIA-WebFace's layout,
  ``PHOTOS/0000045/001.jpg``); ``label_names`` lists them, labels index into it in sorted order.
- One face per photo by default: the largest, most confident face near the centre
  (``morph.align.faces.pick_face``; identity-labelled collections frame their subject large and
  central, group photos do not). ``all_faces`` keeps every face.
- Unreadable files and photos without a face are skipped and listed (``skipped`` dataset and a
  ``.report.tsv`` beside the output): nothing else of the run is lost.
- Resumable: ``NAME.partial`` carries ``cursor = [photos done, faces written]``, updated after
  the batch's data are flushed; a re-run continues from there.

real.h5 layout (besides ``morph.base.h5io``'s ``images``/``labels``/``index``)::

    source      (M,) str      photo path relative to PHOTOS
    boxes       (M, 4) float32  MTCNN box in the photo (MTCNN's 1-based pixel coordinates)
    scores      (M,) float32
    landmarks5  (M, 5, 2) float32 the 5 points the crop was made from, in the photo
    landmarks5_mtcnn (M, 5, 2) float32 MTCNN's own 5 points
    landmarks68 (M, 68, 2) float32 iBUG points (only with landmarks="ibug68")
    (all in MTCNN's 1-based pixel coordinates; attribute ``landmarks`` says which rule was used)
    label_names (L,) str;  skipped (S,) str "path<TAB>reason"
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from morph.base.errors import UserError
from morph.base.files import file_sha256, job_key, output_lock, write_atomic
from morph.base.h5io import ImageWriter, completed_output, open_h5, provenance
from morph.base.imageio import IMAGE_SUFFIXES, read_rgb
from morph.align.template import crop_template

STR = h5py.string_dtype("utf-8")


def list_photos(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder; give a folder of photos (sub-folders = identities).")
    photos = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not photos:
        raise UserError(f"{folder}: holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                        "check the folder.")
    return photos


def align_photos(photos_dir: Path, output: Path, all_faces: bool = False, size: int | None = None,
                 device: str = "cpu", batch_size: int = 16, min_face_size: float = 20.0,
                 thresholds=(0.6, 0.7, 0.7), landmarks: str = "ibug68", progress: bool = True,
                 report=print, template: str | None = None, what: str = "image set", desc: str = "align",
                 extra: dict | None = None, per_batch=None, key_extra=(), attrs: dict | None = None) -> dict:
    """Align every face of ``photos_dir`` into ``output`` (module docstring). ``extra``: more
    per-face datasets ``{name: (shape, dtype)}``, filled by ``per_batch(faces, first_row, crops)`` with
    ``faces`` the batch's kept faces as (photo, ``Located``, j: which of its kept faces),
    ``first_row`` the row of the first and ``crops`` their aligned crops (N x size x size x 3, uint8); ``key_extra`` and ``attrs`` join the job key and the root
    attributes."""
    from morph.align.faces import LANDMARK_RULES, FaceLocator, align_face
    from morph.base.numerics import check_device

    if landmarks not in LANDMARK_RULES:
        raise UserError(f"landmarks '{landmarks}' is unknown; choose one of {', '.join(LANDMARK_RULES)}.")
    check_device(device)
    tpl = crop_template(template)
    size = size or tpl.size
    photos_dir, output = Path(photos_dir), Path(output)
    photos = list_photos(photos_dir)
    rel = [p.relative_to(photos_dir).as_posix() for p in photos]
    # HDF5 keeps text as UTF-8: a name that is not (common in archives made on other systems) is
    # skipped with its reason rather than crashing the write of every name
    not_utf8 = {i for i, r in enumerate(rel) if not _is_utf8(r)}
    classes = sorted({str(Path(r).parent) for i, r in enumerate(rel) if i not in not_utf8})
    label_of = {c: i for i, c in enumerate(classes)}
    # keyed by the photos' contents, not only their names: a photo replaced under the same name
    # makes another job, never a mix of old and new faces
    key = job_key([(r, file_sha256(p)) for r, p in zip(rel, photos)], all_faces, size, min_face_size,
                  thresholds, landmarks, tpl.name, *key_extra)
    with output_lock(output, what):
        if completed_output(output, key, what):
            report(f"{output}: already complete.")
            with open_h5(output, what) as f:
                return {"n_faces": int(f["images"].shape[0]), "skipped": list(f["skipped"].asstr()[()])}

        more = extra or {}
        extra = {"source": ((), STR), "boxes": ((4,), np.float32), "scores": ((), np.float32),
                 "landmarks5": ((5, 2), np.float32), "landmarks5_mtcnn": ((5, 2), np.float32)}
        if landmarks == "ibug68":
            extra["landmarks68"] = ((68, 2), np.float32)
        extra.update(more)
        writer = ImageWriter(output, len(photos), size, provenance(photos=str(photos_dir), size=size,
                                                                   all_faces=all_faces, n_photos=len(photos),
                                                                   landmarks=landmarks, crop_template=tpl.name,
                                                                   **(attrs or {})),
                             key, extra, resizable=True)
        f = writer.f
        if "cursor" not in f.attrs:
            f.attrs["cursor"] = np.array([0, 0], np.int64)
            f.create_dataset("label_names", data=np.array(classes, dtype=object), dtype=STR)
            f.create_dataset("skipped", (0,), STR, maxshape=(None,), chunks=True)
        photos_done, rows = (int(x) for x in f.attrs["cursor"])
        locator = FaceLocator(landmarks, device, min_face_size=min_face_size, thresholds=thresholds)
        bar = tqdm(total=len(photos), initial=photos_done, unit="photo", desc=desc, disable=not progress)
        try:
            for start in range(photos_done, len(photos), batch_size):
                stop = min(start + batch_size, len(photos))
                images, ok, skipped = [], [], []
                for i in range(start, stop):
                    if i in not_utf8:
                        skipped.append(f"{_printable(rel[i])}\tits name is not valid UTF-8; rename the file "
                                       "(and its folders) to align it")
                        continue
                    try:
                        images.append(read_rgb(photos[i]))
                        ok.append(i)
                    except UserError as e:  # its message starts with the path, already in the first column
                        skipped.append(f"{rel[i]}\t{str(e).removeprefix(str(photos[i]) + ': ')}")
                kept = []
                out = {k: [] for k in ("images", "labels", "index", "source", "boxes", "scores", "landmarks5",
                                       "landmarks5_mtcnn", *(("landmarks68",) if landmarks == "ibug68" else ()))}
                for i, img, found in zip(ok, images, locator.locate(images, all_faces)):
                    if found is None:
                        skipped.append(f"{rel[i]}\tno face found")
                        continue
                    det, keep, five = found.detections, found.keep, found.five
                    if found.points68 is not None:
                        out["landmarks68"].extend(found.points68)
                    faces = align_face(img, five, size, template=tpl.name)
                    kept.extend((img, found, j) for j in range(len(keep)))
                    for j, k in enumerate(keep):
                        out["images"].append(faces[j])
                        out["labels"].append(label_of[str(Path(rel[i]).parent)])
                        out["index"].append(i)
                        out["source"].append(rel[i])
                        out["boxes"].append(det.boxes[k])
                        out["scores"].append(det.scores[k])
                        out["landmarks5"].append(five[j])
                        out["landmarks5_mtcnn"].append(det.landmarks[k])
                if per_batch is not None and kept:
                    out.update(per_batch(kept, rows, np.stack(out["images"])))
                n_new = len(out["images"])
                if rows + n_new > f["images"].shape[0]:  # --all-faces: more faces than photos
                    for name in writer.row_datasets:
                        f[name].resize(max(rows + n_new, 2 * f[name].shape[0]), axis=0)
                if n_new:
                    for name, values in out.items():
                        arr = np.array(values, dtype=object) if name == "source" else np.stack(values)
                        f[name][rows:rows + n_new] = arr
                if skipped:
                    s = f["skipped"]
                    s.resize(s.shape[0] + len(skipped), axis=0)
                    s[-len(skipped):] = np.array(skipped, dtype=object)
                    for line in skipped:
                        report(f"skipped {line.replace(chr(9), ': ', 1)}")
                f.flush()  # data first, then the cursor: a kill never counts unwritten faces
                rows += n_new
                f.attrs["cursor"] = np.array([stop, rows], np.int64)
                f.flush()
                bar.update(stop - start)
            bar.close()
            skipped_all = list(f["skipped"].asstr()[()])
            report_path = output.with_name(output.name + ".report.tsv")
            write_atomic(report_path, ("path\treason\n" + "".join(line + "\n" for line in skipped_all)).encode())
            if rows == 0:  # an empty set is no set: nothing to train or judge on
                raise UserError(f"{photos_dir}: no face found in any of its {len(photos)} photos (reasons in "
                                f"{report_path}); {output} was not written.")
            del f.attrs["cursor"]
            writer.finish(rows)
        finally:
            bar.close()  # also on failure: an open bar garbles every later message
            writer.close()
        return {"n_faces": rows, "n_photos": len(photos), "skipped": skipped_all, "report": str(report_path)}


def _is_utf8(name: str) -> bool:
    """Whether a path read from the file system (undecodable bytes as surrogates) is valid UTF-8."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _printable(name: str) -> str:
    """The name with its undecodable bytes written as \\xNN, for reports."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
