"""MobileFaceNet (Chen et al., "MobileFaceNets: Efficient CNNs for Accurate Real-Time Face
Verification on Mobile Devices", CCBR 2018, Table 1): the face-recognition backbone that
``refine train-recognizer`` trains.

The paper's body, at width 1 and a 112x112 input::

    conv 3x3, 64, stride 2               -> 56x56
    depthwise conv 3x3, 64               -> 56x56
    bottleneck t=2, 64,  n=5, stride 2   -> 28x28
    bottleneck t=4, 128, n=1, stride 2   -> 14x14
    bottleneck t=2, 128, n=6             -> 14x14
    bottleneck t=4, 128, n=1, stride 2   -> 7x7
    bottleneck t=2, 128, n=2             -> 7x7
    conv 1x1, 512                        -> 7x7
    linear global depthwise conv 7x7     -> 1x1   (GDConv: a learned weighting of the 7x7 map)
    linear conv 1x1, 128                 -> the embedding

A bottleneck is MobileNetV2's inverted residual (1x1 expansion by t, 3x3 depthwise, linear 1x1
projection; a shortcut when the stride is 1 and the width does not change); every convolution is
followed by BatchNorm and, except the linear ones, PReLU (the paper's choice over ReLU). The
embedding gets a final BatchNorm, as in insightface's ``recognition/arcface_torch/backbones/
mobilefacenet.py`` (``GDC``: ``Linear`` then ``BatchNorm1d``), whose variant ("mbf") is wider
(``scale=2``) and groups the expansions differently; this module keeps the paper's table and adds
a width multiplier ``width`` for small CPU budgets.

At 108x108 (our aligned crop) the map sizes are 54, 27, 14 and 7, the same 7x7 as at 112: the
GDConv kernel is the final map's side, computed from ``input_size``.
"""
from __future__ import annotations

import torch
from torch import nn

#: (expansion t, channels c at width 1, repeats n, stride s) of the bottleneck stages (Table 1)
STAGES = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.PReLU(cout))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """MobileNetV2's inverted residual with PReLU (MobileFaceNet, section 3.3 and Table 1)."""

    def __init__(self, cin: int, cout: int, expansion: int, stride: int):
        super().__init__()
        hidden = cin * expansion
        self.residual = stride == 1 and cin == cout
        self.body = nn.Sequential(
            _conv_bn(cin, hidden, 1),
            _conv_bn(hidden, hidden, 3, stride, groups=hidden),
            _conv_bn(hidden, cout, 1, act=False),  # linear bottleneck: no non-linearity
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


def final_map_size(input_size: int) -> int:
    """Side of the last feature map: four stride-2 convolutions with padding 1 (112 -> 7, 108 -> 7)."""
    s = int(input_size)
    for _ in range(4):
        s = (s + 2 - 3) // 2 + 1
    return s


class MobileFaceNet(nn.Module):
    """RGB images in [-1, 1], (B, 3, input_size, input_size) -> (B, embedding_size) raw embeddings
    (not normalised; the margin head and the embedder normalise)."""

    def __init__(self, input_size: int = 112, embedding_size: int = 128, width: float = 1.0):
        super().__init__()
        if input_size < 32:
            raise ValueError(f"MobileFaceNet: input_size {input_size} is too small (at least 32 px).")
        self.input_size = int(input_size)
        self.embedding_size = int(embedding_size)
        self.width = float(width)
        c = lambda n: max(8, int(round(n * width / 8)) * 8)  # noqa: E731 - channels, multiples of 8
        layers: list[nn.Module] = [_conv_bn(3, c(64), 3, 2), _conv_bn(c(64), c(64), 3, 1, groups=c(64))]
        cin = c(64)
        for t, ch, n, s in STAGES:
            for i in range(n):
                layers.append(Bottleneck(cin, c(ch), t, s if i == 0 else 1))
                cin = c(ch)
        layers.append(_conv_bn(cin, c(512), 1))
        self.body = nn.Sequential(*layers)
        k = final_map_size(input_size)
        self.gdconv = _conv_bn(c(512), c(512), k, groups=c(512), act=False)
        self.gdconv[0].padding = (0, 0)  # a global depthwise convolution: the whole k x k map, no padding
        self.linear = nn.Conv2d(c(512), self.embedding_size, 1, bias=False)
        self.bn = nn.BatchNorm1d(self.embedding_size)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(self.gdconv(self.body(x)))
        return self.bn(y.flatten(1))
