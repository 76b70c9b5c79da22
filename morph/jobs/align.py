"""`morph align`: a folder of photos -> real.h5 of 108x108 faces aligned like the renders
(``morph.align.photo_set``: the layout, the crop rule, resuming), or the same faces as an
image-folder tree (``morph.align.image_folder``) beside that file."""
from __future__ import annotations

from pathlib import Path

from morph.base.errors import UserError
from morph.align.photo_set import align_photos

#: what ``morph align`` writes: an HDF5 image set, or a folder of PNG crops (with DIR.h5 beside it)
FORMATS = ("hdf5", "folder")


def align_folder(photos_dir: Path, output: Path, all_faces: bool = False, size: int | None = None,
                 device: str = "cpu", batch_size: int = 16, min_face_size: float = 20.0,
                 thresholds=(0.6, 0.7, 0.7), landmarks: str = "ibug68", progress: bool = True,
                 report=print, template: str | None = None, format: str = "hdf5") -> dict:
    output = Path(output)
    if format not in FORMATS:
        raise UserError(f"format '{format}' is unknown; choose one of {', '.join(FORMATS)}.")
    if format == "hdf5" and output.is_dir():
        raise UserError(f"{output} is a folder; give a file name for the HDF5 set (or --format folder).")
    if format == "folder" and output.suffix.lower() in (".h5", ".hdf5"):
        raise UserError(f"{output}: --format folder writes a folder; give a name without .h5 (its set is written "
                        "beside it as NAME.h5).")
    image_set = output if format == "hdf5" else output.with_name(output.name + ".h5")
    r = align_photos(photos_dir, image_set, all_faces, size, device, batch_size, min_face_size, thresholds,
                     landmarks, progress, report, template)
    if format == "folder":
        from morph.align.image_folder import write_image_folder

        r["n_files"] = write_image_folder(image_set, output)
        r["folder"] = str(output)
    return r
