"""A trained recogniser as one file (``RUN/recognizer.pt``), and as an ``Embedder``.

The file is a ``torch.save`` of plain data - the architecture's settings and the backbone's
state dict - read back with ``weights_only=True`` (no code runs). ``refine verify --embedder
RUN/recognizer.pt``, ``refine evaluate`` and ``refine train --embedder`` load it like any other
embedder (``refine.embedders.load_embedder``); it sees its own crop (``crop``), mapped from our
aligned images by ``Embedder.chip_points``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from morph.base.errors import UserError
from morph.base.files import write_atomic
from morph.align.template import crop_template, five_point_template
from refine.embedders.base import Embedder
from refine.recognition.mobilefacenet import MobileFaceNet

FORMAT = "ganfaces-recognizer"
VERSION = 1
ARCHITECTURES = ("mobilefacenet",)


def build_backbone(arch: str, crop: str, embedding_size: int, width: float) -> MobileFaceNet:
    if arch not in ARCHITECTURES:
        raise UserError(f"architecture '{arch}' is unknown; choose one of {', '.join(ARCHITECTURES)}.")
    return MobileFaceNet(crop_template(crop).size, embedding_size, width)


def model_settings(backbone: MobileFaceNet, arch: str, crop: str) -> dict:
    return {"arch": arch, "crop": crop, "input_size": backbone.input_size,
            "embedding_size": backbone.embedding_size, "width": backbone.width}


def save_model(path: Path, backbone: MobileFaceNet, arch: str, crop: str, trained: dict) -> Path:
    """Write the recogniser file atomically; ``trained`` says how (steps, sets, settings)."""
    state = {"format": FORMAT, "version": VERSION, **model_settings(backbone, arch, crop),
             "state_dict": {k: v.detach().cpu().clone() for k, v in backbone.state_dict().items()},
             "trained": trained}
    write_atomic(Path(path), lambda tmp: torch.save(state, tmp))
    return Path(path)


def read_model_file(path: Path) -> dict | None:
    """The file's contents if it is a recogniser file, else None (another kind of torch file)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a torch file we can read without running code
        return None
    return state if isinstance(state, dict) and state.get("format") == FORMAT else None


class RecognizerEmbedder(Embedder):
    """A ``refine train-recognizer`` backbone as C: images at its crop -> its embeddings."""

    def __init__(self, backbone: MobileFaceNet, crop: str, name: str = "recognizer"):
        super().__init__()
        self.net = backbone
        self.input_size = backbone.input_size
        self.dim = backbone.embedding_size
        self.chip_points = five_point_template(self.input_size, crop)
        self.name = name
        self.freeze()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def load_recognizer(path: Path) -> RecognizerEmbedder:
    """The embedder in ``path``; ``UserError`` if it is not a readable recogniser file."""
    path = Path(path)
    state = read_model_file(path)
    if state is None:
        raise UserError(f"{path}: not a recogniser file; give RUN/recognizer.pt from 'refine train-recognizer'.")
    if state.get("version") != VERSION:
        raise UserError(f"{path}: recogniser file version {state.get('version')}; this version reads {VERSION}.")
    backbone = build_backbone(state["arch"], state["crop"], int(state["embedding_size"]), float(state["width"]))
    try:
        backbone.load_state_dict(state["state_dict"])
    except (RuntimeError, KeyError) as e:
        raise UserError(f"{path}: its weights do not fit a {state['arch']} of its stated settings "
                        f"({str(e).splitlines()[0]}); re-create it.") from None
    return RecognizerEmbedder(backbone, state["crop"], name=f"recognizer:{path.name}")
