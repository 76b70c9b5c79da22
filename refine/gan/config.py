"""Training configuration: the paper's settings as defaults, ablations as switches.

Section 4 (Training Details) and the method list of DESIGN.md: batch 16, Adam at 8e-5 halved at
128k, 192k, 224k, 240k, 244k, 246k and 247k of 248k steps (scaled to ``steps``), lambda_cyc 0.5,
lambda_DP 0.5, lambda_C 0.001, lambda_id 0.1, BEGAN gamma 0.5 and k step 0.001, margin eta 1,
centroid momentum 0.95, an exponential moving average of G for export. Where the paper is silent,
the authors' code (facegan ``trainer.py``, ``config.py``): Adam's betas are TensorFlow's defaults
(0.9, 0.999; ``config.beta1 = 0.5`` is parsed but never passed to ``AdamOptimizer``), the moving
average decays at 0.9999 with TensorFlow's warm-up (``losses.ema_decay``). Batches hold
``images_per_identity`` renders of each of ``batch_size / images_per_identity`` identities
(``refine.gan.data``; 1: uniform sampling).

Variants (the paper's Fig. 5 and Table 1) as ``variant``:
- ``ours``: the full method (Eq. 8-10);
- ``no_pairs``: without the pair-matching game of G' (Eq. 6);
- ``no_identity``: without the identity-set loss (Eq. 7);
- ``cyclegan``: forward cycle only: no pair game, no identity loss;
- ``simgan``: no G', no cycle: G regularised by the pixel distance |G(x) - x| (self-regularisation);
- ``recons``: ours plus a reconstruction loss of paired data in G, |G(s) - r| (Fig. 5d).

Training options that are not the authors' (issue 24: the authors' settings did not learn in a
CPU hour); at their defaults the training is the authors' exactly. ``bench/known_gap.py`` measures
each of them on renders whose realistic version is known:
- ``lambda_adv``: the weight of G's adversarial terms in Eq. 8, L_G (Eq. 2) and, with
  ``lambda_face``, D_F's L_GF [1]; 0 switches G's side of every game off (a control: then nothing
  may move towards the real set);
- ``residual``: G and G' output their input plus a bounded correction, starting as copies
  (``refine.gan.nets.Generator``) [false];
- ``upsample``: the two upsampling layers of G and G', ``transpose`` (the authors' 3x3
  fractionally-strided convolutions) or ``resize`` (nearest-neighbour resize, then a 3x3
  convolution: a 3x3 kernel at stride 2 overlaps unevenly and paints a 2-pixel checkerboard,
  Odena et al. 2016, "Deconvolution and Checkerboard Artifacts") [transpose];
- ``lr_schedule``: ``paper`` (halvings at the paper's steps, scaled to ``steps``), ``constant``,
  or ``tail`` (constant, then linear decay to 0 over the last 20% of ``steps``) [paper];
- ``augment``: ``diffaugment`` (``refine.gan.augment``) on both inputs of D_R and D_S [none];
- ``discriminator``: ``began`` (the authors' auto-encoders), ``patch`` (``refine.gan.nets.
  PatchDiscriminator``) or ``projected`` (``refine.gan.projected.ProjectedDiscriminator``: heads on
  frozen MTCNN O-Net features, Projected GAN) for D_R and D_S [began]; ``gan_loss``: a logit
  discriminator's (patch, projected) loss, ``nonsaturating`` or ``hinge`` [nonsaturating]; ``r1``:
  the R1 penalty's gamma on its real inputs [0]; ``history``: SimGAN's buffer of refined images, half of each
  batch of D_R's generated inputs drawn from it [0: none];
- ``lambda_face``: the weight in Eq. 8 of a second discriminator of G's images, D_F, that sees only
  the face box of the aligned crop (``refine.gan.losses.face_box``) and scores its patches
  (``refine.gan.nets.PatchDiscriminator``) with the least-squares loss (``losses.lsgan_losses``):
  SimGAN's local adversarial loss restricted to the face, beside D_R's game on the whole image;
  0: no D_F [0]; ``face_discriminator``: D_F's network, ``patch`` (trained from scratch) or
  ``projected`` (``refine.gan.projected.ProjectedDiscriminator``: trainable heads on the frozen
  trunk of MTCNN's O-Net, which already tells photographed faces from renders) [patch];
- ``split_background``: a residual G with two corrections, one for the face the render has drawn
  and one for its black background (joined by the render's mask, its pixels above -1 in any
  channel), so that the large change of the background does not bleed into the face's edge
  (``refine.gan.nets.Generator``; G' is unchanged) [false];
- ``id_loss``: what L_id holds G to: ``pixel``, |x - G(x)| on the rendered face (the authors'),
  or ``structure``, only the part of G(x) - x that no per-image affine map of each colour channel
  of x explains (``refine.gan.losses.structure_identity_loss``), so that L_id keeps G from
  drawing over the face while leaving its colour, brightness and contrast to the adversaries,
  or ``curve``, only what no colour curve shared by the whole batch explains
  (``refine.gan.losses.curve_identity_loss``: a colour change of the whole domain is free, one
  image's own is not) [pixel];
- ``lambda_hist``: the weight in Eq. 8 of L_hist, the per-channel Wasserstein distance between
  the colours of G's batch and of the real batch, in the face box and outside it
  (``refine.gan.losses.colour_histogram_loss``): the two sets' colour distributions matched
  without a discriminator; like the adversarial terms it is scaled by ``lambda_adv`` [0];
- ``face_weight``: the weight of the crop template's face box in the BEGAN discriminators'
  reconstruction (``refine.gan.losses.face_weight_map``), the background's being 1 [1: the
  authors' plain mean].
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from morph.base.errors import UserError

VARIANTS = ("ours", "no_pairs", "no_identity", "cyclegan", "simgan", "recons")
INT64 = 2 ** 63 - 1
#: numeric settings: (kind, low, high, which ends are open: "", "(", ")" or "()"); a value
#: outside is refused, naming the range
RANGES = {
    "steps": ("int", 1, INT64, ""), "batch_size": ("int", 1, 65536, ""),
    "image_size": ("int", 16, 1024, ""), "g_width": ("int", 1, 1024, ""), "d_hidden": ("int", 1, 1024, ""),
    "images_per_identity": ("int", 1, 65536, ""), "warmup_steps": ("int", 0, INT64, ""),
    "seed": ("int", 0, 2 ** 32 - 1, ""), "checkpoint_every": ("int", 1, INT64, ""),
    "keep_checkpoints": ("int", 1, 1_000_000, ""), "log_every": ("int", 1, INT64, ""),
    "grid_every": ("int", 1, INT64, ""),
    "lr": ("float", 0.0, 1.0, "("), "lambda_cyc": ("float", 0.0, 1e6, ""), "lambda_dp": ("float", 0.0, 1e6, ""),
    "lambda_c": ("float", 0.0, 1e6, ""), "lambda_id": ("float", 0.0, 1e6, ""),
    "lambda_reg": ("float", 0.0, 1e6, ""), "gamma": ("float", 0.0, 10.0, ""),
    "lambda_k": ("float", 0.0, 1.0, ""), "eta": ("float", 0.0, 1e3, ""),
    "centroid_momentum": ("float", 0.0, 1.0, ")"), "ema_decay": ("float", 0.0, 1.0, ")"),
    "lambda_adv": ("float", 0.0, 1e6, ""), "r1": ("float", 0.0, 1e6, ""), "history": ("int", 0, 1_000_000, ""),
    "face_weight": ("float", 0.0, 1e3, "("), "lambda_face": ("float", 0.0, 1e6, ""),
    "lambda_hist": ("float", 0.0, 1e6, ""),
}
#: choices of the string settings, the authors' first
CHOICES = {"variant": VARIANTS, "norm": ("authors", "instance"), "upsample": ("transpose", "resize"), "lr_schedule": ("paper", "constant", "tail"),
           "augment": ("none", "diffaugment"), "discriminator": ("began", "patch", "projected"),
           "gan_loss": ("nonsaturating", "hinge"), "id_loss": ("pixel", "structure", "curve"),
           "face_discriminator": ("patch", "projected")}
#: the share of ``steps`` over which ``lr_schedule: tail`` decays the learning rate to 0
TAIL = 0.2
PAPER_STEPS = 248_000
PAPER_MILESTONES = (128_000, 192_000, 224_000, 240_000, 244_000, 246_000, 247_000)


@dataclass
class TrainConfig:
    steps: int = PAPER_STEPS
    batch_size: int = 16
    lr: float = 8e-5
    betas: tuple[float, float] = (0.9, 0.999)
    image_size: int | None = None  # None: the synthetic set's (refine.gan.data.image_size_of)
    crop_template: str | None = None  # None: the sets' (morph.align.template; recorded in each file)
    variant: str = "ours"
    g_width: int = 32  # filters of G's first layer (paper: c7s1-32)
    d_hidden: int = 64  # BEGAN discriminator width (authors' conv_hidden_num)
    norm: str = "authors"  # G's and G''s normalisation (refine.gan.nets.NORMS): authors, instance
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
    # not the authors' (issue 24; the module docstring): defaults keep their training exactly
    lambda_adv: float = 1.0  # weight of L_G (and of lambda_face L_GF) in Eq. 8
    residual: bool = False  # G, G' = input + bounded correction, starting as copies
    upsample: str = "transpose"  # G's upsampling: transpose (authors') or resize (+ conv)
    lr_schedule: str = "paper"  # paper, constant, tail
    augment: str = "none"  # none, diffaugment (D_R's and D_S's inputs)
    discriminator: str = "began"  # began, patch, projected (D_R and D_S)
    gan_loss: str = "nonsaturating"  # a patch discriminator's loss: nonsaturating, hinge
    r1: float = 0.0  # R1 penalty gamma on a patch discriminator's real inputs
    history: int = 0  # refined images kept for D_R (SimGAN's history buffer); 0: none
    face_weight: float = 1.0  # weight of the face box in the BEGAN D's reconstruction; 1: authors'
    lambda_face: float = 0.0  # weight of the face discriminator D_F's term in Eq. 8; 0: no D_F
    face_discriminator: str = "patch"  # D_F: patch (from scratch) or projected (frozen O-Net trunk)
    lambda_hist: float = 0.0  # weight of the colour histogram term L_hist in Eq. 8; 0: none
    split_background: bool = False  # residual G: separate corrections of face and background
    id_loss: str = "pixel"  # L_id on every change (authors'), or what no colour map / shared curve explains

    def __post_init__(self):
        for name, (kind, low, high, open_ends) in RANGES.items():
            value = getattr(self, name)
            if value is None and name == "image_size":
                continue
            setattr(self, name, _number(name, value, kind, low, high, open_ends))
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise UserError(f"{name} '{getattr(self, name)}' is unknown; choose one of {', '.join(choices)}"
                                + (" (batch norm was dropped: the authors' generators run without it)."
                                   if name == "norm" else "."))
        for name in ("embedder", "device"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise UserError(f"{name} must be a non-empty string (got {getattr(self, name)!r}).")
        if self.crop_template is not None:
            from morph.align.template import crop_template
            crop_template(self.crop_template)
        for name in ("amp", "residual", "split_background"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"{name} must be true or false (got {getattr(self, name)!r}).")
        if self.split_background and not self.residual:
            raise UserError("split_background corrects the render in two parts, so it needs residual: true; "
                            "add it or drop split_background.")
        if self.discriminator != "began" and self.face_weight != 1.0:
            raise UserError("face_weight applies to the BEGAN discriminators; drop it or use discriminator: began.")
        if self.discriminator == "began" and (self.r1 > 0 or self.gan_loss != "nonsaturating" or self.history):
            raise UserError("r1, gan_loss and history apply to patch discriminators; add discriminator: patch or "
                            "drop them (the BEGAN auto-encoders have their own loss, Eq. 4-5).")
        try:
            self.betas = tuple(float(b) for b in self.betas)
        except (TypeError, ValueError):
            raise UserError(f"betas must be two numbers in [0, 1) (got {self.betas!r}).") from None
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise UserError(f"betas must be two numbers in [0, 1) (got {self.betas!r}).")
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

    def lr_factor(self, step: int) -> float:
        """The learning rate's factor at ``step`` for ``lr_schedule`` ``constant`` or ``tail``
        (``paper`` is ``milestones``): 1, and for ``tail`` a linear decay over the last ``TAIL``
        of ``steps`` that would reach 0 at ``steps``."""
        if self.lr_schedule != "tail":
            return 1.0
        start = self.steps * (1.0 - TAIL)
        return 1.0 if step < start else max(0.0, (self.steps - step) / (self.steps - start))

    def milestones(self) -> list[int]:
        """The paper's halving steps, scaled from 248k to ``steps``."""
        return sorted({max(1, round(m * self.steps / PAPER_STEPS)) for m in PAPER_MILESTONES})

    def architecture_key(self) -> str:
        """What a checkpoint must match to be resumed or exported with this config."""
        keys = {k: getattr(self, k) for k in ("image_size", "variant", "embedder", "g_width", "d_hidden", "norm",
                                              "crop_template")}
        # the networks' new options enter only when set, so that earlier checkpoints keep their key
        keys.update({k: getattr(self, k) for k, old in (("residual", False), ("discriminator", "began"),
                                                                ("upsample", "transpose"),
                                                                ("split_background", False))
                     if getattr(self, k) != old})
        if self.lambda_face > 0:
            keys["face_discriminator"] = True if self.face_discriminator == "patch" else self.face_discriminator

        return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


def _number(name: str, value, kind: str, low, high, open_ends: str):
    """``value`` as an int or a finite float inside its range (``RANGES``)."""
    import math

    span = f"{'(' if '(' in open_ends else '['}{low}, {high}{')' if ')' in open_ends else ']'}"
    ok = (isinstance(value, int) and not isinstance(value, bool)) if kind == "int" else \
        (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))
    if (not ok or value < low or value > high or ("(" in open_ends and value == low)
            or (")" in open_ends and value == high)):
        what = "an integer" if kind == "int" else "a finite number"
        raise UserError(f"{name} must be {what} in {span} (got {value!r}).")
    return int(value) if kind == "int" else float(value)


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
