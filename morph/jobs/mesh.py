"""`morph mesh`: one sampled face as a mesh file (model frame, mm) with its albedo."""
from __future__ import annotations

from pathlib import Path

from morph.base.errors import UserError
from morph.model.identities import read_identities
from morph.render.output import check_dims


def export_sample_mesh(identities: Path, index: int, output: Path, model_spec: str | None = None,
                       neutral: bool = False) -> Path:
    """The mesh (model frame, mm) and albedo of image ``index`` of an identities file."""
    from morph.formats.named import load_model
    from morph.render import export_mesh

    s, attrs = read_identities(identities)
    if index >= len(s.identity):
        raise UserError(f"{identities}: has {len(s.identity)} images; --image must be below that.")
    model = load_model(model_spec or str(attrs.get("model", "default")))
    check_dims(model, s, identities)
    row = s.identity[index] - int(attrs.get("first_identity", 0))
    verts = model.vertices(s.alpha[row], None if neutral else s.beta[index])[0]
    colors = model.colors(s.gamma[row])[0]
    return export_mesh(output, verts, colors, model.triangles)
