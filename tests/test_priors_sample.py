import numpy as np
import pytest
import yaml

from morph.base.errors import UserError
from morph.model.priors import load_priors, parse_priors
from morph.model.sample import sample_block


def _doc():
    return yaml.safe_load(load_priors().text)


def test_default_priors_load_and_have_every_group():
    p = load_priors()
    assert set(p.groups) == {"shape", "texture", "expression", "pose", "sh", "camera_distance"}
    assert p["sh"].mean.shape == (27,)


def test_identity_is_the_same_in_any_run_size(tiny_model):
    p = load_priors()
    small = sample_block(tiny_model, p, seed=3, identities=range(10), images_per_identity=2)
    large = sample_block(tiny_model, p, seed=3, identities=range(1000), images_per_identity=2)
    assert np.array_equal(small.alpha[5], large.alpha[5])
    assert np.array_equal(small.gamma[5], large.gamma[5])
    sl, ll = small.identity == 5, large.identity == 5
    for k in ("beta", "pose", "sh", "camera_distance"):
        assert np.array_equal(getattr(small, k)[sl], getattr(large, k)[ll])


def test_batches_of_1_7_64_give_the_same_coefficients(tiny_model):
    p = load_priors()
    whole = sample_block(tiny_model, p, seed=11, identities=range(64), images_per_identity=3)
    for bs in (1, 7, 64):
        parts = [sample_block(tiny_model, p, 11, range(a, min(a + bs, 64)), 3) for a in range(0, 64, bs)]
        for k in ("alpha", "gamma", "beta", "pose", "sh", "camera_distance", "identity", "image"):
            assert np.array_equal(np.concatenate([getattr(q, k) for q in parts]), getattr(whole, k)), (bs, k)


def test_seeds_and_identities_differ(tiny_model):
    p = load_priors()
    a = sample_block(tiny_model, p, 0, range(3), 2)
    b = sample_block(tiny_model, p, 1, range(3), 2)
    assert not np.allclose(a.alpha, b.alpha)
    assert not np.allclose(a.alpha[0], a.alpha[1])
    assert not np.allclose(a.pose[0], a.pose[1])  # images of one identity differ


def test_draws_follow_the_prior(tiny_model):
    p = load_priors()
    s = sample_block(tiny_model, p, 0, range(2000), 1)
    assert abs(s.alpha.std() - 1.0) < 0.05
    assert abs(s.beta.std() - 0.7) < 0.05
    low, high = p["pose"].low, p["pose"].high
    assert np.all(s.pose >= low - 1e-4) and np.all(s.pose <= high + 1e-4)
    assert abs(np.median(s.pose[:, 1])) < 3  # yaw centred


def test_full_covariance_is_honoured():
    cov = [[4.0, 3.0, 0.0], [3.0, 9.0, 0.0], [0.0, 0.0, 1.0]]
    doc = _doc()
    doc["pose"] = {"mean": [1, 2, 3], "cov": cov}
    p = parse_priors(doc)
    rng = np.random.default_rng(0)
    x = np.stack([p["pose"].draw(rng) for _ in range(20000)])
    assert np.allclose(x.mean(0), [1, 2, 3], atol=0.1)
    assert np.allclose(np.cov(x.T), cov, atol=0.3)


def test_cholesky_of_a_singular_covariance_and_its_draws():
    """The default lighting prior's cov is singular in 10 directions (RGB correlated 0.98 per SH
    coefficient, repeated eigenvalues): L is lower-triangular, L L^T = cov, and on a definite
    matrix L is LAPACK's Cholesky factor. Draws average to the mean and scatter as cov."""
    from morph.model.priors import cholesky_psd

    cov = np.asarray(_doc()["sh"]["cov"], np.float64)
    L = cholesky_psd(cov)
    assert np.array_equal(L, np.tril(L)) and np.abs(L @ L.T - cov).max() < 1e-15
    rank1 = np.outer([1.0, 2.0, -1.0], [1.0, 2.0, -1.0])  # one direction only: two zero pivots
    L1 = cholesky_psd(rank1)
    assert np.allclose(L1 @ L1.T, rank1, atol=1e-15) and np.count_nonzero(np.diag(L1)) == 1
    spd = np.array([[4.0, 3.0, 0.5], [3.0, 9.0, 0.2], [0.5, 0.2, 1.0]])
    np.testing.assert_allclose(cholesky_psd(spd), np.linalg.cholesky(spd), rtol=1e-15, atol=1e-15)
    p = load_priors()
    rng = np.random.default_rng(1)
    x = np.stack([p["sh"].draw(rng) for _ in range(20000)])
    inside = np.all(x > p["sh"].low + 0.05, axis=1)  # the clip at 'low' bends only the far tail
    assert inside.mean() > 0.99
    assert np.allclose(x.mean(0), p["sh"].mean, atol=0.01)
    assert np.allclose(np.cov(x[inside].T), cov, atol=2e-3)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(lighting={"mean": [0], "std": [1]}), "unknown parameter lighting"),
    (lambda d: d["pose"].update(std=[1, -1, 1]), "negative"),
    (lambda d: d.update(pose={"mean": [0, 0, 0], "cov": [[1, 0, 0], [0, -2, 0], [0, 0, 1]]}), "negative variance"),
    (lambda d: d.update(shape={"std_scale": -1}), r"std_scale is -1; .* must be in \[0, 100\]"),
    (lambda d: d.update(shape={"std_scale": 1e200}), r"must be in \[0, 100\]"),
    (lambda d: d["pose"].update(mean=[0, 0]), "expected 3"),
    (lambda d: d["pose"].update(sigma=[1, 1, 1]), "unknown key sigma"),
    (lambda d: d.pop("sh"), "missing parameter group sh"),
])
def test_bad_priors_are_one_clear_error(tmp_path, mutate, message):
    doc = _doc()
    mutate(doc)
    path = tmp_path / "priors.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(UserError, match=message) as e:
        load_priors(path)
    assert str(path) in str(e.value)


def test_missing_and_broken_priors_files(tmp_path):
    with pytest.raises(UserError, match="no such priors file"):
        load_priors(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pose: [unclosed")
    with pytest.raises(UserError, match="not valid YAML"):
        load_priors(bad)


def test_fitted_prior_of_wrong_dimension_is_refused(tiny_model):
    doc = _doc()
    doc["expression"] = {"mean": [0.0] * 29, "std": [1.0] * 29, "basis": "face3d-exp29"}
    with pytest.raises(UserError, match="29 dimensions"):
        sample_block(tiny_model, parse_priors(doc, source="p.yaml"), 0, range(1), 1)


def test_model_bounds_clip_draws():
    from morph.formats.named import load_model

    model = load_model("menpo3d")  # synthetic modes with one-sided and two-sided bounds
    s = sample_block(model, load_priors(), 0, range(200), 2)
    jaw = model.expression.names.index("jaw open")
    assert s.beta[:, jaw].min() == 0.0 and (s.beta[:, jaw] > 0).mean() > 0.3
    eye = model.expression.names.index("eye closure")
    assert s.beta[:, eye].min() >= -1.0 and s.beta[:, eye].max() <= 2.7 + 1e-6
    ict = load_model("default")  # blendshapes: weights in [0, 1], i.e. coefficients in [0, high]
    s = sample_block(ict, load_priors(), 0, range(100), 2)
    assert s.beta.min() == 0.0 and np.all(s.beta <= ict.expression.high.astype(np.float32))
    assert 0.3 < (s.beta > 0).mean() < 0.7
