"""``morph mesh``'s writer: one face as .obj or .ply with per-vertex colours, through trimesh."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from morph.base.errors import UserError
from morph.base.files import write_atomic


def export_mesh(path: str | Path, vertices: np.ndarray, colors: np.ndarray | None, triangles: np.ndarray) -> Path:
    """Write one mesh as .obj or .ply with per-vertex colours (``colors`` (N, 3) in [0, 1],
    stored as 8-bit RGBA), through trimesh; written as NAME.partial, then renamed."""
    import trimesh

    path = Path(path)
    kind = path.suffix.lower().lstrip(".")
    if kind not in ("obj", "ply"):
        raise UserError(f"{path}: can write .obj or .ply meshes, not '{path.suffix}'.")
    if not path.resolve().parent.is_dir():
        raise UserError(f"{path}: folder {path.resolve().parent} does not exist; create it first.")
    vertices = np.asarray(vertices, np.float64).reshape(-1, 3)
    rgba = None
    if colors is not None:
        rgb = np.round(np.clip(np.asarray(colors, np.float64).reshape(-1, 3), 0, 1) * 255).astype(np.uint8)
        rgba = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], 1)
    mesh = trimesh.Trimesh(vertices=vertices, faces=np.asarray(triangles, np.int64).reshape(-1, 3),
                           vertex_colors=rgba, process=False)
    return write_atomic(path, lambda tmp: mesh.export(str(tmp), file_type=kind))
