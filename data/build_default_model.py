"""Build ``data/default_model.h5``: the embedded default 3DMM (SYNTHETIC bases, NOT a statistical model).

No free statistical face model can be redistributed, so the default model that makes the
quickstart work without licensed files is assembled here from two ingredients:

1. The MEAN HEAD and its 68 iBUG landmarks from menpo3d 0.8.6's source distribution (BSD-3,
   Imperial College London): ``menpo3d/data/template.ply`` (an LSFM-topology mean head, 53,349
   vertices, 106,111 triangles, false colours) and ``menpo3d/data/template.ljson``. Both are read
   straight out of the sdist tarball; menpo3d is not installed or imported.
2. Hand-designed, SYNTHETIC linear bases written in this file: smooth, localised, NAMED
   displacement fields for identity shape and expression, and colour fields for albedo. They were
   not learned from any scans. They give plausible variety for a first look and for testing the
   pipeline; they carry no population statistics. For research results use a real model
   (BFM 2009/2017, LSFM, FaceWarehouse-derived expressions).

Usage::

    python data/build_default_model.py                       # pip-downloads the sdist to a temp dir
    python data/build_default_model.py menpo3d-0.8.6.tar.gz   # or give the tarball ...
    python data/build_default_model.py DIR                    # ... or a folder holding / to receive it
    python data/build_default_model.py --out other.h5 SRC

The download recipe (pip builds the sdist's metadata, so numpy, wheel and cython must be present):
``pip install numpy wheel cython && pip download --no-deps --no-build-isolation --no-binary :all:
menpo3d==0.8.6 -d DIR``. The build is deterministic: the same tarball gives the same bytes.

Conversions applied to the template: see ``menpo3d_head``.

The bases: see ``menpo3d_modes`` (identity shape, expression, albedo).

Known limitations: the mesh has no mouth interior (an open mouth shows what lies behind the
head), no eyeballs separate from the lids (the eye is painted on the lid-opening surface), and
it is cut off above the hairline and behind the ears; the head is bald.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

import numpy as np

# The painting of the mean albedo is the toolkit's (morph/model/albedo.py, shared with models that
# have no colour model): this checkout's, whatever is installed.
_ROOT = Path(__file__).resolve().parents[1]
if (_ROOT / "morph" / "model" / "albedo.py").is_file() and str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))
from menpo3d_head import (LICENSE_MEMBER, LJSON_MEMBER, MENPO3D_VERSION, PLY_MEMBER, SDIST, UM_TO_MM,  # noqa: E402
                          Head, find_sdist, parse_ljson, parse_ply, read_member)
from menpo3d_modes import ZERO_BELOW, Mode, albedo, expression_modes, identity_modes  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "default_model.h5"


# --------------------------------------------------------------------------------------------
# assembly and output
# --------------------------------------------------------------------------------------------

def to_columns(modes: list[Mode]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(3N, K) unit columns, (K,) standard deviations, names."""
    cols, stds = [], []
    for m in modes:
        f = np.asarray(m.field, np.float64)
        peak = np.abs(f).max()
        f = np.where(np.abs(f) < ZERO_BELOW * peak, 0.0, f)
        norm = np.linalg.norm(f)
        cols.append((f / norm).reshape(-1))
        stds.append(m.amplitude * norm)
    basis = np.stack(cols, 1).astype(np.float32)
    return basis, np.asarray(stds, np.float64), [m.name for m in modes]


def recommended_bounds(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per-mode coefficient bounds (std units) inside which the expression modes stay plausible."""
    low = np.full(len(names), -np.inf, np.float32)
    high = np.full(len(names), np.inf, np.float32)
    bounds = {"jaw open": (0.0, np.inf), "eye closure": (-1.0, 2.7)}
    for i, n in enumerate(names):
        low[i], high[i] = bounds.get(n, (-np.inf, np.inf))
    return low, high


def build(tarball: Path) -> dict:
    raw_ply = read_member(tarball, PLY_MEMBER)
    raw_lj = read_member(tarball, LJSON_MEMBER)
    verts_um, tris = parse_ply(raw_ply)
    lm_um = parse_ljson(raw_lj)
    if len(verts_um) != 53349 or len(tris) != 106111:
        raise ValueError(f"unexpected template size {len(verts_um)} vertices, {len(tris)} triangles")
    v = verts_um * UM_TO_MM
    lm = lm_um * UM_TO_MM
    # units check: outer eye corners ~ 80-110 mm apart, nasion-chin ~ 95-135 mm
    eyes = np.linalg.norm(lm[36] - lm[45])
    face = np.linalg.norm(lm[27] - lm[8])
    if not (70 < eyes < 120 and 90 < face < 140):
        raise ValueError(f"unexpected scale: eye corners {eyes:.1f} mm, nasion-chin {face:.1f} mm")
    # orientation checks: y up, face towards +z, x = 0 mid-sagittal
    if not (lm[19, 1] > lm[30, 1] > lm[8, 1] and lm[30, 2] > lm[0, 2] + 50 and abs(lm[30, 0]) < 3):
        raise ValueError("the template is not y-up / +z-facing as expected")
    # the modes below place bilateral features with the +x landmark and mirror it
    if not all(lm[i, 0] > 5 for i in (12, 13, 16, 22, 35, 45, 54)):
        raise ValueError("expected iBUG points 9-16, 22-26, 35, 42-47, 54 on the +x side")
    # winding: normals should point away from the head's vertical axis
    fn = np.cross(v[tris[:, 1]] - v[tris[:, 0]], v[tris[:, 2]] - v[tris[:, 0]])
    cen = v[tris].mean(1)
    axis_pt = np.array([0.0, 0.0, lm[0, 2]])
    radial = cen - axis_pt
    radial[:, 1] = 0
    outward = np.mean((fn * radial).sum(1) > 0)
    if outward < 0.5:
        tris = tris[:, ::-1].copy()
        outward = 1 - outward
    if outward < 0.9:
        raise ValueError(f"inconsistent winding: only {outward:.0%} of normals point outward")

    head = Head(v, tris, lm)
    shape_modes = identity_modes(head)
    exp_modes = expression_modes(head)
    col_mean, col_modes = albedo(head)
    return {"head": head, "tris": tris, "shape": shape_modes, "expression": exp_modes,
            "color_mean": col_mean, "color": col_modes, "outward_fraction": outward,
            "sha256": hashlib.sha256(tarball.read_bytes()).hexdigest(),
            "license": read_member(tarball, LICENSE_MEMBER).decode("utf-8")}


DESCRIPTION = (
    "GANFaces default 3DMM: SYNTHETIC hand-designed bases on the menpo3d LSFM-topology mean head; "
    "NOT a statistical model (no population statistics; the modes are named smooth localised "
    "fields, unit-length but not mutually orthogonal). Basel Face Model 2017 .h5 layout. Units: "
    "millimetres (y up, face towards +z, triangles counter-clockwise from the front), colours in "
    "[0, 1] RGB. vertices = shape/model/mean + shape/model/pcaBasis @ (sqrt(pcaVariance) * alpha) "
    "+ expression/model/pcaBasis @ (sqrt(pcaVariance) * beta); expression/model/mean is zero.")


def write_h5(result: dict, out: Path) -> None:
    import h5py

    head = result["head"]
    tmp = out.with_name(out.name + ".tmp")
    str_dt = h5py.string_dtype("utf-8")
    opts = dict(compression="gzip", compression_opts=9, shuffle=True, track_times=False)
    n3 = 3 * head.n
    with h5py.File(tmp, "w", libver="earliest", track_order=False) as f:
        f.attrs["description"] = DESCRIPTION
        f.attrs["source"] = (
            f"mean head and 68 landmarks: menpo3d {MENPO3D_VERSION} sdist ({SDIST}, sha256 "
            f"{result['sha256']}), files menpo3d/data/template.ply and template.ljson; "
            "bases: synthetic, data/build_default_model.py")
        f.attrs["licence"] = (
            "template geometry: BSD-3-Clause, Copyright (c) 2014 Imperial College London and "
            "others (menpo3d LICENSE.txt, reproduced in attribute 'template_licence'); synthetic "
            "bases and albedo: MIT, as the GANFaces toolkit")
        f.attrs["template_licence"] = result["license"]
        f.attrs["build_script"] = "data/build_default_model.py"
        f.attrs["units"] = "millimetres; colours in [0, 1] RGB"
        f.attrs["conversions"] = (
            "template micrometres x 1e-3 -> millimetres; orientation unchanged (already y up, +z "
            "towards the viewer, x = 0 mid-sagittal); winding unchanged (already counter-clockwise "
            "from outside); false colours replaced by synthetic albedo")
        f.attrs["landmarks"] = (
            "landmarks/ibug68: 0-based vertex index of each iBUG 68 point; template.ljson gives "
            "coordinates, mapped to the nearest vertex (inner-lip points 60-67 to the nearest "
            "vertex on the correct rim of the mouth slit)")
        cells = head.f.T.astype(np.int32)
        points = head.v.T.astype(np.float32)
        parts = {
            "shape": (head.v.reshape(-1), result["shape"]),
            "color": (result["color_mean"].reshape(-1), result["color"]),
            "expression": (np.zeros(n3), result["expression"]),
        }
        for gname, (mean, modes) in parts.items():
            basis, std, names = to_columns(modes)
            g = f.create_group(gname)
            m = g.create_group("model")
            m.create_dataset("mean", data=mean.astype(np.float32), chunks=(min(n3, 16384),), **opts)
            m.create_dataset("pcaBasis", data=basis, chunks=(min(n3, 16384), basis.shape[1]), **opts)
            m.create_dataset("pcaVariance", data=(std ** 2).astype(np.float32), track_times=False)
            m.create_dataset("noiseVariance", data=np.float32(0.0), track_times=False)
            m.create_dataset("names", data=np.array(names, dtype=object), dtype=str_dt, track_times=False)
            m.attrs["synthetic"] = ("yes: hand-designed named modes, not learned; "
                                    "see data/build_default_model.py")
            if gname == "expression":
                low, high = recommended_bounds(names)
                m.attrs["coefficient_low"] = low
                m.attrs["coefficient_high"] = high
                m.attrs["coefficient_bounds"] = (
                    "recommended clipping of the coefficients (std units) when sampling: 'jaw open' "
                    "below 0 pushes the lower lip into the upper lip; 'eye closure' below -1 "
                    "stretches the painted eye and above 2.7 folds the lid")
            r = g.create_group("representer")
            if gname == "shape":
                r.create_dataset("cells", data=cells, chunks=(3, min(cells.shape[1], 16384)), **opts)
                r.create_dataset("points", data=points, chunks=(3, min(points.shape[1], 16384)), **opts)
            else:  # hard links: the same datasets, stored once
                r["cells"] = f["shape/representer/cells"]
                r["points"] = f["shape/representer/points"]
        lmg = f.create_group("landmarks")
        lmg.create_dataset("ibug68", data=head.lm_idx.astype(np.int32), track_times=False)
        lmg["ibug68"].attrs["convention"] = ("iBUG 68-point markup, 0-based vertex indices; 0-16 jaw "
                                             "contour as placed on the 3-D template")
    tmp.replace(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", nargs="?", help=f"{SDIST}, or a folder holding it or to download it into "
                    "(default: pip-download into a temporary folder)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output .h5 (default: %(default)s)")
    args = ap.parse_args(argv)
    if args.source is None:
        with tempfile.TemporaryDirectory(prefix="menpo3d-sdist-") as tmp:
            result = build(find_sdist(tmp))
    else:
        result = build(find_sdist(args.source))
    write_h5(result, args.out)
    head = result["head"]
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): {head.n} vertices, "
          f"{len(head.f)} triangles, {len(result['shape'])} shape / {len(result['color'])} colour / "
          f"{len(result['expression'])} expression modes; landmark snap distance max "
          f"{head.lm_distance.max():.2f} mm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
