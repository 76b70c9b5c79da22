"""Labelled image sets as ``refine evaluate`` (and other judges) read them, lazily.

An HDF5 file with ``images`` (N, S, S, 3) uint8 and integer ``labels`` (synthetic.h5 from ``morph
render``, real.h5 from ``morph align``, an exported ``ganfaces.h5``), a folder holding
``ganfaces.h5``, or an ImageFolder tree ``DIR/{identity}/{image}`` (identities and images in
sorted order, as ``torchvision.datasets.ImageFolder`` numbers them). Images of another square
size are resized to 108x108 when read; only the images that are used are read.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from morph.base.errors import UserError
from morph.base.h5io import open_h5, require_complete
from morph.base.imageio import IMAGE_SUFFIXES, read_rgb
from morph.align.template import DEFAULT_TEMPLATE, template_of
from refine.embedders.base import SOURCE_SIZE

KINDS = ("rendered", "refined", "real")




@dataclass
class ImageSet:
    """An image set read lazily: ``read(idx)`` gives (k, 108, 108, 3) uint8 images."""

    path: Path
    layout: str  # "h5" or "imagefolder"
    kind: str  # one of KINDS or "unknown"
    n: int
    size: int  # side of the stored (square) images
    labels: np.ndarray | None = None  # (n,) int64 in 0..L-1
    label_names: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)  # imagefolder only
    template: str = DEFAULT_TEMPLATE  # the crop template the images were aligned by (morph.align.template)

    def read(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, np.int64)
        if self.layout == "h5":
            uniq, inverse = np.unique(idx, return_inverse=True)  # h5py wants increasing, unique indices
            with open_h5(self.path, "image set") as f:
                images = f["images"][uniq][inverse]
        else:
            images = np.stack([self._read_file(self.files[i]) for i in idx])
        return to_source_size(images)

    def _read_file(self, path: Path) -> np.ndarray:
        im = read_rgb(path)
        if im.shape[:2] != (self.size, self.size):
            raise UserError(f"{path}: is {im.shape[1]}x{im.shape[0]} px, but the set's first image is "
                            f"{self.size}x{self.size}; evaluate a set of aligned faces of one size.")
        return im


def to_source_size(images: np.ndarray) -> np.ndarray:
    """(k, S, S, 3) uint8 images at 108x108 (bilinear), as the embedders' transforms take them."""
    if images.shape[1] == SOURCE_SIZE:
        return images
    return np.stack([np.asarray(Image.fromarray(im).resize((SOURCE_SIZE, SOURCE_SIZE), Image.Resampling.BILINEAR))
                     for im in images])


def open_image_set(path: str | Path, what: str = "image set", need_labels: bool = True) -> ImageSet:
    """The set at ``path`` (see the module docstring), checked but not read; ``UserError`` if unusable."""
    path = Path(path)
    if path.is_dir():
        manifest = _export_manifest(path)
        if manifest is not None and not manifest.get("complete", True):
            raise UserError(f"{path}: the export is not complete (its manifest.json says so); re-run the "
                            "same 'refine export-dataset' command to finish it first.")
        if (path / "ganfaces.h5").is_file():
            return _open_h5_set(path / "ganfaces.h5", what, need_labels)
        found = _open_image_folder(path)
        if found is not None:
            return found
        h5s = sorted(path.glob("*.h5"))
        if len(h5s) == 1:
            return _open_h5_set(h5s[0], what, need_labels)
        raise UserError(f"{path}: holds neither ganfaces.h5 nor identity sub-folders of images; give an "
                        "image set .h5 (images + labels) or an ImageFolder tree DIR/IDENTITY/IMAGE.jpg.")
    if not path.exists():
        raise UserError(f"{path}: no such {what}; check the path.")
    return _open_h5_set(path, what, need_labels)


def _open_h5_set(path: Path, what: str, need_labels: bool) -> ImageSet:
    with open_h5(path, what) as f:
        missing = [k for k in ("images", *(["labels"] if need_labels else [])) if k not in f]
        if missing:
            raise UserError(f"{path}: not an image set{' with identity labels' * need_labels} (missing "
                            f"{', '.join(missing)}); "
                            "give synthetic.h5 ('morph render'), real.h5 ('morph align') or an exported "
                            "ganfaces.h5.")
        require_complete(f, path)
        shape = f["images"].shape
        if len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2] or f["images"].dtype != np.uint8:
            raise UserError(f"{path}: 'images' is {f['images'].dtype} of shape {shape}; expected square "
                            "RGB uint8 images (N, S, S, 3).")
        labels, names = None, []
        if "labels" in f:
            raw = f["labels"][()]
            if raw.shape != (shape[0],):
                raise UserError(f"{path}: 'labels' has shape {raw.shape} for {shape[0]} images; re-create the file.")
            values, labels = np.unique(raw, return_inverse=True)
            stored = [_text(x) for x in f["label_names"][()]] if "label_names" in f else []
            names = ([stored[v] for v in values] if len(stored) and 0 <= values.min() and values.max() < len(stored)
                     else [str(v) for v in values])
        kind = _kind_of_h5(path, f)
        template = template_of(f.attrs)
    if shape[0] == 0:
        raise UserError(f"{path}: holds no images; re-create it with more input.")
    return ImageSet(path, "h5", kind, shape[0], shape[1],
                    None if labels is None else labels.astype(np.int64), names, template=template)


def _text(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _kind_of_h5(path: Path, f) -> str:
    """What made the file: its ``command`` attribute, else its name, else the datasets it holds."""
    words = str(f.attrs.get("command", "")).split()
    if "export-dataset" in words:
        return "refined"
    if "render" in words:
        return "rendered"
    if "align" in words:
        return "real"
    if path.name == "ganfaces.h5":
        return "refined"
    if "params" in f or "masks" in f:
        return "rendered"
    if "source" in f or "boxes" in f:
        return "real"
    return "unknown"


def _open_image_folder(root: Path) -> ImageSet | None:
    classes, files, labels = [], [], []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found = sorted(p for p in sub.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if found:
            labels += [len(classes)] * len(found)
            classes.append(sub.name)
            files += found
    if not files:
        return None
    first = read_rgb(files[0])
    if first.shape[0] != first.shape[1]:
        raise UserError(f"{files[0]}: is {first.shape[1]}x{first.shape[0]} px; evaluate square aligned "
                        "faces (108x108 from 'morph align' or 'refine export-dataset').")
    manifest = _export_manifest(root)
    kind = "refined" if manifest is not None else "unknown"
    template = str((manifest or {}).get("settings", {}).get("crop_template") or DEFAULT_TEMPLATE)
    return ImageSet(root, "imagefolder", kind, len(files), first.shape[0], np.asarray(labels, np.int64),
                    classes, files, template=template)


def _export_manifest(root: Path) -> dict | None:
    """The JSON sidecar (``manifest.json``) of a folder that 'refine export-dataset' wrote, if any."""
    for sidecar in sorted(root.glob("*.json")):
        try:
            found = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(found, dict) and "export-dataset" in str(found.get("command", "")).split():
            return found
    return None
