"""Model-file loaders: one module per format, each returning a ``morph.model.MorphableModel``.

| file                               | module      | told apart by                               |
| ---------------------------------- | ----------- | ------------------------------------------- |
| BFM 2009 ``01_MorphableModel.mat`` | bfm2009     | .mat with shapeMU, shapePC, shapeEV, tl     |
| face3d ``BFM.mat``                 | face3d      | .mat with a struct ``model``                |
| 3DDFA ``Model_Expression.mat``     | face3d      | .mat with mu_exp, w_exp, sigma_exp          |
| LSFM ``*.mat``                     | lsfm        | .mat with mean, components, eigenvalues     |
| BFM 2017/2019 and our default .h5  | bfm2017     | .h5 / .hdf5                                 |
| eos/SFM model or blendshapes .bin  | eos         | .bin (model first, then blendshapes)        |
| 3DDFA_V2 ``bfm_noneck_v3.pkl``     | tddfa_v2    | .pkl (restricted unpickler)                 |
| a YAML composing files             | spec        | .yaml / .yml                                |

What every loader guarantees (the conventions of ``morph.model``): coefficients in units of
standard deviations (``x = mean + basis @ (std * c)``, unit-length basis columns; variances and
pre-scaled bases are converted, see ``_common.pca_part``); vertex positions in millimetres;
colours in [0, 1]; 0-based int64 triangles, counter-clockwise seen from +z (flipped when a file
winds them the other way); ``landmarks`` = (68,) iBUG vertex indices (-1 unknown) or None; and
``source`` = the file path on every part, so that errors name the file. Expression-only files
(``Model_Expression.mat``, eos blendshapes) load with a zero, mode-less shape part and no
triangles; use them through ``compose`` / a YAML spec. Every mistake a user can make (missing,
truncated or foreign file, missing keys, wrong shapes) raises ``morph.errors.UserError``.
"""
from __future__ import annotations

from pathlib import Path

from morph.errors import UserError
from morph.formats import _common as c
from morph.model import MorphableModel

MAT_FORMATS = (
    ("bfm2009", ("shapeMU", "shapePC", "shapeEV", "tl"), "Basel Face Model 2009 (01_MorphableModel.mat)"),
    ("face3d", ("model",), "face3d BFM.mat"),
    ("face3d", ("mu_exp", "w_exp", "sigma_exp"), "3DDFA Model_Expression.mat"),
    ("lsfm", ("mean", "components", "eigenvalues", "trilist"), "LSFM model"),
)
EXTENSIONS = ".mat, .h5/.hdf5, .bin, .pkl, .yaml/.yml"


def load(path, name: str = "") -> MorphableModel:
    """The model in one file; its format is told by the extension and, for .mat, the keys."""
    path = c.existing(path)
    ext = path.suffix.lower()
    if ext == ".mat":
        return _module(_mat_format(path)).load(path, name)
    if ext in (".h5", ".hdf5"):
        from morph.formats import bfm2017
        return bfm2017.load(path, name)
    if ext == ".bin":
        from morph.formats import eos
        return eos.load(path, name)
    if ext == ".pkl":
        from morph.formats import tddfa_v2
        return tddfa_v2.load(path, name)
    if ext in (".yaml", ".yml"):
        return load_spec(path)
    raise UserError(f"{path}: unknown model file type '{path.suffix}'; give a {EXTENSIONS} file.")


def _mat_format(path: Path) -> str:
    keys = set(c.mat_keys(path))
    for module, needed, _ in MAT_FORMATS:
        if keys.issuperset(needed):
            return module
    c.read_mat(path)  # a file cut short lists only its first variables: report that, not the keys
    known = "; ".join(f"{what}: {', '.join(k)}" for _, k, what in MAT_FORMATS)
    raise UserError(f"{path}: not a model file we know - it holds {', '.join(sorted(keys)) or 'no variables'}, "
                    f"while we read {known}; give one of those files.")


def _module(name: str):
    from importlib import import_module
    return import_module(f"morph.formats.{name}")


def load_spec(path) -> MorphableModel:
    """A model file, or a YAML file composing several (see ``morph.formats.spec``)."""
    from morph.formats import spec
    return spec.load_spec(path)
