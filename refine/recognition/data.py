"""What a face recogniser trains on: labelled image sets mixed at stated proportions, batches
drawn without state, and the field's augmentation.

**Sets** (``refine.evaluation.image_sets.open_image_set``): exports (``ganfaces.h5``, ImageFolder), ``morph
render``'s synthetic.h5, ``morph align``'s real.h5 of a folder per identity (CASIA-WebFace layout).
Their identities are kept apart: set k's labels are offset by the identities of sets 0..k-1 (a
render's identity 3 and a real person 3 are two classes).

**Mixing**: ``proportions`` gives the share of each set in every batch (the paper's Table 1 adds
GANFaces to VGG-Face); the default is each set's share of all images, i.e. the concatenation.

**Batches**: batch t of rank r is drawn from ``numpy.random.default_rng([seed, t, r])``: each
image's set by the proportions, then an image of that set uniformly (with replacement). A resumed
run therefore draws exactly the batches of the uninterrupted one with no sampler state to save,
and torchrun ranks draw different images.

**Augmentation** (``Augment``), on the batch, with a ``torch.Generator`` seeded the same way:
- ``standard``: a horizontal flip with probability 0.5 (insightface's arcface_torch training
  transform, ``recognition/arcface_torch/dataset.py``, ``MXFaceDataset.__init__``:
  ``RandomHorizontalFlip``, then a normalisation to [-1, 1])
  and random erasing (Zhong et al., AAAI 2020: with probability 0.5 one rectangle of 2-33% of
  the image, aspect 0.3-3.3, set to 0; torchvision's ``RandomErasing`` defaults, drawn here from
  the explicit generator);
- ``strong``: ``standard`` plus a random shift (6 px of 108), rotation (+-10 deg) and scale
  (0.9-1.1) in the same warp as the crop, colour jitter (brightness, contrast, saturation +-0.3),
  greyscale (p 0.1) and a Gaussian blur (p 0.2): geometric and appearance changes in the spirit
  of DigiFace-1M's augmentation for synthetic faces (Bae et al., WACV 2023); its code was not
  read, and these parameters are ours;
- ``none``.

Every image goes through ONE warp to the recogniser's crop (``crop``: ``ganfaces108`` as the
images are stored, or the 112 px ArcFace crop), with the flip, shift and rotation in it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from morph.base.errors import UserError
from morph.align.template import crop_template, five_point_template
from refine.embedders.base import SOURCE_SIZE, IdentityInputTransform
from refine.evaluation.image_sets import ImageSet, open_image_set

AUGMENTATIONS = ("standard", "strong", "none")
#: sets up to this many bytes of images are read into memory once; bigger ones per batch
IN_MEMORY_BYTES = 2 << 30


@dataclass
class Source:
    """One labelled set of the mixture."""

    set: ImageSet
    offset: int  # its first class number
    classes: int
    proportion: float
    images: np.ndarray | None = None  # (n, 108, 108, 3) uint8 when held in memory

    def read(self, idx: np.ndarray) -> np.ndarray:
        if self.images is not None:
            return self.images[idx]
        return self.set.read(idx)


class Mixture:
    """Labelled sets mixed at ``proportions`` (None: by their sizes); see the module docstring."""

    def __init__(self, paths: list[str | Path], proportions: list[float] | None = None):
        if not paths:
            raise UserError("give at least one labelled set to train on (--data).")
        sets = [open_image_set(p, "training set") for p in paths]
        if proportions is None:
            proportions = [s.n for s in sets]
        if len(proportions) != len(sets):
            raise UserError(f"{len(proportions)} proportions for {len(sets)} sets; give one per --data.")
        if any(not math.isfinite(p) or p < 0 for p in proportions) or sum(proportions) <= 0:
            raise UserError(f"proportions {proportions}: must be non-negative numbers, not all zero.")
        templates = {s.template for s in sets}
        if len(templates) > 1:
            raise UserError(f"the sets are aligned by different crop templates ({', '.join(sorted(templates))}); "
                            "align them all with one 'morph align --template'.")
        self.template = templates.pop()
        total = float(sum(proportions))
        self.sources, offset = [], 0
        budget = IN_MEMORY_BYTES
        for s, p in zip(sets, proportions):
            classes = int(s.labels.max()) + 1
            size = s.n * SOURCE_SIZE * SOURCE_SIZE * 3
            images = None
            if size <= budget:
                images = np.concatenate([s.read(np.arange(i, min(i + 4096, s.n))) for i in range(0, s.n, 4096)])
                budget -= size
            self.sources.append(Source(s, offset, classes, p / total, images))
            offset += classes
        self.classes = offset
        self.n = sum(s.set.n for s in self.sources)

    def describe(self) -> list[dict]:
        return [{"path": str(s.set.path), "kind": s.set.kind, "images": s.set.n, "identities": s.classes,
                 "first_class": s.offset, "proportion": round(s.proportion, 6)} for s in self.sources]

    def batch(self, size: int, seed: int, step: int, rank: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Images (size, 108, 108, 3) uint8 and their class numbers (size,) int64 of batch ``step``."""
        rng = np.random.default_rng([seed, step, rank])
        which = rng.choice(len(self.sources), size=size, p=[s.proportion for s in self.sources])
        images = np.empty((size, SOURCE_SIZE, SOURCE_SIZE, 3), np.uint8)
        labels = np.empty(size, np.int64)
        for k, src in enumerate(self.sources):
            at = np.flatnonzero(which == k)
            if at.size == 0:
                continue
            idx = rng.integers(0, src.set.n, size=at.size)
            images[at] = src.read(idx)
            labels[at] = src.set.labels[idx] + src.offset
        return images, labels


class Augment:
    """The recogniser's crop and augmentation of a batch (module docstring). ``__call__(x, g)``:
    x (B, 3, 108, 108) in [-1, 1] aligned by ``template``; g a CPU ``torch.Generator``."""

    def __init__(self, crop: str, kind: str = "standard", template: str | None = None):
        if kind not in AUGMENTATIONS:
            raise UserError(f"augmentation '{kind}' is unknown; choose one of {', '.join(AUGMENTATIONS)}.")
        self.kind = kind
        self.size = crop_template(crop).size
        chip = five_point_template(self.size, crop)
        strong = kind == "strong"
        self.warp = IdentityInputTransform(self.size, chip, SOURCE_SIZE, template=template,
                                           max_shift=6.0 if strong else 0.0, max_rotation=10.0 if strong else 0.0,
                                           flip_probability=0.0 if kind == "none" else 0.5)

    def centre(self, x: torch.Tensor) -> torch.Tensor:
        """The crop alone (evaluation)."""
        return self.warp.centre(x)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        p = self.warp.params(x.shape[0], g)
        if self.kind == "strong":  # scale about the chip's centre: shrink or grow the sampling positions
            scale = 0.9 + 0.2 * torch.rand(x.shape[0], generator=g, dtype=torch.float64)
            theta = self.warp.theta(**p)
            theta[:, :, :2] = theta[:, :, :2] / scale[:, None, None]
            grid = F.affine_grid(theta.to(x.dtype), [x.shape[0], 3, self.size, self.size], align_corners=False)
            y = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
            y = _colour(y, g)
        else:
            y = self.warp.apply(x, **p)
        if self.kind != "none":
            y = random_erasing(y, g)
        return y


def _colour(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    u = lambda: (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1)  # noqa: E731
    grey = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:]).expand_as(x)
    x = x + 0.3 * u() * 2  # brightness (the range is 2 wide)
    mean = grey.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (1 + 0.3 * u()) + mean  # contrast
    x = (x - grey) * (1 + 0.3 * u()) + grey  # saturation
    to_grey = (torch.rand(b, 1, 1, 1, generator=g) < 0.1).float()
    x = x * (1 - to_grey) + grey * to_grey
    blur = torch.rand(b, generator=g) < 0.2
    if blur.any():
        sigma = 0.5 + torch.rand(1, generator=g).item()
        k = torch.arange(-2, 3, dtype=x.dtype)
        w = torch.exp(-k * k / (2 * sigma * sigma))
        w = w / w.sum()
        xb = x[blur]
        c = xb.shape[1]
        xb = F.conv2d(F.pad(xb, (2, 2, 0, 0), mode="replicate"), w.view(1, 1, 1, 5).repeat(c, 1, 1, 1), groups=c)
        xb = F.conv2d(F.pad(xb, (0, 0, 2, 2), mode="replicate"), w.view(1, 1, 5, 1).repeat(c, 1, 1, 1), groups=c)
        x = x.clone()
        x[blur] = xb
    return x.clamp(-1, 1)


def random_erasing(x: torch.Tensor, g: torch.Generator, p: float = 0.5, area=(0.02, 0.33),
                   aspect=(0.3, 3.3)) -> torch.Tensor:
    """Random erasing (Zhong et al. 2020) with the defaults of torchvision's ``RandomErasing``
    (``torchvision/transforms/transforms.py``, ``RandomErasing.get_params``): with probability
    ``p`` per image, a rectangle of ``area`` of the image, aspect ratio log-uniform in ``aspect``,
    set to 0 (mid-grey in [-1, 1]). torchvision redraws a rectangle that does not fit (up to 10
    times); here its sides are clipped to the image. Drawn from ``g``, batched, so batches repeat."""
    b, c, h, w = x.shape
    erase = torch.rand(b, generator=g) < p
    frac = area[0] + (area[1] - area[0]) * torch.rand(b, generator=g)
    log_r = math.log(aspect[0]) + (math.log(aspect[1]) - math.log(aspect[0])) * torch.rand(b, generator=g)
    r = torch.exp(log_r)
    eh = torch.sqrt(frac * h * w * r).round().clamp(1, h).long()
    ew = torch.sqrt(frac * h * w / r).round().clamp(1, w).long()
    top = (torch.rand(b, generator=g) * (h - eh + 1).float()).long()
    left = (torch.rand(b, generator=g) * (w - ew + 1).float()).long()
    rows = torch.arange(h)[None, :, None]
    cols = torch.arange(w)[None, None, :]
    box = ((rows >= top[:, None, None]) & (rows < (top + eh)[:, None, None])
           & (cols >= left[:, None, None]) & (cols < (left + ew)[:, None, None]) & erase[:, None, None])
    box = box[:, None].to(x.device)
    return x.masked_fill(box, 0.0)
