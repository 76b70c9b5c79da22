"""`refine verify --lfw-pairs` on photos laid out as LFW distributes them (250x250, the face
centred but not aligned; here real CelebA photos of ../shared/testdata/labelled/ cut that way),
and `morph align --format folder`, whose crops the same command reads as aligned."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli.morph import main as morph
from cli.refine import main as refine
from morph.align.template import DEFAULT_TEMPLATE
from refine.evaluation import verification as V
from conftest import TESTDATA

NAMES = [f"Person_{c}" for c in "ABCD"]
# 2 folds x (2 same + 2 different) pairs: (person, i, j) and (person, i, person, j), 1-based as LFW's
SAME = [[(0, 1, 2), (1, 1, 3)], [(2, 1, 2), (3, 2, 3)]]
DIFFERENT = [[(0, 1, 1, 1), (2, 3, 3, 1)], [(1, 2, 2, 3), (3, 1, 0, 3)]]


def run(group, *args):
    return CliRunner().invoke(group, [str(a) for a in args])


def as_lfw(path) -> Image.Image:
    """A photo as LFW's: the centred square of the photo at 250x250."""
    im = Image.open(path).convert("RGB")
    s = min(im.size)
    left, top = (im.width - s) // 2, (im.height - s) // 2
    return im.crop((left, top, left + s, top + s)).resize((250, 250), Image.Resampling.LANCZOS)


def write_pairs(path, names=NAMES):
    lines = ["2\t2"]
    for fold in range(2):
        lines += [f"{names[p]}\t{i}\t{j}" for p, i, j in SAME[fold]]
        lines += [f"{names[p]}\t{i}\t{names[q]}\t{j}" for p, i, q, j in DIFFERENT[fold]]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def lfw(tmp_path_factory):
    """4 CelebA people x 3 photos as DIR/lfw/NAME/NAME_000k.jpg, and LFW's pairs.txt over them."""
    d = tmp_path_factory.mktemp("lfw")
    people = sorted((TESTDATA / "labelled" / "celeba").iterdir())[:4]
    for name, person in zip(NAMES, people):
        (d / "lfw" / name).mkdir(parents=True)
        for k, photo in enumerate(sorted(person.glob("*.jpg"))[:3]):
            as_lfw(photo).save(d / "lfw" / name / f"{name}_{k + 1:04d}.jpg", quality=95)
    write_pairs(d / "pairs.txt")
    return d


def test_unaligned_photos_are_aligned_as_morph_align_aligns_them(lfw, tmp_path):
    """Mutants caught: 250x250 photos taken for aligned crops (``looks_aligned`` true on them, or
    ``align_lfw_photos`` skipped: the images are LFW's squares, tens of levels from the crops);
    another crop rule on the fly than ``morph align``'s (the crops differ); the folder written
    without its crops or under other names (the reads fail)."""
    photos = V.read_lfw_pairs(lfw / "pairs.txt", lfw / "lfw", DEFAULT_TEMPLATE)
    assert photos.aligned_here and photos.n_images == 12
    res = run(morph, "align", lfw / "lfw", "-o", tmp_path / "crops", "--format", "folder")
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "crops.partial").exists()
    with h5py.File(tmp_path / "crops.h5", "r") as f:  # the set beside the folder, crops bit-exact in it
        sources, images = list(f["source"].asstr()[()]), f["images"][()]
    assert len(sources) == 12
    for src, im in zip(sources, images):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "crops" / src.replace(".jpg", ".png"))), im)

    crops = V.read_lfw_pairs(lfw / "pairs.txt", tmp_path / "crops", DEFAULT_TEMPLATE)
    assert not crops.aligned_here  # taken as the aligned crops they are
    a, b = (p.read(np.arange(12)).astype(int) for p in (photos, crops))
    # the same photos through the same detector and crop rule; MTCNN's batches differ (oneDNN
    # picks kernels by shape), so a pixel may move by a level where a point moved by 1e-5 px
    assert np.abs(a - b).mean() < 0.5 and (np.abs(a - b) > 2).mean() < 0.01
    raw = V.read_lfw_pairs(lfw / "pairs.txt", lfw / "lfw", DEFAULT_TEMPLATE, align="never")
    assert np.abs(raw.read(np.arange(12)).astype(int) - b).mean() > 20  # unaligned, the photos are far from the crops


def test_verify_reports_the_same_figures_on_photos_and_on_their_crops(lfw, tmp_path):
    """Mutant caught: photos verified unaligned. Their distances equal the crops' (0 apart here;
    a level's difference in a pixel would move them by under 1e-3), while the same photos taken as
    aligned move them by 0.08 on average (dlib's embedder finds its own points in what it is given,
    which softens, not removes, the error)."""
    assert run(morph, "align", lfw / "lfw", "-o", tmp_path / "crops", "--format", "folder").exit_code == 0
    reports = {}
    for name, images, extra in (("photos", lfw / "lfw", ()), ("crops", tmp_path / "crops", ()),
                                ("unaligned", lfw / "lfw", ("--align", "never"))):
        res = run(refine, "verify", "--lfw-pairs", lfw / "pairs.txt", "--images", images, "--folds", 2,
                  "-o", tmp_path / name, *extra)
        assert res.exit_code == 0, res.output
        reports[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert reports["photos"]["aligned_here"] and not reports["crops"]["aligned_here"]
    d = {k: np.array(r["raw"]["distance"]) for k, r in reports.items()}
    assert np.abs(d["photos"] - d["crops"]).max() < 0.01
    assert np.abs(d["unaligned"] - d["crops"]).mean() > 0.04


def test_photos_without_faces_stop_with_one_line(lfw, tmp_path):
    """Mutant caught: a photo without a face verified anyway (a figure on an unaligned photo)."""
    nonface = sorted((TESTDATA / "nonface").iterdir())
    root = tmp_path / "nonface"
    for k, name in enumerate(NAMES):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.open(nonface[(3 * k + i) % len(nonface)]).convert("RGB").resize((250, 250)).save(
                root / name / f"{name}_{i + 1:04d}.jpg")
    res = run(refine, "verify", "--lfw-pairs", lfw / "pairs.txt", "--images", root, "-o", tmp_path / "r")
    assert res.exit_code == 2 and "no face found" in res.output and "Traceback" not in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1
    # one photo of real ones replaced by a brick: named, nothing reported
    mixed = tmp_path / "mixed"
    for name in NAMES:
        (mixed / name).mkdir(parents=True)
        for f in (lfw / "lfw" / name).iterdir():
            (mixed / name / f.name).write_bytes(f.read_bytes())
    Image.open(nonface[0]).convert("RGB").resize((250, 250)).save(mixed / "Person_B" / "Person_B_0003.jpg")
    res = run(refine, "verify", "--lfw-pairs", lfw / "pairs.txt", "--images", mixed, "-o", tmp_path / "m")
    assert res.exit_code == 2 and "Person_B_0003.jpg: no face found to align" in res.output, res.output
    assert not (tmp_path / "m.json").exists()


def test_align_format_folder_refuses_what_it_cannot_write(lfw, tmp_path):
    res = run(morph, "align", lfw / "lfw", "-o", tmp_path / "crops.h5", "--format", "folder")
    assert res.exit_code == 2 and "without .h5" in res.output
    res = run(morph, "align", lfw / "lfw", "-o", tmp_path)
    assert res.exit_code == 2 and "is a folder" in res.output
