"""Which loader reads a model file: by extension, and for .mat by the variables it holds; a
folder is read as the model format it is laid out in (today only ICT-FaceKit's ``FaceXModel``).
A new format is one loader module (``load(path, name) -> MorphableModel``) and one line here."""
from __future__ import annotations

from importlib import import_module
from pathlib import Path

from morph.base.errors import UserError
from morph.formats import _common as c
from morph.model.morphable import MorphableModel

#: .mat files: loader module, variables it needs, what the file is
MAT_FORMATS = (
    ("bfm2009", ("shapeMU", "shapePC", "shapeEV", "tl"), "Basel Face Model 2009 (01_MorphableModel.mat)"),
    ("face3d", ("model",), "face3d BFM.mat"),
    ("face3d", ("mu_exp", "w_exp", "sigma_exp"), "3DDFA Model_Expression.mat"),
    ("lsfm", ("mean", "components", "eigenvalues", "trilist"), "LSFM model"),
)
#: other extensions: loader module
BY_EXTENSION = {".h5": "bfm2017", ".hdf5": "bfm2017", ".bin": "eos", ".pkl": "tddfa_v2"}
#: folder formats: loader module, what the folder is (its module's ``is_ict_folder``-style test decides)
FOLDER_FORMATS = (("ict", "ICT-FaceKit FaceXModel folder"),)
EXTENSIONS = ".mat, .h5/.hdf5, .bin, .pkl, .yaml/.yml"


def load_file(path, name: str = "") -> MorphableModel:
    """The model in one model file (not a YAML spec), or in a model folder."""
    if Path(path).expanduser().is_dir():
        # one folder format today; a second one would be told apart here by the files it holds
        return _module(FOLDER_FORMATS[0][0]).load(path, name)
    path = c.existing(path)
    ext = path.suffix.lower()
    if ext == ".mat":
        return _module(_mat_format(path)).load(path, name)
    if ext in BY_EXTENSION:
        return _module(BY_EXTENSION[ext]).load(path, name)
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
    return import_module(f"morph.formats.{name}")
