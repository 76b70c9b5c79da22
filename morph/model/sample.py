"""New identities and their per-image parameters, reproducible by (seed, identity, image).

Every draw comes from its own generator seeded by ``SeedSequence(seed, spawn_key=...)``:
identity ``i`` uses spawn key ``(i,)`` and its image ``j`` uses ``(i, j + 1)``. So identity 5 of
seed 0 is the same in a 10-identity run and a 1,000-identity run, in any batch size, worker
count or order, and on any x86-64 CPU: PCG64 and float64 arithmetic on one vector at a time,
with the priors' square roots and products summed exactly rounded instead of by BLAS kernels that
differ by instruction set (``morph.model.priors.cholesky_psd``; ``tests/test_numerics.py`` compares the
AVX2 and AVX-512 code paths).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from morph.base.errors import UserError
from morph.model.morphable import MorphableModel
from morph.model.priors import Priors


#: Bounds of what can be sampled (and stored as int64): seeds, identity numbers, block sizes.
MAX_SEED = 2 ** 63 - 1
MAX_IDENTITY = 2 ** 62
MAX_IDENTITIES = 10 ** 9
MAX_IMAGES = 10 ** 6


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


@dataclass
class Sample:
    """Parameters of a block of images; arrays are float32, one row per image (or identity)."""

    alpha: np.ndarray  # (I, n_shape)   per identity
    gamma: np.ndarray  # (I, n_texture) per identity
    identity: np.ndarray  # (M,) int64: which identity each image shows
    image: np.ndarray  # (M,) int64: image number within its identity
    beta: np.ndarray  # (M, n_expression)
    pose: np.ndarray  # (M, 3) degrees pitch, yaw, roll
    sh: np.ndarray  # (M, 9, 3)
    camera_distance: np.ndarray  # (M,)

    def render_params(self, first_identity: int = 0) -> dict[str, np.ndarray]:
        """Per-image parameter dict for ``morph.render.render_batch``."""
        rows = self.identity - first_identity
        return {"alpha": self.alpha[rows], "gamma": self.gamma[rows], "beta": self.beta,
                "pose": self.pose, "sh": self.sh, "camera_distance": self.camera_distance}


def check_priors(model: MorphableModel, priors: Priors) -> None:
    """Fail early when a fitted prior does not match the model's dimensions."""
    for name, dim in (("shape", model.n_shape), ("texture", model.n_texture), ("expression", model.n_expression)):
        g = priors[name]
        if g.std_scale is None and g.mean.shape[0] != dim:
            raise UserError(
                f"{priors.source}: '{name}' prior has {g.mean.shape[0]} dimensions (basis {g.basis or '?'}) "
                f"but the model {model.name} has {dim} {name} components; use a prior fitted for this "
                f"model or 'std_scale' for {name}."
            )


def sample_identity(model: MorphableModel, priors: Priors, seed: int, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Shape and colour coefficients of identity ``i`` (paper: from the model's Gaussian)."""
    rng = _rng(seed, i)
    alpha = model.shape.clip(priors["shape"].draw(rng, model.n_shape))
    gamma = priors["texture"].draw(rng, model.n_texture)
    if model.texture is not None:
        gamma = model.texture.clip(gamma)
    return alpha.astype(np.float32), gamma.astype(np.float32)


def sample_image(model: MorphableModel, priors: Priors, seed: int, i: int, j: int) -> dict[str, np.ndarray]:
    """Expression, pose, lighting and camera of image ``j`` of identity ``i``."""
    rng = _rng(seed, i, j + 1)
    beta = priors["expression"].draw(rng, model.n_expression)
    if model.expression is not None:
        beta = model.expression.clip(beta)
    return {
        "beta": beta.astype(np.float32),
        "pose": priors["pose"].draw(rng).astype(np.float32),
        "sh": priors["sh"].draw(rng).reshape(9, 3).astype(np.float32),
        "camera_distance": np.float32(priors["camera_distance"].draw(rng)[0]),
    }


def sample_block(model: MorphableModel, priors: Priors, seed: int, identities: range,
                 images_per_identity: int) -> Sample:
    """All parameters for a contiguous range of identities, each with its images."""
    check_priors(model, priors)
    ids = list(identities)
    pairs = [sample_identity(model, priors, seed, i) for i in ids]
    imgs = [sample_image(model, priors, seed, i, j) for i in ids for j in range(images_per_identity)]
    m = len(imgs)

    def stack(key, shape):
        return np.stack([d[key] for d in imgs]) if m else np.zeros((0, *shape), np.float32)

    return Sample(
        alpha=np.stack([a for a, _ in pairs]) if ids else np.zeros((0, model.n_shape), np.float32),
        gamma=np.stack([g for _, g in pairs]) if ids else np.zeros((0, model.n_texture), np.float32),
        identity=np.repeat(np.asarray(ids, np.int64), images_per_identity),
        image=np.tile(np.arange(images_per_identity, dtype=np.int64), len(ids)),
        beta=stack("beta", (model.n_expression,)),
        pose=stack("pose", (3,)),
        sh=stack("sh", (9, 3)),
        camera_distance=np.asarray([d["camera_distance"] for d in imgs], np.float32),
    )
