"""`refine train` checkpoints: read without executing code, written atomically, the last few kept."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from morph.base.errors import UserError
from morph.base.files import write_atomic

#: 2: the authors' networks (issue 9: normalisation, skips by concatenation, D depth); format-1
#: checkpoints hold other networks and are refused.
CHECKPOINT_FORMAT = 2


def load_checkpoint(path: Path) -> dict:
    """A checkpoint, read without executing code (``weights_only``), of this version's format."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint; check the path.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a foreign or truncated file
        raise UserError(f"{path}: not a readable checkpoint ({e.__class__.__name__}); "
                        "give a file written by 'refine train'.") from None
    if isinstance(state, dict) and "nets" in state and state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: was written by an earlier version of 'refine train' (checkpoint format "
                        f"{state.get('format')}, this version reads {CHECKPOINT_FORMAT}) whose networks differ "
                        "from the authors'; train again.")
    return state


def canonical(obj):
    """``obj`` rebuilt so that its pickle depends only on its values: every string interned, every
    container new. Pickle writes a string seen before as a reference to the first (by identity), so
    the same state pickled bytes apart in a resumed run: Adam's per-parameter key 'step' was our
    literal 'step' (one object, referenced) in the uninterrupted run but a fresh unpickled string
    (written out again) after ``--resume``. Dict subclasses keep their type and attributes
    (a module state dict's ``_metadata``); tensors are kept as they are."""
    if isinstance(obj, str):
        return sys.intern(obj)
    if isinstance(obj, dict):
        out = type(obj)()
        for k, v in obj.items():
            out[canonical(k)] = canonical(v)
        if hasattr(obj, "__dict__"):
            out.__dict__.update(obj.__dict__)
        return out
    if isinstance(obj, (list, tuple)) and type(obj) in (list, tuple):
        return type(obj)(canonical(v) for v in obj)
    return obj


class CheckpointStore:
    """``RUN/checkpoints/step_00001000.pt`` written atomically (temporary name, then rename); the
    last ``keep`` are kept. ``latest`` is the newest complete one."""

    def __init__(self, run_dir: Path, keep: int):
        self.dir = Path(run_dir) / "checkpoints"
        self.keep = keep

    def save(self, state: dict) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"step_{state['step']:08d}.pt"
        write_atomic(path, lambda tmp: torch.save(canonical(state), tmp))
        for old in self.all()[:-self.keep]:
            old.unlink()
        return path

    def all(self) -> list[Path]:
        return sorted(self.dir.glob("step_*.pt")) if self.dir.is_dir() else []

    def latest(self) -> Path | None:
        found = self.all()
        return found[-1] if found else None
