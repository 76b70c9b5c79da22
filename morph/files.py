"""File helpers every job shares: nothing half-written looks complete, a full disk is one clear
error, and a job is keyed by what its output depends on.

- ``write_atomic``: write ``NAME.partial``, then rename it to ``NAME`` (a rename is atomic on one
  file system, so a reader sees the old file or the whole new one, never a part);
- ``disk_errors``: ENOSPC, EDQUOT and EFBIG (a full disk, a quota, a file-size limit) become
  ``UserError("disk full while writing NAME; ...")``;
- ``job_key``: a SHA-256 over arrays (their bytes, dtype and shape) and settings (their repr),
  stored in an output so that a re-run knows whether the output is this job's;
- ``file_sha256``: a file's SHA-256, read in 1 MB blocks.
"""
from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from morph.errors import UserError

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def partial_path(path: Path) -> Path:
    """Where ``path`` is written before it is complete: ``NAME.partial``."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


@contextmanager
def disk_errors(path):
    """A full disk (or quota, or file-size limit) becomes one clear UserError naming ``path``."""
    try:
        yield
    except OSError as e:
        if e.errno in _DISK_FULL or "No space left" in str(e) or "Disk quota" in str(e):
            raise UserError(f"disk full while writing {path}; free space and re-run to resume.") from None
        raise


def write_atomic(path: Path, data: bytes | Callable[[Path], None]) -> Path:
    """Write ``data`` (bytes, or a function that writes the file it is given) to ``path`` through
    ``NAME.partial`` and a rename."""
    path = Path(path)
    tmp = partial_path(path)
    with disk_errors(path):
        try:
            if callable(data):
                data(tmp)
            else:
                with open(tmp, "wb") as f:
                    f.write(data)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
    return path


def job_key(*parts) -> str:
    """SHA-256 hex digest of ``parts``: numpy arrays by dtype, shape and bytes, anything else by
    ``repr`` (settings, names, numbers)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            a = np.ascontiguousarray(p)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
        else:
            h.update(repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
