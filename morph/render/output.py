"""A batch of renders as the arrays the image sets store, and the checks a batch must pass."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from morph.base.errors import UserError
from morph.model.morphable import MorphableModel
from morph.model.sample import Sample


def to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """(B, 3, H, W) float in [0, 1] -> (B, H, W, 3) uint8, rounding to nearest."""
    return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(0, 2, 3, 1)


def check_dims(model: MorphableModel, s: Sample, source: Path) -> None:
    for name, have, want in (("shape", s.alpha.shape[1], model.n_shape),
                             ("colour", s.gamma.shape[1], model.n_texture),
                             ("expression", s.beta.shape[1], model.n_expression)):
        if have != want:
            raise UserError(f"{source}: has {have} {name} coefficients but the model {model.name} has {want}; "
                            "render with the model the identities were sampled from (--model).")


def check_render(out, first: int, source: Path) -> None:
    """Refuse a batch holding a blank or non-finite render: a face that does not cover a single
    pixel, or NaN pixels, comes from parameters no face has (the checks on the priors and the
    identities file catch the usual causes; this catches the rest)."""
    covered = out.mask.flatten(1).sum(1)
    finite = torch.isfinite(out.image).flatten(1).all(1)
    bad = torch.nonzero((covered == 0) | ~finite).flatten()
    if len(bad):
        k = int(bad[0])
        raise UserError(f"{source}: image {first + k} renders {'blank' if covered[k] == 0 else 'non-finite'} "
                        "(no face in the frame); check its pose and camera distance, or the priors that drew them.")


def crops_of(out) -> dict[str, np.ndarray]:
    """A render batch's images (uint8, (B, H, W, 3)), landmarks (float32) and masks (bool), as an
    image set stores them (``morph.base.h5io``)."""
    return {"images": to_uint8(to_numpy(out.image)), "landmarks": to_numpy(out.landmarks).astype(np.float32),
            "masks": to_numpy(out.mask)[:, 0].astype(bool)}
