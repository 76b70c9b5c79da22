"""Training configuration: the paper's settings as defaults, ablations as switches.

Section 4 (Training Details) and the method list of DESIGN.md: batch 16, Adam at 8e-5 halved at
128k, 192k, 224k, 240k, 244k, 246k and 247k of 248k steps (scaled to ``steps``), lambda_cyc 0.5,
lambda_DP 0.5, lambda_C 0.001, lambda_id 0.1, BEGAN gamma 0.5 and k step 0.001, margin eta 1,
centroid momentum 0.95, an exponential moving average of G for export. Where the paper is silent,
the authors' code (facegan ``trainer.py``, ``config.py``): Adam's betas are TensorFlow's defaults
(0.9, 0.999; ``config.beta1 = 0.5`` is parsed but never passed to ``AdamOptimizer``), the moving
average decays at 0.9999 with TensorFlow's warm-up (``losses.ema_decay``). Batches hold
``images_per_identity`` renders of each of ``batch_size / images_per_identity`` identities
(``refine.data``; 1: uniform sampling).

Variants (the paper's Fig. 5 and Table 1) as ``variant``:
- ``ours``: the full method (Eq. 8-10);
- ``no_pairs``: without the pair-matching game of G' (Eq. 6);
- ``no_identity``: without the identity-set loss (Eq. 7);
- ``cyclegan``: forward cycle only: no pair game, no identity loss;
- ``simgan``: no G', no cycle: G regularised by the pixel distance |G(x) - x| (self-regularisation);
- ``recons``: ours plus a reconstruction loss of paired data in G, |G(s) - r| (Fig. 5d).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from morph.errors import UserError

VARIANTS = ("ours", "no_pairs", "no_identity", "cyclegan", "simgan", "recons")
PAPER_STEPS = 248_000
PAPER_MILESTONES = (128_000, 192_000, 224_000, 240_000, 244_000, 246_000, 247_000)


@dataclass
class TrainConfig:
    steps: int = PAPER_STEPS
    batch_size: int = 16
    lr: float = 8e-5
    betas: tuple[float, float] = (0.9, 0.999)
    image_size: int | None = None  # None: the synthetic set's (refine.data.image_size_of)
    crop_template: str | None = None  # None: the sets' (morph.template; recorded in each file)
    variant: str = "ours"
    g_width: int = 32  # filters of G's first layer (paper: c7s1-32)
    d_hidden: int = 64  # BEGAN discriminator width (authors' conv_hidden_num)
    norm: str = "authors"  # G's and G''s normalisation (refine.nets.NORMS): authors, instance
    lambda_cyc: float = 0.5
    lambda_dp: float = 0.5
    lambda_c: float = 0.001
    lambda_id: float = 0.1
    lambda_reg: float = 0.5  # simgan's self-regularisation and recons' pair reconstruction
    gamma: float = 0.5
    lambda_k: float = 0.001
    eta: float = 1.0
    centroid_momentum: float = 0.95
    ema_decay: float = 0.9999
    images_per_identity: int = 4  # K of the P x K batches of renders (1: uniform sampling)
    warmup_steps: int = 0  # first steps: G copies, G' inverts (Trainer.warmup_step); 0 = the authors' training
    embedder: str = "dlib"
    seed: int = 0
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 10
    grid_every: int = 500
    device: str = "cpu"
    amp: bool = False  # bfloat16 autocast of the networks (CUDA; CPUs with AMX or AVX512-BF16)

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise UserError(f"variant '{self.variant}' is unknown; choose one of {', '.join(VARIANTS)}.")
        self.betas = tuple(self.betas)
        from refine.nets import NORMS
        if self.norm not in NORMS:
            raise UserError(f"norm '{self.norm}' is unknown; choose one of {', '.join(NORMS)} (batch norm was "
                            "dropped: the authors' generators run without it).")
        for name in ("steps", "batch_size", "checkpoint_every", "keep_checkpoints", "log_every", "grid_every",
                     "images_per_identity", "g_width", "d_hidden"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1 (got {getattr(self, name)}).")
        if self.batch_size < 2 and self.uses_identity:
            raise UserError("batch_size must be at least 2 for the identity-set loss (sigma needs M - 1 > 0).")

    # which parts a variant trains
    @property
    def uses_pairs(self) -> bool:
        return self.variant in ("ours", "no_identity", "recons")

    @property
    def uses_identity(self) -> bool:
        return self.variant in ("ours", "no_pairs", "recons")

    @property
    def uses_cycle(self) -> bool:
        return self.variant != "simgan"

    def milestones(self) -> list[int]:
        """The paper's halving steps, scaled from 248k to ``steps``."""
        return sorted({max(1, round(m * self.steps / PAPER_STEPS)) for m in PAPER_MILESTONES})

    def architecture_key(self) -> str:
        """What a checkpoint must match to be resumed or exported with this config."""
        keys = {k: getattr(self, k) for k in ("image_size", "variant", "embedder", "g_width", "d_hidden", "norm",
                                              "crop_template")}
        return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


def load_config(path: str | Path | None, **overrides) -> TrainConfig:
    """A TrainConfig from a YAML file (keys as TrainConfig's fields) and command-line overrides."""
    values: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"{p}: no such config file; check the path.")
        try:
            values = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{p}: not valid YAML ({str(e).splitlines()[0]}); fix the syntax.") from None
        if not isinstance(values, dict):
            raise UserError(f"{p}: a config file must be a mapping of settings.")
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"{p}: unknown setting {', '.join(unknown)}; allowed: {', '.join(sorted(known))}.")
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig(**values)
    except TypeError as e:
        raise UserError(f"{path or 'config'}: {e}.") from None
