"""Export formats, one ``Sink`` each (as 3DDFA_V2's ``utils/serialization.py`` keeps one function
per output format): where an identity's images go, how a row is named in scores.csv, what the
format adds to the export's settings and manifest, and what ``finish`` assembles.

An identity is written whole into ``.export/tmp/`` and renamed into place (``write``); the
exporter records it only after that, so a kill leaves either a whole identity or none. A new
format is one ``Sink`` subclass here and one line in ``SINKS`` (the CLI's ``--format`` choices).
"""
from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np

from morph.base.files import disk_errors

H5_NAME = "ganfaces.h5"
JPEG_SUBSAMPLING = 0  # 4:4:4 - no chroma subsampling at 108 px
PNG_COMPRESS_LEVEL = 6
PARAMS = ("alpha", "gamma", "beta", "pose", "sh", "camera_distance")


def encode_image(img: np.ndarray, png: bool, quality: int) -> bytes:
    """(H, W, 3) uint8 -> JPEG or PNG bytes; PIL with fixed settings is deterministic."""
    from PIL import Image

    buf = io.BytesIO()
    im = Image.fromarray(np.ascontiguousarray(img), "RGB")
    if png:
        im.save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        im.save(buf, "JPEG", quality=quality, subsampling=JPEG_SUBSAMPLING, optimize=False)
    return buf.getvalue()


class Sink:
    """One export format. ``o``: the ``ExportOptions``; ``names``: identity and image names."""

    name = ""

    def __init__(self, o, out: Path, state_dir: Path, id_name, img_width: int):
        self.o, self.out, self.state_dir, self.id_name, self.img_width = o, out, state_dir, id_name, img_width

    def settings(self) -> dict:
        """The format's entries of the settings that decide the exported bytes."""
        return {"file_type": None, "jpeg_quality": None}

    def manifest(self) -> dict:
        """The manifest's ``layout`` and ``image`` entries."""
        raise NotImplementedError

    def artefact(self, i: int) -> Path:
        """What a written identity leaves (its existence says it is written)."""
        raise NotImplementedError

    def rel_path(self, i: int, slot: int) -> str:
        """scores.csv's ``path`` of image ``slot`` of identity ``i``."""
        raise NotImplementedError

    def write(self, i: int, final: list[dict], tmp: Path) -> None:
        """Write identity ``i``'s images (``final``: one dict per slot) through the empty folder
        ``tmp``, and move them into place."""
        raise NotImplementedError

    def finish(self, ids, attrs: dict, key: str) -> None:
        """After every identity is written (rank 0): assemble what the format needs of ``ids``
        (every identity, or those the leakage audit left in)."""

    def set_aside(self, ids: list[int], aside: Path) -> None:
        """Move identities ``ids`` out of the dataset into the work folder ``aside`` (removed with it
        when the export is complete); a no-op for a format that assembles only what ``finish`` gets."""


class ImageFolderSink(Sink):
    """``DIR/IDENTITY/IMAGE.jpg`` (or .png): ``torchvision.datasets.ImageFolder(DIR)`` reads it."""

    name = "imagefolder"

    def settings(self) -> dict:
        o = self.o
        return {"file_type": o.ext, "jpeg_quality": None if o.png else o.quality}

    def manifest(self) -> dict:
        o = self.o
        return {"layout": {"imagefolder": f"DIR/{{identity:0{len(self.id_name(0))}d}}/{{image:0{self.img_width}d}}."
                                          f"{o.ext}; torchvision.datasets.ImageFolder(DIR) reads it (class = "
                                          "identity)"},
                "image": {"type": o.ext, "jpeg_quality": None if o.png else o.quality,
                          "jpeg_subsampling": None if o.png else "4:4:4", "encoder": "Pillow"}}

    def artefact(self, i: int) -> Path:
        return self.out / self.id_name(i)

    def rel_path(self, i: int, slot: int) -> str:
        return f"{self.id_name(i)}/{slot:0{self.img_width}d}.{self.o.ext}"

    def write(self, i: int, final: list[dict], tmp: Path) -> None:
        for c in final:
            (tmp / f"{c['slot']:0{self.img_width}d}.{self.o.ext}").write_bytes(
                encode_image(c["image"], self.o.png, self.o.quality))
        target = self.artefact(i)
        if target.exists():  # written by a run killed before it recorded the identity
            shutil.rmtree(target)
        os.replace(tmp, target)

    def set_aside(self, ids: list[int], aside: Path) -> None:
        aside.mkdir(parents=True, exist_ok=True)
        for i in ids:
            if self.artefact(i).exists():
                os.replace(self.artefact(i), aside / self.id_name(i))


class HDF5Sink(Sink):
    """``DIR/ganfaces.h5``: images and every parameter and score of each image, one row per image
    in identity, slot order; each identity waits in ``.export/items/ID.npz`` until ``finish``."""

    name = "hdf5"

    def manifest(self) -> dict:
        return {"layout": {"hdf5": f"DIR/{H5_NAME}: images (n, H, W, 3) uint8 RGB, labels (identity), index "
                                   "(image slot), draw, landmarks (n, 68, 2), masks, params/{alpha,gamma,beta,pose,"
                                   "sh,camera_distance}, scores/{dr_error,cycle_error,identity_loss,retries,flagged}; "
                                   "rows in identity, slot order"},
                "image": {"type": "uint8 array", "jpeg_quality": None, "jpeg_subsampling": None,
                          "encoder": "h5py (gzip)"}}

    def artefact(self, i: int) -> Path:
        return self.state_dir / "items" / f"{self.id_name(i)}.npz"

    def rel_path(self, i: int, slot: int) -> str:
        row = getattr(self, "row_of", {}).get(i, i - self.o.first_identity)  # rows of the identities kept
        return f"{H5_NAME}#images/{row * self.o.images_per_identity + slot}"

    def write(self, i: int, final: list[dict], tmp: Path) -> None:
        arrays = {"images": np.stack([c["image"] for c in final]),
                  "draw": np.asarray([c["draw"] for c in final], np.int64),
                  "landmarks": np.stack([c["landmarks"] for c in final]),
                  "masks": np.stack([c["mask"] for c in final]),
                  **{f"params/{k}": np.stack([c["params"][k] for c in final]) for k in PARAMS},
                  **{f"scores/{k}": np.asarray([c[k] for c in final], np.float32)
                     for k in ("dr_error", "cycle_error", "identity_loss")},
                  "scores/retries": np.asarray([c["retries"] for c in final], np.int64),
                  "scores/flagged": np.asarray([c["flagged"] for c in final], bool)}
        f = tmp / "item.npz"
        with open(f, "wb") as fh:
            np.savez_compressed(fh, **{k.replace("/", "."): v for k, v in arrays.items()})
        target = self.artefact(i)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(f, target)
        tmp.rmdir()

    def finish(self, ids, attrs: dict, key: str) -> None:
        from morph.base.files import partial_path
        from morph.base.h5io import ImageWriter, completed_output

        m = self.o.images_per_identity
        self.row_of = {i: k for k, i in enumerate(ids)}
        path = self.out / H5_NAME
        if completed_output(path, key, "GANFaces export"):  # assembled by a run stopped just after
            return
        with np.load(self.artefact(ids[0])) as first:
            size = first["images"].shape[1]
            extra = {k.replace(".", "/"): (first[k].shape[1:], first[k].dtype) for k in first.files if k != "images"}
        with disk_errors(partial_path(path)):
            w = ImageWriter(path, len(ids) * m, size, {**attrs, "size": size}, key, extra)
            try:
                for k, i in enumerate(ids):
                    if (k + 1) * m <= w.n_done:
                        continue
                    with np.load(self.artefact(i)) as z:
                        w.write(k * m, {"images": z["images"], "labels": np.full(m, i, np.int64),
                                        "index": np.arange(m, dtype=np.int64),
                                        **{k2.replace(".", "/"): z[k2] for k2 in z.files if k2 != "images"}})
                w.finish()
            finally:
                w.close()


#: --format name -> Sink
SINKS = {s.name: s for s in (ImageFolderSink, HDF5Sink)}
FORMATS = tuple(SINKS)
