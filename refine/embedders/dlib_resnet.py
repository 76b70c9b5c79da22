"""dlib's face-recognition ResNet in torch: the default identity network C.

dlib's ``dlib_face_recognition_resnet_model_v1`` (Davis E. King; 128-D descriptors of 150x150
RGB face chips; CC0) as ported to TensorFlow.js by face-api.js and shipped in the npm package
``@vladmandic/face-api@1.7.15`` (MIT). ``data/convert_face_api.py`` copies the package's weights
into ``data/dlib_face_recognition.npz``; ``load_weights`` reads them. The forward pass mirrors
face-api's ``FaceRecognitionNet.forwardInput`` operation by operation; tests hold our output to
descriptors recorded with the npm package itself (``tests/fixtures/record_face_api.mjs``).

Network (NCHW here; face-api runs NHWC):
- input: RGB pixels p in [0, 255], 150x150; x = (p - (122.782, 117.001, 104.298)) / 255
- ``conv32_down``: 7x7 conv, 32 filters, stride 2, no padding ("valid") -> 72x72; then a
  per-channel affine "scale" layer (x * w + b, dlib's frozen batch norm) and ReLU
- 3x3 max pool, stride 2, no padding -> 35x35
- residual blocks, each two 3x3 conv + scale layers (ReLU after the first), added to the input,
  then ReLU: conv32_1..3 (32 ch, 35x35); conv64_down, conv64_1..3 (64 ch, 17x17);
  conv128_down, conv128_1..2 (128 ch, 8x8); conv256_down, conv256_1..2 (256 ch, 4x4);
  conv256_down_out (256 ch, 2x2). Ordinary blocks pad by 1 ("same"). In a "down" block the
  first conv has stride 2 and no padding; the shortcut is a 2x2 average pool (stride 2) whose
  channels are zero-padded up to the block's; when the two branches' sizes differ (8 -> 3 vs 4,
  4 -> 1 vs 2) the conv branch gets one row of zeros at the bottom and one column at the right.
- mean over the spatial positions -> 256; ``fc``: 256 -> 128, no bias.

The raw descriptors (``features``) are what dlib and face-api return (dlib's rule of thumb:
same person below a Euclidean distance of 0.6); ``forward`` L2-normalises them, as every
``Embedder`` does.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from morph.base.errors import UserError
from refine.embedders.base import Embedder

MEAN_RGB = (122.782, 117.001, 104.298)
WEIGHTS_FILE = "dlib_face_recognition.npz"

#: dlib's mean face, the iBUG points our 5-point definition takes (``morph.align.template``: eye centres
#: = means of 36-41 and 42-47, nose tip 30, mouth corners 48 and 54), in [0, 1] units of the
#: unpadded chip: ``mean_face_shape_x`` / ``mean_face_shape_y`` of ``get_face_chip_details`` in
#: dlib/image_transforms/interpolation.h (dlib commit 3d40bf5; the arrays cover points 17-67).
DLIB_MEAN_FACE = {30: (0.490127, 0.515625), 36: (0.121737, 0.216423), 37: (0.187122, 0.178758),
                  38: (0.265825, 0.179852), 39: (0.334606, 0.231733), 40: (0.260918, 0.245099),
                  41: (0.182743, 0.244077), 42: (0.645647, 0.231733), 43: (0.714428, 0.179852),
                  44: (0.793132, 0.178758), 45: (0.858516, 0.216423), 46: (0.79751, 0.244077),
                  47: (0.719335, 0.245099), 48: (0.254149, 0.780233), 54: (0.726104, 0.780233)}
#: The chip dlib's face-recognition network was trained on: ``get_face_chip_details(shape, 150,
#: 0.25)`` (examples/dnn_face_recognition_ex.cpp; the Python ``compute_face_descriptor`` hard-codes
#: 150 and padding 0.25): a point c of the mean face lands at (padding + c) / (2 padding + 1) * 150.
CHIP_SIZE, CHIP_PADDING = 150, 0.25


def dlib_chip_points() -> np.ndarray:
    """(5, 2) our 5 template points in dlib's 150 px face chip (pixel centres at integer + 0.5;
    dlib puts them at integers, hence the + 0.5)."""
    mean = {k: np.asarray(v) for k, v in DLIB_MEAN_FACE.items()}
    five = np.stack([np.mean([mean[i] for i in range(36, 42)], 0), np.mean([mean[i] for i in range(42, 48)], 0),
                     mean[30], mean[48], mean[54]])
    return (CHIP_PADDING + five) / (2 * CHIP_PADDING + 1) * CHIP_SIZE + 0.5

# (block name, channels in, channels out, "down" block?) in forward order.
BLOCKS = [
    ("conv32_1", 32, 32, False), ("conv32_2", 32, 32, False), ("conv32_3", 32, 32, False),
    ("conv64_down", 32, 64, True), ("conv64_1", 64, 64, False), ("conv64_2", 64, 64, False),
    ("conv64_3", 64, 64, False),
    ("conv128_down", 64, 128, True), ("conv128_1", 128, 128, False), ("conv128_2", 128, 128, False),
    ("conv256_down", 128, 256, True), ("conv256_1", 256, 256, False), ("conv256_2", 256, 256, False),
    ("conv256_down_out", 256, 256, True),
]


class ConvScale(nn.Module):
    """conv (with bias) followed by dlib's affine per-channel scale layer."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, padding: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=True)
        self.scale_weight = nn.Parameter(torch.ones(cout))
        self.scale_bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return x * self.scale_weight[:, None, None] + self.scale_bias[:, None, None]


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, down: bool):
        super().__init__()
        self.down = down
        self.cout = cout
        self.conv1 = ConvScale(cin, cout, 3, stride=2 if down else 1, padding=0 if down else 1)
        self.conv2 = ConvScale(cout, cout, 3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(x)))
        if self.down:
            short = F.avg_pool2d(x, 2, 2)
            dh = short.shape[-2] - out.shape[-2]
            dw = short.shape[-1] - out.shape[-1]
            if dh or dw:  # face-api appends zeros at the bottom / right of the conv branch
                out = F.pad(out, (0, dw, 0, dh))
            if short.shape[1] != self.cout:
                short = F.pad(short, (0, 0, 0, 0, 0, self.cout - short.shape[1]))
            x = short
        return F.relu(out + x)


class DlibResNet(Embedder):
    """dlib's face-recognition ResNet: 150x150 RGB -> 128-D. Use ``load()`` for the weights."""

    input_size = CHIP_SIZE
    dim = 128
    name = "dlib"
    chip_points = dlib_chip_points()

    def __init__(self):
        super().__init__()
        self.conv32_down = ConvScale(3, 32, 7, stride=2, padding=0)
        self.blocks = nn.ModuleDict({n: ResidualBlock(cin, cout, down) for n, cin, cout, down in BLOCKS})
        self.fc = nn.Linear(256, 128, bias=False)
        self.register_buffer("mean_rgb", torch.tensor(MEAN_RGB).view(1, 3, 1, 1), persistent=False)

    def descriptors_from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Raw 128-D descriptors of (B, 3, 150, 150) RGB pixel values in [0, 255] (face-api's input)."""
        x = (pixels - self.mean_rgb) / 255.0
        x = F.relu(self.conv32_down(x))
        x = F.max_pool2d(x, 3, 2)
        for block in self.blocks.values():
            x = block(x)
        return self.fc(x.mean(dim=(2, 3)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Raw descriptors of images in [-1, 1] (pixel = (x + 1) * 127.5)."""
        return self.descriptors_from_pixels((x + 1.0) * 127.5)

    @classmethod
    def load(cls, path: str | Path | None = None) -> DlibResNet:
        """The network with the converted face-api weights (default: the copy in ``data/``), frozen."""
        net = cls()
        net.load_state_dict(load_weights(path))
        return net.freeze()


def default_weights_path() -> Path:
    return Path(str(resources.files("ganfaces_data").joinpath(WEIGHTS_FILE)))


def load_weights(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """A ``DlibResNet`` state dict from the converted face-api weights (an ``.npz`` written by
    ``data/convert_face_api.py``), dequantised as TensorFlow.js does."""
    path = Path(path) if path is not None else default_weights_path()
    if not path.is_file():
        raise UserError(f"{path}: the dlib face-recognition weights are missing; rebuild them with "
                        "`python data/convert_face_api.py` or reinstall the package.")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["__meta__"].tobytes().decode("utf-8"))
            tensors = {}
            for w in meta["tensors"]:
                a = z[w["name"]]
                q = w.get("quantization")
                if q is not None:
                    a = (a.astype(np.float64) * q["scale"] + q["min"]).astype(np.float32)
                tensors[w["name"]] = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    except (OSError, KeyError, ValueError) as e:
        raise UserError(f"{path}: not a readable converted face-api weights file ({e}); rebuild it "
                        "with `python data/convert_face_api.py`.") from None
    return _to_state_dict(tensors, path)


def _to_state_dict(t: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    def conv_scale(src: str, dst: str) -> dict[str, torch.Tensor]:
        return {
            f"{dst}.conv.weight": t[f"{src}/conv/filters"].permute(3, 2, 0, 1).contiguous(),  # HWIO -> OIHW
            f"{dst}.conv.bias": t[f"{src}/conv/bias"],
            f"{dst}.scale_weight": t[f"{src}/scale/weights"],
            f"{dst}.scale_bias": t[f"{src}/scale/biases"],
        }

    try:
        sd = conv_scale("conv32_down", "conv32_down")
        for name, *_ in BLOCKS:
            sd.update(conv_scale(f"{name}/conv1", f"blocks.{name}.conv1"))
            sd.update(conv_scale(f"{name}/conv2", f"blocks.{name}.conv2"))
        sd["fc.weight"] = t["fc"].t().contiguous()  # face-api: matMul(x, fc), fc is 256 x 128
    except KeyError as e:
        raise UserError(f"{path}: tensor {e} is missing; rebuild the file with "
                        "`python data/convert_face_api.py`.") from None
    return sd
