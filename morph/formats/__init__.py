"""Model-file loaders: one module per format, each returning a ``morph.model.morphable.MorphableModel``.

| file                               | module      | told apart by                               |
| ---------------------------------- | ----------- | ------------------------------------------- |
| BFM 2009 ``01_MorphableModel.mat`` | bfm2009     | .mat with shapeMU, shapePC, shapeEV, tl     |
| face3d ``BFM.mat``                 | face3d      | .mat with a struct ``model``                |
| 3DDFA ``Model_Expression.mat``     | face3d      | .mat with mu_exp, w_exp, sigma_exp          |
| LSFM ``*.mat``                     | lsfm        | .mat with mean, components, eigenvalues     |
| BFM 2017/2019 and our default .h5  | bfm2017     | .h5 / .hdf5                                 |
| eos/SFM model or blendshapes .bin  | eos         | .bin (model first, then blendshapes)        |
| ICT-FaceKit ``FaceXModel/`` folder  | ict         | a folder (generic_neutral_mesh.obj + JSON)  |
| 3DDFA_V2 ``bfm_noneck_v3.pkl``     | tddfa_v2    | .pkl (restricted unpickler)                 |
| a YAML composing files             | spec        | .yaml / .yml                                |

What every loader guarantees (the conventions of ``morph.model.morphable``): coefficients in units of
standard deviations (``x = mean + basis @ (std * c)``, unit-length basis columns; variances and
pre-scaled bases are converted, see ``_common.pca_part``); vertex positions in millimetres;
colours in [0, 1]; 0-based int64 triangles, counter-clockwise seen from +z (flipped when a file
winds them the other way); ``landmarks`` = (68,) iBUG vertex indices (-1 unknown) or None; and
``source`` = the file path on every part, so that errors name the file. Expression-only files
(``Model_Expression.mat``, eos blendshapes) load with a zero, mode-less shape part and no
triangles; use them through ``compose`` / a YAML spec. Every mistake a user can make (missing,
truncated or foreign file, missing keys, wrong shapes) raises ``morph.base.errors.UserError``.
"""
from __future__ import annotations

from morph.formats.registry import EXTENSIONS, load_file as _load_file
from morph.model.morphable import MorphableModel

__all__ = ["EXTENSIONS", "load", "load_spec"]


def load(path, name: str = "") -> MorphableModel:
    """The model in one file (its format told by the extension and, for .mat, the keys), or the
    model a YAML spec composes (``morph.formats.spec``)."""
    from pathlib import Path
    if Path(path).suffix.lower() in (".yaml", ".yml"):
        return load_spec(path)
    return _load_file(path, name)


def load_spec(path) -> MorphableModel:
    """A model file, or a YAML file composing several (see ``morph.formats.spec``)."""
    from morph.formats import spec
    return spec.load_spec(path)
