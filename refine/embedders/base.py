"""The identity network C's interface, and C's input transform (paper section 4).

``Embedder``: a frozen face-embedding network. It takes RGB images in [-1, 1] (the range G
outputs), shape (B, 3, H, W), and returns L2-normalised embeddings (B, dim). Its weights never
train and it always runs in eval mode, but gradients flow through it to the images: the GAN's
generator is trained through C (Eq. 7).

Each embedder declares its face template, ``chip_points``: where the 5 points of
``morph.align.template`` (eye centres, nose tip, mouth corners) sit in its input, i.e. how the faces it
was trained on were framed (Deep3DFaceRecon's ``RecogNetWrapper`` crops to its network's own
template the same way). Our aligned images (``morph.align.template.five_point_template``) are mapped
onto it by one similarity. An embedder without a template of its own gets the paper's framing:
the centre 96x96 of the 108x108 image, resized to its input.

``IdentityInputTransform``: what C sees of an aligned S x S image. The paper feeds C "random
crops, rotated and flipped" of G(x); here the face chip, a random shift (up to the paper's
(108 - 96) / 2 = 6 px of 108 in each axis), a rotation and a flip are ONE affine warp
(``affine_grid`` + bilinear ``grid_sample``), so the image is resampled once and the whole
transform is differentiable. Every random draw comes from an explicit ``torch.Generator``.
``centre`` is the deterministic version (no shift, rotation or flip) for scores and evaluation.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from morph.align.template import ALIGNED_SIZE, five_point_template, similarity_from_points

#: The paper's crop: C sees 96x96 of the 108x108 aligned images.
SOURCE_SIZE = ALIGNED_SIZE
CROP_SIZE = 96


def centre_crop_template(input_size: int) -> np.ndarray:
    """(5, 2) template points of an embedder without its own: the centre 96/108 of our aligned
    image resized to ``input_size`` (pixel centres at integer + 0.5, as ``morph.align.template``)."""
    offset = (SOURCE_SIZE - CROP_SIZE) / 2
    return (five_point_template(SOURCE_SIZE) - offset) * (input_size / CROP_SIZE)


class Embedder(nn.Module):
    """A frozen face-embedding network: images in [-1, 1] -> L2-normalised embeddings.

    Subclasses set ``input_size`` (the square side the network wants, in px), ``dim`` (the
    embedding length) and ``name``, and implement ``features(x)``: raw (not normalised)
    embeddings of a (B, 3, input_size, input_size) RGB batch in [-1, 1].

    ``forward`` resizes images of another size to ``input_size`` (bilinear; antialiased when
    shrinking) and L2-normalises. Give it images already at ``input_size``, e.g. through
    ``IdentityInputTransform``, to avoid resampling twice.
    """

    input_size: int
    dim: int
    name: str = "embedder"
    #: (5, 2) where ``morph.align.template``'s 5 points sit in the input (px, centres at +0.5);
    #: None: the paper's centre 96/108 crop (``centre_crop_template``).
    chip_points: np.ndarray | None = None

    def transform(self, source_size: int = SOURCE_SIZE, template: str | None = None,
                  **augmentation) -> "IdentityInputTransform":
        """This embedder's input transform for images of ``source_size`` px aligned by the crop
        ``template`` (``morph.align.template``; default ``ganfaces108``)."""
        return IdentityInputTransform(self.input_size, self.chip_points, source_size, template=template,
                                      **augmentation)

    def freeze(self) -> Embedder:
        """No parameter requires grad; eval mode for good (``train()`` is a no-op)."""
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)
        return self

    def train(self, mode: bool = True) -> Embedder:
        return super().train(False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: expected (B, 3, H, W) RGB images in [-1, 1], got shape "
                             f"{tuple(images.shape)}.")
        x = images
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            shrink = min(x.shape[-2:]) > self.input_size
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False, antialias=shrink)
        return F.normalize(self.features(x), dim=1)

    def extra_repr(self) -> str:
        return f"input_size={self.input_size}, dim={self.dim}"


def _warp(images: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
    grid = F.affine_grid(theta.to(images.dtype), [images.shape[0], images.shape[1], size, size],
                         align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


class IdentityInputTransform(nn.Module):
    """C's input transform: face chip + random shift, rotation and flip, as one differentiable warp.

    ``chip_points``: the embedder's template (``Embedder.chip_points``; None: the paper's centre
    crop). Images (B, C, S, S), S = ``source_size``, aligned by the crop ``template`` at S px. Each
    image gets its own draw: a shift uniform in +-``max_shift`` px of S (default 6 px of 108,
    the paper's 96-of-108 random crop), a rotation about the chip's centre uniform in
    +-``max_rotation`` degrees, a horizontal flip with probability ``flip_probability``; the
    result is sampled at ``output_size`` x ``output_size``. Where the chip reaches past the image
    the edge pixels are repeated.

    ``forward(images, generator)`` draws with ``generator`` (a CPU ``torch.Generator``; default:
    the one made from ``seed``), so a seeded generator gives the same draws on any device.
    ``centre(images)``: no shift, rotation or flip. ``params``/``apply`` split the draw from the warp.
    """

    def __init__(self, output_size: int, chip_points: np.ndarray | None = None, source_size: int = SOURCE_SIZE,
                 max_shift: float | None = None, max_rotation: float = 10.0, flip_probability: float = 0.5,
                 seed: int = 0, template: str | None = None):
        super().__init__()
        self.output_size = int(output_size)
        self.source_size = int(source_size)
        self.chip_points = np.asarray(centre_crop_template(output_size) if chip_points is None else chip_points,
                                      np.float64)
        self.max_shift = (SOURCE_SIZE - CROP_SIZE) / 2 * source_size / SOURCE_SIZE if max_shift is None \
            else float(max_shift)
        self.max_rotation = float(max_rotation)
        self.flip_probability = float(flip_probability)
        self.generator = torch.Generator().manual_seed(seed)
        # source px -> chip px, both with pixel centres at integer + 0.5
        m = similarity_from_points(five_point_template(self.source_size, template), self.chip_points)
        self.chip_from_source = np.vstack([m, [0.0, 0.0, 1.0]])

    def extra_repr(self) -> str:
        return (f"{self.source_size} px -> {self.output_size} px chip, shift +-{self.max_shift:.3g} px, "
                f"rotation +-{self.max_rotation} deg, flip p={self.flip_probability}")

    def params(self, batch: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Random draws for ``batch`` images: shift (B, 2) source px (x, y), angle (B,) degrees, flip (B,) bool."""
        g = self.generator if generator is None else generator
        shift = (torch.rand(batch, 2, generator=g, dtype=torch.float64) * 2 - 1) * self.max_shift
        angle = (torch.rand(batch, generator=g, dtype=torch.float64) * 2 - 1) * self.max_rotation
        flip = torch.rand(batch, generator=g, dtype=torch.float64) < self.flip_probability
        return {"shift": shift, "angle": angle, "flip": flip}

    def theta(self, shift: torch.Tensor, angle: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        """(B, 2, 3) ``affine_grid`` matrices: output coordinates in [-1, 1] -> source coordinates in [-1, 1]."""
        w, s = self.output_size, self.source_size
        b = shift.shape[0]
        to_px = torch.tensor([[w / 2, 0, w / 2], [0, w / 2, w / 2], [0, 0, 1]], dtype=torch.float64)
        to_norm = torch.tensor([[2 / s, 0, -1], [0, 2 / s, -1], [0, 0, 1]], dtype=torch.float64)
        source_from_chip = torch.from_numpy(np.linalg.inv(self.chip_from_source))
        a = torch.deg2rad(angle)
        fx = torch.where(flip, -1.0, 1.0).to(torch.float64)
        # about the chip's centre: rotate and mirror the sampling positions
        aug = torch.zeros(b, 3, 3, dtype=torch.float64)
        aug[:, 0, 0], aug[:, 0, 1] = torch.cos(a) * fx, -torch.sin(a)
        aug[:, 1, 0], aug[:, 1, 1] = torch.sin(a) * fx, torch.cos(a)
        aug[:, 2, 2] = 1.0
        c = torch.tensor([[1, 0, w / 2], [0, 1, w / 2], [0, 0, 1]], dtype=torch.float64)
        c_inv = torch.tensor([[1, 0, -w / 2], [0, 1, -w / 2], [0, 0, 1]], dtype=torch.float64)
        move = torch.eye(3, dtype=torch.float64).repeat(b, 1, 1)
        move[:, :2, 2] = shift
        m = to_norm @ move @ source_from_chip @ c @ aug @ c_inv @ to_px
        return m[:, :2]

    def apply(self, images: torch.Tensor, shift: torch.Tensor, angle: torch.Tensor,
              flip: torch.Tensor) -> torch.Tensor:
        self._check(images)
        theta = self.theta(shift, angle, flip).to(images.device)
        return _warp(images, theta, self.output_size)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(images, **self.params(images.shape[0], generator))

    def centre(self, images: torch.Tensor) -> torch.Tensor:
        """The deterministic transform: the face chip alone, no shift, rotation or flip."""
        b = images.shape[0]
        zero = torch.zeros(b, dtype=torch.float64)
        return self.apply(images, torch.zeros(b, 2, dtype=torch.float64), zero, zero.bool())

    def _check(self, images: torch.Tensor) -> None:
        if images.dim() != 4 or tuple(images.shape[-2:]) != (self.source_size, self.source_size):
            raise ValueError(f"IdentityInputTransform: expected (B, C, {self.source_size}, "
                             f"{self.source_size}) images, got shape {tuple(images.shape)}.")
