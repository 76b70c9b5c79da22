"""The synthetic modes of the menpo3d default model (``build_default_model.py``): hand-designed,
named fields over the mean head (``menpo3d_head.Head``), NOT learned from scans.

The bases
---------
Every mode is a displacement (or colour) field ``d`` over the vertices; it is stored as the unit
column ``d / |d|`` with ``std = amplitude * |d|`` (``pcaVariance = std**2``), so that
``mean + basis @ (std * coeffs)`` with ``coeffs ~ N(0, 1)`` applies ``amplitude * d`` at one
standard deviation. Columns have unit length; the modes are NOT mutually orthogonal (overlapping
regions such as "chin height" and "lower-face height" share directions); no tool should assume
they are. Localised fields use Gaussian falloffs ``g(c, s) = exp(-|v - c|^2 / 2 s^2)`` (optionally
anisotropic) around points defined by the landmarks, mirrored left/right for bilateral features;
values below 1e-4 of a field's peak are set to exactly 0 (a 0.1 micrometre step at most) so that
the file compresses. Below, "peak" is the largest displacement of a vertex at +1 std; "+2 std"
describes the intended extreme. ``L[i]`` is iBUG landmark i; "outward" means away from x = 0.

Identity shape (``shape/model``; 25 modes, millimetres):

* ``head size``: uniform scale about a point 60 mm behind the nasion (x = 0, y = mean of L[0],
  L[16], L[27]); 3% per std.
* ``face width``: x scaled about x = 0; 4.5% per std.
* ``face length``: y scaled about eye level; 4% per std.
* ``lower face height``: everything below the subnasale (L[33]) moves down in proportion to its
  depth below it (a softplus ramp with a 5 mm soft onset); 6% per std.
* ``jaw width``: outward x at the jaw angles (Gaussians s = 16 mm at the mean of L[12], L[13] and
  its mirror); peak 5 mm.
* ``chin height``: down (-y) around the chin (Gaussian s = 16 mm, 5 mm above and 3 mm behind
  L[8]); peak 4 mm.
* ``chin protrusion``: forward (+z), same region; peak 5 mm.
* ``nose length``: the tip and columella down and slightly forward (0, -1, 0.3) (Gaussian s =
  9 mm between L[30] and L[33]); peak 3.5 mm.
* ``nose tip projection``: +z at the nose tip (Gaussian s = 8 mm at L[30]); peak 3.5 mm.
* ``nose width``: alae outward (Gaussians s = 6 mm, 2 mm outside L[35] and its mirror); peak
  2.8 mm.
* ``nose bridge height``: +z along the dorsum (anisotropic Gaussians s = (5, 9, 8) mm at L[27],
  L[28], L[29]); peak 2.5 mm.
* ``brow ridge``: forward and slightly up (0, 0.3, 1) over the supra-orbital ridge (anisotropic
  Gaussians s = (10, 8, 8) mm at the brow landmarks L[17..26] moved 3 mm up, summed, not
  maxed, so the ridge is smooth); peak 2.5 mm.
* ``eye spacing``: both eye regions outward (Gaussians s = 11 mm at the eye centres); peak
  2 mm per side.
* ``eye size``: the eye region scaled in x and y about each eye centre with a flat-topped window
  ``exp(-(r / 13 mm)^4)``; 8% per std.
* ``eye tilt``: the eye regions rotated in the image plane about their centres, mirrored (outer
  corners up for +), same window; 4 degrees per std.
* ``cheekbone height``: up (+y) over the zygomas (Gaussians s = 13 mm, 15 mm below and 6 mm
  outside the outer eye corners); peak 3.5 mm.
* ``cheekbone width``: outward and forward (1, 0, 0.4) at the same points; peak 3.5 mm.
* ``cheek fullness``: horizontally away from the head's vertical axis (a smooth stand-in for the
  surface normal) on the mid-cheeks (Gaussians s = 15 mm between L[13] and L[35] and mirrored);
  peak 4.5 mm.
* ``forehead slope``: points above the brows move back in proportion to their height above
  them (softplus ramp, 6 mm onset, times a Gaussian in x with s = 45 mm); 5 degrees per std.
* ``lip thickness``: upper vermilion up and forward (0, 1, 0.5), lower vermilion down and
  forward (0, -1, 0.5) (anisotropic Gaussians s = (14, 5, 8) mm), split by the jaw weight
  (see ``jaw open``) so the two lips move apart; peak 1.6 mm.
* ``mouth width``: mouth corners outward (Gaussians s = 8 mm at L[48], L[54]); peak 3 mm.
* ``lip protrusion``: the mouth region forward (anisotropic Gaussian s = (20, 13, 15) mm); peak
  3.5 mm.
* ``midface depth``: forward over the mid-face (anisotropic Gaussian s = (30, 30, 25) mm, 5 mm
  below and 15 mm behind L[29]); peak 4 mm.
* ``ear height``: up around each ear (Gaussians s = 15 mm at the ear centre, found as the mean
  of the vertices more than 80 mm from x = 0, shifted onto the ear); peak 4 mm.
* ``ear protrusion``: outward in proportion to the distance beyond |x| = 72 mm (softplus), within
  Gaussians s = 20 mm around the ear centres; peak 4 mm.

Albedo (``color/model``; 10 modes, RGB in [0, 1]; sums are clipped to [0, 1] by the model):

The mean albedo replaces the false colours. It is painted by ``morph.model.albedo.paint`` (the same
painting gives models without a colour model their fixed albedo; the toolkit must be importable,
from an install or this checkout): skin (0.72, 0.53, 0.43); lips (0.64, 0.38, 0.36)
inside the outer lip contour L[48..59] (soft 1 mm edge) with a darker rim (0.45, 0.20, 0.20)
at the mouth slit; eyebrows (0.30, 0.22, 0.17) in a band 2.5 mm below the brow landmarks, 5.2
to 9.2 mm wide (thicker medially); inside the lid contours an eye: sclera (0.86, 0.82, 0.78),
pink inner corner, brown iris (0.30, 0.20, 0.14) of radius 5.6 mm with a dark limbus, black
pupil of radius 1.8 mm, and a dark lash line along the upper lid; dark nostrils (downward-facing
vertices just inside L[32], L[34]); and part of three modes below (1 std of redness, 1 std of
beard shadow, 1 std of under-eye darkness) so that their negative values stay plausible.
Masks: ``skin`` = 1 outside eyes, lips, brows and nostrils.

* ``skin tone``: light <-> dark, (0.125, 0.115, 0.10) per std on the skin (0.4 on the brows)
  and (0.14, 0.09, 0.08) on the lips: +2 std is very light skin (0.97, 0.76, 0.63), -2 std dark
  brown (0.47, 0.30, 0.23), -3 std very dark (0.35, 0.19, 0.13).
* ``undertone (olive vs pink)``: (0, 0.012, -0.018) per std on the skin.
* ``saturation``: the skin colour's chroma (skin minus its grey level) by 10% per std.
* ``cheek and nose redness``: (0.015, -0.006, -0.004) per std on the cheeks (Gaussians s = 16 mm
  below the outer eye corners) and the nose tip (s = 8 mm).
* ``lip tint``: (0.035, -0.02, -0.01) per std on the lips.
* ``lip darkness``: (-0.035, -0.035, -0.025) per std on the lips.
* ``brow darkness``: (-0.10, -0.08, -0.06) per std on the brows (negative: fair brows).
* ``beard shadow``: (-0.05, -0.042, -0.03) per std on the upper lip, chin, jaw and lower cheeks
  (Gaussians along L[2..14], at the chin and above the upper lip; not on the lips or nostrils);
  -1 std is clean-shaven, +2 std heavy stubble.
* ``under-eye darkness``: -0.025 (1, 0.68, 0.55) per std (a darkening with a hue between those
  of light and dark skin, so it does not redden either) on a ring of radius 9 mm around each
  eye (flattened above it), not in the eye opening or on the brows.
* ``iris lightness``: (0.045, 0.045, 0.05) per std on the iris: -2 std dark brown, +2 std
  hazel.

Expression (``expression/model``; 11 modes, millimetres; ``expression/model/mean`` is zero):

* ``jaw open``: the jaw rotates about a hinge axis parallel to x through the temporomandibular
  joints (15 mm below and 5 mm behind the mean of L[0], L[16]): displacement
  ``w * (e_x cross (v - hinge))`` per radian. ``w`` is a harmonic function on the mesh graph
  (uniform Laplacian) pinned to 1 on the lower rim of the mouth slit, within 15 mm of the chin
  L[8] and within 6 mm of the jaw line L[5..11], and to 0 on the upper rim, above the subnasale
  and behind z = 15 mm; the rims are pinned only more than 7 mm from the mouth corners, so the
  opening tapers towards them; then smoothed with 40 neighbour-averaging steps (re-pinning the
  rims) to remove kinks. 0.11 rad (6.3 degrees) per std: +2 std drops the lower lip about
  2 cm. Negative values push the lower lip into the upper lip, so sample it clipped at 0 (the
  file records ``coefficient_low``/``coefficient_high`` on ``expression/model``).
* ``smile``: mouth corners up, back and outward (0.6, 0.7, -0.4) (Gaussians s = 9 mm at L[48],
  L[54]) plus half as much cheek raise (0.2, 1, 0.3) (s = 14 mm below the outer eye corners);
  peak 4.5 mm.
* ``lip pucker``: the mouth region forward by 1 and contracted towards the mouth centre by
  0.035 (x) and 0.015 (y) per mm of distance, in an anisotropic Gaussian s = (16, 11, 12) mm;
  4 mm forward per std.
* ``brow raise``: up (0, 1, 0.1) in summed Gaussians s = (12, 10, 10) mm 4 mm above the brow
  landmarks (the upper lids and the forehead follow partly); peak 3.5 mm.
* ``brow furrow``: inner brows towards the midline and down (-1, -0.6, 0.2) (Gaussians s = 9 mm
  at L[22] and its mirror); peak 2.5 mm.
* ``eye closure``: with t the height above the lower lid contour and h the opening height at the
  same x (both from the lid landmarks), ``dy = -t`` inside the opening (0 < t < h) and
  ``dy = -h exp(-(t - h)^2 / 2 (5 mm)^2)`` above it (the upper lid skin follows), windowed to the
  eye's x-range; coefficient 1 closes the eye. 0.33 per std: +2 std two-thirds closed, +3 std
  closed; below -1 std the painted eye stretches visibly (recommended bounds -1 .. 2.7).
* ``cheek puff``: horizontally away from the head axis on the cheeks beside the mouth corners
  (Gaussians s = 15 mm); peak 4.5 mm.
* ``mouth sideways``: the mouth region shifted in +x (anisotropic Gaussian s = (18, 13, 15) mm);
  peak 4 mm.
* ``mouth corners down``: corners down and slightly back (0, -1, -0.2) (Gaussians s = 8 mm);
  peak 2.5 mm.
* ``sneer``: upper lip raised (0, 1, 0.2) (Gaussian s = (12, 6, 8) mm between L[33] and L[51],
  times 1 - jaw weight) and the nostril wings up (s = 6 mm at L[35] and mirror); peak 2.5 mm.
* ``mouth stretch``: corners outward, down and back (1, -0.3, -0.3) (Gaussians s = 10 mm) with
  the lips pulled back; peak 3 mm.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from menpo3d_head import Head, softplus
from morph.model import albedo as paint_lib
from morph.model.albedo import SKIN, smoothstep, vec

ZERO_BELOW = 1e-4  # field values below this fraction of the field's peak are set to 0


@dataclass
class Mode:
    name: str
    field: np.ndarray  # (N, 3): displacement in mm (or colour change) per unit coefficient
    amplitude: float   # coefficient at one standard deviation


def peak1(field: np.ndarray) -> np.ndarray:
    """The field scaled to a largest per-vertex displacement of 1."""
    return field / np.linalg.norm(field, axis=1).max()


def bilateral(head: Head, c, s, d) -> np.ndarray:
    """Gaussian at c moving along d plus its mirror image (x components mirrored)."""
    d = np.asarray(d, np.float64)
    dm = d * np.array([-1.0, 1, 1])
    return vec(head.gauss(c, s), d) + vec(head.gauss(head.mirrored(c), s), dm)


def identity_modes(h: Head) -> list[Mode]:
    v, L = h.v, h.L
    out = []
    centre = np.array([0.0, (L[0, 1] + L[16, 1] + L[27, 1]) / 3, L[27, 2] - 60.0])
    out.append(Mode("head size", v - centre, 0.03))
    out.append(Mode("face width", vec(v[:, 0], (1, 0, 0)), 0.045))
    eye_y = 0.5 * (L[36:48, 1].mean() + L[27, 1])
    out.append(Mode("face length", vec(v[:, 1] - eye_y, (0, 1, 0)), 0.04))
    out.append(Mode("lower face height", vec(softplus(L[33, 1] - v[:, 1], 5.0), (0, -1, 0)), 0.06))
    out.append(Mode("jaw width", peak1(bilateral(h, 0.5 * (L[12] + L[13]), 16.0, (1, 0, 0))), 5.0))
    chin_c = L[8] + np.array([0, 5.0, -3.0])
    out.append(Mode("chin height", peak1(vec(h.gauss(chin_c, 16.0), (0, -1, 0))), 4.0))
    out.append(Mode("chin protrusion", peak1(vec(h.gauss(chin_c, 16.0), (0, 0, 1))), 5.0))
    out.append(Mode("nose length", peak1(vec(h.gauss(0.5 * (L[30] + L[33]), 9.0), (0, -1, 0.3))), 3.5))
    out.append(Mode("nose tip projection", peak1(vec(h.gauss(L[30], 8.0), (0, 0, 1))), 3.5))
    out.append(Mode("nose width", peak1(bilateral(h, L[35] + np.array([2.0, 0, -1.0]), 6.0, (1, 0, 0))), 2.8))
    bridge = sum(h.gauss(L[i] - np.array([0, 0, 1.0]), (5.0, 9.0, 8.0)) for i in (27, 28, 29))
    out.append(Mode("nose bridge height", peak1(vec(bridge / bridge.max(), (0, 0, 1))), 2.5))
    brow = sum(h.gauss(L[i] + np.array([0, 3.0, -2.0]), (10.0, 8.0, 8.0)) for i in range(17, 27))
    out.append(Mode("brow ridge", peak1(vec(brow, (0, 0.3, 1))), 2.5))
    ec = h.eye_centre(+1)
    out.append(Mode("eye spacing", peak1(bilateral(h, ec, 11.0, (1, 0, 0))), 2.0))
    size = np.zeros((h.n, 3))
    tilt = np.zeros((h.n, 3))
    for side in (-1, 1):
        c = h.eye_centre(side)
        r = v - c
        w = np.exp(-(np.hypot(r[:, 0], r[:, 1]) / 13.0) ** 4) * smoothstep((v[:, 2] - (c[2] - 20.0)) / 8.0)
        size += w[:, None] * np.c_[r[:, 0], r[:, 1], np.zeros(h.n)]
        # rotation in the image plane, outer corner up for +: on the +x eye counter-clockwise
        tilt += side * w[:, None] * np.c_[-r[:, 1], r[:, 0], np.zeros(h.n)]
    out.append(Mode("eye size", size, 0.08))
    out.append(Mode("eye tilt", tilt, np.radians(4.0)))
    zyg = L[45] + np.array([6.0, -15.0, -4.0])
    out.append(Mode("cheekbone height", peak1(bilateral(h, zyg, 13.0, (0, 1, 0))), 3.5))
    out.append(Mode("cheekbone width", peak1(bilateral(h, zyg, 13.0, (1, 0, 0.4))), 3.5))
    cheek_c = 0.5 * (L[13] + L[35]) + np.array([0, 5.0, 5.0])
    w = h.gauss(cheek_c, 15.0) + h.gauss(h.mirrored(cheek_c), 15.0)
    out.append(Mode("cheek fullness", peak1(h.radial() * w[:, None]), 4.5))
    brow_y = L[17:27, 1].mean()
    fh = softplus(v[:, 1] - brow_y, 6.0) * np.exp(-0.5 * (v[:, 0] / 45.0) ** 2)
    out.append(Mode("forehead slope", vec(fh, (0, 0, -1)), np.tan(np.radians(5.0))))
    jw = h.jaw_weight
    up_c = 0.5 * (L[51] + L[62])
    lo_c = 0.5 * (L[57] + L[66])
    lips = (vec(h.gauss(up_c, (14.0, 5.0, 8.0)) * (1 - jw), (0, 1, 0.5))
            + vec(h.gauss(lo_c, (14.0, 5.0, 8.0)) * jw, (0, -1, 0.5)))
    out.append(Mode("lip thickness", peak1(lips), 1.6))
    out.append(Mode("mouth width", peak1(bilateral(h, L[54], 8.0, (1, 0, 0))), 3.0))
    mouth_c = L[48:68].mean(0)
    out.append(Mode("lip protrusion", peak1(vec(h.gauss(mouth_c, (20.0, 13.0, 15.0)), (0, 0, 1))), 3.5))
    mid = np.array([0.0, L[29, 1] - 5.0, L[29, 2] - 15.0])
    out.append(Mode("midface depth", peak1(vec(h.gauss(mid, (30.0, 30.0, 25.0)), (0, 0, 1))), 4.0))
    ear_c = ear_centre(h)
    out.append(Mode("ear height", peak1(bilateral(h, ear_c, 15.0, (0, 1, 0))), 4.0))
    ax = np.abs(v[:, 0])
    prot = softplus(ax - 72.0, 2.0) * (h.gauss(ear_c, 20.0) + h.gauss(h.mirrored(ear_c), 20.0))
    out.append(Mode("ear protrusion", peak1(vec(prot * h.outward(), (1, 0, 0))), 4.0))
    return out


def ear_centre(h: Head) -> np.ndarray:
    """Mean of the vertices more than 80 mm to the +x side: the rim of the +x ear."""
    m = h.v[:, 0] > 80.0
    c = h.v[m].mean(0)
    return c + np.array([-5.0, -7.0, 3.0])


def expression_modes(h: Head) -> list[Mode]:
    v, L = h.v, h.L
    out = []
    jw = h.jaw_weight
    hinge = np.array([0.0, 0.5 * (L[0, 1] + L[16, 1]) - 15.0, 0.5 * (L[0, 2] + L[16, 2]) - 5.0])
    r = v - hinge
    rot = np.c_[np.zeros(h.n), -r[:, 2], r[:, 1]]  # e_x cross r: opening moves the chin down and back
    out.append(Mode("jaw open", jw[:, None] * rot, 0.11))
    corner, outer = L[54], L[45]
    smile = bilateral(h, corner, 9.0, (0.6, 0.7, -0.4))
    smile += 0.5 * bilateral(h, outer + np.array([-8.0, -25.0, 5.0]), 14.0, (0.2, 1.0, 0.3))
    out.append(Mode("smile", peak1(smile), 4.5))
    mouth_c = L[48:68].mean(0)
    w = h.gauss(mouth_c, (16.0, 11.0, 12.0))
    pucker = w[:, None] * np.c_[-(v[:, 0] - mouth_c[0]) * 0.035, -(v[:, 1] - mouth_c[1]) * 0.015,
                                np.ones(h.n)]
    out.append(Mode("lip pucker", pucker, 4.0))
    brow = sum(h.gauss(L[i] + np.array([0, 4.0, -2.0]), (12.0, 10.0, 10.0)) for i in range(17, 27))
    out.append(Mode("brow raise", peak1(vec(brow, (0, 1, 0.1))), 3.5))
    fur = bilateral(h, L[22] + np.array([-2.0, 1.0, -1.0]), 9.0, (-1.0, -0.6, 0.2))
    out.append(Mode("brow furrow", peak1(fur), 2.5))
    close = np.zeros((h.n, 3))
    for side in (-1, 1):
        t, hh, wx = h.eye_opening(side)
        dy = np.where(t <= 0, 0.0, np.where(t <= hh, -t, -hh * np.exp(-0.5 * ((t - hh) / 5.0) ** 2)))
        close[:, 1] += dy * wx
    out.append(Mode("eye closure", close, 0.33))
    cheek_c = corner + np.array([14.0, 6.0, -12.0])
    w = h.gauss(cheek_c, 15.0) + h.gauss(h.mirrored(cheek_c), 15.0)
    out.append(Mode("cheek puff", peak1(h.radial() * w[:, None]), 4.5))
    out.append(Mode("mouth sideways", peak1(vec(h.gauss(mouth_c, (18.0, 13.0, 15.0)), (1, 0, 0))), 4.0))
    down = bilateral(h, corner + np.array([0, -2.0, 0]), 8.0, (0, -1, -0.2))
    out.append(Mode("mouth corners down", peak1(down), 2.5))
    ala = L[35]
    up_c = 0.5 * (L[33] + L[51])
    sneer = vec(h.gauss(up_c, (12.0, 6.0, 8.0)) * (1 - jw), (0, 1, 0.2))
    sneer += 0.6 * bilateral(h, ala, 6.0, (0.2, 1, 0))
    out.append(Mode("sneer", peak1(sneer), 2.5))
    stretch = bilateral(h, corner, 10.0, (1, -0.3, -0.3))
    stretch += vec(h.gauss(mouth_c, (12.0, 8.0, 8.0)), (0, 0, -0.4))
    out.append(Mode("mouth stretch", peak1(stretch), 3.0))
    return out


def albedo(h: Head) -> tuple[np.ndarray, list[Mode]]:
    """The mean albedo (N, 3) and the colour modes. The mean is painted by ``morph.model.albedo.paint``
    (the painting models without a colour model get too), with the mouth slit's rims as the line
    where the lips meet and +1 std of the redness, beard and under-eye modes."""
    col, m = paint_lib.paint(h, rim=h.rim_mask(), beard=True)
    lips, brows, eye, eyes_all = m["lips"], m["brows"], m["eye"], m["eyes_all"]
    skin_w, red, beard, under = m["skin_w"], m["red"], m["beard"], m["under"]

    tone_w = np.clip(skin_w + 0.4 * brows, 0, 1) * (1 - eyes_all) * (1 - lips)
    chroma = SKIN - SKIN.mean()
    modes = [
        Mode("skin tone", vec(tone_w, (0.125, 0.115, 0.10)) + vec(lips, (0.14, 0.09, 0.08)), 1.0),
        Mode("undertone (olive vs pink)", vec(tone_w, (0.0, 0.012, -0.018)), 1.0),
        Mode("saturation", vec(tone_w, chroma * 0.10), 1.0),
        Mode("cheek and nose redness", vec(red * skin_w, paint_lib.RED_STEP), 1.0),
        Mode("lip tint", vec(lips, (0.035, -0.02, -0.01)), 1.0),
        Mode("lip darkness", vec(lips, (-0.035, -0.035, -0.025)), 1.0),
        Mode("brow darkness", vec(brows, (-0.10, -0.08, -0.06)), 1.0),
        Mode("beard shadow", vec(beard, paint_lib.BEARD_STEP), 1.0),
        Mode("under-eye darkness", vec(under, paint_lib.UNDER_STEP), 1.0),
        Mode("iris lightness", vec(eye["iris"] * (1 - eye["pupil"]), (0.045, 0.045, 0.05)), 1.0),
    ]
    return col, modes


