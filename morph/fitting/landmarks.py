"""A morphable model fitted to 2D landmarks: camera pose, identity shape and expression.

For B faces at once (torch, float64, any device): 2D points q_i (68 iBUG points, pixel frame with
y flipped to point up) are explained by a scaled orthographic camera looking at the model's
landmark vertices X_i = m_i + S_i alpha + E_i beta (``alpha``, ``beta`` in the model's standard
deviations, so their prior is N(0, I)):

    q_i = s P R X_i + t,    P = [[1, 0, 0], [0, 1, 0]]

Each iteration alternates two closed-form steps, as eos's ``fit_shape_and_pose`` alternates a
scaled orthographic pose estimate with blendshape (non-negative least squares there) and linear
shape fits (patrikhuber/eos, read in ``include/eos/fitting/multi_image_fitting.hpp``; the
regularised linear solve of ``linear_shape_fitting.hpp``, ``fit_shape_to_landmarks_linear``,
after Aldrian and Smith 2013):

1. the camera: the affine map from X to q by least squares, its 2 x 3 part projected onto the
   nearest scaled rotation (SVD), then t by least squares;
2. the coefficients: with the camera fixed, the residual in model millimetres,
   (q - t) / s - P R (m + S alpha + E beta), is linear in c = [alpha; beta]; the MAP estimate
   under landmark noise ``sigma_mm`` and the N(0, I) prior solves
   (A^T A + sigma_mm^2 I) c = A^T b, shape and expression jointly.

The jaw contour (iBUG 0-16) need not stay on its vertices: a detector marks the face's outline,
which on the side turned away from the camera is the silhouette of the cheek, not the jaw vertices.
eos re-matches contour landmarks at every iteration: one side's to the nearest projected vertex
of a fixed, hand-made contour list (``contour_correspondence.hpp``: ``select_contour`` picks the
side by the sign of the yaw, ``get_nearest_contour_correspondences`` the vertex), the away-facing
side's to the mesh's occluding edges (``find_occluding_edge_correspondences``, called in
``multi_image_fitting.hpp``). Needing neither a contour list nor an edge topology, we re-match
each point of the away-facing side to the outermost projected vertex of a band of the mesh at its
height (the "landmark marching" of Zhu et al., CVPR 2015): ``contour_candidates``, with
``contour=True`` (``morph fit``'s default), and only on faces turned by ``CONTOUR_MIN_YAW`` (30
degrees) or more. Measured: on 40 faces of known pose turned 30-60 degrees whose far-side jaw
points lie on the cheek's outline, the yaw error is 2.2 degrees with the contour re-matched and
6.5 with the jaw points held on their vertices (``tests/test_fitting.py``); on the photos of
``realfaces/`` and ``utkface/`` (5,360 faces, ``morph fit``'s 68 points) re-matching lowers the
jaw points' reprojection error (median, share of the points' box) on faces turned 30 degrees or
more, 3.30 -> 3.03% and 3.09 -> 2.90%, but raises it on faces turned less than 15, 1.54 -> 2.34%
and 1.37 -> 2.36% - there a detector's jaw points are the jaw itself - hence the threshold, with
which no yaw bin gets worse. (Earlier, on 40 renders whose 68 points the detector found, yaw
within 60 degrees and 4 beyond 30, re-matching at every yaw raised the mean yaw error from 5.3
to 6.6 degrees.)
The pose is reported in the renderer's convention (``morph.render.camera``:
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
ALL = tuple(range(68))
#: the contour band of a jaw point: vertices on its side of the face within BAND_MM of its height,
#: at least BAND_INSET of its distance from the mid-plane out, and at most BAND_DEPTH_MM behind it
BAND_MM, BAND_INSET, BAND_DEPTH_MM = 4.0, 0.6, 45.0
#: the contour is re-matched on faces turned at least this far (degrees of yaw; module docstring)
CONTOUR_MIN_YAW = 30.0


def contour_candidates(vertices: np.ndarray, landmarks: np.ndarray) -> dict[int, np.ndarray]:
    """Per jaw point k (0-7 and 9-16; the chin, 8, stays on its vertex): the vertices of its band
    (``BAND_MM``, ``BAND_INSET``, ``BAND_DEPTH_MM``; model frame, millimetres)."""
    out = {}
    for k in (*range(8), *range(9, 17)):
        if landmarks[k] < 0:
            continue
        x, y, z = vertices[landmarks[k]]
        v = vertices
        band = ((np.sign(v[:, 0]) == np.sign(x)) & (np.abs(v[:, 1] - y) < BAND_MM)
                & (np.abs(v[:, 0]) >= BAND_INSET * abs(x)) & (v[:, 2] >= z - BAND_DEPTH_MM))
        out[k] = np.flatnonzero(band)
    return out


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

    def __init__(self, model: MorphableModel, points=ALL, sigma_mm: float = 2.0, iterations: int = 6,
                 contour: bool = False, device: str = "cpu"):
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
        parts = [p for p in (model.shape, model.expression) if p is not None]
        mean = sum(p.mean.reshape(-1, 3) for p in parts).astype(np.float64)  # (V, 3)

        def rows_of(vertices):  # (n, 3) mean and (n, 3, K) scaled basis rows of some vertices
            basis = np.concatenate([p.scaled_basis().reshape(-1, 3, p.n_components)[vertices] for p in parts], 2)
            return torch.as_tensor(mean[vertices], **dd), torch.as_tensor(basis, **dd)

        self.all_mean, self.all_basis = rows_of(rows)  # every point, for the projection
        self.mean, self.basis = self.all_mean[pts], self.all_basis[pts]  # the points fitted
        self.n_shape = model.n_shape
        # the contour: each jaw point fitted, its band's vertices (indices into cand_mean / cand_basis)
        self.bands = {}
        if contour:
            cands = contour_candidates(mean, model.landmarks)
            order = np.unique(np.concatenate(list(cands.values()))) if cands else np.zeros(0, np.int64)
            self.cand_mean, self.cand_basis = rows_of(order)
            where = {v: i for i, v in enumerate(order)}
            position = {int(k): i for i, k in enumerate(pts)}
            self.bands = {position[k]: (k, torch.as_tensor([where[v] for v in c], device=self.device))
                          for k, c in cands.items() if k in position and len(c)}

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
        if self.device.type != "cpu":
            return self._fit(points68)
        # On a CPU, batched LAPACK calls inside torch's parallel loop over the batch open MKL's own
        # OpenMP team within torch's: after a render in the same process such a solve spun for
        # minutes in MKL (seen under pytest). One thread fits about 300 faces a second.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._fit(points68)
        finally:
            torch.set_num_threads(threads)

    def _fit(self, points68: np.ndarray) -> LandmarkFit:
        dd = dict(dtype=torch.float64, device=self.device)
        given = torch.as_tensor(np.asarray(points68, np.float64), **dd)
        if given.ndim != 3 or given.shape[1:] != (68, 2):
            raise ValueError(f"landmarks of shape {tuple(given.shape)}; give (B, 68, 2).")
        q = given[:, self.points] * torch.tensor([1.0, -1.0], **dd)  # y up, as the model
        b = q.shape[0]
        k = self.basis.shape[2]
        c = torch.zeros(b, k, **dd)
        eye = torch.eye(k, **dd) * self.sigma ** 2
        mean = self.mean.expand(b, -1, -1).clone()  # (B, P, 3): each face's correspondences
        basis = self.basis.expand(b, -1, -1, -1).clone()  # (B, P, 3, K)
        for it in range(self.iterations):
            x = mean + torch.einsum("bpik,bk->bpi", basis, c)
            s, rot, t = self.camera(x, q)
            if self.bands and it > 0:  # from the second pass on, the pose is good enough to tell the sides
                self._match_contour(c, s, rot, t, mean, basis)
            pr = rot[:, :2]  # (B, 2, 3)
            a = torch.einsum("bij,bpjk->bpik", pr, basis).reshape(b, -1, k)  # (B, 2P, K)
            rhs = ((q - t[:, None]) / s[:, None, None] - torch.einsum("bij,bpj->bpi", pr, mean)).reshape(b, -1)
            c = torch.linalg.solve(a.transpose(1, 2) @ a + eye, (a.transpose(1, 2) @ rhs[..., None]))[..., 0]
        x = mean + torch.einsum("bpik,bk->bpi", basis, c)
        s, rot, t = self.camera(x, q)
        x_all = self.all_mean + torch.einsum("pik,bk->bpi", self.all_basis, c)
        x_all[:, self.points] = x  # the jaw points where the contour put them
        proj = s[:, None, None] * torch.einsum("bij,bpj->bpi", rot[:, :2], x_all) + t[:, None]
        proj = proj * torch.tensor([1.0, -1.0], **dd)
        err = (proj[:, self.points] - given[:, self.points]).norm(dim=2).mean(1)
        t_pix = t * torch.tensor([1.0, -1.0], **dd)
        return LandmarkFit(pose=rotation_to_pose(rot).cpu().numpy(), scale=s.cpu().numpy(),
                           translation=t_pix.cpu().numpy(), alpha=c[:, :self.n_shape].cpu().numpy(),
                           beta=c[:, self.n_shape:].cpu().numpy(), points=proj.cpu().numpy(),
                           error=err.cpu().numpy())

    def _match_contour(self, c, s, rot, t, mean, basis) -> None:
        """Move each jaw point of the side turned away from the camera (iBUG 9-16 when the yaw is
        positive: the model's +x side turns back; 0-7 otherwise) to the outermost projected vertex
        of its band, in place - on faces turned by ``CONTOUR_MIN_YAW`` or more."""
        yaw = rotation_to_pose(rot)[:, 1]
        turned = torch.nonzero(yaw.abs() >= CONTOUR_MIN_YAW).flatten()
        if len(turned) == 0:  # no face turned far enough (most photos): nothing to project
            return
        xc = self.cand_mean + torch.einsum("nik,bk->bni", self.cand_basis, c[turned])  # (T, N, 3)
        u = s[turned, None] * torch.einsum("bj,bnj->bn", rot[turned, 0], xc) + t[turned, None, 0]  # image x
        right = yaw[turned] >= 0
        for pos, (k, band) in self.bands.items():
            away = right if k > 8 else ~right
            if not away.any():
                continue
            ub = u[:, band]
            pick = band[(ub if k > 8 else -ub).argmax(1)][away]  # outermost: rightmost on +x, leftmost on -x
            faces = turned[away]
            mean[faces, pos] = self.cand_mean[pick]
            basis[faces, pos] = self.cand_basis[pick]
