"""Model-file loaders: tiny fixtures in each format's exact layout, the real SFM, and errors."""
from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

import fixtures_formats as fx
from conftest import requires_eos
from morph import formats
from morph.base.errors import UserError
from morph.formats import face3d
from morph.model.morphable import compose

SFM = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "models" / "sfm"
RNG = np.random.default_rng(123)


def one_sentence(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg.endswith("."), msg
    return msg


def flat(model, alpha, beta=None):
    return model.vertices(alpha, beta).reshape(-1).astype(np.float64)


def assert_front_ccw(model):
    v = model.shape.mean.reshape(-1, 3).astype(np.float64)
    t = model.triangles
    nz = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])[:, 2]
    assert np.all(nz > 0), "every triangle of the bulging patch should face +z"


def same_triangles(a, b):
    """Same triangles with the same winding, whatever the starting corner."""
    def canon(t):
        t = np.asarray(t)
        r = np.argmin(t, axis=1)
        return sorted(tuple(np.roll(row, -k)) for row, k in zip(t, r))
    return canon(a) == canon(b)


# ----------------------------------------------------------------------------- BFM 2009 --

@pytest.mark.parametrize("v73", [False, True])
def test_bfm2009(tmp_path, v73):
    path = tmp_path / "01_MorphableModel.mat"
    raw = fx.write_bfm2009(path, v73=v73)
    m = formats.load(path)
    assert (m.n_vertices, m.n_shape, m.n_texture, m.n_expression) == (fx.N, 5, 5, 0)
    alpha, gamma = RNG.standard_normal(5), RNG.standard_normal(5)
    ev = raw["shapeEV"].astype(np.float64).ravel()
    want_um = raw["shapeMU"].ravel() + raw["shapePC"].astype(np.float64) @ (ev * alpha)
    np.testing.assert_allclose(flat(m, alpha), want_um / 1000.0, rtol=0, atol=1e-3)
    assert np.ptp(m.shape.mean.reshape(-1, 3)[:, 0]) == pytest.approx(150.0, rel=1e-5)  # mm
    want_rgb = (raw["texMU"].ravel() + raw["texPC"].astype(np.float64) @ (raw["texEV"].ravel() * gamma)) / 255
    np.testing.assert_allclose(m.colors(gamma).reshape(-1), np.clip(want_rgb, 0, 1), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(m.shape.basis, axis=0), 1.0, atol=1e-5)
    # 1-based clockwise 'tl' -> 0-based counter-clockwise seen from +z
    assert m.triangles.min() == 0 and same_triangles(m.triangles, fx.face_patch()[1])
    assert same_triangles(m.triangles, (raw["tl"].astype(np.int64) - 1)[:, [0, 2, 1]])
    assert_front_ccw(m)
    assert m.landmarks is None and m.shape.source == str(path)


# ----------------------------------------------------------------------------- BFM 2017 --

def test_bfm2017(tmp_path):
    path = tmp_path / "model2017-1_face12_nomouth.h5"
    raw = fx.write_bfm2017(path)
    m = formats.load(path)
    assert (m.n_shape, m.n_texture, m.n_expression) == (4, 4, 3)
    a, b, g = RNG.standard_normal(4), RNG.standard_normal(3), RNG.standard_normal(4)
    want = (raw["shape/model/mean"] + raw["shape/model/pcaBasis"] @ (np.sqrt(raw["shape/model/pcaVariance"]) * a)
            + raw["expression/model/mean"]  # a mean deformation, added as eos and scalismo do
            + raw["expression/model/pcaBasis"] @ (np.sqrt(raw["expression/model/pcaVariance"]) * b))
    np.testing.assert_allclose(flat(m, a, b), want, atol=1e-4)
    want_rgb = raw["color/model/mean"] + raw["color/model/pcaBasis"] @ (np.sqrt(raw["color/model/pcaVariance"]) * g)
    np.testing.assert_allclose(m.colors(g).reshape(-1), np.clip(want_rgb, 0, 1), atol=1e-5)
    np.testing.assert_allclose(m.expression.mean, raw["expression/model/mean"], atol=1e-6)
    np.testing.assert_array_equal(m.triangles, raw["shape/representer/cells"].T)
    assert_front_ccw(m)
    assert m.shape.names == [f"identity {i}" for i in range(4)]
    assert m.expression.names == ["jaw open", "smile", "brows ü"] and m.texture.names is None
    np.testing.assert_array_equal(m.landmarks, raw["landmarks/ibug68"])
    assert m.landmarks[60] == -1


def test_bfm2017_shape_only_flips_clockwise_cells(tmp_path):
    path = tmp_path / "shape_only.h5"
    fx.write_bfm2017(path, parts=(), names=False, landmarks=False, tris=fx.face_patch()[1][:, [0, 2, 1]])
    m = formats.load(path)
    assert m.texture is None and m.expression is None and m.landmarks is None
    assert_front_ccw(m)


# --------------------------------------------------------------------------------- LSFM --

@pytest.mark.parametrize("unit", [1.0, 1000.0, 1e-3])
def test_lsfm(tmp_path, unit):
    path = tmp_path / "all_all_all.mat"
    raw = fx.write_lsfm(path, unit=unit)
    m = formats.load(path)
    assert (m.n_vertices, m.n_shape, m.texture, m.expression) == (fx.N, 4, None, None)
    a = RNG.standard_normal(4)
    want_file_units = raw["mean"] + raw["components"] @ (np.sqrt(raw["eigenvalues"]) * a)
    np.testing.assert_allclose(flat(m, a), want_file_units / unit, atol=1e-3)  # back in mm
    np.testing.assert_array_equal(m.triangles, raw["trilist"].astype(np.int64))
    assert_front_ccw(m)


# ------------------------------------------------------------------------------ face3d --

def test_face3d_bfm_and_300wlp_raw_coefficients(tmp_path):
    path = tmp_path / "BFM.mat"
    raw = fx.write_face3d_bfm(path)
    m = formats.load(path)
    assert (m.n_shape, m.n_expression, m.n_texture) == (5, 4, 5)
    # 300W-LP style raw parameters, (K, 1) columns as in the annotation .mat files
    shape_para = (raw["shapeEV"].ravel() * RNG.standard_normal(5)).reshape(-1, 1)
    exp_para = (raw["expEV"].ravel() * RNG.standard_normal(4)).reshape(-1, 1)
    want_um = (raw["shapeMU"] + raw["expMU"] + raw["shapePC"] @ shape_para + raw["expPC"] @ exp_para).ravel()
    alpha = face3d.raw_to_normalized("shape", shape_para, path)
    beta = face3d.raw_to_normalized("expression", exp_para, path)
    np.testing.assert_allclose(flat(m, alpha, beta), want_um / 1000.0, atol=1e-3)
    np.testing.assert_allclose(alpha, shape_para.ravel() / raw["shapeEV"].ravel())
    np.testing.assert_allclose(face3d.raw_to_normalized("expression", exp_para, raw["expEV"]), beta)
    # colours: face3d's generate_colors
    g = RNG.standard_normal(5)
    want_rgb = (raw["texMU"].ravel() + raw["texPC"] @ (raw["texEV"].ravel() * g)) / 255.0
    np.testing.assert_allclose(m.colors(g).reshape(-1), np.clip(want_rgb, 0, 1), atol=1e-5)
    np.testing.assert_array_equal(m.landmarks, raw["kpt_ind"].ravel().astype(np.int64) - 1)
    assert same_triangles(m.triangles, fx.face_patch()[1])
    assert_front_ccw(m)


def test_model_expression_only_composes(tmp_path):
    exp_path, bfm_path = tmp_path / "Model_Expression.mat", tmp_path / "BFM.mat"
    raw = fx.write_model_expression(exp_path)
    fx.write_face3d_bfm(bfm_path, seed=7)
    e = formats.load(exp_path)
    assert e.n_shape == 0 and e.triangles.shape == (0, 3) and e.n_expression == 4
    m = compose(formats.load(bfm_path), expression=e)
    assert m.sources["expression"] == str(exp_path)
    b = RNG.standard_normal(4)
    delta = flat(m, np.zeros(5), b) - flat(m, np.zeros(5))
    np.testing.assert_allclose(delta, raw["w_exp"] @ (raw["sigma_exp"].ravel() * b) / 1000.0, atol=1e-3)
    np.testing.assert_allclose(e.expression.mean, raw["mu_exp"].ravel() / 1000.0, atol=1e-5)


# ---------------------------------------------------------------------------- 3DDFA_V2 --

@pytest.mark.parametrize("tri_pkl", [False, True])
def test_tddfa_v2(tmp_path, tri_pkl):
    raw = fx.write_tddfa_v2(tmp_path, with_tri_pkl=tri_pkl)
    m = formats.load(tmp_path / "bfm_noneck_v3.pkl")
    assert (m.n_shape, m.n_expression, m.texture) == (40, 10, None)
    std = raw["params"]["std"].astype(np.float64)
    a_raw, e_raw = std[12:52] * RNG.standard_normal(40), std[52:62] * RNG.standard_normal(10)
    want_um = (raw["u"].ravel() + raw["w_shp"][:, :40].astype(np.float64) @ a_raw
               + raw["w_exp"][:, :10].astype(np.float64) @ e_raw)
    got = flat(m, face3d.raw_to_normalized("shape", a_raw, std[12:52]),
               face3d.raw_to_normalized("expression", e_raw, std[52:62]))
    np.testing.assert_allclose(got, want_um / 1000.0, atol=2e-3)
    np.testing.assert_array_equal(m.landmarks, raw["kp_vertex"])
    assert same_triangles(m.triangles, fx.face_patch()[1])
    assert_front_ccw(m)


def test_tddfa_v2_needs_param_std(tmp_path):
    fx.write_tddfa_v2(tmp_path, with_params=False)
    with pytest.raises(UserError) as err:
        formats.load(tmp_path / "bfm_noneck_v3.pkl")
    assert "param_mean_std_62d_120x120.pkl" in one_sentence(err)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_unexecuted(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "bfm_noneck_v3.pkl"
    with open(path, "wb") as f:
        pickle.dump({"u": np.zeros(3), "hook": _Evil(marker)}, f)
    with pytest.raises(UserError) as err:
        formats.load(path)
    msg = one_sentence(err)
    assert "code" in msg and "refuse" in msg and str(path) in msg
    assert not marker.exists()


# ------------------------------------------------------------------- eos / SFM (real) --

def test_a_bin_model_without_eos_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "eos", None)  # as on Python 3.13, where eos-py has no wheel
    with pytest.raises(UserError, match=r"sfm_shape_3448.bin: is an eos/Surrey .bin model.*ganfaces\[sfm\]"):
        formats.load(SFM / "sfm_shape_3448.bin")
    with pytest.raises(UserError, match="ganfaces"):
        formats.load(SFM / "expression_blendshapes_3448.bin")


@requires_eos
def test_sfm_real_files():
    shape = formats.load(SFM / "sfm_shape_3448.bin")
    assert (shape.n_vertices, shape.triangles.shape, shape.n_shape) == (3448, (6736, 3), 63)
    assert shape.texture is None and shape.expression is None
    width = np.ptp(shape.shape.mean.reshape(-1, 3)[:, 0])
    assert 120 < width < 200  # millimetres
    np.testing.assert_allclose(np.linalg.norm(shape.shape.basis, axis=0), 1.0, atol=1e-4)
    assert shape.landmarks.shape == (68,)
    assert (shape.landmarks[8], shape.landmarks[30], shape.landmarks[36], shape.landmarks[67]) == (33, 114, 177, 404)
    assert shape.landmarks[0] == -1 and shape.landmarks[60] == -1 and (shape.landmarks >= 0).sum() == 50
    assert_front_ccw_mostly(shape)

    blend = formats.load(SFM / "expression_blendshapes_3448.bin")
    assert blend.n_expression == 6 and blend.expression.names[5] == "surprise"
    m = compose(shape, expression=blend)
    assert m.n_expression == 6 and m.landmarks is not None
    import eos
    bs = eos.morphablemodel.load_blendshapes(str(SFM / "expression_blendshapes_3448.bin"))
    beta = np.array([0, 0, 0, 0.5, 0, 1.0])
    delta = flat(m, np.zeros(63), beta) - flat(m, np.zeros(63))
    want = 0.5 * np.asarray(bs[3].deformation) + np.asarray(bs[5].deformation)
    np.testing.assert_allclose(delta, want, atol=1e-3)
    # the eos shape model's own sample, with our std-unit coefficients
    pca = eos.morphablemodel.load_model(str(SFM / "sfm_shape_3448.bin")).get_shape_model()
    a = RNG.standard_normal(63)
    np.testing.assert_allclose(flat(m, a), np.asarray(pca.draw_sample(a.tolist())), atol=1e-2)


def assert_front_ccw_mostly(model):
    v = model.shape.mean.reshape(-1, 3).astype(np.float64)
    t = model.triangles
    nz = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]])[:, 2]
    assert (nz > 0).mean() > 0.9


# ------------------------------------------------------------------------- YAML specs --

@requires_eos
def test_spec_composes_files_and_reads_landmarks(tmp_path):
    lm = np.arange(68) * 10
    (tmp_path / "lm.txt").write_text("# iBUG order\n" + "\n".join(map(str, lm)) + "\n")
    spec = tmp_path / "sfm.yaml"
    spec.write_text(f"name: sfm+blend\nshape: {SFM / 'sfm_shape_3448.bin'}\n"
                    f"expression: {SFM / 'expression_blendshapes_3448.bin'}\nlandmarks: lm.txt\n")
    m = formats.load_spec(spec)
    assert m.name == "sfm+blend" and m.n_expression == 6 and m.n_shape == 63
    np.testing.assert_array_equal(m.landmarks, lm)
    assert m.sources["landmarks"] == str(tmp_path / "lm.txt")
    # the eos TOML mapping is accepted as a landmark file too
    spec.write_text(f"shape: {SFM / 'sfm_shape_3448.bin'}\nlandmarks: {SFM / 'ibug_to_sfm.txt'}\n")
    assert formats.load_spec(spec).landmarks[30] == 114


@requires_eos
def test_spec_paths_are_relative_to_the_yaml(tmp_path):
    (tmp_path / "models").mkdir()
    fx.write_face3d_bfm(tmp_path / "models" / "BFM.mat")
    fx.write_bfm2017(tmp_path / "models" / "bfm2017.h5", parts=("color",), tris=fx.face_patch()[1])
    spec = tmp_path / "paper.yaml"
    spec.write_text("shape: models/bfm2017.h5\ntexture: models/BFM.mat\nexpression: models/BFM.mat\n")
    m = formats.load_spec(spec)
    assert m.n_shape == 4 and m.n_texture == 5 and m.n_expression == 4
    assert m.sources["texture"] == str(tmp_path / "models" / "BFM.mat")


@requires_eos
def test_spec_unknown_key(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(f"shape: {SFM / 'sfm_shape_3448.bin'}\ncolour: x.mat\n")
    with pytest.raises(UserError) as err:
        formats.load_spec(spec)
    msg = one_sentence(err)
    assert "colour" in msg and "shape, texture, expression, landmarks, name" in msg


@requires_eos
def test_spec_missing_file_is_named(tmp_path):
    spec = tmp_path / "m.yaml"
    spec.write_text(f"shape: {SFM / 'sfm_shape_3448.bin'}\nexpression: nowhere/exp.bin\n")
    with pytest.raises(UserError) as err:
        formats.load_spec(spec)
    assert str(tmp_path / "nowhere" / "exp.bin") in one_sentence(err)


# ------------------------------------------------------------------------------ errors --

def test_missing_file(tmp_path):
    with pytest.raises(UserError) as err:
        formats.load(tmp_path / "01_MorphableModel.mat")
    assert "01_MorphableModel.mat" in one_sentence(err)


def _cut_in_half(path: Path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_mat(tmp_path):
    path = tmp_path / "01_MorphableModel.mat"
    fx.write_bfm2009(path)
    _cut_in_half(path)
    with pytest.raises(UserError) as err:
        formats.load(path)
    msg = one_sentence(err)
    assert str(path) in msg and "truncated or corrupt" in msg


def test_truncated_h5(tmp_path):
    path = tmp_path / "model2017.h5"
    fx.write_bfm2017(path)
    _cut_in_half(path)
    with pytest.raises(UserError) as err:
        formats.load(path)
    msg = one_sentence(err)
    assert str(path) in msg and "truncated or corrupt" in msg


@requires_eos
def test_truncated_pkl_and_bin(tmp_path):
    fx.write_tddfa_v2(tmp_path)
    _cut_in_half(tmp_path / "bfm_noneck_v3.pkl")
    with pytest.raises(UserError) as err:
        formats.load(tmp_path / "bfm_noneck_v3.pkl")
    one_sentence(err)
    for name in ("sfm_shape_3448.bin", "expression_blendshapes_3448.bin"):
        cut = tmp_path / name
        cut.write_bytes((SFM / name).read_bytes()[: (SFM / name).stat().st_size // 2])
        with pytest.raises(UserError) as err:
            formats.load(cut)
        assert str(cut) in one_sentence(err)


def test_mat_with_wrong_keys(tmp_path):
    from scipy.io import savemat
    path = tmp_path / "mystery.mat"
    savemat(str(path), {"vertices": np.zeros((3, 3)), "faces": np.ones((1, 3))})
    with pytest.raises(UserError) as err:
        formats.load(path)
    msg = one_sentence(err)
    assert "faces, vertices" in msg and "shapeMU" in msg and str(path) in msg


def test_mat_with_wrong_shapes(tmp_path):
    from scipy.io import savemat
    path = tmp_path / "01_MorphableModel.mat"
    raw = fx.write_bfm2009(path)
    raw["shapePC"] = raw["shapePC"][:-3]
    savemat(str(path), raw)
    with pytest.raises(UserError) as err:
        formats.load(path)
    assert "'shapePC'" in one_sentence(err)


def test_struct_missing_field(tmp_path):
    from scipy.io import savemat
    path = tmp_path / "BFM.mat"
    raw = fx.write_face3d_bfm(path)
    del raw["expPC"]
    savemat(str(path), {"model": raw})
    with pytest.raises(UserError) as err:
        formats.load(path)
    assert "model.expPC" in one_sentence(err)


def test_unknown_extension(tmp_path):
    path = tmp_path / "face.obj"
    path.write_text("v 0 0 0\n")
    with pytest.raises(UserError) as err:
        formats.load(path)
    assert ".mat" in one_sentence(err)


@requires_eos
def test_compose_mismatched_topologies_names_both_files(tmp_path):
    a, b = tmp_path / "shape.h5", tmp_path / "BFM.mat"
    fx.write_bfm2017(a)
    fx.write_face3d_bfm(b, tris=fx.other_diagonal())
    with pytest.raises(UserError) as err:
        compose(formats.load(a), texture=formats.load(b))
    msg = one_sentence(err)
    assert str(a) in msg and str(b) in msg
    with pytest.raises(UserError) as err:  # different vertex counts
        compose(formats.load(SFM / "sfm_shape_3448.bin"), expression=formats.load(b))
    msg = one_sentence(err)
    assert "sfm_shape_3448.bin" in msg and str(b) in msg
