"""A user's own identity network behind the ``Embedder`` interface.

Two kinds of file, neither of which runs arbitrary Python when loaded (no ``pickle``, no
``torch.load(weights_only=False)``):

- **TorchScript** (``torch.jit.save`` of a scripted or traced module). Contract: the module
  takes a float32 (B, 3, S, S) batch of RGB images in [-1, 1] and returns (B, D) embeddings
  (normalised or not: we L2-normalise). S is the module's int attribute ``input_size`` if it has
  one (a scripted module keeps it; set it before ``torch.jit.script``), else the size given to
  ``load_embedder(..., input_size=S)`` (``--embedder-size`` on the command line). Do any other
  input normalisation (mean/std, BGR) inside the module.
- **facenet-pytorch ``InceptionResnetV1`` state dict** (``torch.save(model.state_dict(), f)``,
  e.g. the VGGFace2 or CASIA-WebFace weights). 160x160 input, 512-D; the images are mapped to
  facenet's ``fixed_image_standardization`` ((p - 127.5) / 128). Needs the facenet-pytorch
  package (``pip install --no-deps facenet-pytorch==2.6.0``). A classifier head (``logits.*``)
  in the file is ignored.
"""
from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from morph.base.errors import UserError
from refine.embedders.base import Embedder

FACENET_SIZE = 160
FACENET_DIM = 512


def is_torchscript_archive(path: Path) -> bool:
    """TorchScript archives hold ``code/`` and ``constants.pkl``; ``torch.save`` archives do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any("/code/" in n or n.endswith("constants.pkl") for n in zf.namelist())


class TorchScriptEmbedder(Embedder):
    """A TorchScript module as C (see the module docstring for its contract)."""

    def __init__(self, module: nn.Module, input_size: int, dim: int, name: str = "torchscript"):
        super().__init__()
        self.net = module
        self.input_size = int(input_size)
        self.dim = int(dim)
        self.name = name
        self.freeze()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def load_torchscript(path: Path, input_size: int | None = None) -> TorchScriptEmbedder:
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError and friends for bad archives
        raise UserError(f"{path}: not a loadable TorchScript file ({type(e).__name__}); save your "
                        "network with torch.jit.save(torch.jit.script(model), path).") from None
    own = getattr(module, "input_size", None)
    if input_size is None and own is None:
        raise UserError(f"{path}: the TorchScript module has no int attribute `input_size`; give the "
                        "input size it expects (--embedder-size).")
    if input_size is not None and own is not None and int(own) != int(input_size):
        raise UserError(f"{path}: the module's input_size is {int(own)} but {int(input_size)} was "
                        "given; drop --embedder-size or make them agree.")
    size = int(input_size if input_size is not None else own)
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, 3, size, size))
    except Exception as e:  # noqa: BLE001 - whatever the user's code raises
        raise UserError(f"{path}: the TorchScript module failed on a (1, 3, {size}, {size}) batch of "
                        f"images in [-1, 1] ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                        "it must take RGB images in [-1, 1] at its input size.") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"{path}: the TorchScript module returned {shape} for one image; it must "
                        "return a (B, D) tensor of embeddings.")
    return TorchScriptEmbedder(module, size, out.shape[1], name=f"torchscript:{path.name}")


class FacenetEmbedder(Embedder):
    """facenet-pytorch's ``InceptionResnetV1`` (160x160 -> 512-D) as C."""

    input_size = FACENET_SIZE
    dim = FACENET_DIM
    name = "facenet"

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.freeze()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # [-1, 1] -> fixed_image_standardization: (p - 127.5) / 128 with p = (x + 1) * 127.5
        return self.net(x * (127.5 / 128.0))


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError ...
        raise UserError(f"{path}: not a tensors-only torch file ({type(e).__name__}); save the "
                        "weights with torch.save(model.state_dict(), path).") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors; save it "
                        "with torch.save(model.state_dict(), path).")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_facenet(path: Path) -> FacenetEmbedder:
    try:
        from facenet_pytorch import InceptionResnetV1
    except ImportError:
        raise UserError(f"{path}: a facenet-pytorch state dict needs the facenet-pytorch package; "
                        "install it with `pip install --no-deps facenet-pytorch==2.6.0`.") from None
    sd = {k: v for k, v in _read_state_dict(path).items() if not k.startswith("logits.")}
    net = InceptionResnetV1(pretrained=None, classify=False)
    own = net.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        first = (missing or unexpected)[:3]
        raise UserError(f"{path}: not an InceptionResnetV1 state dict ({len(missing)} keys missing, "
                        f"{len(unexpected)} unexpected, e.g. {', '.join(first)}); give "
                        "torch.save(InceptionResnetV1(...).state_dict(), path).")
    bad = [k for k in own if own[k].shape != sd[k].shape]
    if bad:
        raise UserError(f"{path}: {len(bad)} tensors have the wrong shape for InceptionResnetV1 (e.g. "
                        f"{bad[0]}: {tuple(sd[bad[0]].shape)} instead of {tuple(own[bad[0]].shape)}).")
    net.load_state_dict(sd)
    return FacenetEmbedder(net)
