"""Named crop templates: the same pipeline framed by InsightFace's ArcFace 112x112 crop instead of
ours, end to end - render, align, train, export - each file recording its template, and training
refusing sets framed differently."""
import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from cli.morph import main as morph
from cli.refine import main as refine
from conftest import TESTDATA
from morph.align.landmarks68 import five_from_68
from morph.align.template import TEMPLATES, crop_template, five_point_template, similarity_from_points


def run(group, *args):
    return CliRunner().invoke(group, [str(a) for a in args])


def assert_framed_by(five: np.ndarray, name: str) -> None:
    """Each image's 5 points were mapped onto the template by their least-squares similarity, so
    that similarity, fitted again to the cropped points, is the identity - and for another
    template it is not."""
    for tpl, same in ((name, True), (next(t for t in TEMPLATES if t != name), False)):
        m = similarity_from_points(five.astype(np.float64), crop_template(tpl).points(112)[None])
        err = np.abs(m - np.eye(2, 3)[None]).max()
        assert (err < 1e-3) == same, (tpl, err)


def test_templates_are_named_points_that_scale():
    arc = crop_template("arcface112")
    assert arc.size == 112 and np.allclose(arc.points()[0], [38.7946, 52.1963])  # insightface's + 0.5
    assert np.allclose(arc.points(224), 2 * arc.points())
    assert np.array_equal(five_point_template(), crop_template("ganfaces108").points(108))
    assert set(TEMPLATES) >= {"ganfaces108", "arcface112"}
    with pytest.raises(Exception, match="unknown; choose one of ganfaces108, arcface112"):
        crop_template("vggface2")


@pytest.fixture(scope="module")
def arcface_sets(sets, tmp_path_factory):
    d = tmp_path_factory.mktemp("arcface")
    for args in (("render", sets / "ids.h5", "-o", d / "synthetic.h5", "--template", "arcface112"),
                 ("align", TESTDATA / "real", "-o", d / "real.h5", "--template", "arcface112", "--all-faces"),
                 ("align", TESTDATA / "real", "-o", d / "real_ganfaces.h5", "--all-faces", "--size", 112)):
        res = run(morph, *args)
        assert res.exit_code == 0, res.output
    return d


def test_render_and_align_frame_faces_by_the_template(arcface_sets):
    d = arcface_sets
    with h5py.File(d / "synthetic.h5", "r") as f:
        assert f["images"].shape[1:] == (112, 112, 3) and f.attrs["crop_template"] == "arcface112"
        five = five_from_68(f["landmarks"][()])
    assert_framed_by(five, "arcface112")
    from morph.base.imageio import read_rgb
    from morph.align.faces import align_face

    for name, tpl, other in (("real.h5", "arcface112", "ganfaces108"), ("real_ganfaces.h5", "ganfaces108", "arcface112")):
        with h5py.File(d / name, "r") as f:
            assert f["images"].shape[1:] == (112, 112, 3) and f.attrs["crop_template"] == tpl
            photo = read_rgb(TESTDATA / "real" / f["source"].asstr()[0])
            stored = f["images"][0].astype(float)
            # the photo, cropped onto this template's points (landmarks5 is stored in float32)
            assert np.abs(align_face(photo, f["landmarks5"][:1], 112, template=tpl)[0] - stored).mean() < 0.5
            assert np.abs(align_face(photo, f["landmarks5"][:1], 112, template=other)[0] - stored).mean() > 10


def test_training_refuses_sets_framed_differently(arcface_sets, tmp_path):
    d = arcface_sets
    res = run(refine, "train", "--synthetic", d / "synthetic.h5", "--real", d / "real_ganfaces.h5", "--variant",
              "no_pairs", "--out", tmp_path / "run", "--steps", 1)
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "aligned by different crop templates" in res.output and "--template" in res.output


def test_train_and_export_with_the_arcface_crop(arcface_sets, sets, tmp_path):
    d = arcface_sets
    res = run(refine, "train", "--synthetic", d / "synthetic.h5", "--real", d / "real.h5", "--variant", "no_pairs",
              "--out", tmp_path / "run", "--steps", 2, "--batch-size", 2, "--config", sets / "small.yaml")
    assert res.exit_code == 0, res.output
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000002.pt"
    res = run(refine, "export-dataset", "--checkpoint", ckpt, "--n-identities", 2, "--images-per-identity", 2,
              "--seed", 5, "--format", "hdf5", "--no-scores", "--out", tmp_path / "export")
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "export" / "ganfaces.h5", "r") as f:
        assert f["images"].shape[1:] == (112, 112, 3) and f.attrs["crop_template"] == "arcface112"
        five = five_from_68(f["landmarks"][()])
    assert_framed_by(five, "arcface112")
    man = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert man["settings"]["crop_template"] == "arcface112" and man["image"]["size"] == 112
