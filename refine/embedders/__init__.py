"""The identity network C: frozen face embedders behind one interface.

    from refine.embedders import load_embedder
    C = load_embedder("dlib")                        # the default
    T = C.transform(108)                             # C's face chip of 108x108 aligned images
    e = C(T(fake, generator))                        # training: shifted, rotated, flipped chips
    e = C(T.centre(images))                          # scores and evaluation: the chip alone

``load_embedder(spec)`` accepts:
- ``"dlib"`` (or ``"default"``): dlib's face-recognition ResNet (150x150 -> 128-D), weights in
  ``data/dlib_face_recognition.npz`` (see ``refine.embedders.dlib_resnet``);
- the path of a TorchScript file, or of a facenet-pytorch ``InceptionResnetV1`` state dict
  (see ``refine.embedders.external`` for each one's contract); the kind is told from the file,
  or forced with a ``torchscript:`` / ``facenet:`` prefix.
"""
from __future__ import annotations

from pathlib import Path

from morph.errors import UserError
from refine.embedders.base import (
    CROP_SIZE,
    SOURCE_SIZE,
    Embedder,
    IdentityInputTransform,
)
from refine.embedders.dlib_resnet import DlibResNet
from refine.embedders.external import (
    FacenetEmbedder,
    TorchScriptEmbedder,
    is_torchscript_archive,
)

__all__ = [
    "CROP_SIZE",
    "DEFAULT_EMBEDDER",
    "SOURCE_SIZE",
    "DlibResNet",
    "Embedder",
    "FacenetEmbedder",
    "IdentityInputTransform",
    "TorchScriptEmbedder",
    "load_embedder",
]

DEFAULT_EMBEDDER = "dlib"


def load_embedder(spec: str | Path = DEFAULT_EMBEDDER, *, input_size: int | None = None,
                  device: str = "cpu") -> Embedder:
    """A frozen ``Embedder`` from ``spec`` (see the module docstring), on ``device``.

    input_size: a TorchScript module's input size, if the module has no ``input_size``
    attribute. Raises ``UserError`` for a missing, unreadable or mismatched file.
    """
    from refine.embedders.external import load_facenet, load_torchscript

    text = str(spec)
    if text in ("dlib", "default"):
        net: Embedder = DlibResNet.load()
    else:
        kind, _, rest = text.partition(":")
        if kind in ("torchscript", "facenet") and rest:
            path = Path(rest)
        else:
            kind, path = "", Path(text)
        if not path.is_file():
            raise UserError(f"{path}: no such embedder file; give 'dlib', a TorchScript file or a "
                            "facenet-pytorch InceptionResnetV1 state dict.")
        if not kind:
            kind = "torchscript" if is_torchscript_archive(path) else "facenet"
        if kind == "torchscript":
            net = load_torchscript(path, input_size)
        else:
            if input_size is not None and input_size != FacenetEmbedder.input_size:
                raise UserError(f"{path}: InceptionResnetV1 takes {FacenetEmbedder.input_size}x"
                                f"{FacenetEmbedder.input_size} images; drop --embedder-size {input_size}.")
            net = load_facenet(path)
    return net.to(device)
