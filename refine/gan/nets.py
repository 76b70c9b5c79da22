"""The networks of the paper (section 4, "Network Architecture"): the refiners G and G' and the
BEGAN auto-encoder discriminators D_R and D_S, as the authors' TensorFlow code builds them.
Images in and out are (B, 3, H, W) in [-1, 1].

The reference is github.com/barisgecer/facegan at commit 7df369a: ``cycleGen.py``
(``Generator.__call__``), ``ops.py`` (``c7s1_k``, ``dk``, ``Rk``, ``n_res_blocks``, ``uk``,
``_norm``, ``_weights``), ``models.py`` (``DiscriminatorCNN``) and ``trainer.py`` (``build_model``,
which builds the networks). Padding follows TensorFlow's: "SAME" stride-2 convolutions pad
(total) ``max((ceil(n / 2) - 1) * 2 + k - n, 0)`` pixels, the smaller half before
(``tf_same_pad``), and a "SAME" stride-2 transposed convolution is the full transposed output
cropped to its first ``2 n`` pixels.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

#: ``authors``: as trainer.py runs it - no normalisation in c7s1/dk/uk (it passes
#: ``norm='batch_norm'``, which ``ops._norm`` does not recognise and passes through), affine
#: instance norm inside the residual blocks (``ops.n_res_blocks`` defaults to ``'instance'``).
#: ``instance``: instance norm after every convolution but the last (CycleGAN's choice).
NORMS = ("authors", "instance")


def tf_same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "SAME" padding (before, after) of one axis of ``size`` pixels."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def init_weights(module: nn.Module) -> None:
    """The authors' initialisation, in place.

    - Refiners (``ops._weights``): every convolution N(0, 0.02), no biases (``c7s1_k``, ``dk``,
      ``Rk``, ``uk`` make none); instance-norm scale N(1, 0.02), offset 0 (``ops._instance_norm``).
    - BEGAN discriminators (``slim.conv2d`` / ``slim.fully_connected`` defaults): Glorot-uniform
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
        elif isinstance(m, nn.InstanceNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def _instance_norm(channels: int) -> nn.InstanceNorm2d:
    """``ops._instance_norm``: per-image moments over H, W, epsilon 1e-5, learnt scale and offset."""
    return nn.InstanceNorm2d(channels, eps=1e-5, affine=True)


class _Conv(nn.Module):
    """c7s1-k (reflection pad 3, 7x7, stride 1), dk (3x3, stride 2, zero "SAME" padding) or the
    output layer: convolution without bias, optional norm, then ReLU or tanh."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, norm: bool, act: str):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv2d(cin, cout, kernel, stride, bias=False)
        self.norm = _instance_norm(cout) if norm else nn.Identity()
        self.act = act

    def forward(self, x):
        if self.stride == 1:
            p = self.kernel // 2
            x = F.pad(x, (p, p, p, p), mode="reflect")
        else:
            (t, b), (l, r) = (tf_same_pad(s, self.kernel, self.stride) for s in x.shape[-2:])
            x = F.pad(x, (l, r, t, b))
        x = self.norm(self.conv(x))
        return torch.tanh(x) if self.act == "tanh" else F.relu(x)


class _Up(nn.Module):
    """uk: 3x3 fractionally-strided convolution (stride 1/2, "SAME", no bias), optional norm,
    ReLU. The output takes the size it is asked for (the authors' ``uk(output_size=...)``), so
    odd sizes round-trip too: 108 -> 54 -> 27 -> 54 -> 108. ``resize`` (not the authors'):
    nearest-neighbour resize to that size, then a 3x3 convolution (reflection padding, no
    bias), whose every output pixel sums the same number of kernel taps: no checkerboard."""

    def __init__(self, cin: int, cout: int, norm: bool, resize: bool = False):
        super().__init__()
        self.resize = bool(resize)
        self.conv = nn.Conv2d(cin, cout, 3, bias=False) if resize else nn.ConvTranspose2d(cin, cout, 3, stride=2,
                                                                                         bias=False)
        self.norm = _instance_norm(cout) if norm else nn.Identity()

    def forward(self, x, size):
        if self.resize:
            h = self.conv(F.pad(F.interpolate(x, size=tuple(size), mode="nearest"), (1, 1, 1, 1), mode="reflect"))
        else:
            h = self.conv(x)[..., :size[0], :size[1]]
        return F.relu(self.norm(h))


class _ResidualBlock(nn.Module):
    """``ops.Rk``: x + IN(conv(relu(IN(conv(x))))), 3x3 convolutions with reflection padding and
    no bias, no ReLU after the sum."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, bias=False)
        self.norm1 = _instance_norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, bias=False)
        self.norm2 = _instance_norm(channels)

    def forward(self, x):
        h = F.relu(self.norm1(self.conv1(F.pad(x, (1, 1, 1, 1), mode="reflect"))))
        return x + self.norm2(self.conv2(F.pad(h, (1, 1, 1, 1), mode="reflect")))


class Generator(nn.Module):
    """G and G': the shallow ResNet of Johnson et al. (c7s1-32, d64, d128, R128 x 3, u64, u32,
    c7s1-3, tanh), paper section 4; G = ``Generator()``, G' = ``Generator(skips=False, dropout=0)``.

    As ``cycleGen.Generator`` builds them (trainer.py: ``ngf`` = ``conv_hidden_num_res`` = 32,
    ``n_res_block`` = 3; G with ``drop_keep=0.9``, G' with the default 1.0):
    - skips, G only, by concatenation: ``u32 = uk(concat[u64, d64])`` and the output layer on
      ``concat[u32, c7s1_32]`` (the code adds them only when ``drop_keep != 1``, i.e. to G);
    - dropout after each residual block (``ops.n_res_blocks``), G only, keep 0.9: ``dropout`` is
      the drop probability 0.1. In ``train()`` mode it draws from torch's global generator; given
      ``noise_seeds`` (one int per image) it draws each image's masks from its own generator, in
      any mode, so that an image gets the same noise in any batch (export; the authors' code
      keeps dropout on when it generates, ``trainer.generate_dataset``); in ``eval()`` mode
      without seeds it is off;
    - normalisation: see ``NORMS`` (default ``authors``); convolutions have no biases.

    ``residual`` (not the authors'; ``TrainConfig.residual``): the output is the input plus a
    bounded correction, ``x + 2 tanh(h)`` where ``tanh(h)`` is the authors' output layer, whose
    convolution starts at zero - so the net starts as an exact copy of its input and learns only
    the change (SimGAN's refiner learns a correction of its input, Shrivastava et al. 2017; the
    zero start replaces the refiner warm-up). The factor 2 lets the correction reach any value
    in [-1, 1] from any input; the output is not clipped (``refine.images.to_uint8`` clips).

    ``split`` (not the authors'; ``TrainConfig.split_background``, residual only): the output layer
    gives two corrections, one taken where the render has drawn (any channel above -1, the 8-bit 0
    of a render's background) and one elsewhere, so that the background's large change (black to
    a photo's surroundings) and the face's small one need not share the pixels at the silhouette.
    """

    def __init__(self, skips: bool = True, dropout: float = 0.1, channels: int = 3, norm: str = "authors",
                 width: int = 32, n_blocks: int = 3, residual: bool = False, upsample: str = "transpose",
                 split: bool = False):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout is a drop probability in [0, 1), got {dropout}")
        outer = norm == "instance"
        self.skips, self.dropout = skips, float(dropout)
        self.c7s1_32 = _Conv(channels, width, 7, 1, outer, "relu")
        self.d64 = _Conv(width, 2 * width, 3, 2, outer, "relu")
        self.d128 = _Conv(2 * width, 4 * width, 3, 2, outer, "relu")
        self.res = nn.ModuleList(_ResidualBlock(4 * width) for _ in range(n_blocks))
        if upsample not in ("transpose", "resize"):
            raise ValueError(f"upsample must be transpose or resize, got {upsample!r}")
        resize = upsample == "resize"
        self.u64 = _Up(4 * width, 2 * width, outer, resize)
        self.u32 = _Up((4 if skips else 2) * width, width, outer, resize)
        if split and not residual:
            raise ValueError("split needs residual: it joins two corrections of the input")
        self.split = bool(split)
        self.c7s1_3 = _Conv((2 if skips else 1) * width, channels * (2 if split else 1), 7, 1, False, "tanh")
        init_weights(self)
        self.residual = bool(residual)
        if self.residual:
            nn.init.zeros_(self.c7s1_3.conv.weight)

    def code_shape(self, image_hw) -> tuple[int, int, int]:
        """(C, H, W) of the residual blocks' activations for images of ``image_hw``: two "SAME"
        stride-2 convolutions, ``ceil(n / 2)`` each (108 -> 54 -> 27)."""
        h, w = (math.ceil(math.ceil(int(n) / 2) / 2) for n in image_hw)
        return self.res[0].conv1.in_channels, h, w

    def noise_masks(self, noise_seeds: list[int], image_hw, dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu") -> list[torch.Tensor]:
        """The dropout of each residual block for images seeded by ``noise_seeds``, as multipliers
        (B, C, H, W): 0 where dropped, ``1 / keep`` where kept (rounded in ``dtype``, as the
        activations they multiply). Each image's generator draws block 1's mask, then block 2's, ...,
        uniform floats below ``keep``, so an image's masks do not depend on its batch."""
        keep, shape = 1.0 - self.dropout, self.code_shape(image_hw)
        gens = [torch.Generator().manual_seed(int(s)) for s in noise_seeds]
        per_image = [[torch.rand(shape, generator=g) < keep for _ in self.res] for g in gens]
        return [torch.stack([m[b] for m in per_image]).to(device, dtype) / keep for b in range(len(self.res))]

    def forward(self, x: torch.Tensor, noise_seeds: list[int] | None = None,
                masks: list[torch.Tensor] | tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        """``noise_seeds``: draw the dropout masks per image (``noise_masks``); ``masks``: take
        them as given (the export's traced G, ``refine.export.onednn_graph``)."""
        if noise_seeds is not None and self.dropout > 0.0:
            masks = self.noise_masks(noise_seeds, x.shape[-2:], x.dtype, x.device)
        e1 = self.c7s1_32(x)
        e2 = self.d64(e1)
        h = self.d128(e2)
        for i, block in enumerate(self.res):
            h = block(h)
            if masks is not None:
                h = h * masks[i]
            elif self.dropout > 0.0:
                h = F.dropout(h, self.dropout, self.training)
        h = self.u64(h, e2.shape[-2:])
        h = self.u32(torch.cat([h, e2], 1) if self.skips else h, e1.shape[-2:])
        out = self.c7s1_3(torch.cat([h, e1], 1) if self.skips else h)
        if self.split:  # the face's correction where the render has drawn, the background's elsewhere
            face, background = out.chunk(2, 1)
            drawn = (x > -1.0).any(1, keepdim=True).to(out.dtype)
            out = drawn * face + (1.0 - drawn) * background
        return x + 2.0 * out if self.residual else out


class BEGANDiscriminator(nn.Module):
    """D_R and D_S: the BEGAN auto-encoder (Berthelot et al. 2017); ``forward`` returns the
    reconstruction D(x) of its input, same shape, unbounded (linear output, no tanh).

    As ``models.DiscriminatorCNN`` builds it (``conv_hidden_num`` = ``hidden`` 64, ``z_num`` 64,
    ``repeat_num = int(log2(S)) - 2`` from ``trainer.__init__``: 4 at 108 px and at 64 px):
    a 3x3 conv to ``hidden`` + ELU; per level ``l`` two 3x3 convs + ELU with ``hidden (l + 1)``
    channels and, between levels, a 3x3 stride-2 conv + ELU ("SAME": 108 -> 54 -> 27 -> 14);
    the bottleneck ``z`` is a linear map of the flattened code, decoded by a linear map to
    ``hidden`` channels at the base size; per level two 3x3 convs + ELU with ``hidden`` channels
    and nearest-neighbour x2 upsampling between levels (14 -> 112); a final 3x3 conv to the
    image's channels, then the centre crop back to S (112 -> 108, offset 2; the authors'
    ``crop_to_bounding_box``). Convolutions and linear maps have biases; Glorot-uniform weights
    (slim's defaults).
    """

    def __init__(self, image_size: int = 108, hidden: int = 64, z_dim: int = 64, channels: int = 3):
        super().__init__()
        if image_size < 16:
            raise ValueError(f"image_size must be at least 16, got {image_size}")
        self.levels = int(math.log2(image_size)) - 2
        base = image_size
        for _ in range(self.levels - 1):
            base = math.ceil(base / 2)
        self.image_size, self.base, self.hidden = image_size, base, hidden
        self.decoded = base * 2 ** (self.levels - 1)

        enc: list[nn.Module] = [nn.Conv2d(channels, hidden, 3, padding=1), nn.ELU()]
        cin = hidden
        for level in range(self.levels):
            c = hidden * (level + 1)
            enc += [nn.Conv2d(cin, c, 3, padding=1), nn.ELU(), nn.Conv2d(c, c, 3, padding=1), nn.ELU()]
            if level < self.levels - 1:
                enc += [_SameStride2(c), nn.ELU()]
            cin = c
        self.encoder = nn.Sequential(*enc)
        self.to_z = nn.Linear(base * base * cin, z_dim)
        self.from_z = nn.Linear(z_dim, base * base * hidden)
        dec: list[nn.Module] = []
        for level in range(self.levels):
            dec += [nn.Conv2d(hidden, hidden, 3, padding=1), nn.ELU(),
                    nn.Conv2d(hidden, hidden, 3, padding=1), nn.ELU()]
            if level < self.levels - 1:
                dec.append(nn.Upsample(scale_factor=2, mode="nearest"))
        dec.append(nn.Conv2d(hidden, channels, 3, padding=1))
        self.decoder = nn.Sequential(*dec)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"BEGANDiscriminator was built for {self.image_size}x{self.image_size} "
                             f"images, got {tuple(x.shape[-2:])}")
        z = self.to_z(self.encoder(x).flatten(1))
        h = self.decoder(self.from_z(z).view(-1, self.hidden, self.base, self.base))
        o = max(0, (self.decoded - self.image_size) // 2)
        return h[..., o:o + self.image_size, o:o + self.image_size]


class _SameStride2(nn.Conv2d):
    """A 3x3 stride-2 convolution with TensorFlow's "SAME" padding (``slim.conv2d(x, c, 3, 2)``)."""

    def __init__(self, channels: int):
        super().__init__(channels, channels, 3, stride=2)

    def forward(self, x):
        (t, b), (l, r) = (tf_same_pad(s, 3, 2) for s in x.shape[-2:])
        return super().forward(F.pad(x, (l, r, t, b)))


def build_nets(cfg) -> dict[str, nn.Module]:
    """The networks a ``TrainConfig`` (or a checkpoint's config dict) trains, by their checkpoint
    names: ``G``, ``ema`` (its moving average, for generation) and ``D_R``; with a cycle, also
    ``Gp`` (G') and ``D_S``. Weights are freshly initialised (torch's global generator).
    ``residual`` makes G and G' residual, ``upsample: resize`` resizes then convolves in their
    decoders; ``discriminator: patch`` makes D_R and D_S patch discriminators, ``projected``
    Projected GAN's (``refine.gan.projected``) (defaults: the authors' networks); ``lambda_face``
    above 0 adds ``D_F``, a discriminator of the face box (``face_discriminator``: patch or projected)."""
    get = cfg.get if isinstance(cfg, dict) else lambda k, d=None: getattr(cfg, k, d)
    size, width, norm = int(get("image_size", 108)), int(get("g_width", 32)), get("norm", "authors")
    hidden, residual = int(get("d_hidden", 64)), bool(get("residual", False))
    up = str(get("upsample", "transpose"))
    kind = get("discriminator", "began")
    if kind == "projected":
        from refine.gan.projected import ProjectedDiscriminator
        disc = lambda: ProjectedDiscriminator(hidden)  # noqa: E731
    else:
        disc = (lambda: PatchDiscriminator(hidden)) if kind == "patch" else \
            (lambda: BEGANDiscriminator(size, hidden=hidden))
    nets = {"G": Generator(skips=True, dropout=0.1, norm=norm, width=width, residual=residual, upsample=up,
                           split=bool(get("split_background", False))),
            "D_R": disc()}
    if get("variant", "ours") != "simgan":
        nets["Gp"] = Generator(skips=False, dropout=0.0, norm=norm, width=width, residual=residual, upsample=up)
        nets["D_S"] = disc()
    if float(get("lambda_face", 0.0)) > 0:
        if get("face_discriminator", "patch") == "projected":
            from refine.gan.projected import ProjectedDiscriminator
            nets["D_F"] = ProjectedDiscriminator(hidden)
        else:
            nets["D_F"] = PatchDiscriminator(hidden)
    nets["ema"] = copy.deepcopy(nets["G"]).eval().requires_grad_(False)
    return nets


class PatchDiscriminator(nn.Module):
    """A patch discriminator (not the authors'; ``TrainConfig.discriminator = 'patch'``): a
    fully convolutional classifier that scores every ~30 px patch of its input as real or
    generated - the PatchGAN of Isola et al. 2017 (pix2pix) and SimGAN's local adversarial loss
    (Shrivastava et al. 2017, section 2.2), with far fewer parameters than the BEGAN auto-encoder
    and no way to win by reconstructing blur. 4x4 convolutions, stride 2, 2, 1, with ``hidden``,
    2 ``hidden``, 4 ``hidden`` channels and LeakyReLU(0.2), no normalisation (an R1 penalty
    needs none), then a 3x3 convolution to one logit per patch: (B, 1, H / 4 - 1, W / 4 - 1)."""

    def __init__(self, hidden: int = 64, channels: int = 3):
        super().__init__()
        c = hidden
        self.net = nn.Sequential(
            nn.Conv2d(channels, c, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(c, 2 * c, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * c, 4 * c, 4, 1, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * c, 1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
