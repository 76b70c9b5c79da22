"""File helpers every job shares: nothing half-written looks complete, a full disk is one clear
error, and a job is keyed by what its output depends on.

- ``write_atomic``: write ``NAME.partial``, then rename it to ``NAME`` (a rename is atomic on one
  file system, so a reader sees the old file or the whole new one, never a part);
- ``disk_errors``: ENOSPC, EDQUOT and EFBIG (a full disk, a quota, a file-size limit) become
  ``UserError("disk full while writing NAME; ...")``, also when HDF5 reports them (as
  ``RuntimeError``/``OSError`` text); ``hdf5_write_failed()`` then says that the process must not
  run HDF5's exit handlers (see there);
- ``job_key``: a SHA-256 over arrays (their bytes, dtype and shape) and settings (their repr),
  stored in an output so that a re-run knows whether the output is this job's;
- ``file_sha256``: a file's SHA-256, read in 1 MB blocks;
- ``output_lock``: one writer per output, enforced: an exclusive ``flock`` on ``NAME.lock``,
  held for the whole job; a second writer stops at once, naming the holder's PID.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from morph.base.errors import UserError

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_DISK_FULL_TEXT = ("No space left", "Disk quota", "File too large",
                   *(f"errno = {n}," for n in sorted(_DISK_FULL)))  # how HDF5 words them
_hdf5_failed = False


def hdf5_write_failed() -> bool:
    """True once HDF5 has failed a write for lack of space in this process. The HDF5 that
    h5py 3.16 bundles (2.0.0) then cannot close the file, and the interpreter ends in SIGSEGV
    at exit after the error was reported (reproduced with a
    400 kB RLIMIT_FSIZE and any chunked dataset). The CLI therefore leaves with ``os._exit``
    after its one-line message when this is set; the partial file is resumed, or restarted when
    HDF5 cannot open it, by the next run."""
    return _hdf5_failed


def partial_path(path: Path) -> Path:
    """Where ``path`` is written before it is complete: ``NAME.partial``."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


def quiet_hdf5_disk_full() -> None:
    """Drop h5py's failures to free a handle of a file whose write failed for lack of space.
    HDF5 retries the write for every handle freed while the error unwinds (and at exit), and
    h5py's Cython ``ObjectID.__dealloc__`` reports each through ``sys.excepthook`` (a full
    traceback) and then ``sys.unraisablehook``, around our one-line message. Both hooks are
    wrapped to drop exactly those; anything else is passed on. Called once by the CLI."""
    unraisable, excepthook = sys.unraisablehook, sys.excepthook

    def from_h5py_handle(exc, where) -> bool:
        global _hdf5_failed
        if "h5py" in where and _is_disk_full(exc):
            _hdf5_failed = True
            return True
        return False

    def quiet_unraisable(u):
        if not from_h5py_handle(u.exc_value, repr(u.object)):
            unraisable(u)

    def quiet_excepthook(kind, value, tb):
        frames = [f.f_code.co_filename for f, _ in traceback.walk_tb(tb)]
        if not (frames and all("h5py" in f for f in frames) and from_h5py_handle(value, frames[-1])):
            excepthook(kind, value, tb)
    sys.unraisablehook, sys.excepthook = quiet_unraisable, quiet_excepthook


def _is_disk_full(e: BaseException | None) -> bool:
    if not isinstance(e, (OSError, RuntimeError)):
        return False
    return getattr(e, "errno", None) in _DISK_FULL or any(m in str(e) for m in _DISK_FULL_TEXT)


@contextmanager
def disk_errors(path):
    """A full disk (or quota, or file-size limit) becomes one clear UserError naming ``path``."""
    global _hdf5_failed
    try:
        yield
    except (OSError, RuntimeError) as e:
        if _is_disk_full(e):
            _hdf5_failed = _hdf5_failed or "errno = " in str(e)
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


def lock_path(path: Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".lock")


@contextmanager
def output_lock(path: Path, what: str = "output") -> Iterator[None]:
    """Hold the exclusive lock of ``path`` (a file or a folder that a job writes) while the block
    runs. Another process holding it: ``UserError`` at once, naming its PID. The kernel releases
    the lock of a process that dies, so a killed job never leaves a stale lock; the lock file is
    removed when released (a process that opened it just before then sees, after locking, that
    the path now names another file or none, and tries again)."""
    lock = lock_path(path)
    if not lock.parent.is_dir():
        raise UserError(f"{path}: folder {lock.parent} does not exist; create it first.")
    while True:
        with disk_errors(lock):
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"{path}: is being written by another process (PID {holder}, lock {lock.name}); "
                            f"wait for it to finish, or write the {what} elsewhere.") from None
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        try:
            os.unlink(lock)
        except FileNotFoundError:
            pass
        os.close(fd)


def memory_bytes() -> int:
    """Physical memory of this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_size(path: Path, memory: int, disk: int, what: str, fix: str) -> None:
    """Refuse, before any work, a job that would need more than half this machine's memory or
    more disk than is free where ``path`` goes (an estimate of ``memory`` and ``disk`` bytes)."""
    import shutil

    if memory > memory_bytes() // 2:
        raise UserError(f"{path}: {what} would hold about {memory / 2 ** 30:.3g} GiB in memory, more than half "
                        f"of this machine's {memory_bytes() / 2 ** 30:.3g} GiB; {fix}")
    folder = Path(path).resolve().parent
    free = shutil.disk_usage(folder if folder.is_dir() else Path.cwd()).free
    if disk > free:
        raise UserError(f"{path}: {what} would take about {disk / 2 ** 30:.3g} GiB on disk, but {folder} has "
                        f"{free / 2 ** 30:.3g} GiB free; {fix}")
