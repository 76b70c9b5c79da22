"""A fit of ``morph fit`` rendered into the crop of its own photo: the paper's paired data (section
3.2, Eq. 6: real photos beside renders of their fitted 3DMM parameters) from any photo folder and
any model the toolkit loads.

The fit's scaled orthographic camera places the model in the photo (``morph.fitting.landmarks``:
u = s (R v)_x + t_x, v = t_y - s (R v)_y, pixel frame), and the similarity that cropped the photo
(``morph.align.faces.crop_transform`` of the 5 points it was aligned by) carries those positions
into the crop, so photo and render share one frame: nothing is resampled twice, as
``morph.w300lp.PairRenderer`` does for 300W-LP's fits. Colour: the model's albedo of the fitted
colour coefficients under the fit's spherical-harmonics light (``morph.render.shading``), normals in
the camera frame as ``morph render`` shades them.
"""
from __future__ import annotations

import numpy as np
import torch

from morph.align.faces import crop_transform
from morph.model.morphable import MorphableModel
from morph.render import camera, shading


class FitRenderer:
    def __init__(self, model: MorphableModel, size: int, template: str | None = None):
        self.model, self.size, self.template = model, size, template
        self.triangles32 = np.ascontiguousarray(model.triangles, np.int32)
        self.triangles = torch.from_numpy(model.triangles)

    def place(self, fits: dict[str, np.ndarray]):
        """The fitted mesh in the crop: ``pix`` (B, N, 2) pixel positions (centres at + 0.5),
        ``depth`` (B, N) (> 0, smaller is nearer), unit ``normals`` (B, N, 3) in the camera frame
        (x right, y up, z towards the camera: ``morph.render.shading``'s frame) and ``transform``
        (B, 2, 3) float64, photo -> crop. ``fits`` as ``render`` takes them (colour and light unused)."""
        verts = torch.from_numpy(self.model.vertices(fits["identity/alpha"], fits["image/beta"])).float()
        rot = torch.from_numpy(camera.compute_rotation(fits["image/pose"]))
        cam = torch.einsum("bij,bnj->bni", rot, verts)
        s = torch.from_numpy(np.asarray(fits["fit_scale"])).float()[:, None]
        t = torch.from_numpy(np.asarray(fits["fit_translation"])).float()
        photo = torch.stack([s * cam[..., 0] + t[:, None, 0], t[:, None, 1] - s * cam[..., 1]], -1)
        transform = crop_transform(fits["landmarks5"], self.size, self.template)  # (B, 2, 3) float64
        m = torch.from_numpy(transform).float()
        pix = torch.einsum("bij,bnj->bni", m[:, :, :2], photo) + m[:, None, :, 2]
        depth = cam[..., 2].amax(1, keepdim=True) + 1 - cam[..., 2]  # +z faces the camera: nearer is smaller
        return pix, depth, shading.compute_norm(cam, self.triangles), transform

    def render(self, fits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``fits``: rows of fits.h5 (``identity/alpha``, ``identity/gamma``, ``image/beta``,
        ``image/pose``, ``image/sh``, ``fit_scale``, ``fit_translation``, ``landmarks5``). Returns
        ``render`` (B, S, S, 3) uint8, ``mask`` (B, S, S) bool, ``landmarks`` (B, 68, 2) in the
        crop (pixel centres at + 0.5) and ``transform`` (B, 2, 3) photo -> crop."""
        from morph.render import RenderSettings, render_projected
        from morph.render.output import to_uint8

        pix, depth, normals, transform = self.place(fits)
        albedo = torch.from_numpy(self.model.colors(fits["identity/gamma"])).float()
        colors = shading.compute_color(albedo, normals, torch.from_numpy(fits["image/sh"]).float())
        out = render_projected(pix, depth, colors, self.triangles32,
                               RenderSettings(image_size=self.size, align=False, outputs=("image", "mask")))
        lm = self.model.landmarks
        landmarks = np.full((len(pix), 68, 2), np.nan, np.float32)
        if lm is not None:
            known = lm >= 0
            landmarks[:, known] = pix[:, lm[known]].numpy()
        return {"render": to_uint8(out.image.cpu().numpy()), "mask": out.mask.cpu().numpy()[:, 0].astype(bool),
                "landmarks": landmarks, "transform": transform}
