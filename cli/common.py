"""What every command shares: user errors as one line and a non-zero exit, no traceback."""
from __future__ import annotations

import math
import os
import signal
import sys

import click

# numba and torch each bring an OpenMP runtime whose idle threads spin by default; with both in
# one process that halved rendering speed on 2 cores (83 against 191 images/s). Must be set
# before either starts its thread pool, so here, where every command starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# A file-size limit (ulimit -f) kills a process with SIGXFSZ by default; ignored, the write fails
# with EFBIG instead, which every job reports as a full disk and leaves resumable.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

from morph.base.errors import UserError
from morph.base.files import hdf5_write_failed, quiet_hdf5_disk_full

quiet_hdf5_disk_full()

#: Upper bounds of the options every command shares, so that a typo is refused by the parser
#: (and shown in --help) instead of reaching torch or numba as an overflow.
MAX_THREADS = 1024
MAX_BATCH = 4096
THREADS = click.IntRange(1, MAX_THREADS)
BATCH = click.IntRange(1, MAX_BATCH)


class FiniteRange(click.FloatRange):
    """``click.FloatRange`` that also refuses NaN and infinities (NaN passes every comparison)."""

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return rv


class Group(click.Group):
    """A click group whose commands turn ``UserError`` into ``Error: <one sentence>`` + exit 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"Error: {e}", err=True)
            if hdf5_write_failed():  # HDF5's exit handler would crash (see hdf5_write_failed)
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(2)
            ctx.exit(2)
        except (MemoryError, RuntimeError) as e:
            if not _out_of_memory(e):
                raise
            click.echo("Error: out of memory; lower --batch-size (or free memory) and re-run the same command "
                       "to resume.", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("Interrupted; re-run the same command to resume.", err=True)
            ctx.exit(130)


def _out_of_memory(e: BaseException) -> bool:
    """Python's MemoryError, torch's (CUDA) OutOfMemoryError, or its CPU allocator's failure
    (a RuntimeError: "DefaultCPUAllocator: can't allocate memory")."""
    torch = sys.modules.get("torch")  # (only when a command has imported it)
    if isinstance(e, MemoryError) or (torch is not None and isinstance(e, getattr(torch, "OutOfMemoryError", ()))):
        return True
    return "can't allocate memory" in str(e) or "out of memory" in str(e).lower()
