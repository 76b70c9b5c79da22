"""Coefficients -> shaded, aligned face images: the renderer the CLI calls.

``render_batch`` follows Deep3DFaceRecon's ``ParametricFaceModel`` in small named steps:

1. ``compute_shape``    S = S_mean + U_id (sigma_id alpha) + E_mean + U_exp (sigma_exp beta)  (B, N, 3) mm
2. ``compute_texture``  T = clip(T_mean + U_tex (sigma_tex gamma), 0, 1)                  (B, N, 3)
   (a model without a colour model: its ``fixed_albedo()``, painted from its landmarks)
3. ``camera.compute_rotation`` R = Rz(roll) Ry(yaw) Rx(pitch) from degrees (face3d convention)
4. ``camera.perspective_project`` camera on +z at ``camera_distance`` mm, looking at the face
   centre; pixels u = W/2 + f x / d, v = H/2 - f y / d with d = distance - z
5. alignment (``settings.align``): the 5 MTCNN points (means of the model's landmark groups)
   are mapped onto ``morph.align.template.five_point_template`` by the least-squares similarity, and
   that similarity is applied to every projected vertex - every render is framed exactly like an
   MTCNN-aligned photo
6. ``shading.compute_norm`` (in the camera frame) and ``shading.compute_color`` (SH lighting
   per vertex)
7. rasterize (``morph.render.raster``; perspective-correct barycentrics, z = depth in mm)
8. ``to_image``: Gouraud interpolation of the vertex colours, background where no face

Two engines run these steps:
- ``numba`` (CPU): the kernels of ``morph.render.cpu``. Every image is computed with one fixed
  order of float32 operations, so an image is bit-identical whatever the batch size and its
  position in the batch (``tests/test_render.py`` checks batches of 1, 7 and 64).
- ``torch`` (any device, the default on CUDA): the functions of this package as written, in
  batched torch. Batched matmuls pick kernels by shape, so this engine is *not* batch-invariant
  on CPU or CUDA; it agrees with the numba engine to float32 rounding.
Speeds: ``bench/render.py`` and ``bench/README.md``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from morph.base.errors import UserError
from morph.model.morphable import MorphableModel
from morph.render import camera, cpu, shading
from morph.render.prepared import Prepared, check_params, prepare_model
from morph.render.raster import rasterize, rasterizer, resolve_backend
from morph.render.types import image_hw
from morph.align.template import DEFAULT_TEMPLATE, crop_template, five_point_template

OUTPUTS = ("image", "mask", "landmarks", "depth", "normals")
ENGINES = ("auto", "numba", "torch")


@dataclass(frozen=True)
class RenderSettings:
    """How to render.

    image_size: S (square) or (H, W); alignment needs a square image.
    backend: rasterizer, "auto" or a name of ``morph.render.raster.RASTERIZERS`` (auto: ours on
        the CPU; on CUDA PyTorch3D, or the plain-torch one where PyTorch3D does not import).
    device: where tensors live and the torch engine runs ("cpu", "cuda", "cuda:1" ...).
    align: similarity-align to the 5-point template; False renders in the camera's own frame
        (principal point at the image centre).
    template: the crop template aligned to (``morph.align.template.TEMPLATES``), scaled to image_size.
    background: grey level or (r, g, b) in [0, 1] where no face is visible.
    outputs: any of "image", "mask", "landmarks", "depth", "normals".
    fov: the camera's field of view in degrees across the shorter image side; with alignment
        it only sets the perspective (with the distance), not the framing.
    engine: vertex stage and shading, "auto" | "numba" | "torch" (auto: numba on CPU).
    """

    image_size: int | tuple[int, int] = 108
    backend: str = "auto"
    device: str = "cpu"
    align: bool = True
    background: float | tuple[float, float, float] = 0.0
    outputs: tuple[str, ...] = ("image", "mask", "landmarks")
    fov: float = 12.6
    engine: str = "auto"
    template: str = DEFAULT_TEMPLATE

    def __post_init__(self):
        unknown = set(self.outputs) - set(OUTPUTS)
        if unknown:
            raise UserError(f"unknown render outputs {sorted(unknown)}; choose from {', '.join(OUTPUTS)}.")
        crop_template(self.template)  # a clear error for an unknown name
        if self.engine not in ENGINES:
            raise UserError(f"unknown render engine {self.engine!r}; choose one of {', '.join(ENGINES)}.")
        h, w = image_hw(self.image_size)
        if self.align and h != w:
            raise UserError(f"alignment renders square images; got image_size {self.image_size}.")

    def use_numba(self) -> bool:
        dev = torch.device(self.device).type
        if self.engine == "numba" and dev != "cpu":
            raise UserError("the numba engine runs on the CPU; use device 'cpu' or engine 'torch'.")
        return self.engine == "numba" or (self.engine == "auto" and dev == "cpu")


@dataclass
class RenderOutput:
    """Rendered batch; tensors on the settings' device, None for outputs not asked for.

    image (B, 3, H, W) float32 in [0, 1]; mask (B, 1, H, W) bool (a face covers the pixel);
    landmarks (B, 68, 2) float32 pixel coordinates of the 68 landmark vertices after alignment,
    pixel centres at integer + 0.5 (NaN where the model has no such landmark; not checked for
    visibility); depth (B, 1, H, W) float32 distance along the optical axis in mm, 0 on the
    background; normals (B, 3, H, W) float32 unit camera-frame normals (x right, y up, z towards
    the camera), 0 on the background.
    """

    image: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    landmarks: torch.Tensor | None = None
    depth: torch.Tensor | None = None
    normals: torch.Tensor | None = None


# ----------------------------------------------------------------------------- torch steps
def compute_shape(mean: torch.Tensor, basis_t: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """(B, N, 3) vertices ``mean + coeffs @ basis_t``: the torch copy of ``MorphableModel.vertices``
    (S(alpha, beta), paper section 3.1), with mean = S_mean + E_mean, coeffs = [sigma_id alpha,
    sigma_exp beta] and basis_t = [U_id; U_exp] transposed."""
    return (mean[None] + coeffs @ basis_t).reshape(coeffs.shape[0], -1, 3)


def compute_texture(mean: torch.Tensor, basis_t: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """(B, N, 3) albedo ``clip(T_mean + (sigma_tex gamma) @ U_tex^T, 0, 1)``: the torch copy of
    ``MorphableModel.colors`` (T(gamma))."""
    return (mean[None] + coeffs @ basis_t).reshape(coeffs.shape[0], -1, 3).clamp(0.0, 1.0)


def to_image(pix_to_face: torch.Tensor, bary: torch.Tensor, triangles: torch.Tensor,
             attr: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) per-pixel ``w0 a[v0] + w1 a[v1] + w2 a[v2]`` of a per-vertex attribute
    (B, N, C) over the visible face (Gouraud), ``background`` (C,) elsewhere."""
    b, n, c = attr.shape
    f = triangles.shape[0]
    p2f = pix_to_face[..., 0]
    face = p2f.clamp_min(0)
    img = torch.div(face, f, rounding_mode="floor")
    verts = triangles[face - img * f] + (img * n)[..., None]  # (B, H, W, 3) packed vertex ids
    a = attr.reshape(b * n, c)[verts]  # (B, H, W, 3, C)
    w = bary[..., 0, :, None]
    out = w[..., 0, :] * a[..., 0, :] + w[..., 1, :] * a[..., 1, :] + w[..., 2, :] * a[..., 2, :]
    out = torch.where((p2f >= 0)[..., None], out, background.to(out.dtype))
    return out.permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------- entry points
def render_batch(model: MorphableModel, params: dict[str, np.ndarray], settings: RenderSettings) -> RenderOutput:
    """Render B faces from coefficients.

    params: ``alpha`` (B, n_shape), ``beta`` (B, n_expression), ``gamma`` (B, n_texture) in
    standard deviations (see ``morph.model.morphable``); ``pose`` (B, 3) degrees [pitch, yaw, roll]
    (``camera.compute_rotation``); ``camera_distance`` (B,) mm from the face centre;
    ``sh`` (B, 9, 3) lighting (``shading``). beta and gamma default to zeros (the mean).
    """
    prep = prepare_model(model)
    p = check_params(model, prep, params)
    hw = image_hw(settings.image_size)
    if settings.align and prep.five_groups is None:
        model.five_point_vertices()  # raises the UserError that says what is missing
    if p.n == 0:
        return _empty_output(settings, hw)
    focal = camera.focal_from_fov(settings.fov, hw)
    shaded = "image" in settings.outputs
    want_normals = shaded or "normals" in settings.outputs
    if settings.use_numba():
        v = _vertex_stage_numba(prep, p, settings, hw, focal, shaded, want_normals)
    else:
        v = _vertex_stage_torch(prep, p, settings, hw, focal, shaded, want_normals)
    out = _raster_stage(v["ndc"], v.get("colors"), v.get("normals"), prep.triangles, settings, hw,
                        perspective_correct=True)
    if "landmarks" in settings.outputs:
        out.landmarks = _landmarks(v["pix"], prep, p.n).to(settings.device)
    return out


def render_projected(pix: torch.Tensor, depth: torch.Tensor, colors: torch.Tensor, triangles: np.ndarray,
                     settings: RenderSettings, perspective_correct: bool = False,
                     normals: torch.Tensor | None = None) -> RenderOutput:
    """Rasterize and shade vertices already placed in the image: pix (B, N, 2) pixel
    coordinates (centres at integer + 0.5), depth (B, N) > 0 (smaller is nearer), colors
    (B, N, 3) shaded vertex colours (e.g. ``shading.phong_300wlp``), optional unit normals.
    For cameras of our own making, e.g. 300W-LP's (``camera.weak_perspective_300wlp``) with
    ``perspective_correct=False``; ``settings.align`` is ignored (the frame is the caller's)."""
    hw = image_hw(settings.image_size)
    dev = torch.device(settings.device)
    pix, depth = torch.as_tensor(pix).to(dev, torch.float32), torch.as_tensor(depth).to(dev, torch.float32)
    ndc = camera.pixels_to_ndc(pix, depth, hw)
    if settings.use_numba():
        ndc = ndc.cpu().numpy()
        colors = np.ascontiguousarray(torch.as_tensor(colors).cpu().numpy(), np.float32)
        normals = None if normals is None else np.ascontiguousarray(torch.as_tensor(normals).cpu().numpy(), np.float32)
    else:
        colors = torch.as_tensor(colors).to(dev, torch.float32)
        normals = None if normals is None else torch.as_tensor(normals).to(dev, torch.float32)
    return _raster_stage(ndc, colors, normals, np.ascontiguousarray(triangles, np.int32), settings, hw,
                         perspective_correct)


def _vertex_stage_numba(prep, p, settings, hw, focal, shaded, want_normals) -> dict:
    b, n = p.n, prep.n_vertices
    h, w = hw
    flat = np.empty((b, 3 * n), np.float32)
    cpu.blend(prep.shape_mean, prep.shape_basis_t, p.shape_coeffs, flat)
    if not shaded:
        albedo = np.zeros((0, n, 3), np.float32)
    elif prep.tex_mean is not None:
        albedo = np.empty((b, 3 * n), np.float32)
        cpu.blend(prep.tex_mean, prep.tex_basis_t, p.tex_coeffs, albedo)
        albedo = np.clip(albedo, 0.0, 1.0, out=albedo).reshape(b, n, 3)
    else:  # the same fixed albedo for every image (as MorphableModel.colors)
        albedo = np.ascontiguousarray(np.broadcast_to(prep.albedo[None], (b, n, 3)))
    groups = prep.five_groups if settings.align else [np.zeros(1, np.int64)]
    index = np.concatenate(groups).astype(np.int64)
    start = np.cumsum([0] + [len(g) for g in groups]).astype(np.int64)
    pix = np.empty((b, n, 2), np.float32)
    ndc = np.empty((b, n, 3), np.float32)
    normals = np.empty((b if want_normals else 0, n, 3), np.float32)
    colors = np.empty((b if shaded else 0, n, 3), np.float32)
    cpu.vertex_stage(flat.reshape(b, n, 3), camera.compute_rotation(p.pose), p.distance, np.float32(focal),
                     np.float32(w / 2), np.float32(h / 2), settings.align, index, start,
                     five_point_template(h, settings.template), h, w, prep.triangles, want_normals, albedo, p.sh,
                     shading.SH_BASIS_SCALE, pix, ndc, normals, colors)
    return {"ndc": ndc, "pix": pix, "normals": normals if want_normals else None,
            "colors": colors if shaded else None}


def _vertex_stage_torch(prep, p, settings, hw, focal, shaded, want_normals) -> dict:
    dev = torch.device(settings.device)
    t = prep.tensors(dev)
    b = p.n
    verts = compute_shape(t["shape_mean"], t["shape_basis_t"], torch.from_numpy(p.shape_coeffs).to(dev))
    rot = torch.from_numpy(camera.compute_rotation(p.pose)).to(dev)
    cam, pix, depth = camera.perspective_project(verts, rot, torch.from_numpy(p.distance).to(dev), focal, hw)
    if settings.align:
        transform = camera.similarity_to_template(camera.five_points(pix, prep.five_groups), hw[0], settings.template)
        pix = camera.apply_similarity(pix, transform)
    out = {"ndc": camera.pixels_to_ndc(pix, depth, hw), "pix": pix}
    if want_normals:
        out["normals"] = shading.compute_norm(cam, t["triangles"])
    if shaded:
        if "tex_mean" in t:
            albedo = compute_texture(t["tex_mean"], t["tex_basis_t"], torch.from_numpy(p.tex_coeffs).to(dev))
        else:
            albedo = t["albedo"][None].expand(b, -1, -1)
        out["colors"] = shading.compute_color(albedo, out["normals"], torch.from_numpy(p.sh).to(dev))
    return out


def _raster_stage(ndc, colors, normals, triangles, settings, hw, perspective_correct) -> RenderOutput:
    """Rasterize NDC vertices and interpolate; numpy inputs mean the numba engine."""
    if isinstance(ndc, np.ndarray):
        arrays = _raster_stage_numba(ndc, colors, normals, triangles, settings, hw, perspective_correct)
        dev = torch.device(settings.device)
        return RenderOutput(**{k: torch.from_numpy(v).to(dev) for k, v in arrays.items()})
    return _raster_stage_torch(ndc, colors, normals, triangles, settings, hw, perspective_correct)


def _raster_stage_numba(ndc, colors, normals, triangles, settings, hw, perspective_correct) -> dict:
    """numpy in, numpy out, one parallel region: no torch operation runs, so torch's OpenMP
    threads stay asleep instead of spinning against numba's."""
    b = ndc.shape[0]
    want = settings.outputs
    bg = np.broadcast_to(np.asarray(settings.background, np.float32), (3,)).copy()
    image = np.empty((b if "image" in want else 0, 3, *hw), np.float32)
    normal_image = np.empty((b if "normals" in want and normals is not None else 0, 3, *hw), np.float32)
    colors = colors if colors is not None else np.zeros((0, 1, 3), np.float32)
    normals = normals if normals is not None else np.zeros((0, 1, 3), np.float32)
    from morph.render.raster_cpu import shade_fragments

    backend = rasterizer(resolve_backend(settings.backend, "cpu"))
    if backend.fused_pixel_stage is not None:  # rasterize and interpolate in one pass
        mask = np.empty((b, 1, *hw), np.bool_)
        depth = np.empty((b, 1, *hw), np.float32)
        backend.fused_pixel_stage(ndc, triangles, hw, perspective_correct, colors, bg, normals, mask, depth, image,
                                  normal_image)
    else:
        frags = backend(torch.from_numpy(ndc), torch.from_numpy(triangles).long(), hw, perspective_correct)
        p2f, zbuf, bary = (t.cpu().numpy() for t in frags[:3])
        mask = (p2f[..., 0] >= 0)[:, None]
        depth = np.maximum(zbuf[..., 0], 0)[:, None]
        shade_fragments(p2f, bary, triangles, colors, bg, normals, image, normal_image)
    out = {"mask": mask, "depth": depth, "image": image, "normals": normal_image}
    return {k: v for k, v in out.items() if k in want and len(v) == b}


def _raster_stage_torch(ndc, colors, normals, triangles, settings, hw, perspective_correct) -> RenderOutput:
    dev = torch.device(settings.device)
    tri = torch.from_numpy(triangles).long().to(ndc.device)
    frags = rasterize(ndc, tri, hw, settings.backend, perspective_correct)
    want = settings.outputs
    out = RenderOutput()
    p2f, bary, tri = frags.pix_to_face.to(dev), frags.bary_coords.to(dev), tri.to(dev)
    if "mask" in want:
        out.mask = (p2f[..., 0] >= 0)[:, None]
    if "depth" in want:
        out.depth = frags.zbuf[..., 0].to(dev).clamp_min(0)[:, None]
    if "image" in want:
        bg = torch.as_tensor(np.broadcast_to(np.asarray(settings.background, np.float32), (3,)).copy(), device=dev)
        out.image = to_image(p2f, bary, tri, colors, bg).clamp(0.0, 1.0)
    if "normals" in want and normals is not None:
        out.normals = _unit(to_image(p2f, bary, tri, normals, torch.zeros(3, device=dev)))
    return out


def _unit(n: torch.Tensor) -> torch.Tensor:
    """Normalise (B, 3, H, W) normals over the channel axis; zero vectors stay zero."""
    length = torch.sqrt(n[:, 0] * n[:, 0] + n[:, 1] * n[:, 1] + n[:, 2] * n[:, 2])[:, None]
    return torch.where(length > 0, n / length.clamp_min(1e-30), n)


def _landmarks(pix, prep: Prepared, n: int) -> torch.Tensor:
    if prep.landmarks is None:
        return torch.full((n, 68, 2), float("nan"))
    lm = prep.landmarks
    if isinstance(pix, np.ndarray):
        out = pix[:, np.clip(lm, 0, None)].astype(np.float32)
        out[:, lm < 0] = np.nan
        return torch.from_numpy(out)
    out = pix[:, torch.from_numpy(np.clip(lm, 0, None)).to(pix.device)].float()
    out[:, torch.from_numpy(lm < 0).to(pix.device)] = float("nan")
    return out


def _empty_output(settings: RenderSettings, hw) -> RenderOutput:
    h, w = hw
    dev = settings.device
    shapes = {"image": ((0, 3, h, w), torch.float32), "mask": ((0, 1, h, w), torch.bool),
              "landmarks": ((0, 68, 2), torch.float32), "depth": ((0, 1, h, w), torch.float32),
              "normals": ((0, 3, h, w), torch.float32)}
    return RenderOutput(**{k: torch.zeros(s, dtype=d, device=dev) for k, (s, d) in shapes.items()
                           if k in settings.outputs})
