"""`morph align`: a folder of photos -> real.h5 of 108x108 faces aligned like the renders
(``morph.align.photo_set``: the layout, the crop rule, resuming)."""
from __future__ import annotations

from pathlib import Path

from morph.align.photo_set import align_photos


def align_folder(photos_dir: Path, output: Path, all_faces: bool = False, size: int | None = None,
                 device: str = "cpu", batch_size: int = 16, min_face_size: float = 20.0,
                 thresholds=(0.6, 0.7, 0.7), landmarks: str = "ibug68", progress: bool = True,
                 report=print, template: str | None = None) -> dict:
    return align_photos(photos_dir, output, all_faces, size, device, batch_size, min_face_size, thresholds,
                        landmarks, progress, report, template)
