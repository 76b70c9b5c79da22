"""The ICT-FaceKit FaceXModel loader (morph/formats/ict.py) on a fixture in the real folder layout
(tests/fixtures_formats.py ``write_ict``): every expectation is computed from the numbers written
to the fixture's files, not from the loader."""
from __future__ import annotations

import numpy as np
import pytest

import fixtures_formats as fx
from morph import formats
from morph.base.errors import UserError
from morph.formats import ict
from morph.formats.named import load_model

DEFAULT_KEEP = np.concatenate([np.arange(ict.PARTS[p][0], ict.PARTS[p][1] + 1) for p in ict.FACE_RENDER_PARTS])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("ict") / "FaceXModel"
    return path, fx.write_ict(path)


@pytest.fixture(scope="module")
def model(folder):
    return formats.load(folder[0])


def one_sentence(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg.endswith("."), msg
    return msg


def test_mean_is_the_neutral_head_in_millimetres(folder, model):
    path, d = folder
    assert model.n_vertices == DEFAULT_KEEP.size == 24591
    np.testing.assert_allclose(model.shape.mean.reshape(-1, 3), 10.0 * d["neutral"][DEFAULT_KEEP], rtol=1e-6)


def test_identity_modes_are_one_std_each(folder, model):
    path, d = folder
    assert model.n_shape == 3 and model.shape.names == ["identity000", "identity001", "identity002"]
    base = model.vertices(np.zeros(3))[0].astype(np.float64)
    for k, ident in enumerate(d["identities"]):
        alpha = np.zeros(3)
        alpha[k] = 2.0  # two standard deviations: twice the file's displacement
        moved = model.vertices(alpha)[0] - base
        np.testing.assert_allclose(moved, 2.0 * 10.0 * (ident - d["neutral"])[DEFAULT_KEEP], atol=2e-4)


def test_identities_are_read_up_to_the_first_gap(tmp_path):
    d = fx.write_ict(tmp_path / "FaceXModel", n_identities=2)
    (tmp_path / "FaceXModel" / "identity001.obj").rename(tmp_path / "FaceXModel" / "identity003.obj")
    m = ict.load(tmp_path / "FaceXModel", expressions=[])
    assert m.n_shape == 1 and m.expression is None
    np.testing.assert_allclose(m.vertices(np.ones(1))[0] - m.vertices(np.zeros(1))[0],
                               10.0 * (d["identities"][0] - d["neutral"])[DEFAULT_KEEP], atol=2e-4)


def test_expressions_are_blendshapes_in_the_listed_order(folder, model):
    path, d = folder
    assert model.expression.names == list(fx.ICT_EXPRESSIONS)
    np.testing.assert_array_equal(model.expression.low, 0.0)
    np.testing.assert_array_equal(model.expression.high, 1.0)
    alpha = np.zeros(model.n_shape)
    base = model.vertices(alpha)[0].astype(np.float64)
    for j, name in enumerate(fx.ICT_EXPRESSIONS):
        beta = np.zeros(len(fx.ICT_EXPRESSIONS))
        beta[j] = 1.0  # weight 1: the full blendshape
        np.testing.assert_allclose(model.vertices(alpha, beta)[0] - base,
                                   10.0 * (d["expressions"][name] - d["neutral"])[DEFAULT_KEEP], atol=2e-4)


def test_a_named_subset_of_expressions(folder):
    path, d = folder
    m = ict.load(path, expressions=["jawOpen", "browDown_L"])
    assert m.expression.names == ["jawOpen", "browDown_L"]
    moved = m.vertices(np.zeros(m.n_shape), np.array([1.0, 0.0]))[0] - m.vertices(np.zeros(m.n_shape))[0]
    np.testing.assert_allclose(moved, 10.0 * (d["expressions"]["jawOpen"] - d["neutral"])[DEFAULT_KEEP], atol=2e-4)
    with pytest.raises(UserError) as err:
        ict.load(path, expressions=["jawOpen", "tongueOut"])
    assert "tongueOut" in one_sentence(err) and "vertex_indices.json" in str(err.value)


def test_landmarks_are_the_listed_vertices(folder, model):
    path, d = folder
    want = 10.0 * d["neutral"][d["config"]["idx_to_landmark_verts"]]
    np.testing.assert_allclose(model.shape.mean.reshape(-1, 3)[model.landmarks], want, rtol=1e-6)


def test_polygons_become_triangles_covering_them_with_their_winding(folder, model):
    """Each kept polygon's triangles (found by its vertices: the fixture uses no vertex twice) are
    len - 2 triangles whose directed edges hold each of the polygon's boundary edges once, in the
    file's order (so the winding is kept), and each diagonal once in each direction."""
    path, d = folder
    old = DEFAULT_KEEP[model.triangles]  # back to the file's vertex numbers
    kept = [ids for _, ids in d["polygons"] if np.isin(ids, DEFAULT_KEEP).all()]
    assert len(old) == sum(len(ids) - 2 for ids in kept)
    for ids in kept:
        mine = old[np.isin(old, ids).all(1)]
        assert len(mine) == len(ids) - 2, ids
        edges = [(int(a), int(b)) for t in mine for a, b in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0]))]
        boundary = [(ids[i], ids[(i + 1) % len(ids)]) for i in range(len(ids))]
        assert all(edges.count(e) == 1 for e in boundary), (ids, mine)
        inner = [e for e in edges if e not in boundary]
        assert all((b, a) in inner for a, b in inner), (ids, mine)


def test_parts_choose_vertices_and_polygons(folder):
    path, d = folder
    m = ict.load(path, parts=["face", "Eyeball_Left"], expressions=[])
    keep = np.r_[0:9409, 21451:23021]
    assert m.n_vertices == keep.size
    np.testing.assert_allclose(m.shape.mean.reshape(-1, 3), 10.0 * d["neutral"][keep], rtol=1e-6)
    kept = [ids for _, ids in d["polygons"] if np.isin(ids, keep).all()]
    assert len(kept) == 4  # face and eyeball: a quad and a triangle each; the seam quad needs head and neck
    assert sorted(map(tuple, np.sort(keep[m.triangles], 1))) == sorted(
        tuple(sorted((ids[0], ids[i], ids[i + 1]))) for ids in kept for i in range(1, len(ids) - 1))
    with pytest.raises(UserError) as err:
        ict.load(path, parts=["face", "hair"])
    assert "hair" in one_sentence(err) and "eyelashes left" in str(err.value)
    with pytest.raises(UserError) as err:
        ict.load(path, parts=["head and neck"])
    assert "face" in one_sentence(err)  # the landmarks live on the face part


def test_the_cli_names_the_folder_as_a_model(folder):
    path, d = folder
    m = load_model(str(path))
    assert m.n_vertices == 24591 and m.paint_albedo and m.texture is None


def test_a_folder_that_is_not_facexmodel_is_one_clear_error(tmp_path):
    (tmp_path / "identity000.obj").write_text("v 0 0 0\n")
    with pytest.raises(UserError) as err:
        formats.load(tmp_path)
    msg = one_sentence(err)
    assert str(tmp_path) in msg and "generic_neutral_mesh.obj" in msg and "ICT-FaceKit" in msg


def test_a_cut_obj_file_is_named(tmp_path):
    path = tmp_path / "FaceXModel"
    fx.write_ict(path, n_identities=1)
    text = (path / "identity000.obj").read_text().splitlines(keepends=True)
    (path / "identity000.obj").write_text("".join(text[:1000]))
    with pytest.raises(UserError) as err:
        ict.load(path, expressions=[])
    assert "identity000.obj" in one_sentence(err) and "26719" in str(err.value)
