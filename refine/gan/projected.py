"""A discriminator on frozen pretrained features: Projected GAN (Sauer et al., NeurIPS 2021) with a
face network that ships offline (``TrainConfig.discriminator = 'projected'``; not the authors').

Projected GAN (autonomousvision/projected-gan, ``pg_modules/discriminator.py``,
``ProjectedDiscriminator.forward``) resizes D's input to its backbone's resolution, runs a frozen
pretrained network (``pg_modules/projector.py``, ``F_RandomProj``: four stages of EfficientNet-lite0),
mixes each stage's channels by a fixed random 1x1 convolution (its "CCM", part of the frozen feature
network) and gives each stage a small trainable discriminator (``MultiScaleD`` / ``SingleDisc``:
strided down-blocks to 8 px, then a 4x4 convolution to logits), whose logits are concatenated. D
then learns only the heads: a few parameters judging features that already tell images apart,
which is why it needs little data.

Here the backbone is the convolutional trunk of MTCNN's O-Net (``morph.align.mtcnn_nets.ONet``, the
`mtcnn` package's weights, already used to find faces): trained to tell faces from non-faces and
to place five points on real photos, it is a face network that ships offline, and it is not the
identity network (whose final embedding the issue keeps out of every discriminator, so that
realism is not bought by moving the very features a judge reads). The input is resized to
``size`` px (96: twice O-Net's 48, so skin-scale detail survives) and scaled to MTCNN's
(x - 127.5) / 128; its stages after pooling 1 and 2 and after conv4 (32, 64 and 128 channels at
47, 22 and 9 px for 96 px) are projected to ``channels`` each by fixed random 1x1 convolutions, and
each goes through its own head: 4x4 stride-2 convolutions with LeakyReLU(0.2) until at most 6 px,
then a 3x3 convolution to one logit per place, every convolution spectrally normalised as Projected
GAN's heads are (``pg_modules/blocks.py``: its ``conv2d`` wraps ``nn.Conv2d`` in ``spectral_norm``;
its ``DownBlock`` also batch-normalises, left out here because our trainer judges real and refined
images in one batch, where batch statistics would mix them). Without it the heads, unbounded, won
the game on the known gap's T1 within 100 steps (``bench/README.md``). Output: (B, M), every
head's logits side by side.
The backbone and the projections never train (``requires_grad`` off, held in eval mode), and
``trainable_parameters`` lists the heads alone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ONetTrunk(nn.Module):
    """O-Net's convolutions (pretrained, frozen) returning its three feature stages."""

    def __init__(self, pretrained: bool = True):
        super().__init__()
        from morph.align.mtcnn_nets import ONet

        onet = ONet(pretrained=pretrained)
        for name in ("conv1", "prelu1", "conv2", "prelu2", "conv3", "prelu3", "conv4", "prelu4"):
            self.add_module(name, getattr(onet, name))
        self.channels = (32, 64, 128)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        b = F.max_pool2d(self.prelu2(self.conv2(a)), 3, 2, ceil_mode=True)
        c = self.prelu4(self.conv4(F.max_pool2d(self.prelu3(self.conv3(b)), 2, 2, ceil_mode=True)))
        return [a, b, c]


def _head(channels: int, hidden: int, side: int) -> nn.Sequential:
    sn = nn.utils.parametrizations.spectral_norm
    layers, c = [], channels
    while side > 6:
        layers += [sn(nn.Conv2d(c, hidden, 4, 2, 1)), nn.LeakyReLU(0.2)]
        c, side = hidden, side // 2
    return nn.Sequential(*layers, sn(nn.Conv2d(c, 1, 3, 1, 1)))


class ProjectedDiscriminator(nn.Module):
    """Frozen O-Net stages, fixed random projections, trainable heads (module docstring)."""

    def __init__(self, hidden: int = 64, size: int = 96, channels: int = 64, pretrained: bool = True):
        super().__init__()
        self.size = size
        self.backbone = ONetTrunk(pretrained)
        with torch.no_grad():
            sides = [f.shape[-1] for f in self.backbone(torch.zeros(1, 3, size, size))]
        self.project = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in self.backbone.channels)
        self.heads = nn.ModuleList(_head(channels, hidden, s) for s in sides)
        for m in (self.backbone, self.project):
            m.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # (no batch statistics inside, but a frozen network stays as trained)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.heads.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = x * (127.5 / 128.0)  # [-1, 1] (to_tensor's x / 127.5 - 1) -> MTCNN's (x - 127.5) / 128
        feats = self.backbone(x)
        return torch.cat([h(p(f)).flatten(1) for f, p, h in zip(feats, self.project, self.heads)], 1)
