"""`refine export-dataset`: new identities -> 3DMM renders -> G (EMA) -> a labelled face dataset.

For every identity ``i`` in ``[first, first + N)`` of seed ``s`` and each of its ``M`` images:
sample (``morph.sample``: identity ``i`` of seed ``s`` is the same in any run), render aligned at
the checkpoint's image size (``morph.render``, the numba engine on the CPU), quantise to 8 bits as
``morph render`` stores training renders, refine with the exponential moving average of G
(``state["nets"]["ema"]``) and score (see ``SCORE_MEANINGS``). G's dropout (keep 0.9) stays on, as
in the authors' ``trainer.generate_dataset`` ("noise that could be caused by uncontrolled
environmental changes", paper section 4), each image's masks drawn from its own seed
(``noise_seed``); ``dropout=False`` (``--no-dropout``) turns it off. Output folder::

    imagefolder:  DIR/{identity:05d}/{image:04d}.jpg   (torchvision.datasets.ImageFolder reads DIR)
    hdf5:         DIR/ganfaces.h5   images, labels, index, draw, landmarks, masks, params/..., scores/...
    always:       DIR/scores.csv    one row per image;  DIR/manifest.json  what made the export

Determinism (the README's "Reproducibility" has the whole contract): every image depends only on
(checkpoint, model, priors, seed, identity, draw) up to float rounding. Sampling is per (seed,
identity, image) and the renderer's numba engine is batch- and thread-invariant, so the renders
are the same bits anywhere. The networks are not: oneDNN and MKL pick their kernels by
instruction set, tensor shape and thread count, so G(x) and the scores may differ in the last
bits (at most one 8-bit level in a pixel, about 1e-6 in a score) with another batch size, batch
position, thread count or CPU kind (``tests/test_export.py`` measures that tolerance). What IS
bit-identical on one machine with one thread count is each network batch, and the export fixes
which images share a batch: the identities are cut into chunks of ``per_chunk`` consecutive
identities from ``first_identity`` (``chunk_ranges``), a chunk's images always run together, in
the same order, in network batches of ``batch_size`` rounded up to a multiple of 8 and padded to
that size (the padding's results are dropped); a resumed chunk is recomputed whole, and torchrun
ranks take whole chunks. So a resumed export and a multi-process export write the same bytes as
one uninterrupted run, given the same network batch (a recorded setting: a resume with another is
refused) and the same threads per process (``--threads``; torchrun ranks use ``OMP_NUM_THREADS``).
The networks run in channels-last memory format (on 2 CPU cores: G 30 -> 25, D_R 110 -> 80
CPU-ms per image). JPEGs are encoded by Pillow with fixed settings.

Filtering (``max_dr_error`` / ``max_cycle_error``): an image above a threshold is replaced by a
new draw of the same identity, taking the next image numbers of the identity's per-image seed
stream (``M, M + 1, ...``, in slot order within each round) until it passes or ``max_retries``
re-draws were tried; then the best draw (lowest ``max(score / threshold)``) is kept and flagged.

Resume: an identity is written whole - its images into ``DIR/.export/tmp/`` then renamed into place
(a folder, or one ``.npz`` for hdf5) - and then recorded in a per-range progress file
(``DIR/.export/progress-A-B.jsonl``, one JSON line per identity with its scores). A re-run skips
chunks whose identities are all recorded, and recomputes a partly written chunk whole (writing
only its missing identities). When all are done, rank 0 writes scores.csv (and assembles ganfaces.h5 with
``morph.h5io.ImageWriter``, itself resumable), marks the manifest complete and removes ``.export``.

Several processes (``torchrun``): rank ``r`` of ``W`` exports chunks ``[r C / W, (r + 1) C / W)`` of
the ``C`` chunks; after a barrier rank 0 merges the progress files.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from morph.errors import UserError
from morph.numerics import numerics, set_threads
from refine.distributed import barrier, finish

FORMATS = ("imagefolder", "hdf5")
MANIFEST = "manifest.json"
SCORES = "scores.csv"
H5_NAME = "ganfaces.h5"
STATE_DIR = ".export"
MANIFEST_VERSION = 1
BATCH_MULTIPLE = 8
RENDER_BATCH = 64
MAX_CHUNK_IMAGES = 1024
JPEG_SUBSAMPLING = 0  # 4:4:4 - no chroma subsampling at 108 px
PNG_COMPRESS_LEVEL = 6

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
    "identity_loss": "Euclidean distance between C's L2-normalised embedding of G(x) (the centre 96/108 crop "
                     "resized to C's input, IdentityInputTransform.centre) and the mean embedding of the "
                     "identity's M exported images; lower = more consistent identity",
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


# ----------------------------------------------------------------------------------- helpers --

def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


@contextmanager
def disk_errors(path):
    """A full disk (or quota, or file-size limit) becomes one clear UserError naming ``path``."""
    try:
        yield
    except OSError as e:
        if e.errno in _DISK_FULL or "No space left" in str(e) or "Disk quota" in str(e):
            raise UserError(f"disk full while writing {path}; free space and re-run to resume.") from None
        raise


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".partial")
    with disk_errors(path):
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)


def encode_image(img: np.ndarray, png: bool, quality: int) -> bytes:
    """(H, W, 3) uint8 -> JPEG or PNG bytes; PIL with fixed settings is deterministic."""
    from PIL import Image

    buf = io.BytesIO()
    im = Image.fromarray(np.ascontiguousarray(img), "RGB")
    if png:
        im.save(buf, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        im.save(buf, "JPEG", quality=quality, subsampling=JPEG_SUBSAMPLING, optimize=False)
    return buf.getvalue()


def versions() -> dict:
    import h5py
    import PIL

    from morph.h5io import version
    return {"ganfaces": version(), "python": sys.version.split()[0], "torch": torch.__version__,
            "numpy": np.__version__, "pillow": PIL.__version__, "h5py": h5py.__version__}


def noise_seed(seed: int, identity: int, draw: int) -> int:
    """The seed of G's dropout masks for draw ``draw`` of ``identity``: its own stream beside the
    draw's parameters (``morph.sample``: spawn key (i, j + 1)), so an image's noise is the same in
    any batch, run or process."""
    return int(np.random.SeedSequence(seed, spawn_key=(identity, draw + 1, 1)).generate_state(1, np.uint64)[0])


def chunk_ranges(first: int, n: int, per_chunk: int) -> list[range]:
    """Identities ``[first, first + n)`` cut into runs of ``per_chunk`` (the last may be shorter):
    the images of one chunk always share network batches, whatever the run, rank or resume."""
    return [range(a, min(a + per_chunk, first + n)) for a in range(first, first + n, per_chunk)]


def rank_chunks(chunks: list[range], rank: int, world: int) -> list[range]:
    """Rank ``rank``'s contiguous share of whole chunks."""
    c = len(chunks)
    return chunks[rank * c // world:(rank + 1) * c // world]


# ----------------------------------------------------------------------------- the checkpoint --

def check_checkpoint(state: dict, source: Path) -> dict:
    """The checkpoint's config, after checking it is a `refine train` checkpoint; the export
    renders at its image size (aligned by ``morph.template`` scaled to that size)."""
    if not isinstance(state, dict) or "config" not in state or "ema" not in state.get("nets", {}):
        raise UserError(f"{source}: not a 'refine train' checkpoint (no config or EMA generator); "
                        "give a file from RUN/checkpoints/.")
    cfg = state["config"]
    size = cfg.get("image_size")
    if not isinstance(size, int) or size < 16:
        raise UserError(f"{source}: its config has no valid image_size ({size!r}); the checkpoint is damaged.")
    return cfg


def check_new_identities(state: dict, source: Path, seed: int, first: int, n: int) -> str | None:
    """Refuse to export identities the checkpoint was trained on; returns a warning or None."""
    train_seed = state.get("train_seed")
    if train_seed is None:
        return (f"warning: {source} does not record the seed of its training identities; make sure seed "
                f"{seed} did not make them.")
    ids = state.get("identities")
    trained = np.asarray(ids.numpy() if hasattr(ids, "numpy") else (ids if ids is not None else []), np.int64)
    if int(train_seed) != seed or not len(trained):
        return None
    overlap = trained[(trained >= first) & (trained < first + n)]
    if len(overlap):
        model = state.get("train_model")
        raise UserError(
            f"{source}: was trained on identities {trained.min()}..{trained.max()} of seed {seed}"
            f"{f' (model {model})' if model else ''}; exporting identities {first}..{first + n - 1} of the same "
            f"seed would reproduce {len(overlap)} of them. Choose another --seed, or --first-identity "
            f"{int(trained.max()) + 1} or above.")
    return None


class Refiner:
    """The checkpoint's networks, run on fixed-size batches: G (EMA) refines; D_R, G' and C score."""

    def __init__(self, state: dict, source: Path, cfg: dict, device: str, batch: int, scores: bool,
                 size: int, stats: dict | None = None):
        from refine.nets import build_nets

        self.device, self.batch, self.scores, self.size = torch.device(device), batch, scores, size
        if self.device.type == "cuda":  # the same algorithm for the same (fixed) shapes
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        self.stats = stats if stats is not None else {}
        try:
            built = build_nets(cfg)
        except ValueError as e:
            raise UserError(f"{source}: its config cannot build the networks ({e}); the checkpoint is damaged "
                            "or from another version.") from None

        def load(key):
            try:
                net = built[key]
                net.load_state_dict(state["nets"][key])
            except (RuntimeError, KeyError) as e:
                raise UserError(f"{source}: its '{key}' network does not match its own config "
                                f"({str(e).splitlines()[0][:120]}); the checkpoint is damaged or from "
                                "another version.") from None
            return net.to(self.device, memory_format=torch.channels_last).eval().requires_grad_(False)

        self.G = load("ema")
        self.Gp = self.D_R = self.C = self.T = None
        if scores:
            self.D_R = load("D_R")
            if "Gp" in state["nets"]:
                self.Gp = load("Gp")
            from refine.embedders import load_embedder
            self.C = load_embedder(cfg.get("embedder", "dlib"), device=str(self.device))
            self.C = self.C.to(memory_format=torch.channels_last)
            self.T = self.C.transform(size)

    def _time(self, key, t0):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        self.stats[key] = self.stats.get(key, 0.0) + t - t0
        return t

    @torch.inference_mode()
    def run(self, renders: np.ndarray, noise_seeds: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """(B, H, W, 3) uint8 renders -> refined uint8 images and per-image scores. ``noise_seeds``
        (B,): G's dropout draws each image's masks from its own seed (None: no dropout)."""
        from refine import losses as L
        from refine.data import to_tensor, to_uint8

        n, k = len(renders), self.batch
        out = {"image": np.empty_like(renders), "dr_error": np.full(n, np.nan, np.float32),
               "cycle_error": np.full(n, np.nan, np.float32), "embedding": None}
        embs = []
        for start in range(0, n, k):
            part = renders[start:start + k]
            m = len(part)
            if m < k:  # fixed shapes: pad with black images, results of the padding are dropped
                part = np.concatenate([part, np.zeros((k - m, *part.shape[1:]), part.dtype)])
            t = time.perf_counter()
            x = to_tensor(part).to(self.device).contiguous(memory_format=torch.channels_last)
            seeds = None
            if noise_seeds is not None:  # (the padding's seeds are never seen)
                seeds = [int(v) for v in noise_seeds[start:start + m]] + [0] * (k - m)
            gx = self.G(x, seeds)
            t = self._time("refine", t)
            out["image"][start:start + m] = to_uint8(gx)[:m]
            if self.scores:
                dr = L.began_generator_loss(gx, self.D_R(gx), per_image=True)  # Eq. 2, one image at a time
                out["dr_error"][start:start + m] = _np(dr)[:m]
                if self.Gp is not None:
                    cyc = L.cycle_loss(x, self.Gp(gx), per_image=True)  # Eq. 1
                    out["cycle_error"][start:start + m] = _np(cyc)[:m]
                c_in = self.T.centre(gx).contiguous(memory_format=torch.channels_last)
                embs.append(_np(self.C(c_in)).astype(np.float32)[:m])
                self._time("score", t)
        if embs:
            out["embedding"] = np.concatenate(embs)
        return out


# ---------------------------------------------------------------------------- output folder --

def _settings(o: ExportOptions, sha: str, model, priors, cfg: dict) -> dict:
    """Everything that decides the exported bytes (a re-run with other settings is refused)."""
    s = {"checkpoint_sha256": sha, "model": str(o.model), "model_name": model.name, "priors": priors.text,
         "seed": o.seed, "first_identity": o.first_identity, "n_identities": o.n_identities,
         "images_per_identity": o.images_per_identity, "format": o.format, "image_size": int(cfg["image_size"]),
         "file_type": o.ext if o.format == "imagefolder" else None,
         "jpeg_quality": o.quality if o.format == "imagefolder" and not o.png else None, "scores": o.scores,
         "max_dr_error": o.max_dr_error, "max_cycle_error": o.max_cycle_error,
         "max_retries": o.max_retries if o.filtering else None, "embedder": cfg.get("embedder", "dlib"),
         "network_batch": o.net_batch, "dropout": o.dropout}
    return json.loads(json.dumps(s))


def _read_manifest(path: Path) -> dict:
    try:
        m = json.loads(path.read_text())
        if not isinstance(m, dict) or "settings" not in m:
            raise ValueError
        return m
    except (OSError, ValueError):
        raise UserError(f"{path}: is not a readable export manifest; remove the folder or choose another "
                        "--out.") from None


def check_out(out: Path, settings: dict) -> str:
    """'new', 'resume' or 'complete'; refuses a file, a foreign folder or another export."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: is a file; --out must be a folder (new or from the same export).")
    if not out.exists():
        if not out.resolve().parent.is_dir():
            raise UserError(f"{out}: folder {out.resolve().parent} does not exist; create it first.")
        return "new"
    mpath = out / MANIFEST
    if not mpath.exists():  # (a run stopped before its manifest was in place leaves only these)
        if any(p.name != STATE_DIR and not p.name.endswith(".partial") for p in out.iterdir()):
            raise UserError(f"{out}: is not empty and holds no export ({MANIFEST}); choose a new or empty --out.")
        return "new"
    m = _read_manifest(mpath)
    diff = sorted(k for k in set(settings) | set(m["settings"]) if settings.get(k) != m["settings"].get(k))
    if diff == ["network_batch"] and m.get("complete"):
        return "complete"  # the batch size decides only the last bits of work that is done
    if diff == ["network_batch"] and isinstance(m["settings"]["network_batch"], int):
        was = m["settings"]["network_batch"]
        raise UserError(f"{out}: was started with network batches of {was} images (--batch-size "
                        f"{was - BATCH_MULTIPLE + 1}..{was}); resume with such a --batch-size, so that the "
                        "images already written and the rest are computed alike.")
    if diff:
        raise UserError(f"{out}: holds another export (different {', '.join(diff)}); choose another --out, "
                        "or delete it to start over.")
    return "complete" if m.get("complete") else "resume"


class ProgressLog:
    """Append-only JSON lines, one per completed identity; a line cut by a kill is dropped."""

    def __init__(self, path: Path):
        self.path = path
        with disk_errors(path):
            if path.exists():
                data = path.read_bytes()
                cut = data.rfind(b"\n") + 1
                if cut != len(data):
                    with open(path, "r+b") as f:
                        f.truncate(cut)
            self.f = open(path, "a")  # noqa: SIM115 - kept open for the run, closed by close()

    def record(self, rec: dict) -> None:
        with disk_errors(self.path):
            self.f.write(json.dumps(rec) + "\n")
            self.f.flush()

    def close(self):
        self.f.close()


def read_progress(state_dir: Path) -> dict[int, dict]:
    done = {}
    for p in sorted(state_dir.glob("progress-*.jsonl")):
        for line in p.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            done[int(rec["identity"])] = rec
    return done


# ------------------------------------------------------------------------------- the export --

class Exporter:
    def __init__(self, o: ExportOptions, stats: dict | None = None, progress: bool = True):
        self.o, self.progress = o, progress
        self.stats = stats if stats is not None else {}
        self.out = Path(o.out)
        self.state_dir = self.out / STATE_DIR
        n_last = o.first_identity + o.n_identities - 1
        self.id_width = max(5, len(str(n_last)))
        self.img_width = max(4, len(str(o.images_per_identity - 1)))

    # ---- names
    def id_name(self, i: int) -> str:
        return f"{i:0{self.id_width}d}"

    def rel_path(self, i: int, slot: int) -> str:
        if self.o.format == "hdf5":
            row = (i - self.o.first_identity) * self.o.images_per_identity + slot
            return f"{H5_NAME}#images/{row}"
        return f"{self.id_name(i)}/{slot:0{self.img_width}d}.{self.o.ext}"

    def artefact(self, i: int) -> Path:
        if self.o.format == "hdf5":
            return self.state_dir / "items" / f"{self.id_name(i)}.npz"
        return self.out / self.id_name(i)

    # ---- per chunk
    def _tick(self, key, t0):
        t = time.perf_counter()
        self.stats[key] = self.stats.get(key, 0.0) + t - t0
        return t

    def make(self, todo: list[tuple[int, int, int]]) -> list[dict]:
        """Sample, render and refine draws (identity, slot, draw); one dict per draw."""
        from morph.render import render_batch
        from morph.render_job import to_uint8
        from morph.sample import sample_identity, sample_image

        t = time.perf_counter()
        o, model, priors = self.o, self.model, self.priors
        for i in {i for i, _, _ in todo} - set(self.id_cache):
            self.id_cache[i] = sample_identity(model, priors, o.seed, i)
        imgs = [sample_image(model, priors, o.seed, i, d) for i, _, d in todo]
        params = {"alpha": np.stack([self.id_cache[i][0] for i, _, _ in todo]),
                  "gamma": np.stack([self.id_cache[i][1] for i, _, _ in todo]),
                  **{k: np.stack([p[k] for p in imgs]) for k in ("beta", "pose", "sh", "camera_distance")}}
        t = self._tick("sample", t)
        renders, landmarks, masks = [], [], []
        for s in range(0, len(todo), RENDER_BATCH):
            r = render_batch(model, {k: v[s:s + RENDER_BATCH] for k, v in params.items()}, self.render_settings)
            renders.append(to_uint8(_np(r.image)))
            landmarks.append(_np(r.landmarks).astype(np.float32))
            masks.append(_np(r.mask)[:, 0].astype(bool))
        renders = np.concatenate(renders)
        t = self._tick("render", t)
        res = self.refiner.run(renders, np.array([noise_seed(o.seed, i, d) for i, _, d in todo], np.uint64)
                               if o.dropout else None)
        lm, mk = np.concatenate(landmarks), np.concatenate(masks)
        return [{"draw": d, "image": res["image"][k], "landmarks": lm[k], "mask": mk[k],
                 "dr_error": float(res["dr_error"][k]), "cycle_error": float(res["cycle_error"][k]),
                 "embedding": None if res["embedding"] is None else res["embedding"][k],
                 "params": {n: v[k] for n, v in params.items()}}
                for k, (_, _, d) in enumerate(todo)]

    def passes(self, c: dict) -> bool:
        o = self.o
        ok = True
        if o.max_dr_error is not None:
            ok &= c["dr_error"] <= o.max_dr_error
        if o.max_cycle_error is not None:
            ok &= c["cycle_error"] <= o.max_cycle_error
        return bool(ok)

    def badness(self, c: dict) -> float:
        o, r = self.o, []
        if o.max_dr_error is not None:
            r.append(c["dr_error"] / max(o.max_dr_error, 1e-12))
        if o.max_cycle_error is not None:
            r.append(c["cycle_error"] / max(o.max_cycle_error, 1e-12))
        v = max(r) if r else 0.0
        return v if np.isfinite(v) else float("inf")

    def process_chunk(self, ids: list[int]) -> dict[int, list[dict]]:
        """Final images of each identity in ``ids``: candidates, re-draws, selection, identity loss."""
        o, m = self.o, self.o.images_per_identity
        cands = {(i, s): [] for i in ids for s in range(m)}
        next_draw = {i: m for i in ids}
        todo = [(i, s, s) for i in ids for s in range(m)]
        while todo:
            made = self.make(todo)
            again = []
            for (i, s, _), c in zip(todo, made):
                cands[(i, s)].append(c)
                if o.filtering and not self.passes(c) and len(cands[(i, s)]) <= o.max_retries:
                    again.append((i, s, next_draw[i]))
                    next_draw[i] += 1
            todo = again
        result = {}
        for i in ids:
            final = []
            for s in range(m):
                tried = cands[(i, s)]
                c = tried[-1]
                flagged = False
                if o.filtering and not self.passes(c):
                    c = min(tried, key=self.badness)  # first of equals
                    flagged = True
                final.append({**c, "slot": s, "retries": len(tried) - 1, "flagged": flagged})
            if o.scores:
                e = np.stack([c["embedding"] for c in final]).astype(np.float64)
                d = np.linalg.norm(e - e.mean(0), axis=1)
                for c, v in zip(final, d):
                    c["identity_loss"] = float(v)
            else:
                for c in final:
                    c["identity_loss"] = float("nan")
            result[i] = final
        self.id_cache.clear()
        return result

    # ---- writing one identity
    def write_identity(self, i: int, final: list[dict]) -> None:
        tmp = self.state_dir / "tmp" / self.id_name(i)
        target = self.artefact(i)
        with disk_errors(tmp):
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
            if self.o.format == "imagefolder":
                for c in final:
                    name = f"{c['slot']:0{self.img_width}d}.{self.o.ext}"
                    (tmp / name).write_bytes(encode_image(c["image"], self.o.png, self.o.quality))
                if target.exists():  # written by a run killed before it recorded the identity
                    shutil.rmtree(target)
                os.replace(tmp, target)
            else:
                arrays = {"images": np.stack([c["image"] for c in final]),
                          "draw": np.asarray([c["draw"] for c in final], np.int64),
                          "landmarks": np.stack([c["landmarks"] for c in final]),
                          "masks": np.stack([c["mask"] for c in final]),
                          **{f"params/{k}": np.stack([c["params"][k] for c in final])
                             for k in ("alpha", "gamma", "beta", "pose", "sh", "camera_distance")},
                          **{f"scores/{k}": np.asarray([c[k] for c in final], np.float32)
                             for k in ("dr_error", "cycle_error", "identity_loss")},
                          "scores/retries": np.asarray([c["retries"] for c in final], np.int64),
                          "scores/flagged": np.asarray([c["flagged"] for c in final], bool)}
                f = tmp / "item.npz"
                with open(f, "wb") as fh:
                    np.savez_compressed(fh, **{k.replace("/", "."): v for k, v in arrays.items()})
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(f, target)
                tmp.rmdir()
        self.log.record({"identity": i, "images": [
            {"image": c["slot"], "draw": int(c["draw"]), "dr_error": c["dr_error"], "cycle_error": c["cycle_error"],
             "identity_loss": c["identity_loss"], "retries": c["retries"], "flagged": c["flagged"]}
            for c in final]})

    # ---- the run
    def run(self) -> dict:
        from tqdm import tqdm

        from morph.models import load_model
        from morph.priors import load_priors
        from morph.render import RenderSettings
        from morph.sample import check_priors
        from refine.checkpoint import load_checkpoint
        from refine.distributed import init_distributed

        o = self.o
        if o.format not in FORMATS:
            raise UserError(f"format '{o.format}' is unknown; choose one of {', '.join(FORMATS)}.")
        if not 1 <= o.quality <= 100:
            raise UserError(f"--quality {o.quality}: JPEG quality must be in 1..100.")
        if o.filtering and not o.scores:
            raise UserError("--max-dr-error / --max-cycle-error filter on scores; drop --no-scores.")
        ddp = init_distributed(o.device)
        self.world = ddp.world
        set_threads(o.threads)  # torchrun: OMP_NUM_THREADS per rank (1 unless set)
        state = load_checkpoint(o.checkpoint)
        cfg = check_checkpoint(state, o.checkpoint)
        size = int(cfg["image_size"])
        warning = check_new_identities(state, o.checkpoint, o.seed, o.first_identity, o.n_identities)
        if o.max_cycle_error is not None and "Gp" not in state["nets"]:
            raise UserError(f"{o.checkpoint}: has no G' (variant {cfg.get('variant')}), so no cycle error; "
                            "drop --max-cycle-error.")
        self.model = load_model(o.model)
        self.priors = load_priors(o.priors)
        check_priors(self.model, self.priors)
        sha = file_sha256(o.checkpoint)
        settings = _settings(o, sha, self.model, self.priors, cfg)
        status = check_out(self.out, settings)
        manifest = self._manifest(settings, state, cfg, complete=False)
        if status == "complete":
            if ddp.main:
                self._clean()  # what a run stopped right after completing may have left
                if self.progress:
                    print(f"{self.out}: already complete.", file=sys.stderr)
            return _read_manifest(self.out / MANIFEST)
        # the networks first: a checkpoint that cannot build them is refused before OUT exists
        self.refiner = Refiner(state, o.checkpoint, cfg, o.device, o.net_batch, o.scores, size, self.stats)
        if ddp.main:
            if warning and self.progress:
                print(warning, file=sys.stderr)
            tm = state.get("train_model")
            if tm and str(tm) != str(o.model) and self.progress:
                print(f"note: {o.checkpoint} was trained on renders of model '{tm}'; exporting with '{o.model}'.",
                      file=sys.stderr)
            with disk_errors(self.out):
                self.out.mkdir(exist_ok=True)
            if status == "new":
                _write_atomic(self.out / MANIFEST, json.dumps(manifest, indent=2).encode())
            with disk_errors(self.state_dir):
                self.state_dir.mkdir(exist_ok=True)
        barrier(ddp)

        self.render_settings = RenderSettings(image_size=size, device="cpu", outputs=("image", "mask", "landmarks"))
        self.id_cache = {}
        mine = rank_chunks(chunk_ranges(o.first_identity, o.n_identities, o.per_chunk), ddp.rank, ddp.world)
        done = read_progress(self.state_dir)
        is_done = lambda i: i in done and self.artefact(i).exists()  # noqa: E731
        todo = [c for c in mine if not all(is_done(i) for i in c)]
        m, n_mine = o.images_per_identity, sum(len(c) for c in mine)
        bar = tqdm(total=n_mine * m, initial=sum(is_done(i) for c in mine for i in c) * m, unit="img",
                   smoothing=0.1, desc="export" if ddp.world == 1 else f"export (rank 0 of {ddp.world})",
                   disable=not (self.progress and ddp.main))
        if todo:
            self.log = ProgressLog(self.state_dir / f"progress-{self.id_name(mine[0][0])}-"
                                                    f"{self.id_name(mine[-1][-1])}.jsonl")
            try:
                for chunk in todo:  # a partly written chunk is recomputed whole: same batches, same bits
                    result = self.process_chunk(list(chunk))
                    t = time.perf_counter()
                    for i in chunk:
                        if not is_done(i):
                            self.write_identity(i, result[i])
                            bar.update(m)
                    self._tick("write", t)
            finally:
                self.log.close()
                bar.close()  # also on failure: an open bar garbles every later message
        bar.close()
        barrier(ddp)
        if ddp.main:
            manifest = self.finish(manifest)
        barrier(ddp)
        finish(ddp)
        return manifest

    def finish(self, manifest: dict) -> dict:
        o, m = self.o, self.o.images_per_identity
        done = read_progress(self.state_dir)
        ids = range(o.first_identity, o.first_identity + o.n_identities)
        missing = [i for i in ids if i not in done or not self.artefact(i).exists()]
        if missing:
            raise UserError(f"{self.out}: identities {missing[0]}.. are not exported (a process stopped early); "
                            "re-run the same command to resume.")
        t = time.perf_counter()
        if o.format == "hdf5":
            self._assemble_h5(ids, manifest)
        rows, n_flagged, n_redraws = [], 0, 0

        def fmt(v):
            return "" if v is None or not np.isfinite(v) else f"{v:.6f}"

        for i in ids:
            for r in sorted(done[i]["images"], key=lambda r: r["image"]):
                n_flagged += bool(r["flagged"])
                n_redraws += int(r["retries"])
                rows.append(",".join([str(i), str(r["image"]), str(r["draw"]), self.rel_path(i, r["image"]),
                                      fmt(r["dr_error"]), fmt(r["cycle_error"]), fmt(r["identity_loss"]),
                                      str(r["retries"]), str(int(bool(r["flagged"])))]))
        _write_atomic(self.out / SCORES, (",".join(SCORE_COLUMNS) + "\n" + "".join(r + "\n" for r in rows)).encode())
        manifest = {**manifest, "complete": True,
                    "counts": {"identities": o.n_identities, "images_per_identity": m,
                               "images": o.n_identities * m, "flagged": n_flagged, "redraws": n_redraws}}
        _write_atomic(self.out / MANIFEST, json.dumps(manifest, indent=2).encode())
        self._clean()
        self._tick("finish", t)
        return manifest

    def _clean(self) -> None:
        """Remove the work state of a complete export (ImageFolder would take it for a class)."""
        shutil.rmtree(self.state_dir, ignore_errors=True)
        for p in self.out.glob("*.partial"):
            p.unlink()

    def _assemble_h5(self, ids, manifest):
        from morph.h5io import ImageWriter, completed_output, provenance

        o, m = self.o, self.o.images_per_identity
        s = manifest["settings"]
        key = hashlib.sha256(json.dumps(s, sort_keys=True).encode()).hexdigest()
        path = self.out / H5_NAME
        if completed_output(path, key, "GANFaces export"):  # assembled by a run stopped just after
            return
        with np.load(self.artefact(ids[0])) as first:
            size = first["images"].shape[1]
            extra = {k.replace(".", "/"): (first[k].shape[1:], first[k].dtype) for k in first.files if k != "images"}
        attrs = provenance(seed=o.seed, model=str(o.model), model_name=self.model.name,
                           model_sources=self.model.sources, priors=self.priors.text,
                           first_identity=o.first_identity, n_identities=o.n_identities,
                           images_per_identity=m, checkpoint_sha256=s["checkpoint_sha256"], size=size,
                           n_images=o.n_identities * m)
        with disk_errors(path.with_name(path.name + ".partial")):
            w = ImageWriter(path, o.n_identities * m, size, attrs, key, extra)
            try:
                for k, i in enumerate(ids):
                    start = k * m
                    if start + m <= w.n_done:
                        continue
                    with np.load(self.artefact(i)) as z:
                        w.write(start, {"images": z["images"], "labels": np.full(m, i, np.int64),
                                        "index": np.arange(m, dtype=np.int64),
                                        **{k2.replace(".", "/"): z[k2] for k2 in z.files if k2 != "images"}})
                w.finish()
            finally:
                w.close()

    def _manifest(self, settings: dict, state: dict, cfg: dict, complete: bool) -> dict:
        o = self.o
        layout = ({"imagefolder": f"DIR/{{identity:0{self.id_width}d}}/{{image:0{self.img_width}d}}.{o.ext}; "
                                  "torchvision.datasets.ImageFolder(DIR) reads it (class = identity)"}
                  if o.format == "imagefolder" else
                  {"hdf5": f"DIR/{H5_NAME}: images (n, H, W, 3) uint8 RGB, labels (identity), index (image slot), "
                           "draw, landmarks (n, 68, 2), masks, params/{alpha,gamma,beta,pose,sh,camera_distance}, "
                           "scores/{dr_error,cycle_error,identity_loss,retries,flagged}; rows in identity, "
                           "slot order"})
        return {
            "format_version": MANIFEST_VERSION, "complete": complete,
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": versions(),
            "numerics": {**numerics(), "processes": self.world},
            "checkpoint": {"path": str(o.checkpoint), "sha256": settings["checkpoint_sha256"],
                           "step": int(state.get("step", -1)), "variant": cfg.get("variant"),
                           "train_seed": state.get("train_seed"), "train_model": state.get("train_model"),
                           "generator": "exponential moving average of G (nets.ema), dropout "
                                        + ("on, seeded per identity and draw" if o.dropout else "off")},
            "model": str(o.model), "model_name": self.model.name, "model_sources": self.model.sources,
            "priors": self.priors.text, "priors_source": self.priors.source, "seed": o.seed,
            "first_identity": o.first_identity, "n_identities": o.n_identities,
            "images_per_identity": o.images_per_identity, "n_images": o.n_identities * o.images_per_identity,
            "format": o.format, "layout": layout,
            "image": {"size": settings["image_size"], "type": settings["file_type"] or "uint8 array",
                      "jpeg_quality": settings["jpeg_quality"],
                      "jpeg_subsampling": "4:4:4" if settings["jpeg_quality"] else None,
                      "encoder": "Pillow" if o.format == "imagefolder" else "h5py (gzip)"},
            "filter": {"max_dr_error": o.max_dr_error, "max_cycle_error": o.max_cycle_error,
                       "max_retries": settings["max_retries"]},
            "scores": {"file": SCORES, "columns": SCORE_MEANINGS} if o.scores else
                      {"file": SCORES, "columns": SCORE_MEANINGS, "note": "exported with --no-scores: score "
                       "columns are empty"},
            "settings": settings,
        }


def export_dataset(options: ExportOptions, progress: bool = True, stats: dict | None = None) -> dict:
    """Run (or resume) an export; returns its manifest. See the module docstring."""
    return Exporter(options, stats=stats, progress=progress).run()
