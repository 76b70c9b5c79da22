"""Model SPECs: how the CLI names a model.

- ``default``: the embedded default model in ``data/default_model.h5`` (BFM 2017 ``.h5``
  layout, so other tools open it too).
- a path to a model file; its format is told by its extension and keys (see ``morph.formats``).
- a YAML file that composes files: ``{shape: FILE, texture: FILE, expression: FILE,
  landmarks: FILE}`` (paths relative to the YAML).

A model without a colour model (the Surrey Face Model, a shape-only LSFM or 3DDFA_V2 file) is
rendered with a fixed albedo painted from its 68 landmarks (``morph.albedo``: skin, lips, brows,
eyes, nostrils), the same for every identity; without landmarks L[17..59] it stays uniform grey.
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
        model = formats.load(default_model_path(), name="default")
    else:
        model = formats.load_spec(Path(spec))
    model.paint_albedo = True  # used only when the model has no colour model
    return model
