"""Our CPU rasterizer: a per-image, per-face bounding-box z-buffer in numba.

It returns the same fragments as PyTorch3D's naive CPU rasterizer (``rasterize_meshes`` with
``bin_size=0``, ``faces_per_pixel=1``, ``blur_radius=0``, no culling) bit for bit, because it
makes the same float32 decisions in the same order of operations:

- pixel centres in NDC computed as PyTorch3D does (``PixToNonSquareNdc``, reversed so that +X
  is left and +Y up): ``x = r/2 - r (x_i + 0.5) / W`` with r = 2 on the shorter side and
  ``2 S1 / S2`` on the longer, evaluated in float32 as ``-r/2 + (r i + r/2) / S1``;
- a face is skipped when any vertex has z < 1e-8, or when its signed area
  ``(x0-x1)(y2-y1) - (y0-y1)(x2-x1)`` is within +-1e-8 (the 1e-8 is a C++ double, so these
  comparisons happen in double);
- a pixel is tested when its centre is inside the face's closed bounding box;
- barycentrics are edge functions over ``area = float32(double(E(v2; v0, v1)) + 1e-8)``, with
  ``E(p; a, b) = (p.x-a.x)(b.y-a.y) - (p.y-a.y)(b.x-a.x)`` in float32, no fused multiply-add;
- optional perspective correction ``w_i z_j z_k / sum``; depth ``pz = w0 z0 + w1 z1 + w2 z2``;
  pixels with pz < 0 are dropped;
- strict inside test (all three barycentrics > 0; no top-left rule), so a pixel centre exactly
  on a shared edge belongs to neither face;
- the nearest pz wins, ties to the smaller face index (we scan faces in ascending order and
  replace only on a strictly smaller depth);
- divisions by zero give inf/NaN as in C++ (``error_model="numpy"``, which also lets numba drop
  its zero checks); ``dists`` is the squared distance to the nearest edge, negated inside.

Instead of testing every face at every pixel we visit only the pixels whose centres can fall in
the face's bounding box (a branch-free pass finds each face's candidate pixels), and images in
parallel (``prange``); ``bench/README.md`` has the measurements. Each image is computed alone by
the same code, so the result does not depend on the batch size or the image's position in it.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange

from morph.render.types import Fragments, Rasterizer

_EPS = 1e-8  # PyTorch3D's kEpsilon: a double
_SLACK = 1e-3  # pixels


def pixel_centres_ndc(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(W,) x and (H,) y NDC coordinates of pixel centres, in PyTorch3D's float32 arithmetic.

    Column 0 is the image's left edge (+X points left, so x decreases along a row); row 0 is
    the top (+Y up, y decreases down the image).
    """
    xs = np.array([_pix_to_ndc(w - 1 - i, w, h) for i in range(w)], np.float32)
    ys = np.array([_pix_to_ndc(h - 1 - i, h, w) for i in range(h)], np.float32)
    return xs, ys


def _pix_to_ndc(i: int, s1: int, s2: int) -> np.float32:
    f32 = np.float32
    r = f32(2.0)
    if s1 > s2:
        r = f32(f32(s1) * r) / f32(s2)
    offset = r / f32(2.0)
    return -offset + (r * f32(i) + offset) / f32(s1)


class NumbaRasterizer(Rasterizer):
    """Our CPU z-buffer; its ``fused_pixel_stage`` rasterizes and interpolates in one parallel
    region per batch (the numba engine's per-image stage)."""

    name = "cpu"
    default_on = ("cpu",)

    def __call__(self, verts_ndc: torch.Tensor, faces: torch.Tensor, hw: tuple[int, int],
                 perspective_correct: bool = False) -> Fragments:
        return rasterize_cpu(verts_ndc, faces, hw, perspective_correct)

    @staticmethod
    def fused_pixel_stage(ndc, tri, hw, perspective_correct, colors, background, normals, mask, depth, image,
                          normal_image) -> None:
        """numpy in, numpy out (see ``pixel_stage``): no torch operation runs, so torch's OpenMP
        threads stay asleep instead of spinning against numba's."""
        xs, ys = pixel_centres_ndc(*hw)
        pixel_stage(ndc, tri, xs, ys, float(min(hw)), perspective_correct, colors, background, normals, mask,
                    depth, image, normal_image)


def rasterize_cpu(verts_ndc: torch.Tensor, faces: torch.Tensor, hw: tuple[int, int],
                  perspective_correct: bool = False) -> Fragments:
    """``Fragments`` of B meshes with one triangle list; see ``morph.render.raster.rasterize``."""
    verts = np.ascontiguousarray(verts_ndc.detach().cpu().numpy(), dtype=np.float32)
    tri = np.ascontiguousarray(faces.detach().cpu().numpy(), dtype=np.int32)
    out = rasterize_numpy(verts, tri, hw, perspective_correct)
    return Fragments(*(torch.from_numpy(a) for a in out))


def rasterize_numpy(verts: np.ndarray, tri: np.ndarray, hw: tuple[int, int],
                    perspective_correct: bool = False):
    """The same on numpy arrays: (pix_to_face, zbuf, bary_coords, dists) as numpy arrays."""
    h, w = hw
    b = verts.shape[0]
    xs, ys = pixel_centres_ndc(h, w)
    pix_to_face = np.empty((b, h, w, 1), np.int64)
    zbuf = np.empty((b, h, w, 1), np.float32)
    bary = np.empty((b, h, w, 1, 3), np.float32)
    dists = np.empty((b, h, w, 1), np.float32)
    _zbuffer(verts, tri, xs, ys, float(min(h, w)), bool(perspective_correct),
             pix_to_face, zbuf, bary, dists)
    return pix_to_face, zbuf, bary, dists


@njit(parallel=True, cache=True, error_model="numpy")
def _zbuffer(verts, tri, xs, ys, m, perspective_correct, pix_to_face, zbuf, bary, dists):
    n_tri = tri.shape[0]
    h = ys.shape[0]
    w = xs.shape[0]
    for b in prange(verts.shape[0]):
        v = verts[b]
        face, depth, wts = raster_image(v, tri, xs, ys, m, perspective_correct)
        offset = b * n_tri
        for yi in range(h):
            for xi in range(w):
                f = face[yi, xi]
                if f < 0:
                    pix_to_face[b, yi, xi, 0] = -1
                    zbuf[b, yi, xi, 0] = -1
                    dists[b, yi, xi, 0] = -1
                    for k in range(3):
                        bary[b, yi, xi, 0, k] = -1
                    continue
                pix_to_face[b, yi, xi, 0] = f + offset
                zbuf[b, yi, xi, 0] = depth[yi, xi]
                for k in range(3):
                    bary[b, yi, xi, 0, k] = wts[yi, xi, k]
                dists[b, yi, xi, 0] = -_edge_distance(v, tri, f, xs[xi], ys[yi])


@njit(cache=True, error_model="numpy")
def raster_image(v, tri, xs, ys, m, perspective_correct):
    """The z-buffer of one image: v (N, 3) NDC vertices; xs, ys from ``pixel_centres_ndc``;
    m = min(H, W). Returns face (H, W) int64 (index into ``tri``, -1 for background),
    depth (H, W) float32 (inf for background) and barycentrics (H, W, 3) float32."""
    h = ys.shape[0]
    w = xs.shape[0]
    ranges, candidates, n_cand = _pixel_ranges(v, tri, m, h, w)
    face = np.full((h, w), -1, np.int64)
    depth = np.full((h, w), np.inf, np.float32)
    wts = np.zeros((h, w, 3), np.float32)
    for j in range(n_cand):  # ascending face order, as PyTorch3D scans them
        f = candidates[j]
        _raster_face(v, tri, f, ranges[f, 0], ranges[f, 1], ranges[f, 2], ranges[f, 3],
                     xs, ys, perspective_correct, face, depth, wts)
    return face, depth, wts


@njit(cache=True, error_model="numpy")
def _pixel_ranges(v, tri, m, h, w):
    """(F, 4) int32 [first, last] column and row whose centres may lie in each face's bounding
    box, and the ascending list of faces for which that is not empty (with its length).

    Pixel centres are at ndc = (S - 1 - 2 i) / m, i.e. i = (S - 1 - m ndc) / 2; the float32
    centres differ from that by ~1e-7 NDC, so a slack of 1e-3 pixel (2e-5 NDC) keeps every
    candidate and the exact test in ``_raster_face`` decides. Branch-free so that it vectorises:
    a third of the time of a branchy per-face loop; most faces of a dense mesh cover no pixel
    centre at all and never reach the pixel test."""
    n_v = v.shape[0]
    gx = np.empty(n_v)
    gy = np.empty(n_v)
    for i in range(n_v):
        gx[i] = (w - 1 - m * np.float64(v[i, 0])) * 0.5
        gy[i] = (h - 1 - m * np.float64(v[i, 1])) * 0.5
    out = np.empty((tri.shape[0], 4), np.int32)
    for f in range(tri.shape[0]):
        a0 = gx[tri[f, 0]]
        a1 = gx[tri[f, 1]]
        a2 = gx[tri[f, 2]]
        c0 = gy[tri[f, 0]]
        c1 = gy[tri[f, 1]]
        c2 = gy[tri[f, 2]]
        # NaN and far-away values clamp to just outside the image
        lo = min(max(min(a0, min(a1, a2)) - _SLACK, -1.0), w + 0.0)
        hi = max(min(max(a0, max(a1, a2)) + _SLACK, w + 0.0), -1.0)
        out[f, 0] = max(np.int32(math.ceil(lo)), 0)
        out[f, 1] = min(np.int32(math.floor(hi)), w - 1)
        lo = min(max(min(c0, min(c1, c2)) - _SLACK, -1.0), h + 0.0)
        hi = max(min(max(c0, max(c1, c2)) + _SLACK, h + 0.0), -1.0)
        out[f, 2] = max(np.int32(math.ceil(lo)), 0)
        out[f, 3] = min(np.int32(math.floor(hi)), h - 1)
    candidates = np.empty(tri.shape[0], np.int64)
    n = 0
    for f in range(tri.shape[0]):
        candidates[n] = f
        n += (out[f, 0] <= out[f, 1]) & (out[f, 2] <= out[f, 3])
    return out, candidates, n


@njit(cache=True, error_model="numpy")
def _raster_face(v, tri, f, xa, xb, ya, yb, xs, ys, perspective_correct, face, depth, wts):
    """PyTorch3D's per-pixel test of face f over the candidate pixels, updating the z-buffer."""
    i0 = tri[f, 0]
    i1 = tri[f, 1]
    i2 = tri[f, 2]
    x0 = v[i0, 0]
    y0 = v[i0, 1]
    z0 = v[i0, 2]
    x1 = v[i1, 0]
    y1 = v[i1, 1]
    z1 = v[i1, 2]
    x2 = v[i2, 0]
    y2 = v[i2, 1]
    z2 = v[i2, 2]
    if np.float64(min(z0, min(z1, z2))) < _EPS:
        return
    face_area = (x0 - x1) * (y2 - y1) - (y0 - y1) * (x2 - x1)
    if np.float64(face_area) <= _EPS and np.float64(face_area) >= -_EPS:
        return
    x_min = min(x0, min(x1, x2))
    x_max = max(x0, max(x1, x2))
    y_min = min(y0, min(y1, y2))
    y_max = max(y0, max(y1, y2))
    area = np.float32(np.float64((x2 - x0) * (y1 - y0) - (y2 - y0) * (x1 - x0)) + _EPS)
    for yi in range(ya, yb + 1):
        py = ys[yi]
        if py > y_max or py < y_min:
            continue
        for xi in range(xa, xb + 1):
            px = xs[xi]
            if px > x_max or px < x_min:
                continue
            w0 = ((px - x1) * (y2 - y1) - (py - y1) * (x2 - x1)) / area
            w1 = ((px - x2) * (y0 - y2) - (py - y2) * (x0 - x2)) / area
            w2 = ((px - x0) * (y1 - y0) - (py - y0) * (x1 - x0)) / area
            if perspective_correct:
                t0 = w0 * z1 * z2
                t1 = w1 * z0 * z2
                t2 = w2 * z0 * z1
                den = t0 + t1 + t2
                w0 = t0 / den
                w1 = t1 / den
                w2 = t2 / den
            pz = w0 * z0 + w1 * z1 + w2 * z2
            if pz < 0:
                continue
            if not (w0 > 0 and w1 > 0 and w2 > 0):
                continue
            if pz < depth[yi, xi]:
                depth[yi, xi] = pz
                face[yi, xi] = f
                wts[yi, xi, 0] = w0
                wts[yi, xi, 1] = w1
                wts[yi, xi, 2] = w2


@njit(cache=True, inline="always", error_model="numpy")
def _segment_distance(px, py, ax, ay, bx, by):
    """Squared distance from p to segment ab (PyTorch3D's PointLineDistanceForward)."""
    dx = bx - ax
    dy = by - ay
    l2 = dx * dx + dy * dy
    if np.float64(l2) <= _EPS:
        return (px - bx) * (px - bx) + (py - by) * (py - by)
    t = (dx * (px - ax) + dy * (py - ay)) / l2
    t = min(max(t, np.float32(0.0)), np.float32(1.0))
    qx = px - (ax + t * dx)
    qy = py - (ay + t * dy)
    return qx * qx + qy * qy


@njit(cache=True, error_model="numpy")
def _edge_distance(v, tri, f, px, py):
    """Squared distance from a pixel centre to the nearest edge of face f (min over e01, e02, e12)."""
    i0 = tri[f, 0]
    i1 = tri[f, 1]
    i2 = tri[f, 2]
    x0 = v[i0, 0]
    y0 = v[i0, 1]
    x1 = v[i1, 0]
    y1 = v[i1, 1]
    x2 = v[i2, 0]
    y2 = v[i2, 1]
    e01 = _segment_distance(px, py, x0, y0, x1, y1)
    e02 = _segment_distance(px, py, x0, y0, x2, y2)
    e12 = _segment_distance(px, py, x1, y1, x2, y2)
    return min(min(e01, e02), e12)


# ----------------------------------------------------------------------------- pixel stage
@njit(parallel=True, cache=True, error_model="numpy")
def pixel_stage(ndc, tri, xs, ys, m, perspective_correct, colors, background, normals,
                mask, depth, image, normal_image):
    """Per image: ``raster_cpu.raster_image`` -> mask, depth (0 on the background), and the
    Gouraud-interpolated colours (if image has B rows; clipped to [0, 1]) and unit normals
    (if normal_image has B rows)."""
    n_img = ndc.shape[0]
    for b in prange(n_img):
        face, zb, wts = raster_image(ndc[b], tri, xs, ys, m, perspective_correct)
        for yi in range(face.shape[0]):
            for xi in range(face.shape[1]):
                hit = face[yi, xi] >= 0
                mask[b, 0, yi, xi] = hit
                depth[b, 0, yi, xi] = zb[yi, xi] if hit else 0
        _shade(b, n_img, face, wts, tri, colors, background, normals, image, normal_image)


@njit(cache=True, error_model="numpy")
def _shade(b, n_img, face, wts, tri, colors, background, normals, image, normal_image):
    """Image ``b``'s Gouraud colours (clipped to [0, 1]) and unit normals, for those asked for
    (the output arrays hold ``n_img`` rows, or none)."""
    if image.shape[0] == n_img:
        interpolate(face, wts, tri, colors[b], background, image[b])
        clip01(image[b])
    if normal_image.shape[0] == n_img:
        interpolate(face, wts, tri, normals[b], np.zeros(3, np.float32), normal_image[b])
        unit_channels(normal_image[b])


@njit(cache=True, error_model="numpy")
def interpolate(face, wts, tri, attr, background, out):
    """(C, H, W) per-pixel ``w0 a[v0] + w1 a[v1] + w2 a[v2]`` of a per-vertex attribute
    (N, C) over the visible face, ``background`` (C,) where there is none."""
    for yi in range(face.shape[0]):
        for xi in range(face.shape[1]):
            f = face[yi, xi]
            if f < 0:
                for c in range(attr.shape[1]):
                    out[c, yi, xi] = background[c]
                continue
            w0 = wts[yi, xi, 0]
            w1 = wts[yi, xi, 1]
            w2 = wts[yi, xi, 2]
            i0 = tri[f, 0]
            i1 = tri[f, 1]
            i2 = tri[f, 2]
            for c in range(attr.shape[1]):
                out[c, yi, xi] = w0 * attr[i0, c] + w1 * attr[i1, c] + w2 * attr[i2, c]


@njit(cache=True, error_model="numpy")
def clip01(img):
    """Clip a (C, H, W) image to [0, 1] in place."""
    for c in range(img.shape[0]):
        for yi in range(img.shape[1]):
            for xi in range(img.shape[2]):
                img[c, yi, xi] = min(max(img[c, yi, xi], np.float32(0.0)), np.float32(1.0))


@njit(cache=True, error_model="numpy")
def unit_channels(n):
    """Normalise a (3, H, W) normal image over its channels; zero vectors stay zero."""
    for yi in range(n.shape[1]):
        for xi in range(n.shape[2]):
            s = n[0, yi, xi] * n[0, yi, xi] + n[1, yi, xi] * n[1, yi, xi] + n[2, yi, xi] * n[2, yi, xi]
            if s > 0:
                inv = np.float32(1.0) / np.sqrt(s)
                for c in range(3):
                    n[c, yi, xi] *= inv


@njit(parallel=True, cache=True, error_model="numpy")
def shade_fragments(pix_to_face, bary, tri, colors, background, normals, image, normal_image):
    """``pixel_stage``'s shading from another rasterizer's packed fragments (PyTorch3D's)."""
    n_img = pix_to_face.shape[0]
    n_tri = tri.shape[0]
    for b in prange(n_img):
        face = pix_to_face[b, :, :, 0] - b * n_tri
        face = np.where(pix_to_face[b, :, :, 0] >= 0, face, -1)
        _shade(b, n_img, face, bary[b, :, :, 0, :], tri, colors, background, normals, image, normal_image)
