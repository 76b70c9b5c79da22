"""A face recogniser (MobileFaceNet + ArcFace/CosFace) and the step that trains it on labelled
sets (``refine train-recognizer``, the job in ``refine.jobs.train_recognizer``), to measure what a
dataset is worth (the paper's Table 1).

The recipe is the field's (insightface's ``recognition/arcface_torch``): SGD with momentum 0.9
and weight decay 5e-4, a linear warm-up of the learning rate then a decay to 0 (here a cosine),
cross-entropy of the margin head's logits (``refine.recognition.margin``). Batches and
augmentation: ``refine.recognition.data``. Under torchrun each rank draws its own batch of
``batch_size`` and the gradients are averaged (DistributedDataParallel).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from morph.base.errors import UserError
from morph.base.numerics import numerics
from refine.checkpoint import canonical
from refine.images import to_tensor
from refine.recognition.data import AUGMENTATIONS, Augment, Mixture
from refine.recognition.margin import MARGINS, MarginHead
from refine.recognition.model_file import ARCHITECTURES, build_backbone, save_model

STATE_FORMAT = "ganfaces-recognizer-run"


@dataclass
class RecognizerConfig:
    steps: int = 2000
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_steps: int = 100
    arch: str = "mobilefacenet"
    width: float = 1.0
    embedding_size: int = 128
    crop: str = "ganfaces108"
    margin: str = "arcface"
    margin_m: float | None = None  # None: the margin's paper value (refine.recognition.margin.MARGINS)
    margin_s: float | None = None
    augment: str = "standard"
    proportions: list[float] | None = None  # None: by set sizes
    seed: int = 0
    device: str = "cpu"
    amp: bool = False  # bfloat16 autocast (CUDA; CPUs with AMX/AVX512-BF16)
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10

    def check(self) -> RecognizerConfig:
        if self.arch not in ARCHITECTURES:
            raise UserError(f"architecture '{self.arch}' is unknown; choose one of {', '.join(ARCHITECTURES)}.")
        if self.margin not in MARGINS:
            raise UserError(f"margin '{self.margin}' is unknown; choose one of {', '.join(MARGINS)}.")
        if self.augment not in AUGMENTATIONS:
            raise UserError(f"augmentation '{self.augment}' is unknown; choose one of {', '.join(AUGMENTATIONS)}.")
        if not (0 < self.width <= 8):
            raise UserError(f"width {self.width}: must be in (0, 8].")
        if self.batch_size < 2:
            raise UserError(f"batch size {self.batch_size}: BatchNorm needs at least 2 images per batch.")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def recipe(self) -> dict:
        """The settings that decide the weights (not how often the run saves, logs, or where)."""
        return {k: v for k, v in self.to_dict().items() if k not in self.MUTABLE or k == "steps"}

    #: settings a resumed run may change (how long, how often it saves and logs, where it runs)
    MUTABLE = ("steps", "checkpoint_every", "keep_checkpoints", "log_every", "device")


def learning_rate(cfg: RecognizerConfig, step: int) -> float:
    """Linear warm-up over ``warmup_steps``, then a cosine decay to 0 at ``steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - cfg.warmup_steps) / span)))


class Recognizer(nn.Module):
    """Backbone and margin head in one module (so DistributedDataParallel wraps both)."""

    def __init__(self, cfg: RecognizerConfig, classes: int):
        super().__init__()
        self.backbone = build_backbone(cfg.arch, cfg.crop, cfg.embedding_size, cfg.width)
        self.head = MarginHead(cfg.embedding_size, classes, cfg.margin, cfg.margin_m, cfg.margin_s)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x), labels)


class RecognizerTrainer:
    def __init__(self, cfg: RecognizerConfig, data: list[Path], ddp, mixture: Mixture | None = None):
        self.cfg = cfg.check()
        self.ddp = ddp
        self.device = torch.device(cfg.device)
        self.mixture = mixture if mixture is not None else Mixture(data, cfg.proportions)
        self.augment = Augment(cfg.crop, cfg.augment, self.mixture.template)
        torch.manual_seed(cfg.seed)
        self.model = Recognizer(cfg, self.mixture.classes).to(self.device)
        self.model = self.model.to(memory_format=torch.channels_last)  # 1.4-1.6x on oneDNN CPUs (bench)
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():  # no weight decay on BN/PReLU parameters
            (decay if p.dim() > 1 else no_decay).append(p)
        self.optimizer = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                                          {"params": no_decay, "weight_decay": 0.0}],
                                         lr=cfg.lr, momentum=cfg.momentum)
        self.net = self.model
        if ddp.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.step = 0

    def _generator(self) -> torch.Generator:
        seed = int(np.random.default_rng([self.cfg.seed, self.step, self.ddp.rank, 1]).integers(2 ** 62))
        return torch.Generator().manual_seed(seed)

    def train_step(self) -> dict:
        cfg = self.cfg
        images, labels = self.mixture.batch(cfg.batch_size, cfg.seed, self.step, self.ddp.rank)
        x = self.augment(to_tensor(images), self._generator())
        x = x.to(self.device).contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(labels).to(self.device)
        lr = learning_rate(cfg, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.net.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.amp):
            logits = self.net(x, y)
        loss = F.cross_entropy(logits.float(), y)
        if not torch.isfinite(loss):
            raise UserError(f"training diverged at step {self.step} (loss {loss.item()}); lower --lr.")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        hit = (logits.detach().argmax(1) == y).float().mean().item()  # of the margin logits: a lower bound
        return {"loss": loss.item(), "train_accuracy": hit, "lr": lr}

    def state(self) -> dict:
        return canonical({"format": STATE_FORMAT, "step": self.step, "config": self.cfg.to_dict(),
                          "sets": self.mixture.describe(), "model": self.model.state_dict(),
                          "optimizer": self.optimizer.state_dict(), "numerics": numerics()})

    def load_state(self, state: dict, path: Path) -> None:
        if state.get("format") != STATE_FORMAT:
            raise UserError(f"{path}: not a 'refine train-recognizer' checkpoint; give the run's own --out.")
        saved = dict(state["config"])
        now = self.cfg.to_dict()
        changed = [k for k in now if k not in RecognizerConfig.MUTABLE and saved.get(k) != now[k]]
        if changed:
            raise UserError(f"{path}: was trained with other settings ({', '.join(f'{k}={saved.get(k)!r}' for k in changed)}); "
                            "resume with the same settings, or start a new --out.")
        if [(s["path"], s["images"]) for s in state["sets"]] != [(s["path"], s["images"]) for s in self.mixture.describe()]:
            raise UserError(f"{path}: was trained on other sets ({', '.join(s['path'] for s in state['sets'])}); "
                            "resume with the same --data, or start a new --out.")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])


def load_run_state(path: Path) -> dict:
    """A 'refine train-recognizer' checkpoint, read without executing code (``weights_only``)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a foreign or truncated file
        raise UserError(f"{path}: not a readable checkpoint ({e.__class__.__name__}); "
                        "give a file written by 'refine train-recognizer'.") from None


def untrained_model(path: Path, cfg: RecognizerConfig) -> Path:
    """The architecture of ``cfg`` with its initial weights (seed ``cfg.seed``), as a recogniser file:
    the baseline a trained one must beat."""
    torch.manual_seed(cfg.seed)
    backbone = build_backbone(cfg.arch, cfg.crop, cfg.embedding_size, cfg.width)
    return save_model(path, backbone, cfg.arch, cfg.crop, {"steps": 0, "config": cfg.recipe(), "sets": []})
