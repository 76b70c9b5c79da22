"""The colour and the light of a landmark fit, read from the photo's pixels.

A landmark fit (``morph.fitting.landmarks``) fixes the mesh in the photo's crop
(``morph.fitting.pairs.FitRenderer.place``); what is left of a render is its colour coefficients
gamma (``MorphableModel.colors``) and its spherical-harmonics light L (``morph.render.shading``).
The rasterizer (``morph.render.raster.rasterize``, any backend) says which triangle each crop pixel
p sees and with which barycentrics w; as ``morph render`` shades (Gouraud, ``shading.compute_color``
then ``renderer.to_image``) the pixel's colour in channel c is

    I_pc = sum_j w_pj A_c(v_pj) E_c(v_pj),   A(v) = T_mean(v) + U_T(v) diag(sigma_T) gamma,
                                             E_c(v) = sum_k Y_k(n_v) L_kc                   (1)

over the triangle's three vertices v_pj (normals n in the camera frame). (1) is bilinear: linear in
L for a fixed gamma, linear in gamma for a fixed L. Colour and light are not separable in one
photo (a whiter skin under a dimmer light gives the same pixels), so both carry a Gaussian prior
and the fit is their MAP estimate under pixel noise ``sigma`` ([0, 1] units; it also stands for
what a 3DMM cannot draw - wrinkles, stubble, make-up): gamma ~ N(0, I) (the model's standard
deviations) and L ~ N(mu_L, Sigma_L + s^2 I), the priors' ``sh`` group widened by ``light_spread``
s (the default priors' light is nearly white; a photo's white balance, or a black-and-white photo,
needs coloured light). It is found by Gauss-Newton on (gamma, L) jointly, the Jacobians being the
two linear maps of (1):

    J_gamma[(p, c), :] = sum_j w_pj E_c(v_pj) U_T(v_pj) sigma_T,
    J_L[(p, c), (k, c)] = sum_j w_pj A_c(v_pj) Y_k(n_v),
    (J^T J / sigma^2 + P) dx = J^T r / sigma^2 - P (x - x_0),   P = diag(I, (Sigma_L + s^2 I)^-1),

from gamma = 0 and the light given. Alternating the two linear solves instead crawls along the
ambiguity (measured: 4 rounds left one face's light at half its value). Deep3DFaceRecon regresses
the same kind of coefficients with a CNN (``models/bfm.py``, ``ParametricFaceModel.split_coeff``:
80 of colour, 27 of SH light) and takes its photometric loss over a fixed front-face vertex set
(``frontmask2_idx``) of its BFM; ``face_vertices`` draws such a set from any model's landmarks.

The albedo is not clipped inside the solves (it is in the render and in the error reported).
Pixels used: those whose triangle lies in the face region (``face_vertices``: inside the outline of
the jaw and the brows, as the model's 68 landmark vertices draw it on the mean face - a model's
scalp, ears and neck are hair, collar or background in photos), whose 4-neighbours the mesh covers
too (a silhouette pixel mixes face and background in the photo), and not black in all three
channels (the crop's padding outside the photo). A model without a colour model (``n_texture`` 0)
keeps its fixed albedo and fits the light alone. Reported per face: ``error``, the mean absolute
difference in 8-bit levels between the render of the fit (albedo clipped) and the photo over the
pixels used, and ``pixels``, their number (under 50: not fitted, gamma stays 0, the light as
given, error NaN).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from morph.fitting.pairs import FitRenderer
from morph.model.morphable import MorphableModel
from morph.render import camera, shading
from morph.render.raster import rasterize


#: iBUG points outlining the face region: the jaw (0-16), then the brows from right to left (26-17)
OUTLINE = (*range(17), *range(26, 16, -1))


def face_vertices(model: MorphableModel) -> np.ndarray:
    """(N,) bool: the vertices of the mean face (expression mean included) that face the camera
    (z above the jaw's ends) and whose (x, y) lie inside the polygon of ``OUTLINE``'s landmark
    vertices; every vertex when the model has no 68 landmarks."""
    v = model.shape.mean.reshape(-1, 3).astype(np.float64)
    if model.expression is not None:
        v = v + model.expression.mean.reshape(-1, 3)
    if model.landmarks is None or np.any(model.landmarks[list(OUTLINE)] < 0):
        return np.ones(len(v), bool)
    poly = v[model.landmarks[list(OUTLINE)], :2]
    x, y = v[:, 0], v[:, 1]
    inside = np.zeros(len(v), bool)
    for (x0, y0), (x1, y1) in zip(poly, np.roll(poly, -1, 0)):  # even-odd rule, a ray towards +x
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < at)
    front = v[:, 2] > v[model.landmarks[[0, 16]], 2].max()
    return inside & front


@dataclass
class PhotometricFit:
    """Per face: ``gamma`` (B, n_texture) colour coefficients in std units, ``sh`` (B, 9, 3) the
    light, ``error`` (B,) mean absolute error in 8-bit levels over ``pixels`` (B,) fitted pixels."""

    gamma: np.ndarray
    sh: np.ndarray
    error: np.ndarray
    pixels: np.ndarray


class PhotometricFitter:
    """Fits colour and light to crops of photos whose geometry is fitted (module docstring).

    ``size``/``template``: the crop the photos were aligned to (``morph align``'s); ``sigma``:
    pixel noise in [0, 1] units (the weight of the priors); ``light``: the priors' ``sh`` Gaussian
    (``morph.model.priors``; the default priors' when None); ``iterations``: Gauss-Newton steps."""

    def __init__(self, model: MorphableModel, size: int, template: str | None = None, sigma: float = 0.3,
                 light=None, light_spread: float = 0.05, iterations: int = 6, backend: str = "auto"):
        from morph.model.priors import load_priors

        self.model, self.size = model, int(size)
        self.sigma, self.iterations, self.backend = float(sigma), iterations, backend
        light = load_priors(None).groups["sh"] if light is None else light
        cov = light.chol.astype(np.float64) @ light.chol.T.astype(np.float64)
        self.light_mean = torch.from_numpy(np.asarray(light.mean, np.float64).reshape(27))
        self.light_precision = torch.from_numpy(np.linalg.inv(cov + (light_spread ** 2 + 1e-6) * np.eye(27)))
        self.placer = FitRenderer(model, size, template)
        self.triangles = torch.from_numpy(model.triangles)
        self.face_triangles = torch.from_numpy(face_vertices(model)[model.triangles].all(1))
        n = model.n_vertices
        if model.texture is not None:
            self.t_mean = torch.from_numpy(model.texture.mean.reshape(n, 3).astype(np.float64))
            self.t_basis = torch.from_numpy(model.texture.scaled_basis().reshape(n, 3, -1).astype(np.float64))
        else:
            self.t_mean = torch.from_numpy(model.fixed_albedo().astype(np.float64))
            self.t_basis = torch.zeros(n, 3, 0, dtype=torch.float64)

    def pixels(self, crops: np.ndarray, fits: dict[str, np.ndarray]):
        """Per face: the vertices (P, 3), barycentrics (P, 3) and colours (P, 3) in [0, 1] of the
        pixels fitted, and the camera-frame normals (N, 3)."""
        pix, depth, normals, _ = self.placer.place(fits)
        hw = (self.size, self.size)
        frags = rasterize(camera.pixels_to_ndc(pix, depth, hw), self.triangles, hw, self.backend, False)
        p2f = frags.pix_to_face[..., 0].cpu()  # (B, H, W) packed face index, -1 where empty
        bary = frags.bary_coords[..., 0, :].cpu().double()
        n_faces = self.triangles.shape[0]
        covered = p2f >= 0
        inner = covered.clone()  # covered, and so are the 4 neighbours (off the crop counts as not)
        inner[:, 1:] &= covered[:, :-1]
        inner[:, :-1] &= covered[:, 1:]
        inner[:, :, 1:] &= covered[:, :, :-1]
        inner[:, :, :-1] &= covered[:, :, 1:]
        inner[:, 0] = inner[:, -1] = inner[:, :, 0] = inner[:, :, -1] = False
        img = torch.from_numpy(np.asarray(crops)).double() / 255.0
        inner &= img.amax(-1) > 0  # the crop's padding outside the photo is exactly black
        out = []
        for b in range(p2f.shape[0]):
            keep = inner[b] & self.face_triangles[(p2f[b] - b * n_faces).clamp_min(0)]
            faces = p2f[b][keep] - b * n_faces
            out.append((self.triangles[faces], bary[b][keep], img[b][keep], normals[b].double()))
        return out

    def fit(self, crops: np.ndarray, fits: dict[str, np.ndarray], sh0: np.ndarray) -> PhotometricFit:
        """Colour and light of B faces: ``crops`` (B, S, S, 3) uint8 aligned photos, ``fits`` the
        geometry (``FitRenderer.render``'s keys but colour and light), ``sh0`` (B, 9, 3) the light
        to start from and to fall back on (the priors' mean)."""
        b = len(crops)
        k = self.t_basis.shape[2]
        gamma, sh = np.zeros((b, k), np.float32), np.array(sh0, np.float32).reshape(b, 9, 3).copy()
        error, count = np.full(b, np.nan, np.float32), np.zeros(b, np.int64)
        for i, (verts, w, colour, normals) in enumerate(self.pixels(crops, fits)):
            if len(verts) < 50:  # too few pixels for 27 light coefficients (and the colour)
                continue
            g, light = self._solve(verts, w, colour, normals, torch.from_numpy(sh[i]).double())
            albedo = (self.t_mean + self.t_basis @ g).clamp(0.0, 1.0)
            pred = self._shade(verts, w, albedo, shading.sh_basis(normals) @ light)
            gamma[i], sh[i] = g.numpy(), light.numpy()
            error[i] = float((torch.round(pred.clamp(0, 1) * 255) - torch.round(colour * 255)).abs().mean())
            count[i] = len(verts)
        return PhotometricFit(gamma=gamma, sh=sh, error=error, pixels=count)

    @staticmethod
    def _shade(verts, w, albedo, irradiance):
        """(P, 3) pixel colours of (1): barycentric sums of per-vertex albedo x irradiance."""
        return (w[..., None] * (albedo[verts] * irradiance[verts])).sum(1)

    def _solve(self, verts, w, colour, normals, light):
        """MAP (gamma, L) of one face by Gauss-Newton (module docstring); ``light`` (9, 3) the start."""
        yv = shading.sh_basis(normals)[verts]  # (P, 3 vertices, 9)
        mean_v, basis_v = self.t_mean[verts], self.t_basis[verts]  # (P, 3, 3), (P, 3, 3, K)
        p, k = len(verts), basis_v.shape[3]
        wv = w[..., None]  # (P, 3, 1)
        gamma = torch.zeros(k, dtype=torch.float64)
        prec = torch.block_diag(torch.eye(k, dtype=torch.float64), self.light_precision)
        eye3 = torch.eye(3, dtype=torch.float64)
        for _ in range(self.iterations):
            albedo_v = mean_v + basis_v @ gamma  # (P, 3 vertices, 3 channels)
            e_v = yv @ light  # (P, 3 vertices, 3 channels): irradiance
            residual = (colour - (wv * albedo_v * e_v).sum(1)).reshape(3 * p)
            j_gamma = (wv[..., None] * e_v[..., None] * basis_v).sum(1).reshape(3 * p, k)
            d = (wv[..., None] * albedo_v[..., None] * yv[:, :, None, :]).sum(1)  # (P, 3 channels, 9)
            j_light = (d[..., :, None] * eye3[None, :, None, :]).reshape(3 * p, 27)  # columns (k, c)
            j = torch.cat([j_gamma, j_light], 1)
            x = torch.cat([gamma, light.reshape(27) - self.light_mean])
            lhs = j.T @ j / self.sigma ** 2 + prec
            step = torch.linalg.solve(lhs, j.T @ residual / self.sigma ** 2 - prec @ x)
            gamma = gamma + step[:k]
            light = light + step[k:].reshape(9, 3)
        return gamma, light
