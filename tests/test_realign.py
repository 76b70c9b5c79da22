"""morph render --align-by mtcnn | ibug68: renders re-cropped by a detector run on them (morph/align/realign.py)."""
import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from cli.morph import main
from morph.align.landmarks68 import five_from_68
from morph.align.template import five_point_template, similarity_from_points


def run(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


@pytest.fixture(scope="module")
def renders(tmp_path_factory):
    d = tmp_path_factory.mktemp("realign")
    run("sample-identities", "--model", "default", "--n-identities", "8", "--images-per-identity", "3",
        "--seed", "5", "-o", d / "ids.h5")
    out = {}
    for rule in ("projection", "mtcnn", "ibug68"):
        run("render", d / "ids.h5", "-o", d / f"{rule}.h5", "--align-by", rule)
        with h5py.File(d / f"{rule}.h5") as f:
            out[rule] = {k: f[k][:] for k in ("images", "landmarks", "masks", *(("aligned_by",) if rule != "projection" else ()))}
            assert f.attrs["align_by"] == rule
    return out


def test_detector_crops_are_the_same_faces_framed_by_the_detected_points(renders):
    template = five_point_template()
    proj = renders["projection"]
    # Projection crops are the least-squares fit of the projected points to the template: fitting
    # again gives the identity.
    np.testing.assert_allclose(similarity_from_points(five_from_68(proj["landmarks"]), template),
                               np.broadcast_to(np.eye(2, 3), (len(proj["landmarks"]), 2, 3)), atol=1e-3)
    p5 = five_from_68(proj["landmarks"])
    err = {}
    for rule, code in (("mtcnn", 1), ("ibug68", 2)):
        r = renders[rule]
        assert r["images"].shape == proj["images"].shape and r["masks"].shape == proj["masks"].shape
        assert (r["aligned_by"] == code).mean() >= 0.9  # MTCNN finds ~98% of renders
        # Same faces, framed a little differently: the projected points move by a few pixels.
        d = np.linalg.norm(five_from_68(r["landmarks"]) - p5, axis=-1).mean(-1)
        assert np.median(d) < 4.0, (rule, d)
        assert not np.array_equal(r["images"], proj["images"])
        # masks follow the images: the face covers about as much of the crop
        assert abs(r["masks"].mean() - proj["masks"].mean()) < 0.05
        err[rule] = d[r["aligned_by"] > 0].mean()
    # Refined points sit closer to the renders' own (projected) points than MTCNN's do.
    print(err)
    assert err["ibug68"] < err["mtcnn"], err


def test_a_render_without_a_detected_face_keeps_its_projection_crop(tmp_path, monkeypatch):
    from morph.align import mtcnn

    monkeypatch.setattr(mtcnn.MTCNN, "detect", lambda self, images: [mtcnn.FaceDetections.empty() for _ in images])
    run("sample-identities", "--model", "default", "--n-identities", "2", "--images-per-identity", "2",
        "--seed", "5", "-o", tmp_path / "ids.h5")
    run("render", tmp_path / "ids.h5", "-o", tmp_path / "r.h5", "--align-by", "mtcnn")
    with h5py.File(tmp_path / "r.h5") as f:
        assert (f["aligned_by"][:] == 0).all()
        fit = similarity_from_points(five_from_68(f["landmarks"][:]), five_point_template())
        np.testing.assert_allclose(fit, np.broadcast_to(np.eye(2, 3), fit.shape), atol=1e-3)


def test_depth_with_a_detector_crop_is_one_clear_error(tmp_path):
    run("sample-identities", "--model", "default", "--n-identities", "1", "--images-per-identity", "1",
        "--seed", "5", "-o", tmp_path / "ids.h5")
    r = CliRunner().invoke(main, ["render", str(tmp_path / "ids.h5"), "-o", str(tmp_path / "r.h5"),
                                  "--align-by", "mtcnn", "--with", "depth"])
    assert r.exit_code == 2 and "needs --align-by projection" in r.output
    assert not (tmp_path / "r.h5").exists()
