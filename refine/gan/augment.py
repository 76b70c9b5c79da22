"""Differentiable augmentation of the discriminators' inputs (``TrainConfig.augment``).

DiffAugment (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training"):
the same family of random, differentiable transforms is applied to the real and to the generated
images before every discriminator sees them, in D's step and in G's, so that D cannot overfit a
small real set and G's gradient flows back through the transform. Policy ``color,translation,
cutout``, with the ranges of the reference ``DiffAugment_pytorch.py`` (mit-han-lab/data-efficient-
gans: ``rand_brightness``, ``rand_color``, ``rand_contrast``, ``rand_translation``,
``rand_cutout``), written here with one explicit ``torch.Generator`` for every draw:

- colour: brightness + U(-0.5, 0.5); saturation: the deviation from the per-pixel channel mean
  times U(0, 2); contrast: the deviation from the image mean times U(0.5, 1.5);
- translation: an integer shift of up to 1/8 of the side in each axis, zeros (black) shifted in;
- cutout: a square of half the side, centred anywhere, set to 0.

Images are (B, C, H, W) in [-1, 1]; each image gets its own draws.
"""
from __future__ import annotations

import torch

POLICIES = ("none", "diffaugment")


def _rand(gen: torch.Generator, b: int, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(b, 1, 1, 1, generator=gen).to(like.device, like.dtype)


def colour(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    x = x + (_rand(gen, b, x) - 0.5)
    m = x.mean(1, keepdim=True)
    x = (x - m) * (_rand(gen, b, x) * 2) + m
    m = x.mean((1, 2, 3), keepdim=True)
    return (x - m) * (_rand(gen, b, x) + 0.5) + m


def translation(x: torch.Tensor, gen: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    b, _, h, w = x.shape
    sy, sx = int(h * ratio), int(w * ratio)
    dy = torch.randint(-sy, sy + 1, (b,), generator=gen)
    dx = torch.randint(-sx, sx + 1, (b,), generator=gen)
    rows = torch.arange(h)[None, :] - dy[:, None]  # output row r reads input row r - dy
    cols = torch.arange(w)[None, :] - dx[:, None]
    valid = (((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :])
    rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    batch = torch.arange(b)[:, None, None]
    out = x.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return out * valid[:, None].to(x.device, x.dtype)


def cutout(x: torch.Tensor, gen: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    b, _, h, w = x.shape
    ch, cw = int(h * ratio), int(w * ratio)
    cy = torch.randint(0, h + (1 - ch % 2), (b,), generator=gen)
    cx = torch.randint(0, w + (1 - cw % 2), (b,), generator=gen)
    ys, xs = torch.arange(h)[None, :], torch.arange(w)[None, :]
    iny = (ys >= (cy - ch // 2)[:, None]) & (ys < (cy - ch // 2 + ch)[:, None])
    inx = (xs >= (cx - cw // 2)[:, None]) & (xs < (cx - cw // 2 + cw)[:, None])
    keep = ~(iny[:, :, None] & inx[:, None, :])
    return x * keep[:, None].to(x.device, x.dtype)


def diff_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Colour, translation and cutout, in that order, each image with its own draws from ``gen``."""
    return cutout(translation(colour(x, gen), gen), gen)
