"""Aligned faces as an image-folder tree (``morph align --format folder``): the layout that
torchvision's ``datasets.ImageFolder``, insightface's and most recognition code read, one
sub-folder per identity::

    DIR/<the photo's folder relative to PHOTOS>/<the photo's name>.png

(with ``--all-faces``, ``<name>_<k>.png`` for the k-th face of a photo). PNG keeps the crops
bit-exact. LFW's layout (``NAME/NAME_0001.jpg``) comes out as ``NAME/NAME_0001.png``, which
``refine verify --lfw-pairs`` reads as aligned crops.

The faces come from the ``morph align`` image set written beside the folder (``DIR.h5``: the
points, boxes and the skipped photos); the folder is written as ``DIR.partial`` and renamed when
every crop is in it, so a folder named ``DIR`` is always complete.
"""
from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath

import h5py
import numpy as np
from PIL import Image

from morph.base.errors import UserError
from morph.base.files import disk_errors, partial_path


def crop_names(sources: list[str], index: np.ndarray, all_faces: bool) -> list[str]:
    """Each face's relative path in the tree: its photo's, with ``.png`` (``_<k>`` before it for
    the k-th face of a photo with ``all_faces``)."""
    names, seen = [], {}
    for src, i in zip(sources, index):
        k = seen.get(int(i), 0)
        seen[int(i)] = k + 1
        p = PurePosixPath(src)
        names.append(str(p.with_name(f"{p.stem}_{k}.png" if all_faces else f"{p.stem}.png")))
    if len(set(names)) != len(names):  # photo.jpg and photo.png in one folder
        dup = next(n for n in names if names.count(n) > 1)
        raise UserError(f"two photos would both be written as {dup} (same name, other extensions); rename one "
                        "of them, or keep the faces in HDF5 (--format hdf5).")
    return names


def write_image_folder(image_set: Path, folder: Path) -> int:
    """Write the faces of ``image_set`` (a complete ``morph align`` output) under ``folder``; the
    number written."""
    folder = Path(folder)
    with h5py.File(image_set, "r") as f:
        sources = list(f["source"].asstr()[()])
        names = crop_names(sources, f["index"][()], bool(f.attrs.get("all_faces", False)))
        tmp = partial_path(folder)
        with disk_errors(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
            for start in range(0, len(names), 256):
                images = f["images"][start:start + 256]
                for name, image in zip(names[start:start + 256], images):
                    path = tmp / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(image).save(path, format="PNG")
            if folder.exists():
                shutil.rmtree(folder)
            tmp.rename(folder)
    return len(names)
