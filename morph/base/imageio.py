"""Reading photos as a face aligner needs them: 8-bit RGB, upright, whatever the file held.

PIL decodes the formats (JPEG, PNG, PPM/PGM, BMP, WebP, TIFF ...); here we only normalise what
real collections contain: EXIF orientation (phones store rotated pixels), greyscale and palette
images, CMYK JPEGs, alpha channels, and 16-bit or float images (scaled to 8 bits by their range
of type, not per image, so exposure is kept).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from morph.base.errors import UserError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".pnm", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


#: Photos larger than this are refused before decoding (a 15000 x 15000 JPEG needs 675 MB as RGB
#: and several GB in MTCNN's pyramid); PIL's own decompression-bomb limit is 2 x 89 MP.
MAX_PIXELS = 64_000_000


def read_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file, EXIF-rotated; UserError when it cannot be decoded
    or is larger than ``MAX_PIXELS``."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise UserError(f"{path}: is {w} x {h} px ({w * h / 1e6:.0f} MP), more than the "
                                f"{MAX_PIXELS / 1e6:.0f} MP this toolkit decodes; downscale it.")
            im.load()  # decode now: a truncated file fails here, not later
            im = ImageOps.exif_transpose(im)
            return to_rgb8(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"{path}: not a readable image ({e.__class__.__name__}: {e}); "
                        "re-download or remove it.") from None


def to_rgb8(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        g = np.clip(np.round(a / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        top = 1.0 if a.max() <= 1.0 else 255.0
        g = np.clip(np.round(a / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im)  # transparent areas become white, not black
    if im.mode != "RGB":
        im = im.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB ... PIL knows each conversion
    return np.asarray(im, dtype=np.uint8).copy()
