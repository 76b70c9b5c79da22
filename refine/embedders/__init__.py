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
  (see ``refine.embedders.external`` for each one's contract), or a recogniser trained by
  ``refine train-recognizer`` (``RUN/recognizer.pt``, ``refine.recognition.model_file``); the
  kind is told from the file, or forced with a ``torchscript:`` / ``facenet:`` / ``recognizer:``
  prefix.
"""
from __future__ import annotations

from pathlib import Path

from morph.base.errors import UserError
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


def _dlib(path: Path | None, input_size: int | None) -> Embedder:
    return DlibResNet.load()


def _torchscript(path: Path, input_size: int | None) -> Embedder:
    from refine.embedders.external import load_torchscript
    return load_torchscript(path, input_size)


def _facenet(path: Path, input_size: int | None) -> Embedder:
    from refine.embedders.external import load_facenet
    if input_size is not None and input_size != FacenetEmbedder.input_size:
        raise UserError(f"{path}: InceptionResnetV1 takes {FacenetEmbedder.input_size}x"
                        f"{FacenetEmbedder.input_size} images; drop --embedder-size {input_size}.")
    return load_facenet(path)


def _recognizer(path: Path, input_size: int | None) -> Embedder:
    from refine.recognition.model_file import load_recognizer
    net = load_recognizer(path)
    if input_size is not None and input_size != net.input_size:
        raise UserError(f"{path}: this recogniser takes {net.input_size}x{net.input_size} images; "
                        f"drop --embedder-size {input_size}.")
    return net


#: kind -> loader(path, input_size). Built-in networks take no file ("dlib"); the others take
#: "KIND:FILE", or a FILE whose kind ``_kind_of_file`` tells. Each embedder declares its own face
#: template (``Embedder.chip_points``). A new embedder is one loader and one line here.
EMBEDDERS = {"dlib": _dlib, "torchscript": _torchscript, "facenet": _facenet, "recognizer": _recognizer}
BUILT_IN = ("dlib",)


def _kind_of_file(path: Path) -> str:
    if is_torchscript_archive(path):
        return "torchscript"
    from refine.recognition.model_file import read_model_file
    return "recognizer" if read_model_file(path) is not None else "facenet"


def load_embedder(spec: str | Path = DEFAULT_EMBEDDER, *, input_size: int | None = None,
                  device: str = "cpu") -> Embedder:
    """A frozen ``Embedder`` from ``spec`` (see ``EMBEDDERS``), on ``device``.

    input_size: a TorchScript module's input size, if the module has no ``input_size``
    attribute. Raises ``UserError`` for a missing, unreadable or mismatched file.
    """
    text = "dlib" if str(spec) == "default" else str(spec)
    if text in BUILT_IN:
        return EMBEDDERS[text](None, input_size).to(device)
    kind, _, rest = text.partition(":")
    if kind in EMBEDDERS and rest:
        path = Path(rest)
    else:
        kind, path = "", Path(text)
    if not path.is_file():
        raise UserError(f"{path}: no such embedder file; give one of {', '.join(BUILT_IN)}, or a file of kind "
                        f"{', '.join(k for k in EMBEDDERS if k not in BUILT_IN)} (KIND:FILE or just FILE).")
    return EMBEDDERS[kind or _kind_of_file(path)](path, input_size).to(device)
