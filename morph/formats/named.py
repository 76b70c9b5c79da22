"""Model SPECs: how the CLI names a model.

- a name of an embedded model (``EMBEDDED``, files in ``data/``, Basel Face Model 2017 ``.h5``
  layout so that other tools open them too):
  ``default``: the ICT Face Model Light's head, identity and expression modes with a synthetic
  colour model (``data/ict_default_model.h5``, built by ``data/build_ict_default_model.py``);
  ``menpo3d``: the default before it, menpo3d's mean head with hand-built synthetic modes
  (``data/default_model.h5``, built by ``data/build_default_model.py``).
- a path to a model file; its format is told by its extension and keys (see ``morph.formats``),
  or to a model folder (ICT-FaceKit's ``FaceXModel``).
- a YAML file that composes files: ``{shape: FILE, texture: FILE, expression: FILE,
  landmarks: FILE}`` (paths relative to the YAML).

A model without a colour model (the Surrey Face Model, a shape-only LSFM or 3DDFA_V2 file, the
ICT folder) is rendered with a fixed albedo painted from its 68 landmarks (``morph.model.albedo``: skin,
lips, brows, eyes, nostrils), the same for every identity; without landmarks L[17..59] it stays
uniform grey.
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from morph.model.morphable import MorphableModel

#: name -> file in data/ (the package ``ganfaces_data``)
EMBEDDED = {"default": "ict_default_model.h5", "menpo3d": "default_model.h5"}


def embedded_model_path(name: str) -> Path:
    return Path(str(files("ganfaces_data") / EMBEDDED[name]))


def default_model_path() -> Path:
    return embedded_model_path("default")


def load_model(spec: str | Path) -> MorphableModel:
    """The MorphableModel named by a SPEC (see module docstring)."""
    from morph import formats

    if str(spec) in EMBEDDED:
        model = formats.load(embedded_model_path(str(spec)), name=str(spec))
    else:
        model = formats.load_spec(Path(spec))
    model.paint_albedo = True  # used only when the model has no colour model
    return model


def model_files(sources: dict) -> dict:
    """``{part: file name}`` of a model's ``sources`` (``{part: path}``): which files a model came
    from, without the folders that differ between machines. Names such as 'default' are not enough:
    'default' named another embedded file before the ICT default (``default_model.h5``, now 'menpo3d')."""
    return {part: Path(str(p)).name for part, p in sources.items()}
