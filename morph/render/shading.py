"""Per-vertex lighting: spherical harmonics (our renders) and 300W-LP's Phong + colour model.

Both shade vertices (Gouraud): the colour is computed at each vertex from its normal and albedo
and interpolated across triangles with the rasterizer's barycentrics. These torch functions are
the readable reference and the CUDA path; ``morph.render.cpu`` has the same formulas as numba
kernels for the CPU path.

Spherical harmonics (Ramamoorthi & Hanrahan 2001, as Deep3DFaceRecon's ``compute_color``):
a distant, low-frequency environment seen by a Lambertian surface gives irradiance
``E(n) = sum_k Y_k(n) L_k`` over the first 9 real SH functions, with the convolution constants
a = (pi, 2 pi / sqrt 3, 2 pi / sqrt 8) folded in. For a unit normal n = (x, y, z) in the camera
frame (x right, y up, z towards the camera):

    Y0 = a0 c0                   Y3 = -a1 c1 x              Y6 = a2 c2 / (2 sqrt 3) (3 z^2 - 1)
    Y1 = -a1 c1 y                Y4 =  a2 c2 x y            Y7 = -a2 c2 x z
    Y2 =  a1 c1 z                Y5 = -a2 c2 y z            Y8 = a2 c2 / 2 (x^2 - y^2)

c = (1 / sqrt(4 pi), sqrt 3 / sqrt(4 pi), 3 sqrt 5 / sqrt(12 pi)). The lighting ``sh`` is
(B, 9, 3): 9 coefficients (band-major, in the order above) per RGB channel, and the vertex
colour is ``albedo * E``. Deep3DFaceRecon adds 0.8 to L0 before use; we do not - the priors
hold the full coefficients. So: only L0 = k gives ``albedo * k * sqrt(pi) / 2``;
L1 > 0 lights from below (it weights -y), L1 < 0 from above; L2 > 0 from the camera;
L3 > 0 from the image's left (it weights -x).
"""
from __future__ import annotations

import math

import numpy as np
import torch

_A = (math.pi, 2 * math.pi / math.sqrt(3.0), 2 * math.pi / math.sqrt(8.0))
_C = (1 / math.sqrt(4 * math.pi), math.sqrt(3.0) / math.sqrt(4 * math.pi), 3 * math.sqrt(5.0) / math.sqrt(12 * math.pi))

#: Constant factor of each SH basis function above (signs applied separately).
SH_BASIS_SCALE = np.array(
    [_A[0] * _C[0], _A[1] * _C[1], _A[1] * _C[1], _A[1] * _C[1], _A[2] * _C[2], _A[2] * _C[2],
     _A[2] * _C[2] / (2 * math.sqrt(3.0)), _A[2] * _C[2], _A[2] * _C[2] / 2], np.float32)

#: Luminance weights of 300W-LP's colour model (rows of its matrix M).
_LUMA = (0.3, 0.59, 0.11)


def compute_norm(verts: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
    """(B, N, 3) unit vertex normals: for each vertex, the sum over its triangles of
    ``(v1 - v0) x (v2 - v0)`` (area-weighted, outward for counter-clockwise front faces),
    normalised; zero for vertices no triangle uses."""
    v0, v1, v2 = (verts[:, triangles[:, k]] for k in range(3))
    face_n = torch.cross(v1 - v0, v2 - v0, dim=-1)
    n = torch.zeros_like(verts)
    for k in range(3):
        n.index_add_(1, triangles[:, k], face_n)
    length = torch.sqrt(n[..., 0] * n[..., 0] + n[..., 1] * n[..., 1] + n[..., 2] * n[..., 2])
    return torch.where(length[..., None] > 0, n / length.clamp_min(1e-30)[..., None], n)


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """(..., 9) the 9 SH basis functions Y_k(n) of the module docstring, constants included."""
    s = torch.as_tensor(SH_BASIS_SCALE, device=normals.device, dtype=normals.dtype)
    x, y, z = normals[..., 0], normals[..., 1], normals[..., 2]
    return torch.stack([
        s[0] * torch.ones_like(x), -s[1] * y, s[2] * z, -s[3] * x, s[4] * (x * y),
        -s[5] * (y * z), s[6] * (3 * z * z - 1), -s[7] * (x * z), s[8] * (x * x - y * y)], -1)


def compute_color(albedo: torch.Tensor, normals: torch.Tensor, sh: torch.Tensor) -> torch.Tensor:
    """(B, N, 3) Lambertian SH shading ``albedo * sum_k Y_k(n) sh[:, k, c]`` (sum in k order)."""
    y = sh_basis(normals)
    irradiance = y[..., 0:1] * sh[:, None, 0]
    for k in range(1, 9):
        irradiance = irradiance + y[..., k:k + 1] * sh[:, None, k]
    return albedo * irradiance


def phong_300wlp(albedo: torch.Tensor, normals: torch.Tensor, illum: torch.Tensor,
                 color: torch.Tensor) -> torch.Tensor:
    """(B, N, 3) vertex colours in [0, 1] from 300W-LP's ``Illum_Para`` (B, 10) and ``Color_Para`` (B, 7).

    The model of Blanz & Vetter 1999 as 3DDFA fitted it (the dataset's MATLAB example):
    texture ``t = 255 * albedo`` (BFM colour units 0..255);

    Illum_Para = [amb_r, amb_g, amb_b, dir_r, dir_g, dir_b, theta, phi, ks, v]:
      ambient light per channel; directional light per channel; the light's direction
      ``l = (cos theta sin phi, sin theta, cos theta cos phi)`` (radians: theta elevation, +up;
      phi azimuth, +towards +x; theta = phi = 0 is frontal); specular weight ``ks`` and Phong
      exponent ``v`` with the Blinn half-vector ``h = normalise(l + (0, 0, 1))`` (viewer on +z):
          L = amb * t + dir * max(n.l, 0) * t + ks * dir * max(n.h, 0)^v
    Color_Para = [gain_r, gain_g, gain_b, off_r, off_g, off_b, c]:
      colour contrast ``c`` mixes each channel with the luminance 0.3 R + 0.59 G + 0.11 B
      (c = 1 keeps colours, c = 0 gives grey), then per-channel gains and offsets (0..255):
          colour = (gain * (c L + (1 - c) luma(L)) + off) / 255, clipped to [0, 1].

    ``normals`` are those of the unposed shape (model frame), as in the dataset's code, so the
    light turns with the head.
    """
    t = 255.0 * albedo
    amb, direct = illum[:, None, 0:3], illum[:, None, 3:6]
    theta, phi, ks, v = (illum[:, i, None] for i in range(6, 10))
    l = torch.stack([torch.cos(theta) * torch.sin(phi), torch.sin(theta), torch.cos(theta) * torch.cos(phi)], -1)
    h = l + torch.tensor([0.0, 0.0, 1.0], dtype=l.dtype, device=l.device)
    h = h / torch.sqrt(h[..., 0] * h[..., 0] + h[..., 1] * h[..., 1] + h[..., 2] * h[..., 2])[..., None]
    n_l = (normals[..., 0] * l[..., 0] + normals[..., 1] * l[..., 1] + normals[..., 2] * l[..., 2]).clamp_min(0)
    n_h = (normals[..., 0] * h[..., 0] + normals[..., 1] * h[..., 1] + normals[..., 2] * h[..., 2]).clamp_min(0)
    lit = amb * t + direct * (n_l[..., None] * t) + ks[..., None] * direct * (n_h ** v)[..., None]
    gain, offset, c = color[:, None, 0:3], color[:, None, 3:6], color[:, None, 6:7]
    luma = _LUMA[0] * lit[..., 0:1] + _LUMA[1] * lit[..., 1:2] + _LUMA[2] * lit[..., 2:3]
    return ((gain * (c * lit + (1 - c) * luma) + offset) / 255.0).clamp(0.0, 1.0)
