"""68-point refinement of MTCNN detections (morph/align/landmarks68.py) against human annotations and
against renders with exact landmarks."""
import importlib.util

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TESTDATA, read_pts

from cli.morph import main
from morph.base.errors import UserError
from morph.base.imageio import read_rgb
from morph.align.landmarks68 import LandmarkRefiner, five_from_68, model_path, read_mean_shape
from morph.align.faces import align_face
from morph.align.mtcnn import MTCNN

ANNOTATED = ["takeo.ppm", "einstein.jpg", "breakingbad.jpg"]
# iBUG 68 mirror pairs (0-based): contour, brows, eyes, nose wings, mouth.
MIRROR = np.array(list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30] + [35, 34, 33, 32, 31]
                  + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]
                  + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65])


@pytest.fixture(scope="module")
def detector():
    return MTCNN()


@pytest.fixture(scope="module")
def refiner():
    return LandmarkRefiner()


@pytest.fixture(scope="module")
def annotated(detector, refiner):
    """Per annotated photo: iBUG 68 truth, MTCNN's 5 points, refined 68 (all 1-based)."""
    out = {}
    for name in ANNOTATED:
        img = read_rgb(TESTDATA / "real" / name)
        truth = read_pts(TESTDATA / "real" / (name.rsplit(".", 1)[0] + ".pts"))
        det = detector.detect([img])[0]
        k = int(np.argmin(np.linalg.norm(det.landmarks - five_from_68(truth)[None], axis=-1).mean(-1)))
        out[name] = {"truth": truth, "mtcnn": det.landmarks[k], "refined": refiner.refine(img, det.landmarks[k])}
    return out


def test_mean_shape_is_read_from_the_model_file_and_is_a_symmetric_face():
    mean = read_mean_shape(model_path())
    assert mean.shape == (68, 2)
    # dlib normalises the start shape to the training boxes: the face sits in the unit square,
    # the chin just below it (the HOG boxes stop above the chin).
    eyes = five_from_68(mean)
    assert eyes[0, 0] < 0.5 < eyes[1, 0] and abs(eyes[0, 1] - eyes[1, 1]) < 0.01
    assert eyes[0, 1] < eyes[2, 1] < eyes[3, 1] < mean[8, 1]
    mirrored = np.stack([1 - mean[MIRROR, 0], mean[MIRROR, 1]], 1)
    assert np.abs(mirrored - mean).max() < 0.02


def test_a_file_that_is_not_a_shape_predictor_is_one_clear_error(tmp_path):
    bad = tmp_path / "x.dat"
    bad.write_bytes(b"\x01\x02" * 10)
    with pytest.raises(UserError, match="not a dlib 68-point shape_predictor"):
        read_mean_shape(bad)


def test_missing_model_package_is_a_user_error(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(UserError, match="face_recognition_models"):
        model_path()


def test_refined_points_meet_the_annotations(annotated):
    """Issue 3: mean error of the 5 points <= 5% of the inter-ocular distance, over the annotated
    faces. Inter-ocular distance as 300-W defines it (Sagonas et al. 2016): outer eye corners,
    points 37 and 46. Refining also beats MTCNN's own points on every photo."""
    outer, centre = [], []
    for name, a in annotated.items():
        truth5 = five_from_68(a["truth"])
        err = np.linalg.norm(five_from_68(a["refined"]) - truth5, axis=1).mean()
        err_mtcnn = np.linalg.norm(a["mtcnn"] - truth5, axis=1).mean()
        assert err < err_mtcnn, (name, err, err_mtcnn)
        outer.append(err / np.linalg.norm(a["truth"][36] - a["truth"][45]))
        centre.append(err / np.linalg.norm(truth5[0] - truth5[1]))
    print(f"refined 5-point error: {np.round(100 * np.array(outer), 1)}% of outer-corner distance "
          f"(mean {100 * np.mean(outer):.1f}%), {np.round(100 * np.array(centre), 1)}% of eye-centre distance "
          f"(mean {100 * np.mean(centre):.1f}%)")
    assert np.mean(outer) <= 0.05


def test_refined_points_beat_mtcnn_on_renders_with_exact_landmarks(tmp_path, detector, refiner):
    """Renders of new identities at 256 px: the 68 landmark vertices projected are exact truth.
    Renders of the menpo3d model, on which the test was set: refined eyes and mouth corners 3-5% of
    the eye distance from its vertices, MTCNN's 8-11%. On the ICT default (same seed) the refined
    five points are 9.5% from its vertex_indices.json points on average and MTCNN's 10.5%, with the
    largest misses on strongly turned heads (seen on 384 px renders); why the refinement gains less
    there is not known."""
    ids, syn = tmp_path / "ids.h5", tmp_path / "syn.h5"
    r = CliRunner().invoke(main, ["sample-identities", "--model", "menpo3d", "--n-identities", "16",
                                  "--images-per-identity", "3", "--seed", "11", "-o", str(ids)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["render", str(ids), "-o", str(syn), "--size", "256"])
    assert r.exit_code == 0, r.output
    with h5py.File(syn) as f:
        images, truth = f["images"][:], f["landmarks"][:] + 0.5  # pixel centres at +0.5 -> 1-based
    errs = {"mtcnn": [], "refined": []}
    for img, t, det in zip(images, truth, detector.detect(list(images))):
        if len(det.scores) != 1:
            continue
        t5 = five_from_68(t)
        iod = np.linalg.norm(t5[0] - t5[1])
        errs["mtcnn"].append(np.linalg.norm(det.landmarks[0] - t5, axis=1).mean() / iod)
        errs["refined"].append(np.linalg.norm(five_from_68(refiner.refine(img, det.landmarks[0])) - t5,
                                              axis=1).mean() / iod)
    assert len(errs["mtcnn"]) >= 40
    print({k: round(100 * float(np.mean(v)), 2) for k, v in errs.items()})
    assert np.mean(errs["refined"]) < 0.8 * np.mean(errs["mtcnn"])


def test_batch_of_faces_equals_one_by_one(refiner, detector):
    img = read_rgb(TESTDATA / "real" / "t1.jpg")
    det = detector.detect([img])[0]
    many = refiner.refine(img, det.landmarks[:3])
    one = np.stack([refiner.refine(img, p) for p in det.landmarks[:3]])
    np.testing.assert_array_equal(many, one)
    assert refiner.refine(img, np.zeros((0, 5, 2))).shape == (0, 68, 2)


def test_morph_align_crops_by_the_refined_points(tmp_path):
    photos = tmp_path / "photos" / "takeo"
    photos.mkdir(parents=True)
    (photos / "takeo.ppm").write_bytes((TESTDATA / "real" / "takeo.ppm").read_bytes())
    out = {}
    for rule in ("ibug68", "mtcnn"):
        o = tmp_path / f"{rule}.h5"
        args = ["align", str(tmp_path / "photos"), "-o", str(o)] + (["--landmarks", rule] if rule != "ibug68" else [])
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0, r.output
        with h5py.File(o) as f:
            out[rule] = {k: f[k][:] for k in f if k in ("images", "landmarks5", "landmarks5_mtcnn", "landmarks68")}
            assert f.attrs["landmarks"] == rule
    a, b = out["ibug68"], out["mtcnn"]
    np.testing.assert_allclose(a["landmarks5"], five_from_68(a["landmarks68"]), atol=1e-4)
    np.testing.assert_array_equal(b["landmarks5"], b["landmarks5_mtcnn"])
    np.testing.assert_array_equal(a["landmarks5_mtcnn"], b["landmarks5_mtcnn"])
    assert "landmarks68" not in b
    img = read_rgb(photos / "takeo.ppm")
    # The crop is made from the refined points (stored as float32: pixels may differ by 1 level).
    again = align_face(img, a["landmarks5"][0]).astype(int)
    assert np.abs(again - a["images"][0]).max() <= 1
    assert np.abs(align_face(img, b["landmarks5"][0]).astype(int) - a["images"][0]).mean() > 5


def canvas_of(img, frame):
    """The canvas that ``frame`` (canvas -> photo, pixel centres at integers) defines, made with the
    project's warp as the refinement made it before it sampled the photo directly."""
    from morph.align.landmarks68 import CANVAS
    from morph.align.template import warp_similarity

    a = np.linalg.inv(frame[:, :2])
    to_canvas = np.concatenate([a, -(a @ frame[:, 2])[:, None]], 1)
    to_canvas[:, 2] += 0.5 - to_canvas[:, :2] @ np.full(2, 0.5)  # warp_similarity: centres at + 0.5
    return warp_similarity(img, to_canvas, CANVAS, padding_mode="border")[0]


@pytest.fixture(scope="module")
def canvases(annotated, refiner):
    """Canvases around the annotated faces: as the first pass frames them, shifted so that part of
    the face falls off the canvas, shrunk and turned by 30 degrees, and magnified twice."""
    from morph.align.template import similarity_from_points

    out = []
    for name, a in annotated.items():
        img = read_rgb(TESTDATA / "real" / name)
        frame = similarity_from_points(five_from_68(refiner.mean_canvas), a["mtcnn"] - 1.0)
        c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
        for m in (np.eye(2, 3), [[1, 0, 150], [0, 1, -120]], [[1.6 * c, -1.6 * s, 0], [1.6 * s, 1.6 * c, 0]],
                  [[0.5, 0, 80], [0, 0.5, 80]]):
            f = np.concatenate([frame[:, :2] @ np.asarray(m)[:, :2], (frame[:, :2] @ np.asarray(m)[:, 2] + frame[:, 2])[:, None]], 1)
            out.append((img, f, canvas_of(img, f)))
    return out


def test_the_trees_give_dlibs_points_on_the_same_canvas(refiner, canvases):
    """Our evaluation of the model file against dlib's ``shape_predictor`` on canvases made the
    old way: the same 68 points once rounded as dlib rounds them (every pixel read, split, leaf
    and the start-to-current similarity must match)."""
    dlib = pytest.importorskip("dlib")
    from morph.align.landmarks68 import BOX, _cascade

    predictor = dlib.shape_predictor(str(model_path()))
    box = dlib.rectangle(BOX // 2, BOX // 2, BOX // 2 + BOX - 1, BOX // 2 + BOX - 1)
    t = refiner.trees
    for _, _, canvas in canvases:
        theirs = np.array([(p.x, p.y) for p in predictor(canvas, box).parts()], np.float64)
        ours = _cascade(canvas, np.eye(2, 3), t.initial, t.split_pixels, t.split_thresh, t.leaves, t.anchors,
                        t.deltas)
        np.testing.assert_array_equal(np.floor(ours + 0.5), theirs)


def test_pixels_read_through_the_frame_are_the_canvas_pixels(canvases):
    """What the trees read from the photo equals the canvas pixel's dlib intensity ((r + g + b) / 3
    in integers), but for rare ties of the uint8 rounding (float64 here, float32 in grid_sample);
    off the photo the edge pixel is repeated as the canvas did."""
    from morph.align.landmarks68 import _canvas_intensity

    rng = np.random.default_rng(0)
    diffs = []
    for img, frame, canvas in canvases:
        for cx, cy in rng.integers(0, canvas.shape[0], (1500, 2)):
            expected = int(canvas[cy, cx].astype(int).sum()) // 3
            diffs.append(_canvas_intensity(img, frame, float(cx), float(cy)) - expected)
    diffs = np.abs(diffs)
    assert diffs.max() <= 1 and (diffs > 0).mean() < 0.002, (diffs > 0).mean()


def test_a_grey_photo_is_read_as_its_rgb_copy(refiner, annotated):
    img = read_rgb(TESTDATA / "real" / "takeo.ppm")
    grey = (img.astype(int).sum(-1) // 3).astype(np.uint8)
    five = annotated["takeo.ppm"]["mtcnn"]
    np.testing.assert_array_equal(refiner.refine(grey, five), refiner.refine(np.repeat(grey[..., None], 3, -1), five))


def test_a_truncated_model_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "x.dat"
    bad.write_bytes(model_path().read_bytes()[:200_000])
    with pytest.raises(UserError, match="not a dlib 68-point shape_predictor"):
        LandmarkRefiner(bad)
