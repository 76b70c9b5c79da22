"""The embedded default model ``data/ict_default_model.h5`` (ICT Face Model Light + synthetic colour),
read with plain h5py where the layout is the point, and through ``morph.formats.named`` by name.

``ICT_FACEKIT=/path/to/ICT-FaceKit`` (a checkout or bare clone holding commit da5f95a) also checks
that ``data/build_ict_default_model.py`` rebuilds the file byte for byte (about 20 s)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")

from morph.formats.named import EMBEDDED, load_model  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
PATH = DATA / "ict_default_model.h5"
N = 24591  # vertices of morph.formats.ict.FACE_RENDER_PARTS


@pytest.fixture(scope="module")
def h5():
    with h5py.File(PATH, "r") as f:
        yield f


@pytest.fixture(scope="module")
def model():
    return load_model("default")


def test_the_default_name_is_this_file_and_the_old_default_stays_loadable():
    assert EMBEDDED["default"] == PATH.name
    old = load_model("menpo3d")
    assert old.n_vertices == 53349 and old.n_shape == 25


def test_data_stays_small():
    assert PATH.stat().st_size < 20_000_000
    assert sum(p.stat().st_size for p in DATA.iterdir() if p.is_file()) < 40_000_000


def test_provenance_and_mit_notice(h5):
    assert "da5f95a607f5e6b37755b38d3385d7f2853732e5" in str(h5.attrs["source"])
    notice = str(h5.attrs["ict_licence"])
    assert notice.startswith("MIT License") and "Copyright (c) 2020 USC Institute for Creative Technologies" in notice
    assert "SYNTHETIC colour model" in str(h5.attrs["description"])
    assert str(h5["color/model"].attrs["synthetic"]).startswith("yes")
    assert str(h5.attrs["build_script"]) == "data/build_ict_default_model.py"


@pytest.mark.parametrize("part,k", [("shape", 100), ("expression", 53), ("color", 13)])
def test_compact_bfm2017_layout(h5, part, k):
    m = h5[part]["model"]
    assert m["mean"].dtype == np.float32 and m["mean"].shape == (3 * N,)
    basis = m["pcaBasis"][()]
    assert basis.dtype == np.float16 and basis.shape == (3 * N, k)  # float16: half the bytes
    np.testing.assert_allclose(np.linalg.norm(basis.astype(np.float64), axis=0), 1.0, atol=2e-3)
    assert m["pcaVariance"].dtype == np.float32 and np.all(m["pcaVariance"][()] > 0)
    assert m["pcaBasis"].compression == "gzip"
    cells = h5["shape/representer/cells"][()]
    assert cells.shape == (3, 48836) and cells.min() == 0 and cells.max() == N - 1


def test_expression_weights_are_clipped_to_blendshape_range(model):
    e = model.expression
    assert e.names[26] == "jawOpen" and len(e.names) == 53
    np.testing.assert_array_equal(e.low, 0.0)
    assert np.all(e.high > 1)  # one std is a fraction of the full blendshape
    # at its upper bound jawOpen is the full blendshape: the chin drops by centimetres, not millimetres
    beta = np.zeros((2, 53), np.float32)
    beta[0, 26] = e.high[26]
    beta[1, 26] = 1.0
    v = model.vertices(np.zeros((2, model.n_shape)), beta)
    chin = model.shape.mean.reshape(-1, 3)[model.landmarks[8], 1] - v[:, model.landmarks[8], 1]
    assert 15 < chin[0] < 40 and chin[1] < 0.3 * chin[0]


def test_real_head_in_millimetres_facing_plus_z(model):
    v = model.shape.mean.reshape(-1, 3)
    p = v[model.landmarks]
    assert np.all(model.landmarks < 9409)  # on the face part
    assert 80 < np.linalg.norm(p[36] - p[45]) < 110 and 100 < np.linalg.norm(p[27] - p[8]) < 130
    assert p[19, 1] > p[30, 1] > p[8, 1] and p[30, 2] > p[0, 2] + 50


def test_colours_skin_eyes_mouth(model):
    col = model.texture.mean.reshape(-1, 3)
    v = model.shape.mean.reshape(-1, 3)
    skin = col[model.landmarks[[1, 15]]]
    assert np.all(skin[:, 0] > skin[:, 1]) and np.all(skin[:, 1] > skin[:, 2])
    # each eyeball's front pole (largest z) is the pupil: dark; beside it is sclera: light (the
    # kept parts are the first nine, so the eyeballs keep their file numbers)
    for first in (21451, 23021):
        ball = np.arange(first, first + 1570)
        front = ball[np.argmax(v[ball, 2])]
        # the sclera beside the iris, in the eye's opening (its far side is hidden and shaded dark)
        rel = v[ball] - v[front]
        side = ball[(np.abs(rel[:, 0]) > 7.5) & (np.abs(rel[:, 0]) < 9.5) & (np.abs(rel[:, 1]) < 2.5) & (rel[:, 2] > -5)]
        assert col[front].max() < 0.1 and len(side) >= 4 and np.median(col[side].min(1)) > 0.5
    assert {"skin tone", "lip tint", "brow darkness", "iris lightness", "cheek and nose redness"} <= set(
        model.texture.names)


def test_cavities_are_shaded_dark_in_the_albedo(model):
    """The renderer casts no shadows, so the build bakes ambient occlusion into the colours: the
    nostrils' insides are dark beside the nose tip (unshaded they rendered white from below), and
    so are the teeth at the back of the mouth beside the front teeth."""
    col = model.texture.mean.reshape(-1, 3).astype(np.float64)
    v = model.shape.mean.reshape(-1, 3)
    lum = col @ [0.299, 0.587, 0.114]
    L = v[model.landmarks]
    near_nostrils = np.flatnonzero((np.linalg.norm(v - L[33], axis=1) < 12) & (np.arange(len(v)) < 9409))
    assert np.percentile(lum[near_nostrils], 5) < 0.35 * lum[model.landmarks[30]]
    teeth = np.arange(17039, 21451)
    front, back = teeth[v[teeth, 2] > np.percentile(v[teeth, 2], 90)], teeth[v[teeth, 2] < np.percentile(v[teeth, 2], 10)]
    assert lum[back].mean() < 0.24 * lum[front].mean()  # 0.19 shaded; 0.28 with the depth darkening alone


def test_ambient_occlusion_sees_a_ball_and_not_a_ball_inside_it():
    """On a convex surface every vertex sees its whole hemisphere; a ball inside a larger one sees
    nothing (catches a flipped depth test or a wrong pixel of the vertex)."""
    sys.path.insert(0, str(DATA))
    from build_ict_default_model import ambient_occlusion

    def ball(r, n=24):
        th, ph = np.meshgrid(np.linspace(0, np.pi, n), np.linspace(0, 2 * np.pi, 2 * n, endpoint=False), indexing="ij")
        v = r * np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], -1).reshape(-1, 3)
        i = np.arange(n - 1)[:, None] * 2 * n + np.arange(2 * n)[None]
        j = i - i % (2 * n) + (i + 1) % (2 * n)
        t = np.concatenate([np.stack([i, i + 2 * n, j], -1).reshape(-1, 3), np.stack([j, i + 2 * n, j + 2 * n], -1).reshape(-1, 3)])
        return v, t, v / r

    v, t, n = ball(50.0)
    ao = ambient_occlusion(v, t, n)
    assert ao.min() > 0.97
    vi, ti, ni = ball(20.0)
    both = np.concatenate([v, vi]), np.concatenate([t, ti + len(v)])
    ao = ambient_occlusion(*both, np.concatenate([n, ni]))
    assert ao[len(v):].max() < 0.02 and ao[:len(v)].min() > 0.97


@pytest.mark.skipif(not os.environ.get("ICT_FACEKIT"), reason="set ICT_FACEKIT to an ICT-FaceKit git checkout")
def test_build_script_reproduces_the_file(tmp_path):
    out = tmp_path / "rebuilt.h5"
    subprocess.run([sys.executable, str(DATA / "build_ict_default_model.py"), os.environ["ICT_FACEKIT"],
                    "--out", str(out)], check=True, capture_output=True)
    assert out.read_bytes() == PATH.read_bytes()
