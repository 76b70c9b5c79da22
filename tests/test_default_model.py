"""The embedded default model ``data/default_model.h5``, read with plain h5py.

It must open in any tool that reads the Basel Face Model 2017 ``.h5`` layout, so these tests
check that layout directly (keys, shapes, dtypes, index ranges) and a few geometric facts
(millimetres, y up, face towards +z, counter-clockwise front faces) without our loaders.
"""
from pathlib import Path

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from morph.model.morphable import MorphableModel, PCAModel  # noqa: E402

PATH = Path(__file__).resolve().parents[1] / "data" / "default_model.h5"
PARTS = {"shape": (15, 30), "color": (8, 12), "expression": (8, 12)}


@pytest.fixture(scope="module")
def h5():
    if not PATH.exists():
        pytest.fail(f"{PATH} is missing; rebuild it with 'python data/build_default_model.py'")
    with h5py.File(PATH, "r") as f:
        yield f


@pytest.fixture(scope="module")
def arrays(h5):
    """Everything read once: {part: (mean, basis, variance, names)}, cells, landmarks."""
    out = {}
    for part in PARTS:
        m = h5[part]["model"]
        names = [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in m["names"][()]]
        out[part] = (m["mean"][()], m["pcaBasis"][()], m["pcaVariance"][()], names)
    return out, h5["shape/representer/cells"][()], h5["landmarks/ibug68"][()]


def test_file_is_small():
    assert PATH.stat().st_size < 10_000_000


def test_root_attributes_say_what_it_is(h5):
    desc = str(h5.attrs["description"])
    assert "synthetic" in desc.lower() and "NOT a statistical model" in desc
    assert "menpo3d" in str(h5.attrs["source"])
    assert "BSD" in str(h5.attrs["licence"])
    assert "Imperial College London" in str(h5.attrs["template_licence"])
    assert str(h5.attrs["build_script"]) == "data/build_default_model.py"
    assert "millimetres" in str(h5.attrs["units"])


@pytest.mark.parametrize("part", list(PARTS))
def test_part_layout(h5, arrays, part):
    (mean, basis, var, names), cells, _ = arrays[0][part], arrays[1], arrays[2]
    n = cells.max() + 1
    m = h5[part]["model"]
    for key in ("mean", "pcaBasis", "pcaVariance", "names", "noiseVariance"):
        assert key in m, f"{part}/model/{key} missing"
    assert mean.dtype == np.float32 and basis.dtype == np.float32 and var.dtype == np.float32
    assert mean.shape == (3 * 53349,) and n == 53349
    k = basis.shape[1]
    lo, hi = PARTS[part]
    assert lo <= k <= hi
    assert basis.shape == (3 * 53349, k) and var.shape == (k,)
    assert np.all(np.isfinite(basis)) and np.all(np.isfinite(mean))
    np.testing.assert_allclose(np.linalg.norm(basis.astype(np.float64), axis=0), 1.0, atol=1e-4)
    assert np.all(var > 0)
    assert len(names) == k and all(names) and len(set(names)) == k
    assert h5py.check_string_dtype(m["names"].dtype) is not None
    # compressed and chunked, as the brief for the asset asks
    assert m["pcaBasis"].compression == "gzip" and m["pcaBasis"].chunks is not None


def test_triangles_and_landmarks(h5, arrays):
    _, cells, lm = arrays
    assert cells.dtype == np.int32 and cells.shape == (3, 106111)
    assert cells.min() == 0 and cells.max() == 53349 - 1
    for part in ("color", "expression"):
        np.testing.assert_array_equal(h5[f"{part}/representer/cells"][()], cells)
    assert h5["shape/representer/points"].shape == (3, 53349)
    assert lm.dtype == np.int32 and lm.shape == (68,)
    assert lm.min() >= 0 and lm.max() < 53349 and len(set(lm.tolist())) == 68


def test_colours_and_expression_mean(arrays):
    parts = arrays[0]
    col = parts["color"][0]
    assert col.min() >= 0.0 and col.max() <= 1.0
    assert np.all(parts["expression"][0] == 0)
    skin = col.reshape(-1, 3)[arrays[2][[1, 15]]]  # jaw-contour points: skin, red > green > blue
    assert np.all(skin[:, 0] > skin[:, 1]) and np.all(skin[:, 1] > skin[:, 2])


def test_named_modes_present(arrays):
    parts = arrays[0]
    assert {"face width", "nose length", "jaw width"} <= set(parts["shape"][3])
    assert {"skin tone", "lip tint"} <= set(parts["color"][3])
    assert {"jaw open", "smile", "brow raise"} <= set(parts["expression"][3])


def test_millimetres_y_up_facing_plus_z(arrays):
    parts, cells, lm = arrays
    v = parts["shape"][0].reshape(-1, 3).astype(np.float64)
    p = v[lm]
    assert 70 < np.linalg.norm(p[36] - p[45]) < 120  # outer eye corners, mm
    assert 90 < np.linalg.norm(p[27] - p[8]) < 140  # nasion to chin, mm
    assert p[19, 1] > p[30, 1] > p[8, 1]  # brow above nose tip above chin: y up
    assert p[30, 2] > p[36, 2] and p[30, 2] > p[0, 2]  # the nose points towards +z
    assert p[36, 0] < 0 < p[45, 0]  # iBUG 36 (image left) at -x
    # counter-clockwise seen from the front: face normals around the nose tip point to +z
    t = cells.T
    fn = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])
    near = np.linalg.norm(v[t].mean(1) - p[30], axis=1) < 25
    assert np.mean(fn[near, 2] > 0) > 0.9


def test_expression_bounds_attribute(h5, arrays):
    m = h5["expression/model"]
    names = arrays[0]["expression"][3]
    low = m.attrs["coefficient_low"]
    assert low.shape == (len(names),)
    assert low[names.index("jaw open")] == 0


def test_loads_into_morphable_model_and_samples(arrays):
    """The arrays make a valid MorphableModel; random +-3 std samples stay finite and sane."""
    parts, cells, lm = arrays

    def pca(p):
        return PCAModel(p[0], p[1], np.sqrt(p[2]), names=p[3], source=str(PATH))

    model = MorphableModel(shape=pca(parts["shape"]), triangles=cells.T, texture=pca(parts["color"]),
                           expression=pca(parts["expression"]), landmarks=lm, name="default")
    rng = np.random.default_rng(0)
    alpha = np.clip(rng.standard_normal((4, model.n_shape)), -3, 3)
    beta = np.clip(rng.standard_normal((4, model.n_expression)), 0, 3)
    v = model.vertices(alpha, beta)
    assert v.shape == (4, 53349, 3) and np.all(np.isfinite(v))
    assert np.abs(v - model.shape.mean.reshape(-1, 3)).max() < 60  # mm: no spikes
    c = model.colors(rng.standard_normal((4, model.n_texture)))
    assert c.shape == (4, 53349, 3) and c.min() >= 0 and c.max() <= 1
    assert len(model.five_point_vertices()) == 5
