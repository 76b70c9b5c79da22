"""Face verification on the field's standard protocols (``refine verify``), for any embedder the
project loads (dlib's ResNet by default, a TorchScript or facenet model).

Pair lists, each read into ``PairList`` (images, the two images of each pair, same or not, folds):

- **LFW** ``pairs.txt`` (Huang et al. 2007, "View 2"): a first line ``F N`` (folds, pairs of each
  kind per fold; LFW's is ``10 300``), then per fold N same-person lines ``name i j`` and N
  different-person lines ``name1 i name2 j``, tab-separated, image numbers 1-based; the images are
  ``DIR/name/name_%04d.EXT``: LFW's photos as distributed (250x250, not aligned), which are then
  aligned here as ``morph align`` aligns photos (``align_lfw_photos``), or crops already aligned by
  the crop template ``--template`` (``morph align --format folder``, our exports). ``align="auto"``
  tells the two apart on a sample (``looks_aligned``); a photo in which no face is found stops the
  run with its name, never a figure computed on an unaligned photo.
- **insightface** ``.bin`` verification files (lfw.bin, cfp_fp.bin, agedb_30.bin, calfw.bin,
  cplfw.bin): a pickle of ``(bins, issame_list)`` whose ``bins`` are 2N encoded images (112x112
  ArcFace crops) and pair i is images 2i and 2i+1 (insightface's
  ``recognition/arcface_torch/eval/verification.py``, ``load_bin`` and ``evaluate``). A pickle
  can run code, so it is read by an unpickler that resolves no global at all: only bytes,
  strings, numbers, booleans, lists and tuples load, anything else is refused.
- **a labelled set** (``morph render``/``align`` output, an export): same/different pairs drawn
  as ``refine evaluate`` draws them (``refine.evaluation.metrics.draw_pairs``).

Scores follow insightface's ``verification.test``/``evaluate``: each image's embedding plus that
of its mirror image (``flip``), L2-normalised; the squared Euclidean distance of a pair; accuracy
over ``folds`` consecutive folds, the threshold of each chosen on the other folds from the grid
0, 0.01, ..., 3.99 (the first best), reported as mean and standard deviation over folds (LFW's
protocol; its folds are the file's). Over all pairs at once: the ROC, AUC, EER and TAR at FAR
1e-3 and 1e-2 (``refine.evaluation.metrics``).
"""
from __future__ import annotations

import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from morph.base.errors import UserError
from morph.base.imageio import read_rgb
from morph.align.template import crop_template
from refine.embedders.base import SOURCE_SIZE
from refine.evaluation.image_sets import open_image_set, to_source_size
from morph.base.files import output_lock, write_atomic
from morph.base.h5io import provenance
from refine.evaluation.metrics import auc, draw_pairs, equal_error_rate, roc_curve, tar_at_far
from refine.evaluation.report import output_paths, plot_verification

#: insightface's accuracy thresholds on the squared distance of unit vectors (0 to 4)
THRESHOLDS = np.arange(0, 4, 0.01)
FARS = (1e-3, 1e-2)


@dataclass
class PairList:
    """Pairs to verify: ``read(idx)`` gives images idx at 108x108 aligned by ``template``."""

    source: str  # what the pairs came from, for the report
    protocol: str  # "lfw-pairs", "insightface-bin", "labelled-set"
    read: object  # callable (idx) -> (k, 108, 108, 3) uint8
    n_images: int
    first: np.ndarray  # (P,) image index of each pair's first image
    second: np.ndarray  # (P,)
    same: np.ndarray  # (P,) bool
    folds: int
    template: str
    aligned_here: bool = False  # photos aligned on reading (LFW photos as distributed)


# ----------------------------------------------------------------------------------- readers
#: ``read_lfw_pairs``'s choices: tell aligned crops from photos, always align, never align
ALIGN_CHOICES = ("auto", "always", "never")
#: a sample's median distance of the found 5 points from the template's, in eye distances, under
#: which its images count as aligned crops: aligned crops measure about 0.02, LFW's photos about 1
ALIGNED_TOLERANCE = 0.15


def read_lfw_pairs(pairs_txt: str | Path, images: str | Path, template: str, align: str = "auto") -> PairList:
    """LFW's ``pairs.txt`` over the image folder ``images`` (see the module docstring); ``align``:
    one of ``ALIGN_CHOICES``."""
    pairs_txt, root = Path(pairs_txt), Path(images)
    crop_template(template)
    if align not in ALIGN_CHOICES:
        raise UserError(f"align '{align}' is unknown; choose one of {', '.join(ALIGN_CHOICES)}.")
    if not pairs_txt.is_file():
        raise UserError(f"{pairs_txt}: no such pairs file; give LFW's pairs.txt (or one in its layout).")
    if not root.is_dir():
        raise UserError(f"{root}: no such image folder; give the folder holding NAME/NAME_0001.jpg ...")
    lines = [ln.split() for ln in pairs_txt.read_text(errors="replace").splitlines() if ln.strip()]

    def bad(k, why):
        return UserError(f"{pairs_txt}: line {k + 1}: {why}; the layout is LFW's: 'FOLDS N', then per fold "
                         "N lines 'name i j' and N lines 'name1 i name2 j'.")

    try:
        folds, per = int(lines[0][0]), int(lines[0][1])
    except (IndexError, ValueError):
        raise bad(0, "the first line must be two numbers, folds and pairs per fold") from None
    if folds < 2 or per < 1 or len(lines) != 1 + 2 * folds * per:
        raise bad(0, f"{folds} folds of 2 x {per} pairs need {2 * folds * per} pair lines, the file has "
                     f"{len(lines) - 1}")
    files: dict[Path, int] = {}
    first, second, same = [], [], []
    for k, parts in enumerate(lines[1:], start=1):
        matched = (k - 1) % (2 * per) < per
        try:
            if matched and len(parts) == 3:
                a, b = (parts[0], int(parts[1])), (parts[0], int(parts[2]))
            elif not matched and len(parts) == 4:
                a, b = (parts[0], int(parts[1])), (parts[2], int(parts[3]))
            else:
                raise ValueError
        except ValueError:
            raise bad(k, f"expected {'name i j' if matched else 'name1 i name2 j'}") from None
        for name, number in (a, b):
            path = _lfw_image(root, name, number)
            files.setdefault(path, len(files))
        first.append(files[_lfw_image(root, *a)])
        second.append(files[_lfw_image(root, *b)])
        same.append(matched)
    paths = list(files)
    if align == "auto":
        align = "never" if looks_aligned(paths, template) else "always"
    if align == "always":
        read = align_lfw_photos(paths, template, str(pairs_txt))
        return PairList(str(pairs_txt), "lfw-pairs", read, len(paths), np.array(first), np.array(second),
                        np.array(same), folds, template, aligned_here=True)
    size = read_rgb(paths[0]).shape[0]

    def read(idx):
        out = []
        for i in idx:
            im = read_rgb(paths[i])
            if im.shape[:2] != (size, size):
                raise UserError(f"{paths[i]}: is {im.shape[1]}x{im.shape[0]} px, but {paths[0].name} is "
                                f"{size}x{size}; verification needs aligned faces of one size.")
            out.append(im)
        return to_source_size(np.stack(out))

    return PairList(str(pairs_txt), "lfw-pairs", read, len(paths), np.array(first), np.array(second),
                    np.array(same), folds, template)


def looks_aligned(paths: list[Path], template: str, sample: int = 8) -> bool:
    """Whether the images at ``paths`` are crops aligned by ``template``: square, of one size, and
    the 5 points ``morph align`` finds in an evenly spread sample lie on the template's at that
    size (median distance under ``ALIGNED_TOLERANCE`` eye distances). Unaligned photos, LFW's
    250x250 among them, hold a smaller face off the template's points. ``UserError`` when no face is
    found in any image of the sample: such images are neither aligned crops nor alignable."""
    from morph.align.faces import FaceLocator
    from morph.align.mtcnn import LANDMARK_CENTRE_OFFSET

    picks = [paths[i] for i in np.unique(np.linspace(0, len(paths) - 1, min(sample, len(paths))).astype(int))]
    images = [read_rgb(p) for p in picks]
    sizes = {im.shape[:2] for im in images}
    found = FaceLocator().locate(images)
    if all(f is None for f in found):
        raise UserError(f"{picks[0].parent.parent}: no face found in {len(picks)} of its images ({picks[0].name} "
                        "...); verification needs face photos, or crops aligned by --template.")
    if len(sizes) != 1 or images[0].shape[0] != images[0].shape[1]:
        return False
    target = crop_template(template).points(images[0].shape[0])
    eye = float(np.linalg.norm(target[1] - target[0]))
    errors = [np.linalg.norm(f.five[0] + LANDMARK_CENTRE_OFFSET - target, axis=1).mean() / eye
              for f in found if f is not None]
    return float(np.median(errors)) < ALIGNED_TOLERANCE


def align_lfw_photos(paths: list[Path], template: str, source: str):
    """``read(idx)`` of photos aligned on the fly by ``morph align``'s rule (MTCNN, the face
    ``pick_face`` chooses, its 68-point refinement, the 5-point crop by ``template``), at 108 px."""
    from morph.align.faces import FaceLocator, align_face

    locator = FaceLocator()

    def read(idx):
        photos = [read_rgb(paths[i]) for i in idx]
        out = []
        for i, img, found in zip(idx, photos, locator.locate(photos)):
            if found is None:
                raise UserError(f"{paths[i]}: no face found to align (a photo of {source}); drop its pairs, or "
                                "give crops aligned by --template (morph align --format folder).")
            out.append(align_face(img, found.five[0], template=template))
        return to_source_size(np.stack(out))

    return read


def _lfw_image(root: Path, name: str, number: int) -> Path:
    for ext in (".jpg", ".png", ".jpeg", ".JPG", ".PNG"):
        path = root / name / f"{name}_{number:04d}{ext}"
        if path.is_file():
            return path
    raise UserError(f"{root / name / f'{name}_{number:04d}.jpg'}: no such image (named in the pairs file); "
                    "give the folder the pairs file describes.")


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _DataOnly(pickle.Unpickler):
    """Loads only what needs no class: bytes, str, numbers, booleans, None, lists, tuples, dicts."""

    def find_class(self, module, name):
        raise _RefusedGlobal(f"{module}.{name}")


def read_insightface_bin(path: str | Path, folds: int = 10) -> PairList:
    """An insightface verification ``.bin`` (see the module docstring); its crops are ArcFace's."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such verification file; give an insightface .bin (lfw.bin, cfp_fp.bin ...).")
    try:
        with open(path, "rb") as f:
            data = _DataOnly(f, encoding="bytes").load()
    except _RefusedGlobal as e:
        raise UserError(f"{path}: refers to {e}, which unpickling would import and could run code; "
                        "only data is read from .bin files, so give insightface's own file.") from None
    except pickle.UnpicklingError as e:
        raise UserError(f"{path}: not an insightface .bin ({e}); give insightface's own file.") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, MemoryError, OverflowError) as e:
        raise UserError(f"{path}: not an insightface .bin ({type(e).__name__}: the file is cut off or "
                        "another format); give insightface's own file.") from None
    ok = (isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], (list, tuple))
          and isinstance(data[1], (list, tuple)) and all(isinstance(b, (bytes, bytearray)) for b in data[0])
          and all(isinstance(s, bool) for s in data[1]) and len(data[0]) == 2 * len(data[1]) > 0)
    if not ok:
        raise UserError(f"{path}: is a pickle but not (image bytes, same/different flags) with two images per "
                        "flag, as insightface's .bin files are; give insightface's own file.")
    bins, same = data
    if len(same) < folds:
        raise UserError(f"{path}: holds {len(same)} pairs, fewer than {folds} folds; give --folds {len(same)} or less.")
    size = None

    def decode(i):
        nonlocal size
        try:
            im = np.asarray(Image.open(io.BytesIO(bins[i])).convert("RGB"))
        except Exception as e:  # noqa: BLE001 - PIL raises many types for a bad image
            raise UserError(f"{path}: image {i} cannot be decoded ({type(e).__name__}); the file is damaged.") from None
        size = size or im.shape[0]
        if im.shape[:2] != (size, size):
            raise UserError(f"{path}: image {i} is {im.shape[1]}x{im.shape[0]} px, not {size}x{size}; "
                            "verification needs aligned faces of one size.")
        return im

    def read(idx):
        return to_source_size(np.stack([decode(i) for i in idx]))

    n = len(same)
    return PairList(str(path), "insightface-bin", read, 2 * n, np.arange(0, 2 * n, 2), np.arange(1, 2 * n, 2),
                    np.array(same, bool), folds, "arcface112")


def pairs_of_labelled_set(path: str | Path, n_pairs: int, seed: int, folds: int = 10) -> PairList:
    """``n_pairs`` same- and ``n_pairs`` different-identity pairs of a labelled set, shuffled into
    ``folds`` folds."""
    images = open_image_set(path, "labelled set")
    try:
        pairs = draw_pairs(images.labels, n_pairs, np.random.default_rng([seed, 0]))
    except UserError as e:
        raise UserError(f"{images.path}: {e}") from None
    both = np.concatenate([pairs.positive, pairs.negative])
    same = np.r_[np.ones(len(pairs.positive), bool), np.zeros(len(pairs.negative), bool)]
    order = np.random.default_rng([seed, 1]).permutation(len(both))
    if len(order) < folds:
        raise UserError(f"{images.path}: gives {len(order)} pairs, fewer than {folds} folds; give a larger set.")
    return PairList(str(images.path), "labelled-set", images.read, images.n, both[order, 0], both[order, 1],
                    same[order], folds, images.template)


# ----------------------------------------------------------------------------------- scores
@torch.inference_mode()
def embed_pairs(pairs: PairList, embedder, flip: bool = True, batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """(n_images, dim) L2-normalised embeddings (of each image plus its mirror image when ``flip``)
    of the images any pair uses (rows of unused images stay zero)."""
    from refine.images import to_tensor

    transform = embedder.transform(SOURCE_SIZE, pairs.template)
    used = np.unique(np.concatenate([pairs.first, pairs.second]))
    out = np.zeros((pairs.n_images, embedder.dim), np.float64)
    for s in range(0, len(used), batch_size):
        idx = used[s:s + batch_size]
        chips = transform.centre(to_tensor(pairs.read(idx)).to(device))
        e = embedder(chips).double()
        if flip:
            e = e + embedder(chips.flip(-1)).double()
        out[idx] = torch.nn.functional.normalize(e, dim=1).cpu().numpy()
    return out


def fold_accuracy(distance: np.ndarray, same: np.ndarray, folds: int) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy, threshold) per fold: pairs split into ``folds`` consecutive folds; for each, the
    first threshold of ``THRESHOLDS`` with the best accuracy on the other folds (same = distance
    below it), applied to it."""
    distance, same = np.asarray(distance, np.float64), np.asarray(same, bool)
    bounds = _kfold_bounds(len(distance), folds)
    correct = (distance[None, :] < THRESHOLDS[:, None]) == same[None, :]  # (thresholds, pairs)
    acc, thr = np.zeros(folds), np.zeros(folds)
    for k in range(folds):
        test = np.zeros(len(distance), bool)
        test[bounds[k]:bounds[k + 1]] = True
        best = int(np.argmax(correct[:, ~test].mean(1)))
        thr[k] = THRESHOLDS[best]
        acc[k] = correct[best, test].mean()
    return acc, thr


def _kfold_bounds(n: int, folds: int) -> np.ndarray:
    """Fold boundaries as scikit-learn's unshuffled ``KFold`` makes them (insightface's split):
    the first ``n % folds`` folds one longer."""
    sizes = np.full(folds, n // folds)
    sizes[: n % folds] += 1
    return np.r_[0, np.cumsum(sizes)]


# ----------------------------------------------------------------------------------- protocols
def read_protocol(lfw_pairs=None, images=None, template: str | None = None, bin_path=None, labelled_set=None,
                  n_pairs: int = 1000, seed: int = 0, folds: int = 10, align: str = "auto") -> PairList:
    """The pairs of exactly one of: LFW's pairs.txt (with the folder of its ``images``), an
    insightface .bin, a labelled set."""
    given = [name for name, v in (("--lfw-pairs", lfw_pairs), ("--bin", bin_path), ("--set", labelled_set)) if v]
    if len(given) != 1:
        raise UserError("give one of --lfw-pairs (with --images), --bin or --set.")
    if lfw_pairs is not None:
        if images is None:
            raise UserError(f"{lfw_pairs}: --lfw-pairs needs --images, the folder its names refer to.")
        return read_lfw_pairs(lfw_pairs, images, template, align)
    if bin_path is not None:
        return read_insightface_bin(bin_path, folds)
    return pairs_of_labelled_set(labelled_set, n_pairs, seed, folds)


@dataclass
class Benchmark:
    """A verification protocol's pairs under a short name for a table."""

    name: str
    pairs: PairList


def read_benchmarks(lfw_pairs=None, images=None, template: str | None = None, bins=(), sets=(),
                    n_pairs: int = 1000, seed: int = 0, align: str = "auto") -> list[Benchmark]:
    """Every protocol given, each named by its file (LFW: its folder), names unique."""
    benchmarks = []
    if lfw_pairs is not None:
        if images is None:
            raise UserError(f"{lfw_pairs}: --lfw-pairs needs --images, the folder its names refer to.")
        name = Path(lfw_pairs).parent.name or "lfw"
        benchmarks.append(Benchmark(name, read_lfw_pairs(lfw_pairs, images, template, align)))
    for b in bins:
        benchmarks.append(Benchmark(Path(b).stem, read_insightface_bin(b)))
    for s in sets:
        benchmarks.append(Benchmark(Path(s).stem if Path(s).suffix else Path(s).name,
                                    pairs_of_labelled_set(s, n_pairs, seed)))
    names = [b.name for b in benchmarks]
    if len(set(names)) != len(names):
        raise UserError(f"two benchmarks share a name ({', '.join(names)}); give files of different names.")
    return benchmarks


# ----------------------------------------------------------------------------------- report
def verify_pairs(pairs: PairList, prefix: str | Path, *, embedder: str = "dlib", flip: bool = True,
           batch_size: int = 64, device: str = "cpu") -> dict:
    """Verify ``pairs``; write PREFIX.json and PREFIX.png; return the report."""
    from morph.base.numerics import check_device
    from refine.embedders import load_embedder

    check_device(device)
    json_path, png_path = output_paths(prefix)
    with output_lock(json_path, "report"):
        net = load_embedder(embedder, device=device)
        emb = embed_pairs(pairs, net, flip, batch_size, device)
        distance = ((emb[pairs.first] - emb[pairs.second]) ** 2).sum(1)
        acc, thr = fold_accuracy(distance, pairs.same, pairs.folds)
        roc = roc_curve(distance[pairs.same], distance[~pairs.same])
        eer, eer_threshold = equal_error_rate(roc)
        n_neg = int((~pairs.same).sum())
        tar = {f"{far:g}": (dict(zip(("tar", "threshold"), tar_at_far(roc, far))) if n_neg * far >= 1 else None)
               for far in FARS}
        report = {
            "protocol": pairs.protocol, "source": pairs.source, "template": pairs.template,
            "aligned_here": pairs.aligned_here,
            "pairs": {"total": len(distance), "same": int(pairs.same.sum()), "different": n_neg},
            "embedder": {"spec": str(embedder), "name": net.name, "dim": net.dim},
            "flip": flip,
            "distance": "squared euclidean between L2-normalised embeddings (0 to 4)",
            "accuracy": {"mean": float(acc.mean()), "std": float(acc.std()), "folds": pairs.folds,
                         "per_fold": acc.tolist(), "thresholds": thr.tolist()},
            "auc": auc(roc), "eer": eer, "eer_threshold": eer_threshold, "tar_at_far": tar,
            "figure": str(png_path), "provenance": provenance(),
            "raw": {"first": pairs.first.tolist(), "second": pairs.second.tolist(),
                    "same": pairs.same.tolist(), "distance": distance.tolist()},
        }
        write_atomic(png_path, lambda p: plot_verification(report, roc, p))
        write_atomic(json_path, json.dumps(report, indent=1).encode())
        return report
