"""refine verify: LFW's pairs.txt and insightface's .bin files, in their exact published layouts,
built from renders of known identities; the k-fold accuracy against a hand-computed case; a .bin
whose pickle would run code is refused."""
from __future__ import annotations

import io
import json
import os
import pickle

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli.morph import main as morph
from cli.refine import main as refine
from refine.evaluation import verification as V


def run(group, *args):
    return CliRunner().invoke(group, [str(a) for a in args])


def jpeg(im: np.ndarray) -> bytes:
    b = io.BytesIO()
    Image.fromarray(im).save(b, format="JPEG", quality=95)
    return b.getvalue()


@pytest.fixture(scope="module")
def arcface_renders(sets, tmp_path_factory):
    """6 identities x 4 renders aligned as ArcFace's 112x112 crops (the crops of insightface's .bin files)."""
    d = tmp_path_factory.mktemp("verify")
    res = run(morph, "render", sets / "ids.h5", "-o", d / "arc.h5", "--template", "arcface112")
    assert res.exit_code == 0, res.output
    with h5py.File(d / "arc.h5", "r") as f:
        return d, f["images"][()], f["labels"][()]


# 2 folds x (3 same + 3 different) pairs: (identity, image), (identity, image)
SAME = [[(0, 0, 1), (1, 0, 2), (2, 1, 3)], [(3, 0, 1), (4, 2, 3), (5, 0, 3)]]
DIFFERENT = [[(0, 0, 1, 1), (2, 2, 3, 0), (4, 1, 5, 2)], [(1, 3, 4, 0), (3, 2, 5, 1), (0, 2, 2, 3)]]


@pytest.fixture(scope="module")
def published_layouts(arcface_renders):
    """The same 12 pairs as LFW's pairs.txt over DIR/NAME/NAME_0001.jpg and as an insightface .bin."""
    d, images, labels = arcface_renders
    names = [f"Person_{chr(65 + i)}" for i in range(6)]

    ids = np.unique(labels)

    def image(identity, k):  # the k-th render (0-based) of an identity
        return images[np.flatnonzero(labels == ids[identity])[k]]

    root = d / "lfw"
    for i, name in enumerate(names):
        (root / name).mkdir(parents=True)
        for k in range(4):
            (root / name / f"{name}_{k + 1:04d}.jpg").write_bytes(jpeg(image(i, k)))
    lines, bins, same = ["2\t3"], [], []
    for fold in range(2):
        for i, a, b in SAME[fold]:
            lines.append(f"{names[i]}\t{a + 1}\t{b + 1}")
            bins += [(root / names[i] / f"{names[i]}_{a + 1:04d}.jpg").read_bytes(),
                     (root / names[i] / f"{names[i]}_{b + 1:04d}.jpg").read_bytes()]
            same.append(True)
        for i, a, j, b in DIFFERENT[fold]:
            lines.append(f"{names[i]}\t{a + 1}\t{names[j]}\t{b + 1}")
            bins += [(root / names[i] / f"{names[i]}_{a + 1:04d}.jpg").read_bytes(),
                     (root / names[j] / f"{names[j]}_{b + 1:04d}.jpg").read_bytes()]
            same.append(False)
    (d / "pairs.txt").write_text("\n".join(lines) + "\n")
    with open(d / "tiny.bin", "wb") as f:
        pickle.dump((bins, same), f, protocol=pickle.HIGHEST_PROTOCOL)
    return d, same


def test_fold_accuracy_by_hand():
    """Fold 0's threshold comes from fold 1, where any t in (1.503, 2.503] is right on all 4: the
    first grid point 1.51, which gets 3 of fold 0's 4 (0.803 is a different pair below it). Fold 1's
    comes from fold 0, whose best (3 of 4) starts at 0.51; on fold 1 it gets 1.503 wrong: 3 of 4."""
    d = [0.503, 1.003, 2.003, 0.803, 0.303, 1.503, 2.503, 3.003]
    same = [True, True, False, False, True, True, False, False]
    acc, thr = V.fold_accuracy(np.array(d), np.array(same), 2)
    assert acc.tolist() == [0.75, 0.75]
    assert thr == pytest.approx([1.51, 0.51])
    assert V._kfold_bounds(10, 3).tolist() == [0, 4, 7, 10]  # scikit-learn's KFold(3) on 10 items


def test_lfw_pairs_and_insightface_bin_give_the_same_report(published_layouts, tmp_path):
    d, same = published_layouts
    res = run(refine, "verify", "--lfw-pairs", d / "pairs.txt", "--images", d / "lfw", "--template", "arcface112",
              "--folds", 2, "-o", tmp_path / "lfw")
    assert res.exit_code == 0, res.output
    assert "accuracy" in res.output and (tmp_path / "lfw.png").stat().st_size > 1000
    res = run(refine, "verify", "--bin", d / "tiny.bin", "--folds", 2, "-o", tmp_path / "bin")
    assert res.exit_code == 0, res.output
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("lfw", "bin"))
    assert a["raw"]["same"] == b["raw"]["same"] == same  # LFW: per fold N same lines, then N different
    # the same JPEG bytes through either reader; equal to the networks' tolerance, not in every bit:
    # the readers batch the images differently (LFW: each file once; .bin: as the pairs list them),
    # and oneDNN picks kernels by batch shape (1.5e-8 apart with AVX2 kernels)
    assert np.allclose(a["raw"]["distance"], b["raw"]["distance"], rtol=0, atol=1e-6)
    assert a["accuracy"]["mean"] == b["accuracy"]["mean"] and a["auc"] == pytest.approx(b["auc"])
    dist = np.array(a["raw"]["distance"])
    acc, _ = V.fold_accuracy(dist, np.array(same), 2)
    assert a["accuracy"]["mean"] == pytest.approx(acc.mean()) and a["accuracy"]["std"] == pytest.approx(acc.std())
    # the renders are 6 different people: same-person pairs are nearer on the whole
    s = np.array(same)
    assert dist[s].mean() < dist[~s].mean() and a["auc"] > 0.7


def test_flip_adds_the_mirror_images_embedding(published_layouts):
    from refine.images import to_tensor
    from refine.embedders import load_embedder

    d, _ = published_layouts
    pairs = V.read_insightface_bin(d / "tiny.bin", folds=2)
    net = load_embedder("dlib")
    with_flip, without = V.embed_pairs(pairs, net, flip=True), V.embed_pairs(pairs, net, flip=False)
    chips = net.transform(108, "arcface112").centre(to_tensor(pairs.read(np.array([0]))))
    with torch.inference_mode():
        want = torch.nn.functional.normalize(net(chips).double() + net(chips.flip(-1)).double(), dim=1)
    assert np.allclose(with_flip[0], want[0].numpy(), atol=1e-6)
    assert not np.allclose(with_flip[0], without[0], atol=1e-3)
    assert np.allclose(np.linalg.norm(without[pairs.first], axis=1), 1)


def test_a_bin_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    (tmp_path / "evil.bin").write_bytes(pickle.dumps(([Payload(), b"x"], [True])))
    res = run(refine, "verify", "--bin", tmp_path / "evil.bin", "-o", tmp_path / "r")
    assert res.exit_code == 2 and not marker.exists()
    assert "could run code" in res.output and "system" in res.output and "Traceback" not in res.output
    assert len([ln for ln in res.output.splitlines() if ln.startswith("Error")]) == 1


@pytest.mark.parametrize("content, message", [
    (b"not a pickle at all", "not an insightface .bin"),
    (pickle.dumps({"a": 1}), "is a pickle but not"),
    (pickle.dumps(([b"x", b"y", b"z"], [True])), "is a pickle but not"),
    (pickle.dumps(([b"x", b"y"], [True]))[:10], "not an insightface .bin"),
    (pickle.dumps(([b"not an image", b"x"], [True] * 1)), "fewer than 10 folds"),
])
def test_bad_bin_files_are_one_line(tmp_path, content, message):
    (tmp_path / "bad.bin").write_bytes(content)
    res = run(refine, "verify", "--bin", tmp_path / "bad.bin", "-o", tmp_path / "r")
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output


def test_bad_pairs_files_are_one_line(published_layouts, tmp_path):
    d, _ = published_layouts
    for text, message in (("2\t3\nPerson_A\t1\t2\n", "need 12 pair lines"), ("x y\n", "two numbers"),
                          ("1\t1\nPerson_A\t1\t9\nPerson_A\t1\tPerson_B\t1\n", "folds")):
        (tmp_path / "p.txt").write_text(text)
        res = run(refine, "verify", "--lfw-pairs", tmp_path / "p.txt", "--images", d / "lfw", "-o", tmp_path / "r")
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    lines = (d / "pairs.txt").read_text().splitlines()
    lines[1] = "Person_A\t1\t9"  # no Person_A_0009.jpg
    (tmp_path / "p.txt").write_text("\n".join(lines))
    res = run(refine, "verify", "--lfw-pairs", tmp_path / "p.txt", "--images", d / "lfw", "-o", tmp_path / "r")
    assert res.exit_code == 2 and "Person_A_0009.jpg: no such image" in res.output
    res = run(refine, "verify", "-o", tmp_path / "r")
    assert res.exit_code == 2 and "give one of" in res.output


def test_pairs_of_a_labelled_set(sets, tmp_path):
    res = run(refine, "verify", "--set", sets / "synthetic.h5", "--pairs", 20, "--folds", 4, "-o", tmp_path / "s")
    assert res.exit_code == 0, res.output
    r = json.loads((tmp_path / "s.json").read_text())
    with h5py.File(sets / "synthetic.h5", "r") as f:
        labels = f["labels"][()]
    first, second, same = (np.array(r["raw"][k]) for k in ("first", "second", "same"))
    assert np.array_equal(labels[first] == labels[second], same) and same.sum() == 20 and (~same).sum() == 20
