"""morph.fitting.photometric: the colour and light of renders of known coefficients are read back.

Six faces of the default model (random identity, expression, pose within 30 degrees of yaw, colour
coefficients N(0, I), light drawn from the default priors) are rendered by ``FitRenderer`` into a
108 px crop, then fitted from their pixels with the geometry known. Measured (the defaults: sigma
0.3, 6 Gauss-Newton steps, the default priors' light): the fit's render within 1.1-2.3 levels of
the photo over the pixels fitted (1.6 over the whole crop), the face's albedo within 0.6-2.7 levels
of the truth (the mean face's is 1.6-17.7 away), the light's coefficients within 0.016-0.036 of the
truth (the priors' mean is 0.042-0.073 away). Colour and light are not separable in one photo (a
whiter skin under a dimmer light looks the same); the priors decide, so the test bounds the albedo,
not gamma itself.
Mutants caught (each run): the light's update skipped (the prior's light stays), the colour's update
skipped (albedo error = the mean face's, 17.7 levels), the three channels' light solved as one,
the normals' y flipped (SH light from below read as from above), the face region empty
(``face_vertices``' even-odd rule broken: no pixels, nothing fitted). Not caught: the barycentric
weights replaced by the nearest vertex (at 108 px the albedo is smooth over a triangle).
"""
from __future__ import annotations

import numpy as np
import pytest

from morph.align.mtcnn import LANDMARK_CENTRE_OFFSET
from morph.align.template import five_point_template
from morph.fitting.pairs import FitRenderer
from morph.fitting.photometric import PhotometricFitter, face_vertices
from conftest import TESTDATA, requires_eos

SFM = TESTDATA / "models" / "sfm"

S, B = 108, 6


@pytest.fixture(scope="module")
def known():
    from morph.formats.named import load_model
    from morph.model.priors import load_priors

    model = load_model("default")
    rng = np.random.default_rng(3)
    light = load_priors(None).groups["sh"]
    fits = {"identity/alpha": rng.standard_normal((B, model.n_shape)).astype(np.float32),
            "image/beta": (0.5 * rng.standard_normal((B, model.n_expression))).astype(np.float32),
            "image/pose": np.stack([rng.uniform(-10, 10, B), rng.uniform(-30, 30, B), rng.uniform(-5, 5, B)],
                                   1).astype(np.float32),
            "identity/gamma": rng.standard_normal((B, model.n_texture)).astype(np.float32),
            "image/sh": np.stack([light.draw(rng) for _ in range(B)]).reshape(B, 9, 3).astype(np.float32),
            # photo = crop: the 5 points on the template, the face's centre near the crop's
            "fit_scale": np.full(B, 0.33, np.float32), "fit_translation": np.tile([54.0, 50.0], (B, 1)).astype(np.float32),
            "landmarks5": np.repeat((five_point_template(S) - LANDMARK_CENTRE_OFFSET)[None], B, 0)}
    photos = FitRenderer(model, S).render(fits)["render"]
    start = np.repeat(light.mean.reshape(1, 9, 3), B, 0).astype(np.float32)
    geometry = {k: v for k, v in fits.items() if k not in ("identity/gamma", "image/sh")}
    return model, fits, photos, geometry, start


def test_colour_and_light_of_known_renders_are_fitted_back(known):
    model, fits, photos, geometry, start = known
    out = PhotometricFitter(model, S).fit(photos, geometry, start)
    assert np.all(out.pixels > 1000), out.pixels  # the face region of a 108 px crop
    assert np.all(out.error < 4.0), out.error  # levels: the render of the fit matches the photo
    face = face_vertices(model)
    truth = model.colors(fits["identity/gamma"])[:, face]
    albedo_error = np.abs(model.colors(out.gamma)[:, face] - truth).mean((1, 2)) * 255
    mean_face_error = np.abs(model.colors(np.zeros_like(out.gamma))[:, face] - truth).mean((1, 2)) * 255
    assert np.all(albedo_error < 4.0), (albedo_error, mean_face_error)
    assert albedo_error.mean() < 0.3 * mean_face_error.mean(), (albedo_error, mean_face_error)
    light_error = np.abs(out.sh - fits["image/sh"]).mean((1, 2))
    prior_error = np.abs(start - fits["image/sh"]).mean((1, 2))
    assert np.all(light_error < 0.5 * prior_error), (light_error, prior_error)
    # the render of the fit over the whole crop (the fitted region's neighbours included) is close too
    rendered = FitRenderer(model, S).render(dict(geometry, **{"identity/gamma": out.gamma, "image/sh": out.sh}))
    assert np.abs(rendered["render"].astype(float) - photos).mean() < 2.0


@requires_eos
def test_a_model_without_colour_fits_the_light_alone(known):
    """The Surrey Face Model (eos .bin, shape only, 50 of the 68 points: no jaw, so no face outline
    and every vertex is fitted) keeps its painted albedo, and its light is read back."""
    from morph import formats

    model = formats.load(SFM / "sfm_shape_3448.bin")
    model.paint_albedo = True  # as load_model sets it for every model the CLI loads
    fits = dict(known[1], **{"identity/alpha": known[1]["identity/alpha"][:, :model.n_shape],
                             "image/beta": np.zeros((B, 0), np.float32),
                             "identity/gamma": np.zeros((B, 0), np.float32)})
    photos = FitRenderer(model, S).render(fits)["render"]
    geometry = {k: v for k, v in fits.items() if k not in ("identity/gamma", "image/sh")}
    out = PhotometricFitter(model, S).fit(photos, geometry, known[4])
    assert out.gamma.shape == (B, 0) and np.all(out.pixels > 1000), out.pixels
    assert np.all(out.error < 4.0), out.error
    light_error = np.abs(out.sh - fits["image/sh"]).mean((1, 2))
    assert np.all(light_error < 0.5 * np.abs(known[4] - fits["image/sh"]).mean((1, 2))), light_error
