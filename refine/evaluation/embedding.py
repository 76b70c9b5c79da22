"""An image set seen by a face network: C's embeddings of its faces, and how often MTCNN finds one."""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from refine.embedders.base import SOURCE_SIZE
from refine.evaluation.image_sets import ImageSet
from refine.images import to_tensor


@torch.inference_mode()
def embed(images: ImageSet, idx: np.ndarray, embedder, batch_size: int = 64, device: str = "cpu",
          desc: str = "embed") -> np.ndarray:
    """(len(idx), dim) float64 embeddings of ``images[idx]`` (read at 108x108, aligned by the set's
    crop template) through C's face chip."""
    transform = embedder.transform(SOURCE_SIZE, images.template)
    out = np.empty((len(idx), embedder.dim), np.float64)
    for s in tqdm(range(0, len(idx), batch_size), desc=desc, unit="batch", leave=False):
        x = to_tensor(images.read(idx[s:s + batch_size])).to(device)
        out[s:s + batch_size] = embedder(transform.centre(x)).double().cpu().numpy()
    return out


def face_fraction(images: ImageSet, idx: np.ndarray, min_face_size: float = 20.0, device: str = "cpu",
                  batch_size: int = 256) -> float:
    """Fraction of ``images[idx]`` in which MTCNN finds at least one face."""
    from morph.align.mtcnn import MTCNN

    detector = MTCNN(min_face_size=min_face_size, device=device)
    found = 0
    for s in tqdm(range(0, len(idx), batch_size), desc="detect", unit="batch", leave=False):
        found += sum(len(d.scores) > 0 for d in detector.detect(images.read(idx[s:s + batch_size])))
    return found / len(idx)
