"""A morphable model fitted to 2D landmarks: camera pose, identity shape and expression.

For B faces at once (torch, float64, any device): 2D points q_i (68 iBUG points, pixel frame with
y flipped to point up) are explained by a scaled orthographic camera looking at the model's
landmark vertices X_i = m_i + S_i alpha + E_i beta (``alpha``, ``beta`` in the model's standard
deviations, so their prior is N(0, I)):

    q_i = s P R X_i + t,    P = [[1, 0, 0], [0, 1, 0]]

Each iteration alternates two closed-form steps, as eos's ``fit_shape_and_pose`` alternates its
camera estimate with linear shape and blendshape fits (patrikhuber/eos,
``include/eos/fitting/fitting.hpp``; the regularised linear solve of
``linear_shape_fitting.hpp``, ``fit_shape_to_landmarks_linear``, after Aldrian and Smith 2013):

1. the camera: the affine map from X to q by least squares, its 2 x 3 part projected onto the
   nearest scaled rotation (SVD), then t by least squares;
2. the coefficients: with the camera fixed, the residual in model millimetres,
   (q - t) / s - P R (m + S alpha + E beta), is linear in c = [alpha; beta]; the MAP estimate
   under landmark noise ``sigma_mm`` and the N(0, I) prior solves
   (A^T A + sigma_mm^2 I) c = A^T b, shape and expression jointly.

Only the points in ``points`` take part (by default the 51 inner points: brows, nose, eyes and
mouth; the jaw contour moves along the face as it turns, see ``morph.fitting`` for the contour
fit). The pose is reported in the renderer's convention (``morph.render.camera``:
R = Rz(roll) Ry(yaw) Rx(pitch), degrees).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from morph.base.errors import UserError
from morph.model.morphable import MorphableModel

#: iBUG 68 indices of the inner points (17-67): brows, nose, eyes, mouth
INNER = tuple(range(17, 68))


@dataclass
class LandmarkFit:
    """Per face: ``pose`` (B, 3) degrees pitch, yaw, roll; ``scale`` (B,) pixels per millimetre;
    ``translation`` (B, 2) the model origin in the pixel frame; ``alpha`` (B, n_shape) and
    ``beta`` (B, n_expression) in std units; ``points`` (B, 68, 2) the fitted model's landmarks
    projected into the photo (pixel frame); ``error`` (B,) mean distance in pixels between the
    fitted and the given points over the points used."""

    pose: np.ndarray
    scale: np.ndarray
    translation: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    points: np.ndarray
    error: np.ndarray


def rotation_to_pose(rot: torch.Tensor) -> torch.Tensor:
    """(B, 3) [pitch, yaw, roll] degrees of ``rot = Rz(roll) Ry(yaw) Rx(pitch)`` (yaw in [-90, 90])."""
    yaw = torch.asin((-rot[:, 2, 0]).clamp(-1.0, 1.0))
    pitch = torch.atan2(rot[:, 2, 1], rot[:, 2, 2])
    roll = torch.atan2(rot[:, 1, 0], rot[:, 0, 0])
    return torch.rad2deg(torch.stack([pitch, yaw, roll], 1))


class LandmarkFitter:
    """Fits ``model`` to batches of 68-point landmarks (module docstring)."""

    def __init__(self, model: MorphableModel, points=INNER, sigma_mm: float = 2.0, iterations: int = 6,
                 device: str = "cpu"):
        if model.landmarks is None:
            raise UserError(f"{model.name}: has no 68 landmark vertices; a landmark fit needs them "
                            "(give the model a 'landmarks' file, see morph.formats.spec).")
        pts = np.asarray(points, np.int64)
        if np.any(model.landmarks[pts] < 0):
            missing = pts[model.landmarks[pts] < 0]
            raise UserError(f"{model.name}: lacks the vertices of iBUG points {missing.tolist()}; fit fewer points.")
        self.model, self.points, self.sigma = model, pts, float(sigma_mm)
        self.iterations, self.device = iterations, torch.device(device)
        dd = dict(dtype=torch.float64, device=self.device)
        rows = np.maximum(model.landmarks, 0)  # the 68 landmark vertices (unknown ones unused)

        def part(p):  # (68, 3) mean and (68, 3, K) scaled basis rows of one model part
            if p is None:
                return torch.zeros(68, 3, **dd), torch.zeros(68, 3, 0, **dd)
            mean = torch.as_tensor(p.mean.reshape(-1, 3)[rows], **dd)
            basis = p.scaled_basis().reshape(-1, 3, p.n_components)[rows]
            return mean, torch.as_tensor(basis, **dd)

        (ms, bs), (me, be) = part(model.shape), part(model.expression)
        self.all_mean, self.all_basis = ms + me, torch.cat([bs, be], 2)  # every point, for the projection
        self.mean, self.basis = self.all_mean[pts], self.all_basis[pts]  # the points fitted
        self.n_shape = model.n_shape

    @staticmethod
    def camera(x: torch.Tensor, q: torch.Tensor):
        """Scaled orthographic camera (s, R, t) taking 3-D points x (B, P, 3) near to q (B, P, 2)."""
        h = torch.cat([x, torch.ones_like(x[..., :1])], 2)  # (B, P, 4)
        affine = torch.linalg.lstsq(h, q).solution.transpose(1, 2)  # (B, 2, 4)
        a = affine[:, :, :3]
        r1, r2 = a[:, 0], a[:, 1]
        m = torch.stack([r1, r2, torch.linalg.cross(r1, r2)], 1)
        u, _, vh = torch.linalg.svd(m)
        d = torch.sign(torch.linalg.det(u @ vh))
        u = torch.cat([u[:, :, :2], u[:, :, 2:] * d[:, None, None]], 2)
        rot = u @ vh
        p = torch.einsum("bij,bpj->bpi", rot[:, :2], x)  # P R x
        pc, qc = p - p.mean(1, keepdim=True), q - q.mean(1, keepdim=True)
        s = (pc * qc).sum((1, 2)) / (pc * pc).sum((1, 2))
        t = q.mean(1) - s[:, None] * p.mean(1)
        return s, rot, t

    def fit(self, points68: np.ndarray) -> LandmarkFit:
        """Fit (B, 68, 2) landmarks in the pixel frame (pixel centres at integer + 0.5)."""
        dd = dict(dtype=torch.float64, device=self.device)
        given = torch.as_tensor(np.asarray(points68, np.float64), **dd)
        if given.ndim != 3 or given.shape[1:] != (68, 2):
            raise ValueError(f"landmarks of shape {tuple(given.shape)}; give (B, 68, 2).")
        q = given[:, self.points] * torch.tensor([1.0, -1.0], **dd)  # y up, as the model
        b = q.shape[0]
        k = self.basis.shape[2]
        c = torch.zeros(b, k, **dd)
        eye = torch.eye(k, **dd) * self.sigma ** 2
        for _ in range(self.iterations):
            x = self.mean + torch.einsum("pik,bk->bpi", self.basis, c)
            s, rot, t = self.camera(x, q)
            pr = rot[:, :2]  # (B, 2, 3)
            a = torch.einsum("bij,pjk->bpik", pr, self.basis).reshape(b, -1, k)  # (B, 2P, K)
            rhs = ((q - t[:, None]) / s[:, None, None] - torch.einsum("bij,pj->bpi", pr, self.mean)).reshape(b, -1)
            c = torch.linalg.solve(a.transpose(1, 2) @ a + eye, (a.transpose(1, 2) @ rhs[..., None]))[..., 0]
        x = self.mean + torch.einsum("pik,bk->bpi", self.basis, c)
        s, rot, t = self.camera(x, q)
        x_all = self.all_mean + torch.einsum("pik,bk->bpi", self.all_basis, c)
        proj = s[:, None, None] * torch.einsum("bij,bpj->bpi", rot[:, :2], x_all) + t[:, None]
        proj = proj * torch.tensor([1.0, -1.0], **dd)
        err = (proj[:, self.points] - given[:, self.points]).norm(dim=2).mean(1)
        t_pix = t * torch.tensor([1.0, -1.0], **dd)
        return LandmarkFit(pose=rotation_to_pose(rot).cpu().numpy(), scale=s.cpu().numpy(),
                           translation=t_pix.cpu().numpy(), alpha=c[:, :self.n_shape].cpu().numpy(),
                           beta=c[:, self.n_shape:].cpu().numpy(), points=proj.cpu().numpy(),
                           error=err.cpu().numpy())
