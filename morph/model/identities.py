"""identities.h5, the file of ``morph sample-identities``: every identity's coefficients and every
image's parameters, as ``morph render`` and ``refine export-dataset`` read them.

identities.h5 (``morph sample-identities``)::

    identity/alpha   (I, n_shape)  float32   shape coefficients, model std units
    identity/gamma   (I, n_texture) float32  colour coefficients
    image/identity   (M,) int64     identity of each image (0-based, = label)
    image/index      (M,) int64     image number within its identity
    image/beta       (M, n_exp) float32;  image/pose (M, 3) degrees pitch, yaw, roll
    image/sh         (M, 9, 3) float32;   image/camera_distance (M,) mm

Root attributes as every file between steps has (``morph.base.h5io``). Written atomically.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from morph.base.errors import UserError
from morph.base.files import write_atomic
from morph.base.h5io import open_h5, require
from morph.model.sample import Sample


def write_identities(path: str | Path, s: Sample, attrs: dict) -> None:
    """Write identities.h5 atomically (``morph.base.files.write_atomic``)."""
    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            for k, v in attrs.items():
                f.attrs[k] = v
            f["identity/alpha"] = s.alpha
            f["identity/gamma"] = s.gamma
            f["image/identity"] = s.identity
            f["image/index"] = s.image
            f["image/beta"] = s.beta
            f["image/pose"] = s.pose
            f["image/sh"] = s.sh
            f["image/camera_distance"] = s.camera_distance
            f.attrs["complete"] = True

    write_atomic(Path(path), write)


IDENTITY_KEYS = ("identity/alpha", "identity/gamma", "image/identity", "image/index", "image/beta",
                 "image/pose", "image/sh", "image/camera_distance")


def read_identities(path: str | Path) -> tuple[Sample, dict]:
    with open_h5(path, "identities file") as f:
        require(f, IDENTITY_KEYS, "identities file", "make one with 'morph sample-identities'.")
        data = {k: f[k][()] for k in IDENTITY_KEYS}
        attrs = dict(f.attrs)
    check_identities(path, data)
    s = Sample(alpha=data["identity/alpha"], gamma=data["identity/gamma"], identity=data["image/identity"],
               image=data["image/index"], beta=data["image/beta"], pose=data["image/pose"], sh=data["image/sh"],
               camera_distance=data["image/camera_distance"])
    return s, attrs


def check_identities(path, d: dict[str, np.ndarray]) -> None:
    """Refuse an identities file whose arrays have the wrong kind, rank or length, or hold values
    that would render blank (non-finite coefficients, a camera at or behind the face)."""
    m = d["image/identity"].shape[0] if d["image/identity"].ndim == 1 else -1
    want = {"identity/alpha": 2, "identity/gamma": 2, "image/identity": 1, "image/index": 1, "image/beta": 2,
            "image/pose": 2, "image/sh": 3, "image/camera_distance": 1}
    for k, rank in want.items():
        a = d[k]
        if a.ndim != rank or a.dtype.kind not in ("iu" if k in ("image/identity", "image/index") else "f"):
            raise UserError(f"{path}: '{k}' is {a.dtype} of shape {a.shape}, not the layout 'morph sample-identities' "
                            "writes; re-create the file with it.")
        if k.startswith("image/") and a.shape[0] != m:
            raise UserError(f"{path}: '{k}' has {a.shape[0]} rows for {m} images; re-create the file.")
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise UserError(f"{path}: '{k}' holds NaN or infinite values; re-create the file (check the priors).")
    if d["image/pose"].shape[1:] != (3,) or d["image/sh"].shape[1:] != (9, 3):
        raise UserError(f"{path}: pose must be (M, 3) and sh (M, 9, 3); re-create the file.")
    if np.any(d["image/camera_distance"] <= 0):
        raise UserError(f"{path}: a camera distance is zero or negative (the face would be behind the camera); "
                        "fix the priors' camera_distance and sample again.")

