"""Model SPEC files: a YAML that composes one model from several files (the paper's LSFM shape +
BFM colour + 3DDFA expression), e.g. ``paper.yaml``::

    name: lsfm+bfm+3ddfa          # optional
    shape: lsfm/all_all_all.mat   # required; paths are relative to this YAML file
    texture: face3d/BFM.mat       # optional: the colour model of that file
    expression: 3ddfa/Model_Expression.mat   # optional: the expression model of that file
    landmarks: ibug68.txt         # optional, see below

``landmarks`` is either a text file of 68 whitespace-separated 0-based vertex indices in iBUG
order (-1 for unknown; ``#`` starts a comment), or an eos ``ibug_to_*.txt`` TOML mapping. Without
it, the landmarks of the shape file are used, else those of the texture or expression file.
All parts must share one mesh; ``morph.model.morphable.compose`` says which files differ when they don't.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from morph.base.errors import UserError
from morph.formats import _common as c
from morph.formats.registry import load_file
from morph.model.morphable import MorphableModel, compose, require_file

ALLOWED = ("shape", "texture", "expression", "landmarks", "name")
_YAML = (".yaml", ".yml")


def load_spec(path) -> MorphableModel:
    """A model from a model file or from a YAML spec (see the module docstring)."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in _YAML:
        return load_file(path)
    spec = _read_yaml(path)
    unknown = sorted(set(spec) - set(ALLOWED))
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(map(str, unknown))}; the allowed keys are "
                        f"{', '.join(ALLOWED)}.")
    if not spec.get("shape"):
        raise UserError(f"{path}: no 'shape' entry; add 'shape: FILE' (the file giving the mean and shape modes).")
    files = {}
    for role in ("shape", "texture", "expression", "landmarks"):
        value = spec.get(role)
        if value is None:
            continue
        if not isinstance(value, str):
            raise UserError(f"{path}: '{role}' must be a file path, not {value!r}; write '{role}: FILE'.")
        p = Path(value).expanduser()
        p = p if p.is_absolute() else path.parent / p
        files[role] = require_file(p, f"{role} file (named in {path})")
        if role != "landmarks" and p.suffix.lower() in _YAML:
            raise UserError(f"{path}: '{role}' names another YAML spec ({p}); name model files only.")
    name = spec.get("name")
    if name is not None and not isinstance(name, str):
        raise UserError(f"{path}: 'name' must be a string, not {name!r}.")
    loaded: dict[Path, MorphableModel] = {}

    def get(role):
        if role not in files:
            return None
        key = files[role].resolve()
        if key not in loaded:
            loaded[key] = load_file(files[role])
        return loaded[key]

    model = compose(get("shape"), texture=get("texture"), expression=get("expression"),
                    name=name or path.stem)
    if "landmarks" in files:
        lm = read_landmarks(files["landmarks"], model.n_vertices)
        model = replace(model, landmarks=lm, sources={**model.sources, "landmarks": str(files["landmarks"])})
    return model


def _read_yaml(path: Path) -> dict:
    import yaml

    require_file(path, "model spec (YAML)")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{path}: is not valid YAML ({problem}{where}); fix the syntax.") from None
    if not isinstance(spec, dict):
        raise UserError(f"{path}: a model spec must be a YAML mapping such as 'shape: FILE'; "
                        f"the allowed keys are {', '.join(ALLOWED)}.")
    return spec


def read_landmarks(path, n_vertices: int) -> np.ndarray:
    """(68,) 0-based vertex indices from a plain list or an eos ``ibug_to_*.txt`` mapping."""
    from morph.formats import eos

    path = require_file(path, "landmark file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: is not a text file; give 68 vertex indices, one iBUG point each.") from None
    if "[landmark_mappings]" in text:
        return eos.read_ibug_mapping(path, n_vertices)
    tokens = " ".join(line.split("#", 1)[0] for line in text.splitlines()).replace(",", " ").split()
    try:
        values = np.array([int(t) for t in tokens], np.int64)
    except ValueError:
        raise UserError(f"{path}: holds something other than integers; give 68 0-based vertex indices "
                        "(-1 for unknown), in iBUG order.") from None
    return c.landmarks_from(path, values, n_vertices, base=0)
