"""The identity network C's interface, and C's input transform (paper section 4).

``Embedder``: a frozen face-embedding network. It takes RGB images in [-1, 1] (the range G
outputs), shape (B, 3, H, W), and returns L2-normalised embeddings (B, dim). Its weights never
train and it always runs in eval mode, but gradients flow through it to the images: the GAN's
generator is trained through C (Eq. 7).

``IdentityInputTransform``: what C sees of a 108x108 image. The paper feeds C random 96x96
crops of G(x), rotated and flipped, resized to C's own input size. Here crop, rotation, flip and
resize are ONE affine warp (``affine_grid`` + bilinear ``grid_sample``), so the image is
resampled once and the whole transform is differentiable. Every random draw comes from an
explicit ``torch.Generator``. ``centre`` is the deterministic version for evaluation: the centre
96x96 crop, resized.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: The aligned images' size (``morph.template.ALIGNED_SIZE``) and the crop C sees of them.
SOURCE_SIZE = 108
CROP_SIZE = 96


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
    """C's input transform: random crop + rotation + flip + resize, as one differentiable warp.

    images: (B, 3, S, S) with S = ``source_size`` (108). Each image gets its own draw:
    - a ``crop_size`` (96) px square at an integer offset uniform in [0, S - crop] per axis;
    - a rotation about the crop's centre, uniform in [-max_rotation, +max_rotation] degrees;
    - a horizontal flip with probability ``flip_probability`` (0.5);
    and the result is sampled at ``output_size`` x ``output_size`` (the embedder's input size).
    Where a rotated crop reaches past the image (its corners; a crop at the image's edge
    does for any angle), the edge pixels are repeated.

    ``forward(images, generator)`` draws with ``generator`` (a CPU ``torch.Generator``; default:
    the one made from ``seed`` at construction), so a seeded generator gives the same crops on
    any device. ``centre(images)`` is the deterministic evaluation transform: centre crop, no
    rotation or flip. ``params``/``apply`` split the draw from the warp (e.g. to use one draw
    for several tensors).
    """

    def __init__(self, output_size: int, crop_size: int = CROP_SIZE, source_size: int = SOURCE_SIZE,
                 max_rotation: float = 10.0, flip_probability: float = 0.5, seed: int = 0):
        super().__init__()
        if not 0 < crop_size <= source_size:
            raise ValueError(f"IdentityInputTransform: crop_size {crop_size} must be in (0, {source_size}].")
        self.output_size = int(output_size)
        self.crop_size = int(crop_size)
        self.source_size = int(source_size)
        self.max_rotation = float(max_rotation)
        self.flip_probability = float(flip_probability)
        self.generator = torch.Generator().manual_seed(seed)

    def extra_repr(self) -> str:
        return (f"{self.source_size} -> crop {self.crop_size} -> {self.output_size}, "
                f"rotation +-{self.max_rotation} deg, flip p={self.flip_probability}")

    def params(self, batch: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Random draws for ``batch`` images: crop offsets (B, 2) px (x, y), angle (B,) degrees, flip (B,) bool."""
        g = self.generator if generator is None else generator
        span = self.source_size - self.crop_size
        offset = torch.randint(0, span + 1, (batch, 2), generator=g).to(torch.float64)
        angle = (torch.rand(batch, generator=g, dtype=torch.float64) * 2 - 1) * self.max_rotation
        flip = torch.rand(batch, generator=g, dtype=torch.float64) < self.flip_probability
        return {"offset": offset, "angle": angle, "flip": flip}

    def theta(self, offset: torch.Tensor, angle: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
        """(B, 2, 3) ``affine_grid`` matrices: output coordinates in [-1, 1] -> source coordinates in [-1, 1]."""
        s = self.crop_size / self.source_size  # half-width of the crop in normalised units
        centre = (offset + self.crop_size / 2) / self.source_size * 2 - 1  # (B, 2)
        a = torch.deg2rad(angle)
        cos, sin = torch.cos(a), torch.sin(a)
        fx = torch.where(flip, -1.0, 1.0).to(torch.float64)
        # source = centre + s * R(angle) @ diag(fx, 1) @ output
        row0 = torch.stack([s * cos * fx, -s * sin, centre[:, 0]], -1)
        row1 = torch.stack([s * sin * fx, s * cos, centre[:, 1]], -1)
        return torch.stack([row0, row1], 1)

    def apply(self, images: torch.Tensor, offset: torch.Tensor, angle: torch.Tensor,
              flip: torch.Tensor) -> torch.Tensor:
        self._check(images)
        theta = self.theta(offset, angle, flip).to(images.device)
        return _warp(images, theta, self.output_size)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(images, **self.params(images.shape[0], generator))

    def centre(self, images: torch.Tensor) -> torch.Tensor:
        """The evaluation transform: the centre ``crop_size`` square, resized; no rotation or flip."""
        b = images.shape[0]
        offset = torch.full((b, 2), (self.source_size - self.crop_size) / 2, dtype=torch.float64)
        return self.apply(images, offset, torch.zeros(b, dtype=torch.float64), torch.zeros(b, dtype=torch.bool))

    def _check(self, images: torch.Tensor) -> None:
        if images.dim() != 4 or tuple(images.shape[-2:]) != (self.source_size, self.source_size):
            raise ValueError(f"IdentityInputTransform: expected (B, C, {self.source_size}, "
                             f"{self.source_size}) images, got shape {tuple(images.shape)}.")

