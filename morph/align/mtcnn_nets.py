"""P-Net, R-Net and O-Net of MTCNN (Zhang et al. 2016) in torch, with the `mtcnn` package's weights.

The `mtcnn` PyPI package (MIT, version 1.0.0) ships its trained weights as
``mtcnn/assets/weights/{pnet,rnet,onet}.lz4``: joblib + lz4 files, each a list of float32 arrays
in Keras ``set_weights`` order (convolution kernels HWIO, PReLU alphas (1, 1, C), dense kernels
(in, out)). We read those files only; TensorFlow, which ``import mtcnn`` would pull in, is never
imported. They are the same numbers as facenet-pytorch's ``data/*.pt`` (HWIO -> OIHW, dense
kernels transposed), and they work on images in the ordinary (not transposed) orientation.

Preprocessing is ``(x - 127.5) / 128`` on RGB values in [0, 255]. The dense layers of R-Net and
O-Net read the last feature map flattened in (W, H, C) order (the Keras model's
``Permute((2, 1, 3))`` then ``Flatten``).
"""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from morph.base.errors import UserError

_INSTALL_HINT = "install it with `pip install mtcnn==1.0.0` (TensorFlow is not needed)"


def weights_file(net: str) -> Path:
    """Path of ``mtcnn/assets/weights/<net>.lz4`` inside the installed `mtcnn` package.

    ``importlib.resources.files("mtcnn")`` would execute ``mtcnn/__init__.py``, which imports
    TensorFlow; ``find_spec`` of the top-level package only locates it.
    """
    candidates = []
    spec = importlib.util.find_spec("mtcnn")
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "assets" / "weights" / f"{net}.lz4" for p in spec.submodule_search_locations]
    try:
        located = importlib.metadata.distribution("mtcnn").locate_file(f"mtcnn/assets/weights/{net}.lz4")
        candidates.append(Path(str(located)))
    except importlib.metadata.PackageNotFoundError:
        pass
    for path in candidates:
        if path.is_file():
            return path
    if not candidates:
        raise UserError(f"MTCNN weights: the `mtcnn` package is not installed; {_INSTALL_HINT}.")
    raise UserError(f"MTCNN weights: {candidates[0]} is missing from the installed `mtcnn` package; "
                    "re-install it with `pip install --force-reinstall --no-deps mtcnn==1.0.0`.")


@functools.lru_cache(maxsize=None)
def keras_weights(net: str) -> tuple[np.ndarray, ...]:
    """The list of float32 arrays stored in ``<net>.lz4`` (Keras ``get_weights`` order).

    joblib's format is a pickle: we load only the file shipped inside the installed `mtcnn`
    package, never a path a user passes in.
    """
    try:
        import joblib  # noqa: PLC0415  (optional until MTCNN is used)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise UserError("MTCNN weights: reading the `mtcnn` package's weights needs `joblib` and `lz4`; "
                        "install them with `pip install joblib lz4`.") from exc
    path = weights_file(net)
    try:
        arrays = joblib.load(path)
    except Exception as exc:  # noqa: BLE001 - corrupt or truncated package file
        raise UserError(f"MTCNN weights: could not read {path} ({exc}); "
                        f"re-install the package with `pip install --force-reinstall mtcnn==1.0.0`.") from exc
    return tuple(np.asarray(a, np.float32) for a in arrays)


def _take_conv(conv: nn.Conv2d, it) -> None:
    conv.weight.data.copy_(torch.from_numpy(next(it)).permute(3, 2, 0, 1))  # HWIO -> OIHW
    conv.bias.data.copy_(torch.from_numpy(next(it)))


def _take_prelu(prelu: nn.PReLU, it) -> None:
    prelu.weight.data.copy_(torch.from_numpy(next(it)).reshape(-1))


def _take_dense(weight_rows: list[tuple[torch.Tensor, torch.Tensor]], it, n: int) -> None:
    for _ in range(n):
        w = torch.from_numpy(next(it)).t()  # (in, out) -> (out, in)
        b = torch.from_numpy(next(it))
        weight_rows.append((w, b))


def _check_exhausted(it, net: str) -> None:
    if next(it, None) is not None:
        raise UserError(f"MTCNN weights: {weights_file(net)} has more arrays than the {net} network; "
                        "this module expects `mtcnn==1.0.0`.")


def _flatten_whc(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, W*H*C) in the Keras ``Permute((2, 1, 3)); Flatten()`` order."""
    n, c, h, w = x.shape
    return x.permute(0, 3, 2, 1).reshape(n, w * h * c)


class PNet(nn.Module):
    """Proposal network: fully convolutional, 12x12 receptive field, stride 2.

    ``forward(x)`` with x (N, 3, H, W) normalised returns (face probability (N, H', W'),
    box regression (N, 4, H', W')), H' = ceil((H - 2) / 2) - 4.
    """

    def __init__(self, pretrained: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, 3)
        self.prelu1 = nn.PReLU(10)
        self.conv2 = nn.Conv2d(10, 16, 3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, 3)
        self.prelu3 = nn.PReLU(32)
        # Both 1x1 heads in one convolution: channels 0-3 box regression, 4-5 class logits.
        self.head = nn.Conv2d(32, 6, 1)
        if pretrained:
            self.load_keras(keras_weights("pnet"))

    @torch.no_grad()
    def load_keras(self, arrays) -> None:
        it = iter(arrays)
        for i in (1, 2, 3):
            _take_conv(getattr(self, f"conv{i}"), it)
            _take_prelu(getattr(self, f"prelu{i}"), it)
        # Keras order: conv4-1 (box, 4 channels) then conv4-2 (class, 2 channels).
        box_w, box_b, cls_w, cls_b = (torch.from_numpy(next(it)) for _ in range(4))
        self.head.weight.copy_(torch.cat([box_w, cls_w], -1).permute(3, 2, 0, 1))
        self.head.bias.copy_(torch.cat([box_b, cls_b]))
        _check_exhausted(it, "pnet")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.prelu1(self.conv1(x))
        x = F.max_pool2d(x, 2, 2, ceil_mode=True)  # Keras 'same' padding == Caffe's ceil mode here
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        out = self.head(x)
        prob = torch.softmax(out[:, 4:6], 1)[:, 1]
        return prob, out[:, :4]


class RNet(nn.Module):
    """Refinement network on 24x24 crops: returns (face probability (N,), box regression (N, 4))."""

    def __init__(self, pretrained: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, 3)
        self.prelu1 = nn.PReLU(28)
        self.conv2 = nn.Conv2d(28, 48, 3)
        self.prelu2 = nn.PReLU(48)
        self.conv3 = nn.Conv2d(48, 64, 2)
        self.prelu3 = nn.PReLU(64)
        self.fc4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.head = nn.Linear(128, 6)  # 0-3 box regression, 4-5 class logits
        if pretrained:
            self.load_keras(keras_weights("rnet"))

    @torch.no_grad()
    def load_keras(self, arrays) -> None:
        it = iter(arrays)
        for i in (1, 2, 3):
            _take_conv(getattr(self, f"conv{i}"), it)
            _take_prelu(getattr(self, f"prelu{i}"), it)
        dense: list = []
        _take_dense(dense, it, 1)
        self.fc4.weight.copy_(dense[0][0])
        self.fc4.bias.copy_(dense[0][1])
        _take_prelu(self.prelu4, it)
        _take_dense(dense, it, 2)  # box (4) then class (2)
        self.head.weight.copy_(torch.cat([dense[1][0], dense[2][0]], 0))
        self.head.bias.copy_(torch.cat([dense[1][1], dense[2][1]], 0))
        _check_exhausted(it, "rnet")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(x))
        x = self.prelu4(self.fc4(_flatten_whc(x)))
        out = self.head(x)
        return torch.softmax(out[:, 4:6], 1)[:, 1], out[:, :4]


class ONet(nn.Module):
    """Output network on 48x48 crops.

    Returns (face probability (N,), box regression (N, 4), landmarks (N, 10)); the landmarks are
    5 x-fractions then 5 y-fractions of the crop, for left eye, right eye, nose, left and right
    mouth corner (left/right as seen in the image).
    """

    def __init__(self, pretrained: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3)
        self.prelu1 = nn.PReLU(32)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.prelu2 = nn.PReLU(64)
        self.conv3 = nn.Conv2d(64, 64, 3)
        self.prelu3 = nn.PReLU(64)
        self.conv4 = nn.Conv2d(64, 128, 2)
        self.prelu4 = nn.PReLU(128)
        self.fc5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.head = nn.Linear(256, 16)  # 0-3 box regression, 4-13 landmarks, 14-15 class logits
        if pretrained:
            self.load_keras(keras_weights("onet"))

    @torch.no_grad()
    def load_keras(self, arrays) -> None:
        it = iter(arrays)
        for i in (1, 2, 3, 4):
            _take_conv(getattr(self, f"conv{i}"), it)
            _take_prelu(getattr(self, f"prelu{i}"), it)
        dense: list = []
        _take_dense(dense, it, 1)
        self.fc5.weight.copy_(dense[0][0])
        self.fc5.bias.copy_(dense[0][1])
        _take_prelu(self.prelu5, it)
        _take_dense(dense, it, 3)  # box (4), landmarks (10), class (2)
        self.head.weight.copy_(torch.cat([d[0] for d in dense[1:]], 0))
        self.head.bias.copy_(torch.cat([d[1] for d in dense[1:]], 0))
        _check_exhausted(it, "onet")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu4(self.conv4(x))
        x = self.prelu5(self.fc5(_flatten_whc(x)))
        out = self.head(x)
        return torch.softmax(out[:, 14:16], 1)[:, 1], out[:, :4], out[:, 4:14]
