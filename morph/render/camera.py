"""Cameras: head pose, the two projections we render with, 5-point alignment, pixels -> NDC.

Frames and units
- Model frame: millimetres, origin at the face centre, +x towards the image's right for a
  frontal face (the subject's left), +y up, +z out of the face towards the camera.
- Pixel frame: (u, v) with u to the right and v down; pixel centres at integer + 0.5, so the
  image covers [0, W] x [0, H] and the top-left pixel's centre is (0.5, 0.5). This is the frame
  of ``morph.align.template`` and of ``RenderOutput.landmarks``.
- NDC: PyTorch3D's screen space, +X left, +Y up (see ``morph.render.raster``).

Pose (``compute_rotation``) uses face3d's ``angle2matrix`` convention, angles in degrees:
``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)`` with the standard right-handed rotation matrices, applied
as ``R @ v``. With the camera on +z looking at the face:
- pitch > 0 turns the face down (the nose tip moves down the image): "looking down";
- yaw > 0 turns the face towards the image's RIGHT side (the nose tip moves right; the subject
  looks to their own left);
- roll > 0 tilts the head towards the image's left (the top of the head moves left; the subject
  tilts towards their own right shoulder).
Deep3DFaceRecon's ``compute_rotation`` builds the same matrix (in radians).

300W-LP / 3DDFA store ``Pose_Para = [pitch, yaw, roll, tx, ty, tz, s]`` with angles in radians
and the *transposed* matrices: ``R_3ddfa = Rx(p)^T Ry(y)^T Rz(r)^T = compute_rotation(deg)^T``,
so their signs are the opposite of ours (``rotation_300wlp``).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from morph.align.template import five_point_template


def compute_rotation(pose_deg: np.ndarray) -> np.ndarray:
    """(B, 3, 3) float32 rotations ``Rz(roll) Ry(yaw) Rx(pitch)`` from (B, 3) [pitch, yaw, roll] degrees.

    Rx(a) = [[1, 0, 0], [0, c, -s], [0, s, c]], Ry(a) = [[c, 0, s], [0, 1, 0], [-s, 0, c]],
    Rz(a) = [[c, -s, 0], [s, c, 0], [0, 0, 1]] (c = cos a, s = sin a).
    Computed image by image with scalar double-precision trigonometry, so a pose gives the same
    matrix in any batch (vectorised sin/cos may round the tail of an array differently).
    """
    pose = np.asarray(pose_deg, np.float64).reshape(-1, 3)
    out = np.empty((pose.shape[0], 3, 3), np.float32)
    for b, (pitch, yaw, roll) in enumerate(pose.tolist()):
        cx, sx = math.cos(math.radians(pitch)), math.sin(math.radians(pitch))
        cy, sy = math.cos(math.radians(yaw)), math.sin(math.radians(yaw))
        cz, sz = math.cos(math.radians(roll)), math.sin(math.radians(roll))
        rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
        out[b] = rz @ ry @ rx
    return out


def rotation_300wlp(pose_para: np.ndarray) -> np.ndarray:
    """(B, 3, 3) rotations of 300W-LP ``Pose_Para[:, :3]`` (pitch, yaw, roll in radians).

    3DDFA's ``RotationMatrix`` (face3d ``angle2matrix_3ddfa``) is ``Rx^T Ry^T Rz^T`` of the
    matrices above, i.e. the transpose of ``compute_rotation`` of the same angles in degrees.
    """
    angles = np.degrees(np.atleast_2d(np.asarray(pose_para, np.float64))[:, :3])
    return np.ascontiguousarray(compute_rotation(angles).transpose(0, 2, 1))


def focal_from_fov(fov_deg: float, hw: tuple[int, int]) -> float:
    """Focal length in pixels giving a field of view of ``fov_deg`` across the shorter side.

    The default 12.6 degrees is Deep3DFaceRecon's camera (focal 1015 px for 224 px).
    """
    return 0.5 * min(hw) / math.tan(math.radians(fov_deg) / 2)


def perspective_project(verts: torch.Tensor, rot: torch.Tensor, distance: torch.Tensor,
                        focal: float, hw: tuple[int, int]):
    """Pinhole camera on the +z axis at ``distance`` mm from the model origin, looking down -z.

    cam = R v (camera-aligned frame); depth = distance - cam_z (> 0 in front of the camera);
    u = W/2 + focal cam_x / depth, v = H/2 - focal cam_y / depth (pixel frame, y flipped).
    Returns cam (B, N, 3), pixels (B, N, 2), depth (B, N).
    """
    h, w = hw
    cam = torch.einsum("bij,bnj->bni", rot, verts)
    depth = distance[:, None] - cam[..., 2]
    u = w / 2 + focal * cam[..., 0] / depth
    v = h / 2 - focal * cam[..., 1] / depth
    return cam, torch.stack([u, v], -1), depth


def weak_perspective_300wlp(verts: torch.Tensor, scale: torch.Tensor, rot: torch.Tensor,
                            t2d: torch.Tensor, image_height: int):
    """300W-LP's camera: scaled orthographic projection into the photo, y flipped.

    ``P = s R v + t`` (R from ``rotation_300wlp``, s = Pose_Para[6], t = Pose_Para[3:5]), as
    the dataset's own MATLAB example does, giving 1-based MATLAB pixel coordinates with y up;
    the photo's row is ``height + 1 - P_y``. In our pixel frame (centres at integer + 0.5):
    u = P_x - 0.5, v = H + 0.5 - P_y. (face3d's Python port writes ``h - 1 - P_y`` and treats
    P_x as 0-based, i.e. one pixel up and left of this; we follow the dataset's code.)
    Depth for the z-buffer: ``max(P_z) + 1 - P_z`` per image (+z faces the viewer), so it is
    positive and nearer is smaller. Returns pixels (B, N, 2), depth (B, N).
    """
    p = scale[:, None, None] * torch.einsum("bij,bnj->bni", rot, verts)
    u = p[..., 0] + t2d[:, None, 0] - 0.5
    v = image_height + 0.5 - (p[..., 1] + t2d[:, None, 1])
    depth = p[..., 2].amax(1, keepdim=True) + 1 - p[..., 2]
    return torch.stack([u, v], -1), depth


def five_points(pix: torch.Tensor, groups: list[np.ndarray]) -> torch.Tensor:
    """(B, 5, 2) float64 MTCNN points: the mean pixel position of each vertex group
    (``MorphableModel.five_point_vertices()``: eye centres, nose tip, mouth corners)."""
    return torch.stack([pix[:, torch.as_tensor(g, device=pix.device)].double().mean(1) for g in groups], 1)


def similarity_to_template(points: torch.Tensor, size: int, template: str | None = None) -> torch.Tensor:
    """(B, 2, 3) float64 least-squares similarity taking (B, 5, 2) points onto
    ``morph.align.template.five_point_template(size, template)``: the closed form of
    ``morph.align.template.similarity_from_points`` (Umeyama without reflection), in torch."""
    dst = torch.as_tensor(five_point_template(size, template), dtype=torch.float64, device=points.device)
    mu_s = points.mean(1, keepdim=True)
    mu_d = dst.mean(0, keepdim=True)
    s = points - mu_s
    d = dst - mu_d
    norm = (s ** 2).sum((1, 2))
    a = (s * d).sum((1, 2)) / norm
    c = (s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0]).sum(1) / norm
    tx = mu_d[0, 0] - (a * mu_s[:, 0, 0] - c * mu_s[:, 0, 1])
    ty = mu_d[0, 1] - (c * mu_s[:, 0, 0] + a * mu_s[:, 0, 1])
    return torch.stack([torch.stack([a, -c, tx], -1), torch.stack([c, a, ty], -1)], 1)


def apply_similarity(pix: torch.Tensor, transform: torch.Tensor) -> torch.Tensor:
    """Pixels (B, N, 2) mapped by (B, 2, 3) transforms, computed in float64."""
    p = pix.double()
    t = transform[:, None]
    u = t[..., 0, 0] * p[..., 0] + t[..., 0, 1] * p[..., 1] + t[..., 0, 2]
    v = t[..., 1, 0] * p[..., 0] + t[..., 1, 1] * p[..., 1] + t[..., 1, 2]
    return torch.stack([u, v], -1).to(pix.dtype)


def pixels_to_ndc(pix: torch.Tensor, depth: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B, N, 3) PyTorch3D NDC vertices: x = (W - 2u) / m, y = (H - 2v) / m, z = depth,
    m = min(H, W). A pixel centre u = i + 0.5 lands on PyTorch3D's centre of column i."""
    h, w = hw
    m = float(min(h, w))
    return torch.stack([(w - 2 * pix[..., 0]) / m, (h - 2 * pix[..., 1]) / m, depth], -1)
