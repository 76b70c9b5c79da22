"""The HDF5 image sets between pipeline steps, and what made them (identities.h5: ``morph.model.identities``).

synthetic.h5 (``morph render``), one chunk per image, gzip::

    images     (M, H, W, 3) uint8 RGB
    labels     (M,) int64 identity;   index (M,) int64
    landmarks  (M, 68, 2) float32 pixel coordinates (pixel centres at integer + 0.5)
    masks      (M, H, W) bool
    params/... the per-image parameters that made each image (as in identities.h5, per image)

Root attributes of every file: ``command``, ``version``, ``created``, ``numerics`` (JSON: CPU capability,
torch, oneDNN and numba versions, threads; ``morph.base.numerics``), ``seed``, ``model`` (spec),
``model_name``, ``model_sources`` (JSON), ``priors`` (the YAML text), plus counts. A file being
written is named ``NAME.partial`` and carries ``n_done``; it is renamed to ``NAME`` only when
complete, so nothing half-written looks complete and a re-run resumes from ``n_done``.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from morph.base.errors import UserError
from morph.base.files import disk_errors, hdf5_write_failed, partial_path


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version as v
    try:
        return v("ganfaces")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def provenance(**extra) -> dict:
    """Root attributes recording what made a file (``numerics``: the instruction set, library
    versions and threads that decide its low bits, ``morph.base.numerics``)."""
    from morph.base.numerics import numerics

    attrs = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "version": version(),
             "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "numerics": json.dumps(numerics())}
    for k, v in extra.items():
        attrs[k] = json.dumps(v) if isinstance(v, (dict, list)) else v
    return attrs


def open_h5(path: str | Path, what: str) -> h5py.File:
    """Open an existing HDF5 file for reading, with a clear error when it is missing or corrupt."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such {what}; check the path.")
    try:
        return h5py.File(p, "r")
    except OSError as e:
        raise UserError(f"{p}: cannot be read as HDF5 ({e.__class__.__name__}: {str(e).split(';')[0]}); "
                        "the file is truncated or not an HDF5 file: re-create it.") from None


def require_complete(f: h5py.File, path: Path) -> None:
    """A file counts as complete only if it says so (its ``complete`` attribute, which every
    writer of the toolkit sets last); a file still being written (``NAME.partial``) never does."""
    if Path(path).name.endswith(".partial") or "complete" in f.attrs and not f.attrs["complete"]:
        raise UserError(f"{path}: is not complete; finish the command that writes it first.")
    if "complete" not in f.attrs:
        raise UserError(f"{path}: does not say it is complete (no 'complete' attribute): a file this toolkit "
                        "did not write or did not finish. Re-create it with the command that makes it; a set "
                        "you made yourself and know to be whole can be marked with h5py: f.attrs['complete'] "
                        "= True.")


def completed_output(output: Path, key: str, what: str) -> bool:
    """Whether ``output`` already holds this job, complete (a re-run then has nothing to do).

    Raises when it holds something else (never overwrite a user's file) or when its folder is
    missing; returns False when the job is still to be done (or resumed from ``NAME.partial``).
    """
    output = Path(output)
    if output.exists():
        with open_h5(output, what) as f:
            if f.attrs.get("job_key") == key and f.attrs.get("complete"):
                return True
        raise UserError(f"{output}: exists and holds another {what}; choose another name or delete it.")
    if not output.resolve().parent.is_dir():
        raise UserError(f"{output}: folder {output.resolve().parent} does not exist; create it first.")
    return False


def require(f: h5py.File, keys, what: str, fix: str):
    missing = [k for k in keys if k not in f]
    if missing:
        raise UserError(f"{f.filename}: not a {what} (missing {', '.join(missing)}); {fix}")


class ImageWriter:
    """Incremental, resumable writer of an image set (synthetic.h5 / real.h5 layout).

    Datasets are created at full size up front; ``n_done`` is bumped after each flushed batch.
    ``key`` identifies the job: a partial file written for another key is not resumed.
    ``images=False`` leaves out the standard ``images``/``labels``/``index`` datasets (only
    ``extra`` is created); ``resizable=True`` makes every dataset extendible along its first axis
    so that ``finish(n_rows)`` can drop rows never written (jobs that skip bad inputs).
    """

    def __init__(self, path: str | Path, n: int, size: int, attrs: dict, key: str,
                 extra: dict[str, tuple[tuple, str]] | None = None, images: bool = True,
                 resizable: bool = False):
        self.path = Path(path)
        self.tmp = partial_path(self.path)
        self.n = n
        self.resizable = resizable
        self.row_datasets = (["images", "labels", "index"] if images else []) + list(extra or {})
        if self.tmp.exists():
            try:
                f = h5py.File(self.tmp, "a")
                if f.attrs.get("job_key") != key:
                    f.close()
                    raise OSError("different job")
                self.f = f
            except OSError:
                self.tmp.unlink()
        with disk_errors(self.path):
            if not self.tmp.exists():
                self.f = h5py.File(self.tmp, "w")
                for k, v in attrs.items():
                    self.f.attrs[k] = v
                self.f.attrs["n_done"] = 0
                comp = dict(compression="gzip", compression_opts=4, shuffle=True)
                grow = (lambda shape: dict(maxshape=(None, *shape))) if resizable else (lambda shape: {})
                if images:
                    self.f.create_dataset("images", (n, size, size, 3), np.uint8, chunks=(1, size, size, 3),
                                          **comp, **grow((size, size, 3)))
                    self.f.create_dataset("labels", (n,), np.int64, **grow(()))
                    self.f.create_dataset("index", (n,), np.int64, **grow(()))
                for name, (shape, dtype) in (extra or {}).items():
                    # chunk per row; a row with no values (e.g. colour coefficients of a model without
                    # a colour model) cannot be chunked at all
                    chunks = (1, *shape) if shape and 0 not in shape else (True if resizable else None)
                    self.f.create_dataset(name, (n, *shape), dtype, chunks=chunks,
                                          **(comp if len(shape) >= 2 else {}), **grow(shape))
                self.f.attrs["job_key"] = key
                self.f.flush()
            self.n_done = int(self.f.attrs["n_done"])

    def write(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        stop = start + len(next(iter(arrays.values())))
        with disk_errors(self.path):  # (the completed rows stay: a re-run resumes after them)
            for k, v in arrays.items():
                self.f[k][start:stop] = v
            self.f.flush()  # data first, then the counter: a kill never counts unwritten images
            self.f.attrs["n_done"] = stop
            self.f.flush()
        self.n_done = stop

    def finish(self, n_rows: int | None = None) -> None:
        """Mark complete and rename; with ``n_rows`` (resizable writers only) the writer's
        datasets are first cut to their first ``n_rows`` rows."""
        if n_rows is not None and n_rows != self.n:
            if not self.resizable:
                raise ValueError("finish(n_rows): the writer was not created resizable")
            for name in self.row_datasets:
                self.f[name].resize(n_rows, axis=0)
        with disk_errors(self.path):
            self.f.attrs["complete"] = True
            del self.f.attrs["n_done"]
            self.f.close()
            os.replace(self.tmp, self.path)

    def close(self) -> None:
        if self.f.id.valid:
            try:
                self.f.close()
            except (OSError, RuntimeError):
                if not hdf5_write_failed():  # after a full disk HDF5 cannot close the file; the
                    raise                    # error already reported says so, and the run resumes
