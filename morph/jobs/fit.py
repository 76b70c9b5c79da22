"""`morph fit`: a folder of photos -> fits.h5, a 3DMM fitted to every face.

Each face is found, picked and aligned as ``morph align`` does (``morph.align.photo_set``: the
same datasets, so fits.h5 is also an image set of aligned real faces), and the model
(``--model``) is fitted to its 68 points (``morph.fitting.landmarks``): camera pose, identity
shape and expression. fits.h5 also holds the layout ``morph sample-identities`` writes
(``morph.model.identities``), one identity per face, so ``morph render fits.h5`` renders each
face's fit aligned like the photo's crop. With ``photometric`` (the default) the colour
coefficients and the light are then fitted to the crop's pixels (``morph.fitting.photometric``);
without, they are the model's mean colour and the priors' mean light:

    identity/alpha (N, n_shape), identity/gamma (N, n_texture)   shape and colour fitted
    image/identity (N,) = 0..N-1, image/index (N,) = 0
    image/beta (N, n_expression), image/pose (N, 3) pitch, yaw, roll in degrees
    image/sh (N, 9, 3)                    the light fitted (the priors' mean without photometric)
    image/camera_distance (N,)            the priors' mean (an orthographic fit does not measure it)
    photometric_error (N,) float32        mean absolute error in 8-bit levels of the fit's render
                                          over the face pixels fitted (NaN: not fitted)
    fit_landmarks68 (N, 68, 2) float32   the fitted model's 68 points projected into the photo
                                         (MTCNN's 1-based pixel coordinates, as landmarks68)
    landmark_error (N,) float32          mean distance in photo pixels between fitted and detected points
    fit_scale (N,), fit_translation (N, 2) float32   the camera: photo pixel (pixel centres at + 0.5)
                                         = (s (R v)_x + t_x, t_y - s (R v)_y) for v in millimetres

plus ``morph align``'s ``source``, ``boxes``, ``landmarks5`` (the points the crop was made from),
``landmarks68`` and the rest. Root attributes: ``model`` (the spec), ``model_name``,
``model_sources``, ``priors``, ``photometric``, ``contour`` (the far side's jaw points re-matched to the
cheek's outline on faces turned 30 degrees or more: ``LandmarkFitter(contour=True)``, the default). Resumable like ``morph align``; photos without a face are listed
with their reason in ``fits.h5.report.tsv``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from morph.align.mtcnn import LANDMARK_CENTRE_OFFSET
from morph.align.template import crop_template
from morph.align.photo_set import align_photos
from morph.fitting.landmarks import LandmarkFitter
from morph.formats.named import load_model
from morph.model.priors import load_priors


def fit_folder(photos_dir: Path, output: Path, model_spec: str = "default", priors: str | None = None,
               size: int | None = None, device: str = "cpu", batch_size: int = 16, min_face_size: float = 20.0,
               progress: bool = True, report=print, template: str | None = None, photometric: bool = True,
               contour: bool = True) -> dict:
    from morph.fitting.photometric import PhotometricFitter

    model = load_model(model_spec)
    fitter = LandmarkFitter(model, contour=contour)  # refuses a model without landmarks before any photo is read
    crop_size = size or crop_template(template).size
    pri = load_priors(priors)
    colour = PhotometricFitter(model, crop_size, template, light=pri.groups["sh"]) if photometric else None
    sh = pri.groups["sh"].mean.reshape(9, 3).astype(np.float32)
    distance = np.float32(pri.groups["camera_distance"].mean[0])
    extra = {"identity/alpha": ((model.n_shape,), np.float32), "identity/gamma": ((model.n_texture,), np.float32),
             "image/identity": ((), np.int64), "image/index": ((), np.int64),
             "image/beta": ((model.n_expression,), np.float32), "image/pose": ((3,), np.float32),
             "image/sh": ((9, 3), np.float32), "image/camera_distance": ((), np.float32),
             "fit_landmarks68": ((68, 2), np.float32), "landmark_error": ((), np.float32),
             "fit_scale": ((), np.float32), "fit_translation": ((2,), np.float32),
             "photometric_error": ((), np.float32)}

    def per_batch(faces, first_row: int, crops: np.ndarray) -> dict[str, np.ndarray]:
        points = np.stack([found.points68[j] for _, found, j in faces]) + LANDMARK_CENTRE_OFFSET
        fit = fitter.fit(points)
        n = len(faces)
        gamma, light = np.zeros((n, model.n_texture), np.float32), np.repeat(sh[None], n, 0)
        error = np.full(n, np.nan, np.float32)
        if colour is not None:
            five = np.stack([found.five[j] for _, found, j in faces])
            geometry = {"identity/alpha": fit.alpha, "image/beta": fit.beta, "image/pose": fit.pose,
                        "fit_scale": fit.scale, "fit_translation": fit.translation, "landmarks5": five}
            pm = colour.fit(crops, geometry, light)
            gamma, light, error = pm.gamma, pm.sh, pm.error
        return {"identity/alpha": fit.alpha.astype(np.float32), "identity/gamma": gamma.astype(np.float32),
                "image/identity": np.arange(first_row, first_row + n, dtype=np.int64),
                "image/index": np.zeros(n, np.int64), "image/beta": fit.beta.astype(np.float32),
                "image/pose": fit.pose.astype(np.float32), "image/sh": light.astype(np.float32),
                "image/camera_distance": np.full(n, distance, np.float32),
                "fit_landmarks68": (fit.points - LANDMARK_CENTRE_OFFSET).astype(np.float32),
                "landmark_error": fit.error.astype(np.float32), "fit_scale": fit.scale.astype(np.float32),
                "fit_translation": fit.translation.astype(np.float32), "photometric_error": error}

    return align_photos(photos_dir, output, size=size, device=device, batch_size=batch_size,
                        min_face_size=min_face_size, progress=progress, report=report, template=template,
                        what="fits file", desc="fit", extra=extra, per_batch=per_batch,
                        key_extra=("fit", model_spec, model.name, pri.text, *(("photometric",) if photometric else ()),
                                   *(("contour",) if contour else ())),
                        attrs={"model": str(model_spec), "model_name": model.name,
                               "model_sources": json.dumps({k: str(v) for k, v in model.sources.items()}),
                               "priors": pri.text, "first_identity": 0,
                               "photometric": bool(photometric), "contour": bool(contour)})
