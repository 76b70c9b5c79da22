"""The networks of the paper (section 4, "Network Architecture"): the refiners G and G' and the
BEGAN auto-encoder discriminators D_R and D_S. Images in and out are (B, 3, H, W) in [-1, 1].

Where the paper is silent we follow the authors' TensorFlow code (github.com/barisgecer/facegan:
``cycleGen.py`` ``Generator``, ``ops.py`` ``c7s1_k``/``dk``/``Rk``/``uk``, ``models.py``
``DiscriminatorCNN``, ``config.py``); each class says what it takes from there and what it
decides where that code is missing or does not cover 108 px.
"""
from __future__ import annotations

import torch
from torch import nn

NORMS = ("batch", "instance", "none")


def init_weights(module: nn.Module) -> None:
    """The authors' initialisation, in place.

    - Refiners (``ops._weights``): conv weights N(0, 0.02), no conv biases where a normalisation
      follows; normalisation scale N(1, 0.02) and offset 0 (``ops._instance_norm``).
    - BEGAN discriminator (``slim.conv2d`` / ``slim.fully_connected`` defaults): Glorot-uniform
      weights, zero biases.
    """
    if isinstance(module, BEGANDiscriminator):
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        return
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.affine:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.1)  # tf.contrib batch_norm: eps 1e-3, decay 0.9
    if kind == "instance":
        return nn.InstanceNorm2d(channels, eps=1e-5, affine=True)
    return nn.Identity()


def _conv_norm_relu(cin: int, cout: int, kernel: int, stride: int, norm: str) -> nn.Sequential:
    """c7s1-k (reflection padded, stride 1) or dk (zero padded, stride 2): conv, norm, ReLU."""
    pad = kernel // 2
    conv = nn.Conv2d(cin, cout, kernel, stride, padding=pad,
                     padding_mode="reflect" if stride == 1 else "zeros", bias=norm == "none")
    return nn.Sequential(conv, _norm(norm, cout), nn.ReLU(inplace=True))


class _ResidualBlock(nn.Module):
    """Rk of Johnson et al. as in the authors' ``ops.Rk``: x + norm(conv(relu(norm(conv(x))))),
    3x3 convolutions with reflection padding, no ReLU after the sum."""

    def __init__(self, channels: int, norm: str):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect", bias=norm == "none"),
            _norm(norm, channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect", bias=norm == "none"),
            _norm(norm, channels))

    def forward(self, x):
        return x + self.body(x)


class _Up(nn.Module):
    """uk: 3x3 fractionally-strided convolution (stride 1/2), norm, ReLU. The output takes the
    size it is asked for (the authors' ``uk(output_size=...)``), so any input size round-trips:
    108 -> 54 -> 27 -> 54 -> 108, and odd sizes too."""

    def __init__(self, cin: int, cout: int, norm: str):
        super().__init__()
        self.conv = nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, bias=norm == "none")
        self.post = nn.Sequential(_norm(norm, cout), nn.ReLU(inplace=True))

    def forward(self, x, size):
        return self.post(self.conv(x, output_size=size))


class Generator(nn.Module):
    """G and G': the shallow ResNet of Johnson et al. (c7s1-32, d64, d128, R128 x 3, u64, u32,
    c7s1-3, tanh), section 4 of the paper; G = ``Generator()``, G' = ``Generator(skips=False,
    dropout=0.0)``.

    From the authors' code (``cycleGen.Generator`` on ``ops.py``; ``config.conv_hidden_num_res``
    = 32 filters at the first layer, ``n=3`` residual blocks): 7x7 convolutions and residual
    convolutions reflection-padded, 3x3 stride-2 down and up convolutions, no normalisation on
    the output layer, tanh output, weights N(0, 0.02).

    ``dropout`` is the drop probability (the paper's keep rate 0.9 -> 0.1), applied after each
    residual block: the authors pass ``drop_keep`` to their residual blocks only. Active in
    ``train()`` mode, off in ``eval()``.

    ``skips``: the paper adds skip connections to G "to benefit from 3DMM images fully" but gives
    no form, and the authors' code we could read has none. Ours are additive long skips from the
    encoder to the decoder at equal resolution (c7s1-32 -> u32, d64 -> u64), so G and G' have the
    same parameters and differ only in the forward pass.

    ``norm``: the paper is silent. The authors' trainer builds both refiners with
    ``norm='batch_norm'`` and a train/test switch (an earlier trainer used ``'instance'``), so the
    default is batch normalisation with TensorFlow's defaults (eps 1e-3, decay 0.9). Note that the
    readable ``ops._norm`` only knows ``'instance'`` and ``'batch'`` and passes anything else
    through unnormalised; ``norm="none"`` reproduces that reading (convolutions then get biases).
    """

    def __init__(self, skips: bool = True, dropout: float = 0.1, channels: int = 3, norm: str = "batch",
                 width: int = 32, n_blocks: int = 3):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout is a drop probability in [0, 1), got {dropout}")
        self.skips = skips
        self.c7s1_32 = _conv_norm_relu(channels, width, 7, 1, norm)
        self.d64 = _conv_norm_relu(width, 2 * width, 3, 2, norm)
        self.d128 = _conv_norm_relu(2 * width, 4 * width, 3, 2, norm)
        blocks = []
        for _ in range(n_blocks):
            blocks.append(_ResidualBlock(4 * width, norm))
            if dropout > 0:
                blocks.append(nn.Dropout(dropout))
        self.res = nn.Sequential(*blocks)
        self.u64 = _Up(4 * width, 2 * width, norm)
        self.u32 = _Up(2 * width, width, norm)
        self.c7s1_3 = nn.Conv2d(width, channels, 7, padding=3, padding_mode="reflect", bias=False)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.c7s1_32(x)
        e2 = self.d64(e1)
        h = self.res(self.d128(e2))
        h = self.u64(h, e2.shape[-2:])
        if self.skips:
            h = h + e2
        h = self.u32(h, e1.shape[-2:])
        if self.skips:
            h = h + e1
        return torch.tanh(self.c7s1_3(h))


class BEGANDiscriminator(nn.Module):
    """D_R and D_S: the BEGAN auto-encoder (Berthelot et al. 2017); ``forward`` returns the
    reconstruction D(x) of its input, same shape, unbounded (linear output, as BEGAN).

    From the authors' ``models.DiscriminatorCNN`` and ``config.py`` (``conv_hidden_num`` 64,
    ``z_num`` 64): encoder 3x3 conv to ``hidden``, then per level two 3x3 conv + ELU with
    ``hidden * (level + 1)`` channels and, between levels, a 3x3 stride-2 conv + ELU; a linear
    bottleneck of ``z_dim``; decoder from a linear map back to ``hidden`` channels at the base
    size, per level two 3x3 conv + ELU then nearest-neighbour x2 upsampling between levels; a
    final 3x3 conv to the image channels. Glorot-uniform weights (slim's default).

    108 px: the authors' code trains at 64 px (``repeat_num = log2(64) - 2 = 4`` levels, an 8x8
    base) and hard-codes the 8x8 base, so it cannot run at the paper's 108 px. We keep their rule
    where it applies and halve the size while it stays even and its half is at least 8: 64 -> 8
    (4 levels, as theirs), 128 -> 8 (5 levels, as BEGAN's), 108 -> 54 -> 27 (3 levels, a 27x27
    base). The bottleneck is then a 27*27*192 -> 64 linear layer (most of the ~13M parameters).
    """

    def __init__(self, image_size: int = 108, hidden: int = 64, z_dim: int = 64, channels: int = 3):
        super().__init__()
        if image_size < 16 or image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4 and at least 16, got {image_size}")
        base, levels = image_size, 1
        while base % 2 == 0 and base // 2 >= 8:
            base, levels = base // 2, levels + 1
        self.image_size, self.base, self.levels, self.hidden = image_size, base, levels, hidden

        enc: list[nn.Module] = [nn.Conv2d(channels, hidden, 3, padding=1), nn.ELU()]
        cin = hidden
        for level in range(levels):
            c = hidden * (level + 1)
            enc += [nn.Conv2d(cin, c, 3, padding=1), nn.ELU(), nn.Conv2d(c, c, 3, padding=1), nn.ELU()]
            if level < levels - 1:
                enc += [nn.Conv2d(c, c, 3, stride=2, padding=1), nn.ELU()]
            cin = c
        self.encoder = nn.Sequential(*enc)
        self.to_z = nn.Linear(base * base * cin, z_dim)
        self.from_z = nn.Linear(z_dim, base * base * hidden)
        dec: list[nn.Module] = []
        for level in range(levels):
            dec += [nn.Conv2d(hidden, hidden, 3, padding=1), nn.ELU(),
                    nn.Conv2d(hidden, hidden, 3, padding=1), nn.ELU()]
            if level < levels - 1:
                dec.append(nn.Upsample(scale_factor=2, mode="nearest"))
        dec.append(nn.Conv2d(hidden, channels, 3, padding=1))
        self.decoder = nn.Sequential(*dec)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"BEGANDiscriminator was built for {self.image_size}x{self.image_size} "
                             f"images, got {tuple(x.shape[-2:])}")
        z = self.to_z(self.encoder(x).flatten(1))
        h = self.from_z(z).view(-1, self.hidden, self.base, self.base)
        return self.decoder(h)
