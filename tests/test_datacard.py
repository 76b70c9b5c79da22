"""The data card every export writes: what made the set, and what C says of its identities; the
leakage audit names a synthetic identity planted in a reference set."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from PIL import Image
from test_export import ckpt, export_args, run  # noqa: F401  (ckpt: a module fixture)

from cli.refine import main as refine
from refine.export import datacard


@pytest.fixture(scope="module")
def exported(ckpt, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("datacard") / "export"
    res = run(refine, *export_args(ckpt, out, "--batch-size", 8))
    assert res.exit_code == 0, res.output
    return out


def test_every_export_writes_its_data_card(exported):
    card = json.loads((exported / datacard.DATACARD_JSON).read_text())
    manifest = json.loads((exported / "manifest.json").read_text())
    assert card["dataset"]["images"] == manifest["n_images"] == 20
    assert card["made_by"]["checkpoint"]["sha256"] == manifest["checkpoint"]["sha256"]
    assert card["made_by"]["seed"] == 1 and card["embedder"] == "dlib"
    # consistency: the identity_loss column of scores.csv, summarised
    rows = (exported / "scores.csv").read_text().splitlines()
    col = rows[0].split(",").index("identity_loss")
    loss = np.array([float(r.split(",")[col]) for r in rows[1:]])
    assert card["consistency"]["distance_to_identity_mean"]["mean"] == pytest.approx(loss.mean(), abs=1e-6)
    sep = card["separability"]
    assert 0 <= sep["auc"] <= 1 and 0 <= sep["eer"] <= 1 and sep["pairs"] == [5 * 6, 10 * 16]
    assert 0 <= card["uniqueness"]["unique_share"] <= 1
    md = (exported / datacard.DATACARD_MD).read_text()
    assert "# Data card" in md and f"{manifest['checkpoint']['sha256'][:16]}" in md and "Separability: AUC" in md


def test_measures_by_hand():
    """Three identities on unit vectors: two images each at +-0.1 rad around (1, 0), (0, 1), (-1, 0)."""
    def unit(a):
        return np.stack([np.cos(a), np.sin(a)], 1)

    e = unit(np.array([-0.1, 0.1, np.pi / 2 - 0.1, np.pi / 2 + 0.1, np.pi - 0.1, np.pi + 0.1]))
    labels = np.array([0, 0, 1, 1, 2, 2])
    ids, means = datacard.identity_means(e, labels)
    assert np.allclose(means, [[1, 0], [0, 1], [-1, 0]], atol=1e-12)
    sep = datacard.separability(e, labels, seed=0)
    assert sep["auc"] == 1.0 and sep["eer"] == 0.0  # same pairs 0.2 rad apart, different >= pi/2 - 0.2
    u = datacard.uniqueness(means, threshold=1.0)
    assert u["nearest_other_identity"]["mean"] == pytest.approx(np.sqrt(2))  # each mean's nearest: 90 degrees
    assert u["unique_share"] == 1.0
    ref = datacard.identity_means(unit(np.array([np.pi / 2 + 0.01, 2.0])), np.array([7, 8]))[1]
    near = datacard.leakage(ids, means, {"r": (ref, ["seven", "eight"])}, threshold=0.05)
    assert near == [{"identity": 1, "reference": "r", "reference_identity": "seven",
                     "distance": pytest.approx(2 * np.sin(0.005))}]


def _planted(exported, path):
    """A 'real' reference set holding the exported images of identity 3 and one other face."""
    planted = sorted((exported / "00003").glob("*.jpg"))
    other = sorted((exported / "00001").glob("*.jpg"))[:1]
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in planted + other])
    with h5py.File(path, "w") as f:
        f["images"] = images
        f["labels"] = np.r_[np.zeros(len(planted), np.int64), [1]]
        f.attrs["complete"] = True
    return path


def test_leakage_audit_names_a_planted_identity(ckpt, exported, tmp_path):  # noqa: F811
    """A 'real' reference set holding the exported images of identity 3 (among other faces): the
    audit lists identity 3, nearest first, and the card says which reference it came from."""
    _planted(exported, tmp_path / "real.h5")
    out = tmp_path / "audited"
    res = run(refine, *export_args(ckpt, out, "--batch-size", 8, "--reference", tmp_path / "real.h5",
                                   "--leak-threshold", 0.05))
    assert res.exit_code == 0, res.output
    card = json.loads((out / datacard.DATACARD_JSON).read_text())
    near = card["leakage"]["near"]
    assert near and near[0]["identity"] == 3 and near[0]["reference_identity"] == "0"
    assert near[0]["distance"] < 0.05 and near[0]["reference"] == str(tmp_path / "real.h5")
    assert "| 3 |" in (out / datacard.DATACARD_MD).read_text()


@pytest.mark.parametrize("fmt", ["imagefolder", "hdf5"])
def test_exclude_leaks_leaves_the_planted_identity_out(ckpt, exported, tmp_path, fmt):  # noqa: F811
    """--exclude-leaks: identity 3 is not in the dataset (no folder / no rows), not in scores.csv,
    and the manifest and card name it; scores.csv's paths point at the rows that hold each image.
    Catches an exclusion that only lists, or HDF5 paths still counted from the first identity."""
    real = _planted(exported, tmp_path / "real.h5")
    out = tmp_path / fmt
    res = run(refine, *export_args(ckpt, out, "--batch-size", 8, "--reference", real, "--leak-threshold", 0.05,
                                   "--exclude-leaks", "--format", fmt))
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    card = json.loads((out / datacard.DATACARD_JSON).read_text())
    assert manifest["counts"]["excluded_identities"] == card["leakage"]["excluded"] == [3]
    assert manifest["counts"]["identities"] == 4 and not (out / ".export").exists()
    rows = [r.split(",") for r in (out / "scores.csv").read_text().splitlines()[1:]]
    assert {int(r[0]) for r in rows} == {0, 1, 2, 4}
    if fmt == "imagefolder":
        assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["00000", "00001", "00002", "00004"]
    else:
        with h5py.File(out / "ganfaces.h5") as f:
            labels = f["labels"][()]
            assert 3 not in labels and len(labels) == 16
            for r in rows:
                assert labels[int(r[3].split("/")[-1])] == int(r[0])
    res = run(refine, *export_args(ckpt, tmp_path / "none", "--exclude-leaks"))
    assert res.exit_code == 2 and "--reference" in res.output


def test_a_reference_without_scores_is_refused(ckpt, tmp_path):  # noqa: F811
    res = run(refine, *export_args(ckpt, tmp_path / "x", "--no-scores", "--reference", tmp_path / "nowhere.h5"))
    assert res.exit_code == 2 and "drop --no-scores" in res.output
