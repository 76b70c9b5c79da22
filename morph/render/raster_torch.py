"""A rasterizer in plain torch: PyTorch3D's fragments on any device torch runs on, no compiled code.

Why: PyTorch3D's wheels are built for one torch version (and CUDA version) at a time, so on a GPU
whose torch has no matching PyTorch3D binary there would be no CUDA rasterizer at all (and the
numba one is CPU-only). This backend needs nothing but torch; ``auto`` picks it on CUDA when
PyTorch3D does not import (``morph.render.raster.RASTERIZERS`` lists it after "pytorch3d").

Method: a vectorised z-buffer over (image, face, pixel) candidates, making the same float32
decisions in the same order of operations as ``raster_cpu`` (whose rules, PyTorch3D's, are
listed in its docstring):

1. per face (images in groups of at most ``face_budget`` faces in all): drop faces with a
   non-finite coordinate or any vertex z < 1e-8, and those whose signed area is within +-1e-8;
   the columns and rows whose pixel centres can lie in the face's bounding box
   (``raster_cpu._pixel_ranges``: double precision, 1e-3 pixel of slack, the exact test decides);
2. the faces' boxes are expanded into one candidate per (face, pixel), in chunks of at most
   ``max_candidates`` (one face larger than that is a chunk of its own), in ascending packed
   face order;
3. per candidate, in float32 with every operation a separate torch kernel (so nothing is fused
   into an FMA): the closed bounding-box test, the edge-function barycentrics over
   ``area = float32(double(E) + 1e-8)``, optional perspective correction ``w_i z_j z_k / sum``,
   ``pz = w0 z0 + w1 z1 + w2 z2``; a candidate counts when pz is finite and >= 0 and all three
   barycentrics are > 0 (strict: a pixel centre on a shared edge belongs to neither face);
4. per pixel, the nearest pz wins, ties to the smaller face index (the numba engine scans faces
   in ascending order and replaces only on a strictly smaller depth): ``scatter_reduce(amin)`` of
   pz, then ``scatter_reduce(amin)`` of the face index among the candidates at that depth; across
   chunks a later chunk (higher face indices) replaces a pixel only on a strictly smaller depth;
5. ``dists``: the squared distance of the pixel centre to the winning face's nearest edge
   (PyTorch3D's ``PointLineDistanceForward``), negated inside, computed for the winners only.

Output: ``morph.render.types.Fragments``. Nothing depends on the order in which a device runs
the kernels (minima are order-free, and each pixel's winner is written once), so results are
deterministic; an image's fragments do not depend on the batch it is in.

Measured agreement (``tests/test_raster_torch.py``, CPU, torch 2.12.1): the same fragments as the
numba engine and PyTorch3D 0.7.9 bit for bit - pix_to_face equal on 100% of pixels, and zbuf,
bary_coords and dists equal as float32 numbers where it agrees - on the SFM mesh (16 poses at
108x108, perspective-correct and not; 40x56 and 56x40), the default model (106k triangles, 4
poses at 108x108 against the numba engine, 2 against PyTorch3D with ``-m slow``), hand-made
edge cases and random triangle soups (ties, NaN/inf vertices, faces behind the camera) in chunks
of 1 to 2M candidates. Not yet run on a GPU: on CUDA every step is the same elementwise IEEE
float32 operation, so the same bits are expected; ``test_cuda_matches_the_numba_engine`` checks it
(to 1e-5) where a GPU is present.

Measured speed, 2-core x86-64 VM, default model, batch 16, 108x108, ``python bench/render.py``
(``torch_backend_img_per_s``, end to end through ``render_batch`` with ``backend="torch"``): 82.6
images/s on 2 threads, 46.6 on 1 (``--threads 1``), against 354 and 165 for the numba backend;
the rasterizer alone (``rasterize(ndc, faces, 108, "torch", True)`` on the batch, timed 10
times) 125-145 images/s on 2 threads and 78 on 1. While another process used half of the 2
cores, 2 torch threads fell to 4-42 images/s (rasterizer) and 3-8 (end to end), 1 thread kept
~80: each of its ~150 short parallel kernels per call waits for a descheduled thread. On the CPU
it is a portable reference; the numba backend stays the default there.
Devices without float64 (Apple's MPS) are not supported: the 1e-8 comparisons are made in
double, as PyTorch3D's C++ makes them.
"""
from __future__ import annotations

import math

import torch

from morph.render.types import Fragments, Rasterizer

_EPS = 1e-8  # PyTorch3D's kEpsilon: a double
_SLACK = 1e-3  # pixels, as raster_cpu._pixel_ranges


class TorchRasterizer(Rasterizer):
    """The plain-torch z-buffer, on the device of the vertices it is given.

    max_candidates: (face, pixel) candidates tested at once (~300 bytes each at the peak, with
    the output: ~300 MB at the default 2^20, measured on the CPU);
    face_budget: faces (images x triangles) prepared at once (~100-200 bytes each).
    """

    name = "torch"
    default_on = ("cuda",)

    def __init__(self, max_candidates: int = 1 << 20, face_budget: int = 1 << 20):
        self.max_candidates = int(max_candidates)
        self.face_budget = int(face_budget)

    def __call__(self, verts_ndc: torch.Tensor, faces: torch.Tensor, hw: tuple[int, int],
                 perspective_correct: bool = False) -> Fragments:
        return rasterize_torch(verts_ndc, faces, hw, perspective_correct, self.max_candidates, self.face_budget)


def pixel_centres_ndc(h: int, w: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(W,) x and (H,) y float32 NDC coordinates of pixel centres, computed as
    ``raster_cpu.pixel_centres_ndc`` (PyTorch3D's ``PixToNonSquareNdc``) computes them."""
    return _axis_ndc(w, h).to(device), _axis_ndc(h, w).to(device)


def _axis_ndc(s1: int, s2: int) -> torch.Tensor:
    f32 = torch.float32
    r = torch.tensor(2.0, dtype=f32)
    if s1 > s2:
        r = (torch.tensor(float(s1), dtype=f32) * r) / torch.tensor(float(s2), dtype=f32)
    offset = r / 2.0
    i = torch.arange(s1 - 1, -1, -1, dtype=f32)  # column / row 0 is at +X / +Y: the largest i
    return -offset + (r * i + offset) / torch.tensor(float(s1), dtype=f32)


def rasterize_torch(verts_ndc: torch.Tensor, faces: torch.Tensor, hw: tuple[int, int],
                    perspective_correct: bool = False, max_candidates: int = 1 << 20,
                    face_budget: int = 1 << 20) -> Fragments:
    """``Fragments`` of B meshes with one triangle list; see ``morph.render.raster.rasterize``."""
    h, w = int(hw[0]), int(hw[1])
    dev = verts_ndc.device
    verts = verts_ndc.detach().to(torch.float32)
    faces = faces.to(device=dev, dtype=torch.int64)
    b, n_faces = verts.shape[0], faces.shape[0]
    xs, ys = pixel_centres_ndc(h, w, dev)
    pix_to_face = torch.full((b, h, w), -1, dtype=torch.int64, device=dev)
    zbuf = torch.full((b, h, w), -1.0, dtype=torch.float32, device=dev)
    bary = torch.full((b, h, w, 3), -1.0, dtype=torch.float32, device=dev)
    dists = torch.full((b, h, w), -1.0, dtype=torch.float32, device=dev)
    if b == 0 or n_faces == 0 or h == 0 or w == 0:
        return _fragments(pix_to_face, zbuf, bary, dists)
    group = max(1, face_budget // n_faces)
    for start in range(0, b, group):
        stop = min(b, start + group)
        face, depth, wts = _zbuffer(verts[start:stop], faces, xs, ys, perspective_correct, max_candidates)
        hit = face >= 0
        f = face.clamp_min(0)
        img = torch.arange(stop - start, device=dev)[:, None, None].expand_as(face)
        corners = verts[start:stop][img[hit][:, None], faces[f[hit]]]  # (P, 3, 3) the winners' vertices
        px = xs.expand(stop - start, h, w)[hit]
        py = ys[:, None].expand(stop - start, h, w)[hit]
        pix_to_face[start:stop][hit] = face[hit] + (img[hit] + start) * n_faces
        zbuf[start:stop][hit] = depth[hit]
        bary[start:stop][hit] = wts[hit]
        dists[start:stop][hit] = -_edge_distance(corners, px, py)
    return _fragments(pix_to_face, zbuf, bary, dists)


def _fragments(pix_to_face, zbuf, bary, dists) -> Fragments:
    return Fragments(pix_to_face[..., None], zbuf[..., None], bary[..., None, :], dists[..., None])


def _zbuffer(verts, faces, xs, ys, perspective_correct, max_candidates):
    """The z-buffer of G images: face (G, H, W) int64 (index into ``faces``, -1 for background),
    depth (G, H, W) float32 and barycentrics (G, H, W, 3) float32 of the winners."""
    g, n_faces = verts.shape[0], faces.shape[0]
    h, w = ys.shape[0], xs.shape[0]
    dev = verts.device
    best_z = torch.full((g * h * w,), math.inf, dtype=torch.float32, device=dev)
    best_f = torch.full((g * h * w,), -1, dtype=torch.int64, device=dev)
    best_w = torch.zeros((g * h * w, 3), dtype=torch.float32, device=dev)
    # the columns and rows whose centres may lie in each face's bounding box, as
    # raster_cpu._pixel_ranges finds them (a NaN vertex stands anywhere: the face is dropped below)
    m = float(min(h, w))
    corner = faces.t().contiguous()
    xa, xb = _pixel_range(((w - 1 - m * verts[..., 0].double()) * 0.5).nan_to_num(nan=0.0), corner, w)
    ya, yb = _pixel_range(((h - 1 - m * verts[..., 1].double()) * 0.5).nan_to_num(nan=0.0), corner, h)
    packed = ((xa <= xb) & (ya <= yb)).reshape(-1).nonzero().squeeze(1)  # ascending (image, face)
    # most faces of a dense mesh cover no pixel centre: the rest are tested on the survivors only
    img = torch.div(packed, n_faces, rounding_mode="floor")
    tv = verts[img[:, None], faces[packed - img * n_faces]]  # (K, 3 corners, 3 coordinates)
    x0, x1, x2 = tv[..., 0].unbind(1)
    y0, y1, y2 = tv[..., 1].unbind(1)
    z0, z1, z2 = tv[..., 2].unbind(1)
    keep = torch.isfinite(tv).all(-1).all(-1)
    keep &= torch.minimum(z0, torch.minimum(z1, z2)).double() >= _EPS
    face_area = ((x0 - x1) * (y2 - y1) - (y0 - y1) * (x2 - x1)).double()
    keep &= (face_area > _EPS) | (face_area < -_EPS)
    kept = keep.nonzero().squeeze(1)
    if kept.numel() == 0:
        return best_f.view(g, h, w), best_z.view(g, h, w), best_w.view(g, h, w, 3)
    packed = packed[kept]
    x0, x1, x2, y0, y1, y2, z0, z1, z2 = (t[kept] for t in (x0, x1, x2, y0, y1, y2, z0, z1, z2))
    area = ((x2 - x0) * (y1 - y0) - (y2 - y0) * (x1 - x0)).double().add(_EPS).float()
    consts = torch.stack([x0, x1, x2, y0, y1, y2, z0, z1, z2, area,
                          torch.minimum(x0, torch.minimum(x1, x2)), torch.maximum(x0, torch.maximum(x1, x2)),
                          torch.minimum(y0, torch.minimum(y1, y2)), torch.maximum(y0, torch.maximum(y1, y2))], 1)

    def pick(t):
        return t.reshape(-1)[packed]

    xa, xb, ya, yb = (pick(t).long() for t in (xa, xb, ya, yb))
    nx = xb - xa + 1
    count = nx * (yb - ya + 1)
    ends = count.cumsum(0)
    first = 0
    while first < len(packed):  # chunks of whole faces, at most max_candidates (or one face)
        before = int(ends[first - 1]) if first else 0
        last = max(first + 1, int(torch.searchsorted(ends, before + max_candidates, right=True)))
        sl = slice(first, last)
        _raster_chunk(packed[sl], consts[sl], xa[sl], ya[sl], nx[sl], count[sl],
                      n_faces, h, w, xs, ys, perspective_correct, best_z, best_f, best_w)
        first = last
    return best_f.view(g, h, w), best_z.view(g, h, w), best_w.view(g, h, w, 3)


def _pixel_range(coord, corner, size):
    """(G, F) first and last pixel index along one axis whose centre may lie in each face's
    bounding box, from (G, N) vertex pixel coordinates (centres at integers; as
    ``raster_cpu._pixel_ranges``, with its 1e-3 pixel of slack); first > last when none.
    Integers held as float64 (converted only for the faces kept)."""
    a, b, c = coord[:, corner[0]], coord[:, corner[1]], coord[:, corner[2]]
    lo = torch.minimum(a, torch.minimum(b, c)).sub_(_SLACK).ceil_().clamp_(0, size)
    hi = torch.maximum(a, torch.maximum(b, c)).add_(_SLACK).floor_().clamp_(-1, size - 1)
    return lo, hi


def _raster_chunk(packed, consts, xa, ya, nx, count, n_faces, h, w, xs, ys, perspective_correct,
                  best_z, best_f, best_w):
    """Test a chunk's (face, pixel) candidates and fold its winners into the z-buffer."""
    dev = packed.device
    owner = torch.repeat_interleave(torch.arange(len(packed), device=dev), count)
    k = torch.arange(owner.numel(), device=dev) - (count.cumsum(0) - count)[owner]  # pixel within the box
    step = nx[owner]
    xi = xa[owner] + k % step
    yi = ya[owner] + torch.div(k, step, rounding_mode="floor")
    c = consts[owner]
    x0, x1, x2, y0, y1, y2, z0, z1, z2, area, x_min, x_max, y_min, y_max = c.unbind(1)
    px, py = xs[xi], ys[yi]
    inside_box = (px <= x_max) & (px >= x_min) & (py <= y_max) & (py >= y_min)
    w0 = ((px - x1) * (y2 - y1) - (py - y1) * (x2 - x1)) / area
    w1 = ((px - x2) * (y0 - y2) - (py - y2) * (x0 - x2)) / area
    w2 = ((px - x0) * (y1 - y0) - (py - y0) * (x1 - x0)) / area
    if perspective_correct:
        t0 = w0 * z1 * z2
        t1 = w1 * z0 * z2
        t2 = w2 * z0 * z1
        den = t0 + t1 + t2
        w0, w1, w2 = t0 / den, t1 / den, t2 / den
    pz = w0 * z0 + w1 * z1 + w2 * z2
    ok = inside_box & (pz >= 0) & (pz < math.inf) & (w0 > 0) & (w1 > 0) & (w2 > 0)
    sel = ok.nonzero().squeeze(1)
    if sel.numel() == 0:
        return
    face = packed[owner[sel]]  # image * F + face, ascending within the chunk
    pid = torch.div(face, n_faces, rounding_mode="floor") * (h * w) + yi[sel] * w + xi[sel]
    pz = pz[sel]
    # the chunk's nearest candidate per pixel, ties to the smaller face index
    zc = torch.full_like(best_z, math.inf).scatter_reduce_(0, pid, pz, "amin")
    at_min = pz == zc[pid]
    key = torch.where(at_min, face, torch.iinfo(torch.int64).max)
    fc = torch.full_like(best_f, torch.iinfo(torch.int64).max).scatter_reduce_(0, pid, key, "amin")
    win = at_min & (face == fc[pid])  # one per pixel: a face meets a pixel once
    # earlier chunks hold smaller face indices: replace only on a strictly smaller depth
    pid, pz, face = pid[win], pz[win], face[win]
    better = pz < best_z[pid]
    pid = pid[better]
    best_z[pid] = pz[better]
    best_f[pid] = face[better] % n_faces
    best_w[pid] = torch.stack([w0[sel][win][better], w1[sel][win][better], w2[sel][win][better]], 1)


def _segment_distance(px, py, ax, ay, bx, by):
    """Squared distance from p to segment ab, as ``raster_cpu._segment_distance`` (PyTorch3D's
    PointLineDistanceForward) computes it in float32."""
    dx = bx - ax
    dy = by - ay
    l2 = dx * dx + dy * dy
    t = ((dx * (px - ax) + dy * (py - ay)) / l2).clamp(0.0, 1.0)
    qx = px - (ax + t * dx)
    qy = py - (ay + t * dy)
    degenerate = (px - bx) * (px - bx) + (py - by) * (py - by)
    return torch.where(l2.double() <= _EPS, degenerate, qx * qx + qy * qy)


def _edge_distance(corners, px, py):
    """Squared distance from pixel centres (P,) to the nearest edge of faces (P, 3, 3)."""
    (x0, y0), (x1, y1), (x2, y2) = ((corners[:, i, 0], corners[:, i, 1]) for i in range(3))
    e01 = _segment_distance(px, py, x0, y0, x1, y1)
    e02 = _segment_distance(px, py, x0, y0, x2, y2)
    e12 = _segment_distance(px, py, x1, y1, x2, y2)
    return torch.minimum(torch.minimum(e01, e02), e12)
