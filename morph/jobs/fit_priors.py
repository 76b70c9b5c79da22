"""`morph fit-priors`: expression, pose and lighting priors fitted to real annotations, or
measured on a user's own photos through their fits (``morph fit``).

The paper samples expression, lighting and pose "with the same Gaussian distribution as that of
synthetic samples of 300W-3D and AFLW2000-3D" (section 4, Data): a mean and a covariance fitted
to the datasets' per-image 3DMM annotations. Each annotation ``.mat`` holds

    Pose_Para  (1, 7)  [pitch, yaw, roll, tx, ty, tz, scale], angles in radians (3DDFA convention)
    Exp_Para   (29, 1) raw coefficients of the FaceWarehouse-derived expression basis (face3d)
    Illum_Para (1, 10) Phong light: ambient RGB, directional RGB, elevation, azimuth, ks, v
    Shape_Para, Tex_Para, Color_Para, pt2d, roi   (not fitted: identity comes from the model)

- pose: each rotation is re-expressed in our (pitch, yaw, roll) convention
  (``morph.render.camera``: R = Rz(roll) Ry(yaw) Rx(pitch)) before fitting, in degrees;
  bounds are the observed minimum and maximum.
- expression: converted to our std units with the expression model's sigma
  (``morph.formats.face3d.raw_to_normalized``); fitted only when ``--expression-model`` gives the
  3DDFA expression file (``Model_Expression.mat`` or face3d ``BFM.mat``).
- lighting: the Lambertian part of the Phong light (ambient + directional, rotated with the head
  into the camera frame) is projected onto our 9 SH functions by least squares over the sphere;
  the specular term and the colour transform have no SH counterpart and are left out.

From fits.h5 (``morph fit``, ``fit_priors_from_fits``): the fitted pose (degrees, already our
convention) and expression (std units of the fitted model's own basis, so the priors go with that
model), bounded by the 0.5th and 99.5th percentiles; the 5% of faces with the largest landmark
error are left out (their points, not their faces, are what is unusual). Lighting: the SH light
of the photometric fit (``morph.fitting.photometric``; fits.h5's ``image/sh`` where its
``photometric_error`` is a number) of the same faces; it stays the base priors' for fits made with
``--no-photometric``, which do not measure it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from morph.base.errors import UserError
from morph.base.files import output_lock, write_atomic
from morph.model.priors import gaussian_entry, load_priors, parse_priors
from morph.w300lp import POSE_KEY, matrix_to_pose, phong_to_sh, read_annotation

#: the share of fits, by landmark error, left out of priors measured on fits
WORST_FITS = 0.05


def priors_from_fits(pose: np.ndarray, beta: np.ndarray, error: np.ndarray, source: str, basis: str,
                     base: str | None = None, sh: np.ndarray | None = None) -> tuple[str, dict]:
    """The priors YAML (``base``'s, pose and expression replaced) measured on fits (N, 3) poses in
    degrees and (N, K) expression coefficients with their landmark errors, and a summary; with
    ``sh`` (N, 9, 3) lights (NaN rows: not fitted), the lighting too."""
    good = error <= np.quantile(error, 1 - WORST_FITS)
    if good.sum() < 2:
        raise UserError(f"{source}: only {int(good.sum())} usable fit(s); measuring priors needs at least 2.")
    pose, beta = np.asarray(pose, np.float64)[good], np.asarray(beta, np.float64)[good]
    doc = yaml.safe_load(load_priors(base).text)
    fitted_from = f"{int(good.sum())} faces of {source}"
    doc["pose"] = gaussian_entry(pose, low=np.percentile(pose, 0.5, 0), high=np.percentile(pose, 99.5, 0),
                                 fitted_from=fitted_from)
    doc["expression"] = gaussian_entry(beta, basis=basis, fitted_from=fitted_from)
    measured = "pose and expression"
    n_light = 0
    if sh is not None:
        light = np.asarray(sh, np.float64).reshape(len(error), 27)[good]
        light = light[np.isfinite(light).all(1)]
        if len(light) >= 2:
            n_light = len(light)
            doc["sh"] = gaussian_entry(light, fitted_from=f"{n_light} photometric fits of {source}")
            measured = "pose, expression and lighting"
    doc["description"] = f"{measured} measured on the fits of {fitted_from}"
    text = yaml.safe_dump(doc, sort_keys=False, width=120)
    parse_priors(yaml.safe_load(text), text, source)  # what we write must read back
    return text, {"faces": int(good.sum()), "pose_mean": pose.mean(0).round(2).tolist(),
                  "pose_std": pose.std(0).round(2).tolist(), "abs_yaw_mean": round(float(np.abs(pose[:, 1]).mean()), 2),
                  "expression_rms": round(float(np.sqrt((beta ** 2).mean())), 3),
                  "fit_error_px_median": round(float(np.median(error)), 2), "lighting_faces": n_light}


def fit_priors_from_fits(fits: Path, output: Path, base: str | None = None) -> dict:
    """Priors measured on a ``morph fit`` output (module docstring); writes ``output``."""
    from morph.base.h5io import open_h5, require_complete

    with open_h5(fits, "fits file") as f:
        require_complete(f, fits)
        missing = [k for k in ("image/pose", "image/beta", "landmark_error") if k not in f]
        if missing:
            raise UserError(f"{fits}: has no {', '.join(missing)}; give fits.h5 written by 'morph fit' (or a folder "
                            "of 300W-LP / AFLW2000-3D .mat files).")
        pose, beta, error = f["image/pose"][()], f["image/beta"][()], f["landmark_error"][()]
        name = f.attrs.get("model_name", "the fitted model")
        sh = None
        if bool(f.attrs.get("photometric", False)) and "photometric_error" in f:
            sh = f["image/sh"][()].astype(np.float64)
            sh[~np.isfinite(f["photometric_error"][()])] = np.nan  # faces the photometric fit left out
    text, summary = priors_from_fits(pose, beta, error, str(fits), f"{name} expression ({beta.shape[1]} modes)", base,
                                     sh=sh)
    with output_lock(Path(output), "priors file"):
        write_atomic(Path(output), text.encode())
    return {"n_files": len(pose), "n_used": summary["faces"], "n_expression": summary["faces"],
            "n_lighting": summary["lighting_faces"], "skipped": [], **summary}


def fit_priors(folder: Path, output: Path, base: str | None = None, expression_model: Path | None = None,
               report=print) -> dict:
    """Fit and write a priors YAML; return a summary dict (counts and skipped files). ``folder``:
    300W-LP / AFLW2000-3D annotations, or a fits.h5 file (``fit_priors_from_fits``)."""
    from morph.render.camera import rotation_300wlp

    folder = Path(folder)
    if folder.is_file() and folder.suffix.lower() in (".h5", ".hdf5"):
        if expression_model is not None:
            raise UserError(f"{folder}: --expression-model is for .mat annotations; fits hold expression in "
                            "their own model's basis already.")
        return fit_priors_from_fits(folder, output, base)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder; give a folder of 300W-LP / AFLW2000-3D .mat files.")
    files = sorted(folder.rglob("*.mat"))
    if not files:
        raise UserError(f"{folder}: holds no .mat annotation files; give a 300W-LP / AFLW2000-3D folder.")
    poses, exps, lights, skipped = [], [], [], []
    sigma = None
    if expression_model is not None:
        from morph.formats import face3d
        stds = face3d.raw_std(expression_model)
        if "expression" not in stds:
            raise UserError(f"{expression_model}: has no expression model; give 3DDFA's Model_Expression.mat "
                            "or face3d's BFM.mat.")
        sigma = stds["expression"]
    for f in files:
        try:
            d = read_annotation(f)
        except UserError as e:
            skipped.append(str(e))
            continue
        if POSE_KEY not in d:
            skipped.append(f"{f}: has no {POSE_KEY}; skipped.")
            continue
        pose_para = np.asarray(d[POSE_KEY], np.float64).reshape(-1)
        if pose_para.shape[0] != 7 or not np.all(np.isfinite(pose_para)):
            skipped.append(f"{f}: {POSE_KEY} has {pose_para.shape[0]} values, expected 7; skipped.")
            continue
        rot = rotation_300wlp(pose_para[None])[0]
        poses.append(matrix_to_pose(rot)[0])
        if sigma is not None and "Exp_Para" in d:
            e = np.asarray(d["Exp_Para"], np.float64).reshape(-1)
            if e.shape[0] == sigma.shape[0]:
                exps.append(face3d.raw_to_normalized("expression", e, sigma))
            else:
                skipped.append(f"{f}: Exp_Para has {e.shape[0]} values, the expression model {sigma.shape[0]}; "
                               "expression not used.")
        if "Illum_Para" in d and np.asarray(d["Illum_Para"]).size == 10:
            lights.append(phong_to_sh(d["Illum_Para"], rot).reshape(-1))
    if len(poses) < 2:
        raise UserError(f"{folder}: only {len(poses)} usable annotation file(s); fitting needs at least 2.")
    base_priors = load_priors(base)
    doc = yaml.safe_load(base_priors.text)
    poses = np.stack(poses)
    doc["pose"] = gaussian_entry(poses, low=poses.min(0), high=poses.max(0))
    doc["pose"]["fitted_from"] = f"{len(poses)} files in {folder}"
    if exps:
        doc["expression"] = gaussian_entry(np.stack(exps), basis=f"3DDFA expression ({Path(expression_model).name})")
        doc["expression"]["fitted_from"] = f"{len(exps)} files in {folder}"
    if lights:
        lights = np.stack(lights)
        doc["sh"] = gaussian_entry(lights)
        doc["sh"]["fitted_from"] = f"{len(lights)} files in {folder} (Lambertian part of Illum_Para)"
    doc["description"] = f"fitted by morph fit-priors to {len(poses)} annotations in {folder}"
    text = yaml.safe_dump(doc, sort_keys=False, width=120)
    parse_priors(yaml.safe_load(text), text, str(output))  # what we write must read back
    with output_lock(Path(output), "priors file"):
        write_atomic(Path(output), text.encode())
    for line in skipped:
        report(line)
    return {"n_files": len(files), "n_used": len(poses), "n_expression": len(exps), "n_lighting": len(lights),
            "skipped": skipped}
