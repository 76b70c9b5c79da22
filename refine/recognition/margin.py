"""Additive-margin softmax heads for training a face recogniser: ArcFace and CosFace.

Both score an embedding against one learned centre per identity by cosine,
``cos(theta_j) = <e / |e|, W_j / |W_j|>``, and make the true identity's score harder before a
softmax at scale ``s``:

- **ArcFace** (Deng et al., CVPR 2019, Eq. 3): ``s * cos(theta_y + m)``, m = 0.5, s = 64. Where
  ``theta_y + m`` would pass pi (cos no longer decreasing), ``cos(theta_y) - m * sin(m)`` is used
  instead, as insightface's ``recognition/arcface_torch/losses.py`` (``ArcFace.forward``: the
  ``target_logit > self.theta`` branch with ``sinmm``) does, so the target logit keeps falling as
  theta grows.
- **CosFace** (Wang et al., CVPR 2018, Eq. 4): ``s * (cos(theta_y) - m)``, m = 0.35 in the paper
  (insightface's ``CosFace`` defaults to 0.40), s = 64.

``MarginHead(embeddings, labels)`` returns the margin-adjusted logits; the loss is cross-entropy
on them. Without labels (evaluation) it returns the plain scaled cosines.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

#: name -> (default margin, default scale)
MARGINS = {"arcface": (0.5, 64.0), "cosface": (0.35, 64.0)}


class MarginHead(nn.Module):
    def __init__(self, embedding_size: int, classes: int, kind: str = "arcface", margin: float | None = None,
                 scale: float | None = None):
        super().__init__()
        if kind not in MARGINS:
            raise ValueError(f"margin {kind!r}: choose one of {', '.join(MARGINS)}.")
        self.kind = kind
        self.margin = float(MARGINS[kind][0] if margin is None else margin)
        self.scale = float(MARGINS[kind][1] if scale is None else scale)
        self.weight = nn.Parameter(torch.empty(classes, embedding_size))
        nn.init.normal_(self.weight, std=0.01)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, classes) cosines between the embeddings and every identity's centre, in float32."""
        return F.linear(F.normalize(embeddings.float(), dim=1), F.normalize(self.weight.float(), dim=1))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cos = self.cosine(embeddings)
        if labels is None:
            return cos * self.scale
        target = cos.gather(1, labels[:, None]).clamp(-1.0, 1.0)
        if self.kind == "cosface":
            adjusted = target - self.margin
        else:
            m = self.margin
            sin = torch.sqrt((1.0 - target * target).clamp_min(0.0))
            arc = target * math.cos(m) - sin * math.sin(m)  # cos(theta + m)
            adjusted = torch.where(target > math.cos(math.pi - m), arc, target - math.sin(math.pi - m) * m)
        logits = cos.scatter(1, labels[:, None], adjusted)
        return logits * self.scale

    def extra_repr(self) -> str:
        return f"{self.kind}, classes={self.weight.shape[0]}, m={self.margin}, s={self.scale}"
