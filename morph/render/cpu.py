"""The CPU engine: vertex stage, rasterization and shading as numba kernels, batch-invariant.

Each kernel computes every output element with one fixed sequence of float32 operations that
does not depend on how many images are in the batch or where an image sits in it. That is what
makes a render bit-identical whether it is made alone or in a batch of 64 - which batched BLAS
calls do not give (they pick different kernels, and so summation orders, per matrix shape).
numba compiles without fast-math, so LLVM neither reassociates sums nor fuses multiply-adds;
vectorising across independent elements leaves each element's arithmetic unchanged.

The steps are small per-image functions with the formulas of the readable torch steps in
``camera.py`` / ``shading.py`` / ``renderer.py`` (which also run on CUDA; the tests check that
the two agree). Three kinds of parallel region run them for a batch: ``blend`` (shape, then
albedo; parallel over vertex tiles so that all images share each tile of the basis),
``vertex_stage`` and ``pixel_stage`` (parallel over images, each image's steps fused in one
pass). Fusing matters on a busy machine: every parallel region ends with OpenMP threads
spin-waiting, and with one region per step (and torch operations in between, which wake torch's
own OpenMP pool) 2 threads rendered 83 images/s where ``OMP_WAIT_POLICY=passive`` gave 191 - the
spinning cost as much as the work. Fused, without torch operations: 182.

Measured here (default model: 53,349 vertices, 106,111 triangles; 108x108; batch 16; one core's
time per image): blend 0.66 ms for 36 shape+expression components and 0.33 ms for 10 colour
components (k-outer accumulation over 1024-vertex tiles; for 299 components 2.0 ms, against
13 ms when accumulating in the output array, which defeats vectorisation, and 8-10 ms for a
per-image matrix-vector product, which streams the whole basis once per image); projection,
alignment and NDC 0.3 ms; normals 0.6 ms (a gather over a vertex-to-face table took as long as
this scatter); SH shading 0.4 ms (the torch steps, ``index_add`` normals and SH, take 10.6 and
3.6 ms);
rasterization 1.2 ms; interpolation 0.1 ms.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from morph.render.raster_cpu import raster_image

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
    of ``morph.template.similarity_from_points`` (a = sum(s.d) / |s|^2, b = sum(s x d) / |s|^2
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
        wts = bary[b, :, :, 0, :]
        if image.shape[0] == n_img:
            interpolate(face, wts, tri, colors[b], background, image[b])
            clip01(image[b])
        if normal_image.shape[0] == n_img:
            interpolate(face, wts, tri, normals[b], np.zeros(3, np.float32), normal_image[b])
            unit_channels(normal_image[b])
