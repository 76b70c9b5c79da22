"""The numba engine's vertex stage: S(alpha, beta) and T(gamma) blends, projection, alignment,
normals and SH shading as numba kernels, batch-invariant.

Each kernel computes every output element with one fixed sequence of float32 operations that
does not depend on how many images are in the batch or where an image sits in it, so a render is
bit-identical alone or in a batch of 64 (batched BLAS calls pick kernels, and so summation
orders, by matrix shape). numba compiles without fast-math: LLVM neither reassociates sums nor
fuses multiply-adds, so the bits do not depend on the instruction set either.

The formulas are those of the readable torch steps (``camera.py``, ``shading.py``,
``renderer.compute_shape``), themselves copies of ``MorphableModel.vertices`` / ``colors``; the
tests hold all of them to the reference. ``blend`` runs parallel over vertex tiles (all images
share each tile of the basis), ``vertex_stage`` parallel over images with each image's steps
fused in one pass (every parallel region ends with OpenMP threads spin-waiting; see
``bench/README.md`` for the measurements behind the tile size and the fusing). The pixel stage
belongs to the numba rasterizer (``raster_cpu``).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

#: Rows of the basis processed together (1024 rows x up to ~300 components stay in L2).
BLEND_TILE = 1024


@njit(parallel=True, cache=True, error_model="numpy")
def blend(mean, basis_t, coeffs, out):
    """``out[b] = mean + sum_k coeffs[b, k] * basis_t[k]``, summed in ascending k.

    mean (D,), basis_t (K, D) (the transposed basis), coeffs (B, K) already multiplied by the
    standard deviations, out (B, D); all float32.
    """
    n_k, d = basis_t.shape
    n_img = coeffs.shape[0]
    n_tiles = (d + BLEND_TILE - 1) // BLEND_TILE
    for t in prange(n_tiles):
        lo = t * BLEND_TILE
        hi = min(lo + BLEND_TILE, d)
        n = hi - lo
        acc = np.empty((n_img, n), np.float32)
        for b in range(n_img):
            for j in range(n):
                acc[b, j] = mean[lo + j]
        for k in range(n_k):
            row = basis_t[k, lo:hi]
            for b in range(n_img):
                c = coeffs[b, k]
                a = acc[b]
                for j in range(n):
                    a[j] += c * row[j]
        for b in range(n_img):
            for j in range(n):
                out[b, lo + j] = acc[b, j]


# ----------------------------------------------------------------------------- vertex stage
@njit(parallel=True, cache=True, error_model="numpy")
def vertex_stage(verts, rot, distance, focal, cx, cy, align, group_index, group_start, template,
                 h, w, tri, want_normals, albedo, sh, sh_scale, pix, ndc, normals, colors):
    """Per image: ``project`` -> ``align_to_template`` (if align) -> ``to_ndc``, and
    ``vertex_normals`` (if want_normals) -> ``shade_sh`` (if albedo has B rows)."""
    n_img, n_v, _ = verts.shape
    shade = albedo.shape[0] == n_img
    for b in prange(n_img):
        cam = np.empty((n_v, 3), np.float32)
        depth = np.empty(n_v, np.float32)
        project(verts[b], rot[b], distance[b], focal, cx, cy, cam, pix[b], depth)
        if align:
            align_to_template(pix[b], group_index, group_start, template)
        to_ndc(pix[b], depth, h, w, ndc[b])
        if want_normals:
            vertex_normals(cam, tri, normals[b])
            if shade:
                shade_sh(normals[b], albedo[b], sh[b], sh_scale, colors[b])


@njit(cache=True, error_model="numpy")
def project(v, r, distance, focal, cx, cy, cam, pix, depth):
    """Rotate, put the camera at ``distance`` on +z looking down -z, project to pixels:
    cam = R v (x right, y up, z towards the camera); depth = distance - cam_z;
    pix = (cx + focal cam_x / depth, cy - focal cam_y / depth) (``camera.perspective_project``)."""
    for i in range(v.shape[0]):
        x = v[i, 0]
        y = v[i, 1]
        z = v[i, 2]
        px = r[0, 0] * x + r[0, 1] * y + r[0, 2] * z
        py = r[1, 0] * x + r[1, 1] * y + r[1, 2] * z
        pz = r[2, 0] * x + r[2, 1] * y + r[2, 2] * z
        cam[i, 0] = px
        cam[i, 1] = py
        cam[i, 2] = pz
        dz = distance - pz
        depth[i] = dz
        pix[i, 0] = cx + focal * px / dz
        pix[i, 1] = cy - focal * py / dz


@njit(cache=True, error_model="numpy")
def five_points(pix, group_index, group_start):
    """(5, 2) float64 means of the vertex groups ``group_index[group_start[g]:group_start[g+1]]``."""
    n_pts = group_start.shape[0] - 1
    src = np.zeros((n_pts, 2))
    for g in range(n_pts):
        for j in range(group_start[g], group_start[g + 1]):
            src[g, 0] += np.float64(pix[group_index[j], 0])
            src[g, 1] += np.float64(pix[group_index[j], 1])
        src[g] /= group_start[g + 1] - group_start[g]
    return src


@njit(cache=True, error_model="numpy")
def similarity(src, dst):
    """(2, 3) float64 least-squares similarity taking src (P, 2) to dst (P, 2): the closed form
    of ``morph.align.template.similarity_from_points`` (a = sum(s.d) / |s|^2, b = sum(s x d) / |s|^2
    on centred points; t = mean(dst) - [[a, -b], [b, a]] mean(src))."""
    n = src.shape[0]
    ms = np.zeros(2)
    md = np.zeros(2)
    for g in range(n):
        ms += src[g]
        md += dst[g]
    ms /= n
    md /= n
    norm = 0.0
    dot = 0.0
    crs = 0.0
    for g in range(n):
        sx = src[g, 0] - ms[0]
        sy = src[g, 1] - ms[1]
        dx = dst[g, 0] - md[0]
        dy = dst[g, 1] - md[1]
        norm += sx * sx + sy * sy
        dot += sx * dx + sy * dy
        crs += sx * dy - sy * dx
    a = dot / norm
    c = crs / norm
    out = np.empty((2, 3))
    out[0, 0] = a
    out[0, 1] = -c
    out[0, 2] = md[0] - (a * ms[0] - c * ms[1])
    out[1, 0] = c
    out[1, 1] = a
    out[1, 2] = md[1] - (c * ms[0] + a * ms[1])
    return out


@njit(cache=True, error_model="numpy")
def align_to_template(pix, group_index, group_start, template):
    """Map pixels in place (float64 arithmetic) by the similarity taking the 5 points onto the
    template; returns that (2, 3) transform."""
    t = similarity(five_points(pix, group_index, group_start), template)
    for i in range(pix.shape[0]):
        u = np.float64(pix[i, 0])
        v = np.float64(pix[i, 1])
        pix[i, 0] = np.float32(t[0, 0] * u + t[0, 1] * v + t[0, 2])
        pix[i, 1] = np.float32(t[1, 0] * u + t[1, 1] * v + t[1, 2])
    return t


@njit(cache=True, error_model="numpy")
def to_ndc(pix, depth, h, w, ndc):
    """PyTorch3D NDC: x = (W - 2u) / m, y = (H - 2v) / m, z = depth, m = min(H, W)."""
    m = np.float32(min(h, w))
    fw = np.float32(w)
    fh = np.float32(h)
    two = np.float32(2.0)
    for i in range(pix.shape[0]):
        ndc[i, 0] = (fw - two * pix[i, 0]) / m
        ndc[i, 1] = (fh - two * pix[i, 1]) / m
        ndc[i, 2] = depth[i]


@njit(cache=True, error_model="numpy")
def vertex_normals(v, tri, nrm):
    """Unit vertex normals: the area-weighted sum of ``(v1 - v0) x (v2 - v0)`` over the
    vertex's triangles (in triangle order), normalised; (0, 0, 0) for unused vertices."""
    nrm[:] = 0
    for f in range(tri.shape[0]):
        i0 = tri[f, 0]
        i1 = tri[f, 1]
        i2 = tri[f, 2]
        ax = v[i1, 0] - v[i0, 0]
        ay = v[i1, 1] - v[i0, 1]
        az = v[i1, 2] - v[i0, 2]
        bx = v[i2, 0] - v[i0, 0]
        by = v[i2, 1] - v[i0, 1]
        bz = v[i2, 2] - v[i0, 2]
        nx = ay * bz - az * by
        ny = az * bx - ax * bz
        nz = ax * by - ay * bx
        nrm[i0, 0] += nx
        nrm[i0, 1] += ny
        nrm[i0, 2] += nz
        nrm[i1, 0] += nx
        nrm[i1, 1] += ny
        nrm[i1, 2] += nz
        nrm[i2, 0] += nx
        nrm[i2, 1] += ny
        nrm[i2, 2] += nz
    for i in range(nrm.shape[0]):
        s = nrm[i, 0] * nrm[i, 0] + nrm[i, 1] * nrm[i, 1] + nrm[i, 2] * nrm[i, 2]
        if s > 0:
            inv = np.float32(1.0) / np.sqrt(s)
            nrm[i, 0] *= inv
            nrm[i, 1] *= inv
            nrm[i, 2] *= inv


@njit(cache=True, error_model="numpy")
def shade_sh(normals, albedo, sh, sh_scale, colors):
    """Per-vertex colour ``albedo * sum_k Y_k(n) sh[k, c]`` (``shading.compute_color``);
    sh_scale (9,) float32 holds the constant factor of each basis function."""
    three = np.float32(3.0)
    one = np.float32(1.0)
    for i in range(normals.shape[0]):
        nx = normals[i, 0]
        ny = normals[i, 1]
        nz = normals[i, 2]
        y0 = sh_scale[0]
        y1 = -sh_scale[1] * ny
        y2 = sh_scale[2] * nz
        y3 = -sh_scale[3] * nx
        y4 = sh_scale[4] * (nx * ny)
        y5 = -sh_scale[5] * (ny * nz)
        y6 = sh_scale[6] * (three * nz * nz - one)
        y7 = -sh_scale[7] * (nx * nz)
        y8 = sh_scale[8] * (nx * nx - ny * ny)
        for c in range(3):
            e = (y0 * sh[0, c] + y1 * sh[1, c] + y2 * sh[2, c] + y3 * sh[3, c] + y4 * sh[4, c]
                 + y5 * sh[5, c] + y6 * sh[6, c] + y7 * sh[7, c] + y8 * sh[8, c])
            colors[i, c] = albedo[i, c] * e
