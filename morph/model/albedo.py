"""A per-vertex albedo painted from the 68 iBUG landmarks: skin, lips, brows, eyes, nostrils.

Two users share this one painting:

* ``data/build_default_model.py`` paints the mean albedo of the embedded menpo3d model with it
  (``paint(regions, rim=..., beard=True)`` on the menpo3d head, ``scale=1``, ``soft=0``), and
  builds the colour modes on the masks it returns; ``data/build_ict_default_model.py`` does the
  same on the face of the default (ICT) model, with the painted eye and nostrils off;
* models without a colour model (the Surrey Face Model, an LSFM or 3DDFA_V2 shape model) get a
  FIXED painted albedo from ``painted_albedo(model)`` instead of a uniform grey, so that their
  renders show eyes, brows and lips (``MorphableModel.colors`` and the renderer use it; the model's
  ``texture`` stays None, so ``n_texture`` is 0 and every identity has the same albedo).

What is painted (colours in [0, 1] RGB; ``L[i]`` is iBUG point i, 0-based):

* skin (0.72, 0.53, 0.43), slightly redder on the cheeks and nose tip, slightly darker in a ring
  around each eye;
* lips (0.64, 0.38, 0.36) inside the outer lip contour L[48..59], with a darker line
  (0.45, 0.20, 0.20) where the lips meet (the default model: the rims of its mouth slit; other
  models: the inner lip contour L[60..67], with the mouth corners L[48], L[54] standing in for
  missing L[60], L[64]);
* brows (0.30, 0.22, 0.17) in a band just below the brow landmarks L[17..26], thicker medially;
* inside the eyelid contours L[36..41], L[42..47]: sclera (0.86, 0.82, 0.78), a pink inner
  corner, a brown iris (0.30, 0.20, 0.14) with a dark limbus, a black pupil and a dark lash line
  along the upper lid (for models without a colour model also a fainter one along the lower lid);
* dark nostrils (0.25, 0.13, 0.11) on the downward-facing surface just inside L[32], L[34].

The default model's mean albedo also holds +1 std of its redness, beard-shadow and under-eye
colour modes; a model without a colour model gets the redness and the under-eye ring but no
beard shadow, and slightly more contrast on the brows, lash lines and nostrils (``COLOURLESS``).

Every distance is in millimetres on the default head and is multiplied by ``scale``; for other
models ``scale`` is their inter-ocular distance (between the eye-contour centres, measured on the
mean shape) over the default head's (``REFERENCE_IOD_MM``), so the features keep their proportions
on any face size and in any unit-consistent mesh. Soft edges are at least ``soft`` mm wide:
per-vertex colour is interpolated across triangles, so on a coarse mesh an edge narrower than
the vertex spacing would decide colours by which vertices happen to fall inside it.
``painted_albedo`` sets ``soft`` to the median edge length within 0.3 inter-ocular distances of
the eye centres: 3.0 mm on the SFM's 3,448-vertex mesh, 1.0 mm on the default head (53,349
vertices). (917 SFM renders with |yaw| <= 45, default priors, before the ``COLOURLESS``
contrast: MTCNN found exactly one face in 91.4% with no softening, 94.4% with half the edge
length, 96.3% with the edge length, 95.5% with 1.5 or 2 times it and 93.5% with 3 times it.)

The painting works in a frontal frame built from the landmarks (``landmark_frame``): origin midway
between the eye centres (x = 0 is taken as the mid-sagittal plane), x towards the eye of L[42..47],
y up from the mouth to the eyes, z = x cross y out of the face. A model needs L[17..59] (brows,
nose, eyes, outer lips) for a painted albedo; without them it stays uniform grey (``GREY``).
"""
from __future__ import annotations

import numpy as np

#: Distance between the eye-contour centres (means of L[36..41] and L[42..47]) of the default
#: model's mean head, mm: the unit the painting's sizes are written in.
REFERENCE_IOD_MM = 61.25
#: Albedo of models that have neither a colour model nor the landmarks to paint one.
GREY = 0.7
#: Landmarks a painted albedo needs: brows, nose, eyes and the outer lip contour.
REQUIRED = tuple(range(17, 60))

#: How a model without a colour model is painted (``paint`` arguments). It is one fixed albedo on
#: a possibly coarse mesh whose per-vertex colours are interpolated across triangles, which
#: dilutes thin features: so fuller brows and lash lines on both lids than the default model's
#: mean (they keep the eyes readable when an expression narrows them), and nostrils on any
#: downward-facing surface (under a coarse nose the averaged normals barely face down).
#: Measured on SFM renders (1,395 with |yaw| <= 45, default priors): MTCNN found exactly one face
#: in 96.5% with the default model's values, 97.8% with these.
COLOURLESS = {"brow_weight": 1.0, "lash_weight": 1.0, "lower_lash_weight": 0.4, "nostril_facing_down": 0.0}

SKIN = np.array([0.72, 0.53, 0.43])
LIPS = np.array([0.64, 0.38, 0.36])
IRIS = np.array([0.30, 0.20, 0.14])
# steps of the default model's colour modes whose mean holds +1 std of them
RED_STEP = np.array([0.015, -0.006, -0.004])
BEARD_STEP = np.array([-0.05, -0.042, -0.03])
UNDER_STEP = -0.025 * np.array([1.0, 0.68, 0.55])  # a hue between light and dark skin


def smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def vertex_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Unit area-weighted vertex normals (N, 3) of a mesh; zero for vertices in no triangle."""
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    n = np.zeros_like(v)
    for k in range(3):
        np.add.at(n, f[:, k], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def vec(w: np.ndarray, d) -> np.ndarray:
    """(N, 3) field: per-vertex weight w times the direction / colour step d."""
    return w[:, None] * np.asarray(d, np.float64)[None, :]


class FaceRegions:
    """A face mesh in a frontal frame (mm, y up, face towards +z, x = 0 mid-sagittal) with its
    68 landmark points, and the landmark-defined masks the painting uses.

    v (N, 3) vertices, normals (N, 3) unit vertex normals, L (68, 3) landmark positions (NaN
    where unknown), scale: mm of this mesh per mm of the default head, soft: smallest soft-edge
    width in mm.
    """

    def __init__(self, v: np.ndarray, normals: np.ndarray, L: np.ndarray, scale: float = 1.0,
                 soft: float = 0.0):
        self.v = v
        self.n = len(v)
        self.normals = normals
        self.L = L
        self.scale = float(scale)
        self.soft = float(soft)

    # ---- units
    def mm(self, *d) -> np.ndarray | float:
        """Lengths of the default head, scaled to this mesh (a float for one value)."""
        if len(d) == 1:
            return d[0] * self.scale
        return np.asarray(d, np.float64) * self.scale

    def edge(self, w: float) -> float:
        """Width of a soft edge of w mm on the default head: scaled, at least ``soft``."""
        return max(w * self.scale, self.soft)

    # ---- basic fields
    def gauss(self, c, s) -> np.ndarray:
        s = np.broadcast_to(np.asarray(s, np.float64), (3,))
        d = (self.v - np.asarray(c)) / s
        return np.exp(-0.5 * (d * d).sum(1))

    def mirrored(self, c) -> np.ndarray:
        c = np.asarray(c, np.float64).copy()
        c[0] = -c[0]
        return c

    def eye_centre(self, side: int) -> np.ndarray:
        ids = range(36, 42) if side < 0 else range(42, 48)
        return self.L[list(ids)].mean(0)

    def lid_curves(self, side: int):
        """(x_upper, y_upper), (x_lower, y_lower) polylines of one eye, sorted by x."""
        up, lo = ((36, 37, 38, 39), (36, 41, 40, 39)) if side < 0 else ((42, 43, 44, 45), (42, 47, 46, 45))
        out = []
        for ids in (up, lo):
            p = self.L[list(ids)]
            o = np.argsort(p[:, 0])
            out.append((p[o, 0], p[o, 1]))
        return out

    def eye_opening(self, side: int):
        """(t, h, inside_x) per vertex: height above the lower lid, opening height at x, x-window."""
        (xu, yu), (xl, yl) = self.lid_curves(side)
        x, y = self.v[:, 0], self.v[:, 1]
        ylo = np.interp(x, xl, yl)
        h = np.maximum(np.interp(x, xu, yu) - ylo, 0.0)
        x0, x1 = xl[0], xl[-1]
        wx = np.exp(-0.5 * (np.maximum(np.maximum(x0 - x, x - x1), 0.0) / self.edge(2.0)) ** 2)
        zmask = smoothstep((self.v[:, 2] - (self.eye_centre(side)[2] - self.mm(20.0))) / self.mm(8.0))
        return y - ylo, h, wx * zmask

    # ---- masks
    def lip_mask(self) -> np.ndarray:
        """Inside the outer lip contour L[48..59] (seen from the front), soft edge."""
        poly = self.L[48:60, :2]
        inside = _inside_polygon(self.v[:, :2], poly)
        d = _distance_to_polyline(self.v[:, :2], np.vstack([poly, poly[:1]]))
        sd = np.where(inside, d, -d)  # signed, + inside
        m = smoothstep((sd + self.mm(0.5)) / self.edge(1.2))
        front = smoothstep((self.v[:, 2] - (self.L[48, 2] - self.mm(12.0))) / self.mm(4.0))
        return m * front

    def mouth_line_mask(self) -> np.ndarray:
        """Where the lips meet: near the inner lip contour L[60..67] (L[48], L[54] for missing
        corners; points without a landmark are left out), inside the lips."""
        upper = [60, 61, 62, 63, 64]
        lower = [64, 65, 66, 67, 60]
        corner = {60: 48, 64: 54}
        best = np.full(self.n, np.inf)
        for chain in (upper, lower):
            pts = []
            for i in chain:
                p = self.L[i]
                if not np.all(np.isfinite(p)) and i in corner:
                    p = self.L[corner[i]]
                if np.all(np.isfinite(p)):
                    pts.append(p)
            if len(pts) >= 2:
                best = np.minimum(best, _distance_to_polyline(self.v, np.asarray(pts)))
        if not np.any(np.isfinite(best)):
            return np.zeros(self.n)
        return np.exp(-0.5 * (best / self.edge(1.0)) ** 2) * self.lip_mask()

    def brow_mask(self) -> np.ndarray:
        out = np.zeros(self.n)
        for ids in ((17, 18, 19, 20, 21), (26, 25, 24, 23, 22)):
            p = self.L[list(ids)].copy()  # lateral -> medial
            p[:, 1] -= self.mm(2.5)
            half = np.linspace(2.6, 4.6, len(ids)) * self.scale  # thicker medially
            # distance to the polyline with a half-thickness interpolated along it
            best = np.full(self.n, np.inf)
            for a, b, ha, hb in zip(p[:-1], p[1:], half[:-1], half[1:]):
                ab = b - a
                t = np.clip(((self.v - a) @ ab) / (ab @ ab), 0, 1)
                d = np.linalg.norm(self.v - (a + t[:, None] * ab), axis=1) / (ha + t * (hb - ha))
                best = np.minimum(best, d)
            # taper beyond the ends
            out = np.maximum(out, smoothstep((1.25 - best) / 0.6))
        return out

    def eye_paint(self) -> dict[str, np.ndarray]:
        """(sclera, iris, pupil, limbus, lashes, lower_lashes, caruncle) weights in [0, 1]."""
        parts = {k: np.zeros(self.n)
                 for k in ("sclera", "iris", "pupil", "limbus", "lashes", "lower_lashes", "caruncle")}
        e06 = self.edge(0.6)
        for side in (-1, 1):
            t, h, wx = self.eye_opening(side)
            inside = smoothstep(t / e06) * smoothstep((h - t) / e06) * (h > self.mm(0.3)) * wx
            c = self.eye_centre(side)
            (xu, yu), (xl, yl) = self.lid_curves(side)
            cx = 0.5 * (xl[0] + xl[-1])
            cy = 0.5 * (np.interp(cx, xu, yu) + np.interp(cx, xl, yl)) + self.mm(0.4)
            r = np.hypot(self.v[:, 0] - cx, self.v[:, 1] - cy)
            near = smoothstep((self.v[:, 2] - (c[2] - self.mm(10.0))) / self.edge(3.0))
            iris = smoothstep((self.mm(5.6) - r) / self.edge(0.5)) * inside * near
            parts["iris"] = np.maximum(parts["iris"], iris)
            pupil = smoothstep((self.mm(1.8) - r) / self.edge(0.4)) * inside * near
            parts["pupil"] = np.maximum(parts["pupil"], pupil)
            limbus = np.exp(-0.5 * ((r - self.mm(5.4)) / self.edge(0.5)) ** 2) * inside * near
            parts["limbus"] = np.maximum(parts["limbus"], limbus)
            parts["sclera"] = np.maximum(parts["sclera"], inside * (1 - iris))
            inner = xl[-1] if side < 0 else xl[0]
            caruncle = inside * np.exp(-0.5 * ((self.v[:, 0] - inner) / self.edge(1.5)) ** 2)
            parts["caruncle"] = np.maximum(parts["caruncle"], caruncle)
            # lash line: just above the upper lid contour, inside the eye's x-range
            yup = np.interp(self.v[:, 0], xu, yu)
            lash = (np.exp(-0.5 * ((self.v[:, 1] - yup - self.mm(0.3)) / e06) ** 2) * wx
                    * (h > self.mm(0.5)) * near)
            parts["lashes"] = np.maximum(parts["lashes"], lash)
            # and just below the lower lid contour
            ylo = np.interp(self.v[:, 0], xl, yl)
            lower = (np.exp(-0.5 * ((self.v[:, 1] - ylo + self.mm(0.3)) / e06) ** 2) * wx
                     * (h > self.mm(0.5)) * near)
            parts["lower_lashes"] = np.maximum(parts["lower_lashes"], lower)
        return parts

    def nostril_mask(self, facing_down: float = 0.2) -> np.ndarray:
        """Near L[32], L[34], on the surface whose normal points down by more than
        ``facing_down`` (the y component of the unit normal, with a soft 0.5 ramp)."""
        m = np.zeros(self.n)
        for i in (32, 34):
            c = self.L[i] + self.mm(0.0, 1.5, -3.0)
            m = np.maximum(m, self.gauss(c, self.mm(3.0, 2.5, 3.5)))
        down = smoothstep((-self.normals[:, 1] - facing_down) / 0.5)
        return m * down


def paint(r: FaceRegions, rim: np.ndarray | None = None, beard: bool = True, brow_weight: float = 0.85,
          lash_weight: float = 0.8, lower_lash_weight: float = 0.0,
          nostril_facing_down: float = 0.2) -> tuple[np.ndarray, dict]:
    """The painted albedo (N, 3) in [0, 1] and the masks it was painted with.

    rim: weight of the dark line where the lips meet (default: ``r.mouth_line_mask()``).
    beard: add the default model's +1 std of beard shadow (its mean holds +1 std of the
    redness, beard and under-eye modes so that their negative values stay plausible); the beard
    region is written for the default head's frame (absolute z) and its jaw landmarks.
    brow_weight, lash_weight, lower_lash_weight: how far the brows, the upper and the lower lash
    lines are blended towards their colours (the defaults are the default model's).
    nostril_facing_down: how far down the surface must face to take the nostril colour.
    Masks: lips, brows, eye (dict of eye_paint), eyes_all, nostrils, rim, skin_w, red, beard, under.
    """
    L = r.L
    s = r.scale
    lips = r.lip_mask()
    brows = r.brow_mask() * (1 - lips)
    eye = r.eye_paint()
    eyes_all = np.clip(eye["sclera"] + eye["iris"], 0, 1)
    nostr = r.nostril_mask(nostril_facing_down)
    rim = r.mouth_line_mask() if rim is None else rim
    skin_w = np.clip(1 - eyes_all - 0.3 * lips - 0.6 * brows - 0.7 * nostr, 0, 1)

    # cheeks and nose tip (redness), beard and under-eye regions
    cheek_c = L[45] + r.mm(-6.0, -22.0, 6.0)
    red = np.maximum(r.gauss(cheek_c, 16.0 * s), r.gauss(r.mirrored(cheek_c), 16.0 * s))
    red = np.maximum(red, 0.6 * r.gauss(L[30], 8.0 * s))
    beard_w = np.zeros(r.n)
    if beard:
        for i in range(2, 15):
            beard_w = np.maximum(beard_w, r.gauss(L[i] + np.array([0, 6.0, 0.0]), 12.0))
        beard_w = np.maximum(beard_w, r.gauss(L[8] + np.array([0, 8.0, 0.0]), 16.0))
        beard_w = np.maximum(beard_w, r.gauss(0.5 * (L[33] + L[51]), (16.0, 4.0, 8.0)))
        below_nose = smoothstep((L[33, 1] - 2.0 - r.v[:, 1]) / 6.0)
        below_jaw = smoothstep((r.v[:, 1] - (L[8, 1] - 30.0)) / 15.0)
        front = smoothstep((r.v[:, 2] - 10.0) / 15.0)
        beard_w = beard_w * below_nose * below_jaw * front * (1 - lips) * (1 - nostr)
    under = np.zeros(r.n)
    for side in (-1, 1):
        c = r.eye_centre(side)
        rr = np.hypot(r.v[:, 0] - c[0], (r.v[:, 1] - c[1]) * np.where(r.v[:, 1] < c[1], 1.0, 1.6))
        ring = (np.exp(-0.5 * ((rr - r.mm(9.0)) / r.mm(4.0)) ** 2)
                * smoothstep((r.v[:, 2] - (c[2] - r.mm(20.0))) / r.mm(8.0)))
        under = np.maximum(under, ring)
    under *= (1 - eyes_all) * (1 - brows)

    col = np.tile(SKIN, (r.n, 1))
    col += vec(red * skin_w, RED_STEP)  # the default model: mean = +1 std of the redness mode
    if beard:
        col += vec(beard_w, BEARD_STEP)  # mean = +1 std of the beard mode
    col += vec(under, UNDER_STEP)  # mean = +1 std of the under-eye mode

    def blend(c, w, target):
        return c * (1 - w[:, None]) + np.asarray(target)[None] * w[:, None]

    col = blend(col, lips, LIPS)
    col = blend(col, rim, (0.45, 0.20, 0.20))
    col = blend(col, brows * brow_weight, (0.30, 0.22, 0.17))
    col = blend(col, nostr * 0.8, (0.25, 0.13, 0.11))
    col = blend(col, eye["sclera"], (0.86, 0.82, 0.78))
    col = blend(col, eye["caruncle"] * 0.8, (0.80, 0.52, 0.50))
    col = blend(col, eye["iris"], IRIS)
    col = blend(col, eye["limbus"] * 0.7, (0.12, 0.08, 0.06))
    col = blend(col, eye["pupil"], (0.03, 0.03, 0.03))
    col = blend(col, eye["lashes"] * lash_weight, (0.12, 0.09, 0.08))
    if lower_lash_weight:
        col = blend(col, eye["lower_lashes"] * lower_lash_weight, (0.12, 0.09, 0.08))
    col = np.clip(col, 0.0, 1.0)
    masks = {"lips": lips, "brows": brows, "eye": eye, "eyes_all": eyes_all, "nostrils": nostr, "rim": rim,
             "skin_w": skin_w, "red": red, "beard": beard_w, "under": under}
    return col, masks


# ------------------------------------------------------------------------- any model --

def can_paint(landmarks: np.ndarray | None) -> bool:
    """Whether a model with these landmark indices gets a painted albedo (L[17..59] known)."""
    return (landmarks is not None and landmarks.shape[0] == 68
            and bool(np.all(landmarks[list(REQUIRED)] >= 0)))


def landmark_frame(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(origin (3,), rotation (3, 3) whose rows are the frame's axes) of the frontal frame of the
    68 landmark points (see the module docstring): ``(v - origin) @ rotation.T``."""
    el, er = points[36:42].mean(0), points[42:48].mean(0)
    origin = 0.5 * (el + er)
    x = (er - el) / np.linalg.norm(er - el)
    up = origin - 0.5 * (points[48] + points[54])
    y = up - (up @ x) * x
    y /= np.linalg.norm(y)
    return origin, np.stack([x, y, np.cross(x, y)])


def painted_albedo(model) -> np.ndarray | None:
    """(N, 3) float32 albedo painted from the landmarks on the mean shape of a model (the shape
    mean plus the expression model's mean deformation), or None when ``can_paint`` says no.
    Deterministic: the same model gives the same bytes."""
    lm = model.landmarks
    if not can_paint(lm) or model.triangles.size == 0:
        return None
    v = model.vertices(np.zeros(model.n_shape, np.float32))[0].astype(np.float64)
    known = lm >= 0
    origin, rot = landmark_frame(np.where(known[:, None], v[np.clip(lm, 0, None)], np.nan))
    v = (v - origin) @ rot.T
    points = np.where(known[:, None], v[np.clip(lm, 0, None)], np.nan)
    iod = np.linalg.norm(points[42:48].mean(0) - points[36:42].mean(0))
    if not np.isfinite(iod) or iod <= 0:
        return None
    tris = model.triangles
    normals = vertex_normals(v, tris)
    # vertex spacing around the eyes: edges with an end within 0.3 IOD of an eye centre
    e = np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]])
    length = np.linalg.norm(v[e[:, 0]] - v[e[:, 1]], axis=1)
    near = np.zeros(len(e), bool)
    for c in (points[36:42].mean(0), points[42:48].mean(0)):
        near |= np.linalg.norm(v[e[:, 0]] - c, axis=1) < 0.3 * iod
    spacing = float(np.median(length[near])) if near.any() else float(np.median(length))
    regions = FaceRegions(v, normals, points, scale=iod / REFERENCE_IOD_MM, soft=1.0 * spacing)
    col, _ = paint(regions, beard=False, **COLOURLESS)
    return np.ascontiguousarray(col, np.float32)


# ------------------------------------------------------------------------- geometry --

def _inside_polygon(p: np.ndarray, poly: np.ndarray) -> np.ndarray:
    x, y = p[:, 0], p[:, 1]
    inside = np.zeros(len(p), bool)
    for (x0, y0), (x1, y1) in zip(poly, np.roll(poly, -1, 0)):
        crosses = (y0 > y) != (y1 > y)
        xint = x0 + (y - y0) * (x1 - x0) / np.where(y1 == y0, 1e-12, y1 - y0)
        inside ^= crosses & (x < xint)
    return inside


def _distance_to_polyline(p: np.ndarray, line: np.ndarray) -> np.ndarray:
    best = np.full(len(p), np.inf)
    for a, b in zip(line[:-1], line[1:]):
        ab = b - a
        denom = ab @ ab
        t = np.clip(((p - a) @ ab) / denom, 0, 1) if denom > 0 else np.zeros(len(p))
        best = np.minimum(best, np.linalg.norm(p - (a + t[:, None] * ab), axis=1))
    return best
