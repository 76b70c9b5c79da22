"""What ``refine export-dataset`` is asked for (``ExportOptions``), what it records of it (the
manifest's ``settings``: everything that decides the exported bytes), the scores it writes and
the seeds of G's dropout masks."""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from morph.align.template import DEFAULT_TEMPLATE
from refine.export.refiner import REFINE_DTYPES, fuses, score_dtype
from refine.export.state import BATCH_MULTIPLE

SCORES = "scores.csv"
MANIFEST_VERSION = 1
RENDER_BATCH = 64
MAX_CHUNK_IMAGES = 1024

SCORE_COLUMNS = ("identity", "image", "draw", "path", "dr_error", "cycle_error", "identity_loss", "retries",
                 "flagged")
SCORE_MEANINGS = {
    "identity": "identity number (the class label; folder name in imagefolder)",
    "image": "image slot within its identity, 0 .. M-1 (file name in imagefolder, 'index' in hdf5)",
    "draw": "image number j of the identity's per-image seed stream that made the kept image: the slot "
            "number, or M, M+1, ... for a re-draw after a filter rejected the earlier ones",
    "path": "the image relative to the export folder (imagefolder), or ganfaces.h5#images/ROW (hdf5)",
    "dr_error": "D_R reconstruction error mean|G(x) - D_R(G(x))| over pixels and channels, images in [-1, 1] "
                "(Eq. 2 for one image): how far the refined image is from what the real-domain BEGAN "
                "auto-encoder reconstructs well; lower looks more like the real training photos",
    "cycle_error": "cycle error mean|G'(G(x)) - x| over pixels and channels, images in [-1, 1] (Eq. 1 for one "
                   "image): how well G' maps the refined image back to its render; lower keeps more of the "
                   "render's pose, expression and lighting. Empty when the checkpoint has no G' (simgan)",
    "identity_loss": "Euclidean distance between C's L2-normalised embedding of G(x) (its face chip, "
                     "Embedder.transform().centre) and the mean embedding of the identity's M exported "
                     "images; lower = more consistent identity",
    "retries": "how many re-draws this slot took (0: the first draw was kept)",
    "flagged": "1 when no draw passed the thresholds within --max-retries and the best one was kept",
}


@dataclass(frozen=True)
class ExportOptions:
    checkpoint: Path
    out: Path
    n_identities: int
    images_per_identity: int
    seed: int
    model: str = "default"
    priors: str | None = None
    first_identity: int = 0
    format: str = "imagefolder"
    quality: int = 95
    png: bool = False
    max_dr_error: float | None = None
    max_cycle_error: float | None = None
    max_retries: int = 10
    scores: bool = True
    dropout: bool = True
    batch_size: int = 16
    device: str = "cpu"
    threads: int | None = None
    references: tuple = ()  # sets whose identities the data card's leakage audit compares with
    leak_threshold: float | None = None
    exclude_leaks: bool = False  # leave the identities the leakage audit lists out of the dataset
    precision: str = "float32"  # G's: "float32" or "bf16" (refiner.REFINE_DTYPES)

    @property
    def net_batch(self) -> int:
        return BATCH_MULTIPLE * math.ceil(max(1, self.batch_size) / BATCH_MULTIPLE)

    @property
    def per_chunk(self) -> int:
        """Identities per chunk: a whole number of network batches where ``images_per_identity``
        allows, and at most ``MAX_CHUNK_IMAGES`` images."""
        m, k = self.images_per_identity, self.net_batch
        return max(1, min(k // math.gcd(k, m), MAX_CHUNK_IMAGES // m))

    @property
    def filtering(self) -> bool:
        return self.max_dr_error is not None or self.max_cycle_error is not None

    @property
    def ext(self) -> str:
        return "png" if self.png else "jpg"


def versions() -> dict:
    import h5py
    import PIL

    from morph.base.h5io import version
    return {"ganfaces": version(), "python": sys.version.split()[0], "torch": torch.__version__,
            "numpy": np.__version__, "pillow": PIL.__version__, "h5py": h5py.__version__}


def noise_seed(seed: int, identity: int, draw: int) -> int:
    """The seed of G's dropout masks for draw ``draw`` of ``identity``: its own stream beside the
    draw's parameters (``morph.model.sample``: spawn key (i, j + 1)), so an image's noise is the same in
    any batch, run or process."""
    return int(np.random.SeedSequence(seed, spawn_key=(identity, draw + 1, 1)).generate_state(1, np.uint64)[0])


def settings_of(o: ExportOptions, sha: str, model, priors, cfg: dict, sink_settings: dict) -> dict:
    """Everything that decides the exported bytes (a re-run with other settings is refused)."""
    s = {"checkpoint_sha256": sha, "model": str(o.model), "model_name": model.name, "priors": priors.text,
         "seed": o.seed, "first_identity": o.first_identity, "n_identities": o.n_identities,
         "images_per_identity": o.images_per_identity, "format": o.format, "image_size": int(cfg["image_size"]),
         **sink_settings, "scores": o.scores,
         "max_dr_error": o.max_dr_error, "max_cycle_error": o.max_cycle_error,
         "max_retries": o.max_retries if o.filtering else None, "embedder": cfg.get("embedder", "dlib"),
         "network_batch": o.net_batch, "dropout": o.dropout,
         "score_precision": str(score_dtype(o.device)).removeprefix("torch.") if o.scores else None,
         "crop_template": cfg.get("crop_template") or DEFAULT_TEMPLATE,
         # only when on, so that the job keys of exports without it stay what they were
         **({"exclude_leaks": {"references": [str(r) for r in o.references], "threshold": o.leak_threshold}}
            if o.exclude_leaks else {}),
         **({"refine_precision": "bfloat16"} if o.precision == "bf16" else {}),
         # the fused networks round differently from op-by-op ones: a resume must run them alike
         **({"onednn_graph": True} if fuses(o.device, o.scores, REFINE_DTYPES[o.precision]) else {})}
    return json.loads(json.dumps(s))
