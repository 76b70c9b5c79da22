"""Model SPECs: how the CLI names a model.

- ``default``: the embedded default model in ``data/default_model.h5`` (BFM 2017 ``.h5``
  layout, so other tools open it too).
- a path to a model file; its format is told by its extension and keys (see ``morph.formats``).
- a YAML file that composes files: ``{shape: FILE, texture: FILE, expression: FILE,
  landmarks: FILE}`` (paths relative to the YAML).
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from morph.model import MorphableModel


def default_model_path() -> Path:
    return Path(str(files("ganfaces_data") / "default_model.h5"))


def load_model(spec: str | Path) -> MorphableModel:
    """The MorphableModel named by a SPEC (see module docstring)."""
    from morph import formats

    if str(spec) == "default":
        return formats.load(default_model_path(), name="default")
    return formats.load_spec(Path(spec))
