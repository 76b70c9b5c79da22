"""The checkpoint's networks for export: G's moving average refines, D_R, G' and C score.

``Refiner.run`` takes 8-bit renders and gives refined 8-bit images and per-image scores, running
the networks on batches of a fixed size (padded with black images whose results are dropped): the
bits of a batch's results depend on its shape (oneDNN / MKL pick kernels by it), so the export
fixes which images share a batch (``refine.export.exporter``). On CUDA, cuDNN's autotuner is off and its
deterministic algorithms on, for the same reason.

Precision (``score_dtype``): G (unless ``refine_dtype`` says otherwise, ``--precision bf16``) and
C run in float32. On a CPU with bf16 units (AMX or AVX512-BF16,
and torch dispatching AVX-512 kernels) D_R and G' - three quarters of the scoring time in float32 -
run with bfloat16 weights and activations (oneDNN accumulates in float32); their reconstructions are
compared with the float32 images in float32. Measured against float32 scoring (``bench/export.py``,
``score_tolerance``, the paper-size networks, untrained): dr_error by 1.1e-6 and cycle_error by
1.7e-5 (at most 0.02% of their values; the stated tolerance is 1e-4); identity_loss is unchanged, as C
stays float32 (in bfloat16 it moved by up to 6% of its value). Elsewhere (CUDA, AVX2 CPUs) every
network runs in float32.

Fusion (``fuses``): on a CPU, D_R, G' and C, and G when it runs in bfloat16, run as oneDNN Graph
partitions (``refine.export.onednn_graph``: convolution and activation in one kernel; D_R 16.8 -> 10.6
CPU-ms an image in bfloat16), traced for this Refiner's batch shape.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from morph.base.errors import UserError
from morph.render.output import to_numpy
from refine.export import onednn_graph


def check_checkpoint(state: dict, source: Path) -> dict:
    """The checkpoint's config, after checking it is a `refine train` checkpoint; the export
    renders at its image size (aligned by ``morph.align.template`` scaled to that size)."""
    nets = state.get("nets") if isinstance(state, dict) else None
    if (not isinstance(state, dict) or not isinstance(state.get("config"), dict) or not isinstance(nets, dict)
            or not isinstance(nets.get("ema"), dict)):
        raise UserError(f"{source}: not a 'refine train' checkpoint (no config or EMA generator); "
                        "give a file from RUN/checkpoints/.")
    cfg = state["config"]
    from refine.gan.config import TrainConfig
    try:  # the config must be one refine train would accept
        known = {k: v for k, v in cfg.items() if k in TrainConfig.__dataclass_fields__}
        TrainConfig(**{**known, "betas": tuple(known.get("betas", (0.9, 0.999)))})
    except (UserError, TypeError) as e:
        raise UserError(f"{source}: its config is not valid ({e}); the checkpoint is damaged.") from None
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


def cpu_bf16_units() -> bool:
    """Whether this CPU has bf16 units (AMX tiles or AVX512-BF16 dot products) that torch and
    oneDNN both use (not when they are held to AVX2: ``ATEN_CPU_CAPABILITY`` /
    ``ONEDNN_MAX_CPU_ISA``). ``torch.ops.mkldnn._is_mkldnn_bf16_supported`` alone is not enough: it
    is ATen's ``mkldnn_bf16_device_check`` (aten/src/ATen/native/mkldnn/Utils.h), which asks older
    releases' cpuinfo for AVX-512 BW/VL/DQ and newer releases' ideep (``has_bf16_type_support``) for
    an ISA of at least oneDNN's ``avx512_core``; Skylake and Ice Lake cores pass either without bf16
    instructions, and oneDNN emulates bf16 there more slowly than float32."""
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    if not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
        return False
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    return torch.backends.cpu.get_cpu_capability() == "AVX512" and (isa == "ALL" or "AVX512" in isa or "AMX" in isa)


def score_dtype(device: str | torch.device) -> torch.dtype:
    """D_R's and G''s precision in scoring: bfloat16 on a CPU with bf16 units (``cpu_bf16_units``),
    else float32."""
    return torch.bfloat16 if torch.device(device).type == "cpu" and cpu_bf16_units() else torch.float32


#: G's precision in export (``--precision``): its dtype
REFINE_DTYPES = {"float32": torch.float32, "bf16": torch.bfloat16}


def check_refine_precision(precision: str, device: str | torch.device) -> torch.dtype:
    """G's dtype for ``precision``; bf16 only where it is fast: a CPU with bf16 units or a CUDA GPU
    that has them (compute capability 8.0 and up)."""
    dtype = REFINE_DTYPES[precision]
    if dtype == torch.bfloat16:
        d = torch.device(device)
        if d.type == "cpu":
            fast = cpu_bf16_units()
        else:
            fast = d.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
        if not fast:
            raise UserError(f"--precision bf16: {d.type} here has no bf16 units (a CPU needs AMX or AVX512-BF16 "
                            "with torch's AVX-512 kernels, a GPU compute capability 8.0); use --precision float32.")
    return dtype


def fuses(device: str | torch.device, scores: bool, refine_dtype: torch.dtype) -> bool:
    """Whether an export runs networks fused (``refine.export.onednn_graph``): on a CPU, the scoring
    networks and G in bfloat16 (``Refiner._fuse``); an unscored float32 export runs op by op."""
    return onednn_graph.available(device) and (scores or refine_dtype != torch.float32)


class Refiner:
    """The checkpoint's networks, run on fixed-size batches: G (EMA) refines; D_R, G' and C score."""

    def __init__(self, state: dict, source: Path, cfg: dict, device: str, batch: int, scores: bool,
                 size: int, stats: dict | None = None, precision: torch.dtype | None = None,
                 refine_dtype: torch.dtype = torch.float32, fused: bool | None = None):
        """``precision``: D_R's and G''s dtype in scoring (default ``score_dtype(device)``);
        ``refine_dtype``: G's (its images are rounded to 8 bits from float32 either way);
        ``fused``: run the networks as oneDNN Graph partitions (``refine.export.onednn_graph``; default
        ``fuses``) - D_R, G' and C, and G when it runs in bfloat16."""
        from refine.gan.nets import build_nets

        self.device, self.batch, self.scores, self.size = torch.device(device), batch, scores, size
        self.score_dtype = precision or score_dtype(self.device)
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

        self.refine_dtype = refine_dtype
        self.G = load("ema").to(refine_dtype)
        self.Gp = self.D_R = self.C = self.T = None
        if scores:
            self.D_R = load("D_R").to(self.score_dtype)
            if "Gp" in state["nets"]:
                self.Gp = load("Gp").to(self.score_dtype)
            from refine.embedders import load_embedder
            self.C = load_embedder(cfg.get("embedder", "dlib"), device=str(self.device))
            self.C = self.C.to(memory_format=torch.channels_last)
            self.T = self.C.transform(size, cfg.get("crop_template"))
        self.embed = self.C  # (C itself stays, for the leakage audit's batches of other sizes)
        self.fused = fuses(self.device, scores, refine_dtype) if fused is None else fused
        if self.fused:
            self._fuse()

    def _fuse(self) -> None:
        """Replace the networks by their fused graphs for this Refiner's batch shape. G in float32
        stays op by op: its images are the export's product and keep the bits they had, and fused
        it measured no faster (26.7 against 26.2-27.3 CPU-ms an image; ``bench/README.md``)."""
        x = torch.zeros(self.batch, 3, self.size, self.size, device=self.device)
        x = x.contiguous(memory_format=torch.channels_last)
        if self.refine_dtype != torch.float32:
            self.G = onednn_graph.FusedGenerator(self.G, x.to(self.refine_dtype))
        if self.scores:
            self.D_R = onednn_graph.Fused(self.D_R, (x.to(self.score_dtype),))
            if self.Gp is not None:
                self.Gp = onednn_graph.Fused(self.Gp, (x.to(self.score_dtype),))
            c_in = self.T.centre(x).contiguous(memory_format=torch.channels_last)
            self.embed = onednn_graph.Fused(self.C, (c_in,))

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
        from refine.gan import losses as L
        from refine.images import to_tensor, to_uint8

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
            gx = self.G(x.to(self.refine_dtype), seeds).float()  # (float32: the same tensor)
            if not torch.isfinite(gx).all():
                raise UserError("the checkpoint's generator gives non-finite images (NaN or inf weights?); use "
                                "another checkpoint of the run.")
            t = self._time("refine", t)
            out["image"][start:start + m] = to_uint8(gx)[:m]
            if self.scores:
                s = gx.to(self.score_dtype)  # (float32: the same tensor)
                dr = L.began_generator_loss(gx, self.D_R(s).float(), per_image=True)  # Eq. 2, one image at a time
                out["dr_error"][start:start + m] = to_numpy(dr)[:m]
                t = self._time("score_D_R", t)
                if self.Gp is not None:
                    cyc = L.cycle_loss(x, self.Gp(s).float(), per_image=True)  # Eq. 1
                    out["cycle_error"][start:start + m] = to_numpy(cyc)[:m]
                    t = self._time("score_Gp", t)
                c_in = self.T.centre(gx).contiguous(memory_format=torch.channels_last)
                embs.append(to_numpy(self.embed(c_in)).astype(np.float32)[:m])
                self._time("score_C", t)
        if embs:
            out["embedding"] = np.concatenate(embs)
        return out
