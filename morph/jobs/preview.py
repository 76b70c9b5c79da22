"""Contact sheets: one row per identity, to see at a glance whether identities differ."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from morph.base.errors import UserError
from morph.base.files import output_lock, write_atomic
from morph.base.h5io import open_h5, require


def contact_sheet(path: Path, output: Path, max_identities: int = 8, max_images: int = 8, gap: int = 2) -> Path:
    with open_h5(path, "image set") as f:
        require(f, ("images", "labels"), "image set", "preview a file written by 'morph render' or 'morph align'.")
        labels = f["labels"][()]
        n = int(f.attrs.get("n_done", len(labels))) if not f.attrs.get("complete", True) else len(labels)
        labels = labels[:n]
        ids = list(dict.fromkeys(labels.tolist()))[:max_identities]
        if not ids:
            raise UserError(f"{path}: holds no images yet.")
        rows = [np.flatnonzero(labels == i)[:max_images] for i in ids]
        h, w = f["images"].shape[1:3]
        cols = max(len(r) for r in rows)
        sheet = np.full((len(rows) * (h + gap) - gap, cols * (w + gap) - gap, 3), 255, np.uint8)
        for r, idx in enumerate(rows):
            for c, k in enumerate(idx):
                sheet[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = f["images"][k]
    output = Path(output)
    if not output.resolve().parent.is_dir():
        raise UserError(f"{output}: folder {output.resolve().parent} does not exist; create it first.")
    kind = Image.registered_extensions().get(output.suffix.lower())
    if kind is None or kind not in Image.SAVE:
        raise UserError(f"{output}: '{output.suffix or '(no extension)'}' is not an image type Pillow writes; "
                        "name the sheet .png or .jpg.")
    with output_lock(output, "contact sheet"):
        write_atomic(output, lambda tmp: Image.fromarray(sheet).save(tmp, format=kind))
    return output
