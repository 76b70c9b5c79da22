"""Basel Face Model 2009: ``PublicMM1/01_MorphableModel.mat`` (Paysan et al., AVSS 2009).

File layout (MATLAB v5; a v7.3/HDF5 re-save is read too), N = 53,490 vertices, F = 106,466:

    shapeMU  (3N, 1)   float32  mean shape, x0 y0 z0 x1 ..., in MICROMETRES
    shapePC  (3N, 199) float32  orthonormal principal components (unit columns)
    shapeEV  (199, 1)  float32  standard deviations (not variances) of the coefficients, in um
    texMU    (3N, 1)   float32  mean colour, r0 g0 b0 r1 ..., in 0..255
    texPC    (3N, 199) float32  orthonormal colour components
    texEV    (199, 1)  float32  standard deviations, in 0..255 units
    tl       (F, 3)    double   1-based triangles, CLOCKWISE seen from the front
    segbin, segMM, segMB        segment masks and models (not used)

Conversion: lengths / 1000 (um -> mm; the BFM 2009 .mat is in micrometres, which is why e.g.
Deep3DFaceRecon divides by 1e5 "to decimetres" and face3d draws coefficients around 1e4), colours
/ 255, ``std = shapeEV`` (x column length, 1 here), triangles - 1. The triangles are wound
clockwise seen from the front (eos' and LSFM's converters swap two corners for that reason); the
loader detects the winding on the mean shape and swaps the 2nd and 3rd corner of every triangle,
so front faces are counter-clockwise seen from +z. No landmarks are stored in this file.
"""
from __future__ import annotations

from pathlib import Path

from morph.formats import _common as c
from morph.model.morphable import MorphableModel

KEYS = ("shapeMU", "shapePC", "shapeEV", "texMU", "texPC", "texEV", "tl")
UM_TO_MM = 1e-3


def load(path, name: str = "") -> MorphableModel:
    path = c.existing(path)
    data = c.read_mat(path, list(KEYS))
    c.need(path, data, KEYS, "Basel Face Model 2009 (01_MorphableModel.mat)")
    mean = c.vector(path, "shapeMU", data["shapeMU"])
    if mean.shape[0] % 3:
        raise c.fail(path, f"'shapeMU' has {mean.shape[0]} values, not a multiple of 3", "the file is corrupt")
    n3 = mean.shape[0]
    shape_pc = c.matrix(path, "shapePC", data["shapePC"], n3)
    shape_ev = c.vector(path, "shapeEV", data["shapeEV"], shape_pc.shape[1])
    tex_mu = c.vector(path, "texMU", data["texMU"], n3)
    tex_pc = c.matrix(path, "texPC", data["texPC"], n3)
    tex_ev = c.vector(path, "texEV", data["texEV"], tex_pc.shape[1])
    shape = c.pca_part(path, mean, shape_pc, shape_ev, scale=UM_TO_MM)
    tris = c.triangles(path, "tl", data["tl"], n3 // 3, base=1)
    tris = c.orient_front_ccw(shape.mean, tris)
    return MorphableModel(shape=shape, triangles=tris,
                          texture=c.pca_part(path, tex_mu, tex_pc, tex_ev, scale=1 / 255.0),
                          name=name or Path(path).stem, sources={"shape": str(path), "texture": str(path)})
