"""What every command shares: user errors as one line and a non-zero exit, no traceback."""
from __future__ import annotations

import os

import click

# numba and torch each bring an OpenMP runtime whose idle threads spin by default; with both in
# one process that halved rendering speed on 2 cores (83 against 191 images/s). Must be set
# before either starts its thread pool, so here, where every command starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from morph.errors import UserError


class Group(click.Group):
    """A click group whose commands turn ``UserError`` into ``Error: <one sentence>`` + exit 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("Interrupted; re-run the same command to resume.", err=True)
            ctx.exit(130)
