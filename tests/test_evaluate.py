"""refine evaluate: verification metrics against hand-worked values, pair drawing, distribution
distances against closed forms, and the command on tiny renders / real faces / an ImageFolder tree."""
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.linalg
from click.testing import CliRunner
from PIL import Image

from cli.morph import main as morph
from cli.refine import main as refine
from morph.base.errors import UserError
from refine.evaluation.metrics import (
    auc,
    draw_pairs,
    equal_error_rate,
    frechet_distance,
    polynomial_mmd2,
    roc_curve,
    tar_at_far,
)

TESTDATA = Path(__file__).resolve().parents[2] / "shared" / "testdata"


def run(group, *args):
    return CliRunner().invoke(group, [str(a) for a in args])


# -- ROC, AUC, EER -------------------------------------------------------------------------------

def test_perfectly_separated():
    roc = roc_curve([0.1, 0.2, 0.3], [0.7, 0.8])
    assert auc(roc) == 1.0
    eer, thr = equal_error_rate(roc)
    assert eer == 0.0 and thr == pytest.approx(0.5)  # any threshold in [0.3, 0.7) separates; midpoint
    assert tar_at_far(roc, 0.0) == (1.0, 0.3)


def test_hand_worked_interleaved():
    # pos 1, 3, 5 against neg 2, 4, 6: pos < neg in 3 + 2 + 1 of 9 pairs
    roc = roc_curve([1, 3, 5], [2, 4, 6])
    np.testing.assert_allclose(roc.fpr, [0, 0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1])
    np.testing.assert_allclose(roc.tpr, [0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 1, 1])
    assert auc(roc) == pytest.approx(2 / 3)
    # at t = 3 FAR = FRR = 1/3 exactly, and stays so up to t = 4
    assert equal_error_rate(roc) == pytest.approx((1 / 3, 3.5))
    assert tar_at_far(roc, 0.0) == pytest.approx((1 / 3, 1.0))
    assert tar_at_far(roc, 0.5) == pytest.approx((2 / 3, 3.0))


def test_eer_interpolates_between_roc_points():
    # points (FAR, TAR): t=2 (0, 2/3), t=2.5 (1/2, 2/3); FAR - FRR goes -1/3 -> +1/6, crossing
    # at 2/3 of the way: FAR = 1/3 = FRR, threshold 2 + 2/3 * 0.5
    roc = roc_curve([1, 2, 3], [2.5, 4])
    eer, thr = equal_error_rate(roc)
    assert eer == pytest.approx(1 / 3) and thr == pytest.approx(2 + 1 / 3)
    assert auc(roc) == pytest.approx(5 / 6)  # 3 - 1 = 2 + 2 + 1 of 6 pairs: (1,2.5) (1,4) (2,2.5) (2,4) (3,4)


def test_ties_and_identical_distributions():
    d = np.linspace(0, 1, 11)
    roc = roc_curve(d, d)  # every positive tied with a negative: the diagonal
    assert auc(roc) == pytest.approx(0.5) and equal_error_rate(roc)[0] == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    roc = roc_curve(rng.normal(size=5000), rng.normal(size=5000))
    assert abs(auc(roc) - 0.5) < 0.02 and abs(equal_error_rate(roc)[0] - 0.5) < 0.02
    roc = roc_curve(rng.normal(size=5000), rng.normal(1.0, size=5000))
    # separation of one standard deviation: AUC = Phi(1 / sqrt 2) = 0.760, EER = Phi(-1/2) = 0.309
    assert auc(roc) == pytest.approx(0.760, abs=0.015)
    assert equal_error_rate(roc)[0] == pytest.approx(0.309, abs=0.015)


# -- pairs ---------------------------------------------------------------------------------------

def test_pairs_are_distinct_labelled_right_and_seeded():
    labels = np.repeat(np.arange(50), 40)[np.random.default_rng(1).permutation(2000)]
    p = draw_pairs(labels, 1000, np.random.default_rng(7))
    for pairs, same in ((p.positive, True), (p.negative, False)):
        assert pairs.shape == (1000, 2) and len({tuple(x) for x in pairs}) == 1000
        assert (pairs[:, 0] < pairs[:, 1]).all()
        assert ((labels[pairs[:, 0]] == labels[pairs[:, 1]]) == same).all()
    assert p.available_positive == 50 * 40 * 39 // 2
    again = draw_pairs(labels, 1000, np.random.default_rng(7))
    other = draw_pairs(labels, 1000, np.random.default_rng(8))
    assert np.array_equal(p.positive, again.positive) and np.array_equal(p.negative, again.negative)
    assert not np.array_equal(p.positive, other.positive)


def test_small_set_uses_every_pair():
    p = draw_pairs(np.array([0, 0, 1, 1, 1, 2]), 1000, np.random.default_rng(0))
    assert p.positive.tolist() == [[0, 1], [2, 3], [2, 4], [3, 4]]
    assert len(p.negative) == 15 - 4 == p.available_negative


def test_pairs_are_uniform_over_all_pairs():
    # identity 0 has 2 images (1 pair), identity 1 has 10 (45 pairs): 5 of 46 pairs drawn,
    # so pair (0, 1) is among them with probability 5/46
    labels = np.array([0, 0] + [1] * 10)
    hits = sum([0, 1] in draw_pairs(labels, 5, np.random.default_rng(s)).positive.tolist() for s in range(600))
    assert abs(hits / 600 - 5 / 46) < 0.04
    # negatives: image 0 is in 10 of the 20 negative pairs (the path that samples, not lists)
    labels = np.array([0, 0] + [1] * 10)
    hits = sum((draw_pairs(labels, 4, np.random.default_rng(s)).negative[:, 0] == 0).sum() for s in range(600))
    assert abs(hits / (600 * 4) - 10 / 20) < 0.04


@pytest.mark.parametrize("labels, message", [([3, 3, 3], "single identity"), ([0, 1, 2], "has 2 images")])
def test_sets_without_pairs_of_one_kind(labels, message):
    with pytest.raises(UserError, match=message):
        draw_pairs(np.array(labels), 10, np.random.default_rng(0))


# -- distribution distances ----------------------------------------------------------------------

def _exact(rng, n, mean, std):
    """n samples whose sample mean and (n-1)-normalised covariance are exactly mean, diag(std^2)."""
    z = rng.normal(size=(n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    return mean + z * std


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16))
    assert abs(frechet_distance(x, x)) < 1e-9
    assert frechet_distance(x, x + 0.5) == pytest.approx(16 * 0.25, rel=1e-9)  # mean shift only
    m1, m2 = rng.normal(size=8), rng.normal(size=8)
    s1, s2 = rng.uniform(0.5, 2, 8), rng.uniform(0.5, 2, 8)
    closed = ((m1 - m2) ** 2).sum() + ((s1 - s2) ** 2).sum()
    got = frechet_distance(_exact(rng, 200, m1, s1), _exact(rng, 150, m2, s2))
    assert got == pytest.approx(closed, rel=1e-9)


def test_frechet_distance_matches_sqrtm_formula_and_handles_few_samples():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(400, 10)) @ rng.normal(size=(10, 10)), rng.normal(0.3, size=(300, 10))
    sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    ref = ((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(sx + sy) - 2 * np.trace(scipy.linalg.sqrtm(sx @ sy).real)
    assert frechet_distance(x, y) == pytest.approx(ref, rel=1e-7)
    few = frechet_distance(rng.normal(size=(12, 128)), rng.normal(size=(9, 128)))  # singular covariances
    assert np.isfinite(few) and few > 0


def test_polynomial_mmd2_unbiased_and_against_a_loop():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(7, 4)), rng.normal(0.5, size=(5, 4))
    k = lambda a, b: (a @ b / 4 + 1) ** 3
    loop = (sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / 42
            + sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / 20
            - 2 * sum(k(a, b) for a in x for b in y) / 35)
    assert polynomial_mmd2(x, y) == pytest.approx(loop, rel=1e-12)
    same = polynomial_mmd2(rng.normal(size=(500, 8)), rng.normal(size=(500, 8)))
    shifted = polynomial_mmd2(rng.normal(size=(500, 8)), rng.normal(1.0, size=(500, 8)))
    assert abs(same) < 0.01 < shifted


# -- the command ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """synthetic.h5 (6 identities x 4 renders), real.h5 (the test photos, all one folder: one label),
    and the renders again as an ImageFolder tree of JPEGs."""
    d = tmp_path_factory.mktemp("evaluate")
    assert run(morph, "sample-identities", "--n-identities", 6, "--images-per-identity", 4, "-o",
               d / "ids.h5").exit_code == 0
    assert run(morph, "render", d / "ids.h5", "-o", d / "synthetic.h5").exit_code == 0
    assert run(morph, "align", TESTDATA / "real", "-o", d / "real.h5", "--all-faces").exit_code == 0
    with h5py.File(d / "synthetic.h5", "r") as f:
        images, labels = f["images"][()], f["labels"][()]
    for i, (im, label) in enumerate(zip(images, labels)):
        (d / "folder" / f"{label:05d}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(d / "folder" / f"{label:05d}" / f"{i:04d}.jpg", quality=95)
    # refine export-dataset's sidecar, which tells a refined set
    (d / "folder" / "manifest.json").write_text(json.dumps({"command": "refine export-dataset ck.pt -o x",
                                                            "complete": True}))
    return d


def test_synthetic_against_real(sets, tmp_path):
    res = run(refine, "evaluate", sets / "synthetic.h5", "--against", sets / "real.h5", "-o", tmp_path / "syn")
    assert res.exit_code == 0, res.output
    assert "only 36 positive pairs" in res.output and "AUC" in res.output
    r = json.loads((tmp_path / "syn.json").read_text())
    assert r["set"]["kind"] == "rendered" and r["set"]["n_identities"] == 6
    assert r["pairs"]["positive"] == 36 and r["pairs"]["negative"] == 24 * 23 // 2 - 36
    assert 0.0 <= r["auc"] <= 1.0 and 0.0 <= r["eer"] <= 1.0
    assert 0.0 < r["eer_threshold"] < 2.0
    assert r["tar_at_far"]["0.01"] is not None and r["tar_at_far"]["0.001"] is None
    assert r["positive_distance"]["mean"] > 0 and r["negative_distance"]["std"] > 0
    assert r["face_detection"]["n_images"] == 24 and 0.0 <= r["face_detection"]["fraction"] <= 1.0
    a = r["against"]
    assert a["kind"] == "real" and a["n_images"] > 2
    assert a["frechet_distance"] > 0 and np.isfinite(a["kid_mmd2"])
    assert r["embedder"]["name"] == "dlib" and r["provenance"]["version"]
    assert len(r["raw"]["positive_distances"]) == 36
    with Image.open(tmp_path / "syn.png") as im:
        im.verify()
    with Image.open(tmp_path / "syn.png") as im:
        assert im.format == "PNG" and im.size[0] > 600 and im.size[1] > 300
    assert not list(tmp_path.glob("*.partial"))


def test_image_folder_and_exported_h5_layouts(sets, tmp_path):
    res = run(refine, "evaluate", sets / "folder", "-o", tmp_path / "folder.json", "--seed", 3)
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "folder.json").read_text())
    assert (tmp_path / "folder.png").is_file()
    assert r["set"]["layout"] == "imagefolder" and r["set"]["n_images"] == 24 and r["set"]["n_identities"] == 6
    assert r["set"]["kind"] == "refined"
    assert r["against"] is None and r["seed"] == 3
    ref = json.loads(_evaluate_json(sets / "synthetic.h5", tmp_path / "h5"))
    assert abs(r["auc"] - ref["auc"]) < 0.1  # the same renders, through JPEG
    # a folder holding ganfaces.h5 (refine export-dataset's HDF5 layout) is read as that file
    export = tmp_path / "export"
    export.mkdir()
    with h5py.File(sets / "synthetic.h5", "r") as f, h5py.File(export / "ganfaces.h5", "w") as g:
        g["images"], g["labels"] = f["images"][()], f["labels"][()] + 100
        g.attrs["complete"] = True
    r = json.loads(_evaluate_json(export, tmp_path / "exported"))
    assert r["set"]["kind"] == "refined" and r["set"]["layout"] == "h5"
    assert r["auc"] == pytest.approx(ref["auc"])


def _evaluate_json(dataset, prefix) -> str:
    res = run(refine, "evaluate", dataset, "-o", prefix)
    assert res.exit_code == 0, res.output
    return Path(f"{prefix}.json").read_text()


def _bad(tmp: Path):
    with h5py.File(tmp / "nolabels.h5", "w") as f:
        f["images"] = np.zeros((4, 108, 108, 3), np.uint8)
        f.attrs["complete"] = True
    with h5py.File(tmp / "singletons.h5", "w") as f:
        f["images"] = np.zeros((3, 108, 108, 3), np.uint8)
        f["labels"] = np.arange(3)
        f.attrs["complete"] = True
    (tmp / "text.h5").write_text("not hdf5")
    (tmp / "empty").mkdir()
    (tmp / "unfinished" / "00000").mkdir(parents=True)
    Image.new("RGB", (108, 108)).save(tmp / "unfinished" / "00000" / "0000.jpg")
    (tmp / "unfinished" / "manifest.json").write_text('{"command": "refine export-dataset c.pt", "complete": false}')


@pytest.mark.parametrize("args, message", [
    (["absent.h5"], "no such image set"),
    (["text.h5"], "cannot be read as HDF5"),
    (["nolabels.h5"], "missing labels"),
    (["empty"], "neither ganfaces.h5 nor identity sub-folders"),
    (["unfinished"], "the export is not complete"),
    (["REAL"], "single identity"),
    (["singletons.h5"], "has 2 images"),
    (["SYN", "--against", "absent.h5"], "no such real set"),
    (["SYN", "-o", "nofolder/report"], "does not exist; create it first"),
    (["SYN", "--embedder", "absent.pt"], "no such embedder file"),
])
def test_bad_input_is_one_line(sets, tmp_path, args, message):
    _bad(tmp_path)
    named = {"SYN": sets / "synthetic.h5", "REAL": sets / "real.h5"}
    args = [a if a.startswith("-") else named.get(a, tmp_path / a) for a in args]
    if "-o" not in args:
        args += ["-o", tmp_path / "report"]
    res = run(refine, "evaluate", *args)
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not list(tmp_path.glob("report*"))
