"""The export's networks on a CPU as oneDNN Graph partitions: convolution, bias and activation
fused into one kernel (issue 14).

D_R is 7.3 GFLOP an image and has 23 ELUs; run op by op in bfloat16, each ELU reads and writes its
whole activation once more, and they took 46% of D_R's time (aten's ELU on a 1.5 MB-an-image
activation is memory-bound; oneDNN's fused convolutions that torch exposes,
``torch.ops.mkldnn._convolution_pointwise``, take no ELU). oneDNN Graph, which torch reaches
through TorchScript (``torch.jit.enable_onednn_fusion``), compiles a traced and frozen network
into partitions with the activation applied as the convolution writes its output. Measured
(batch 16, 1 thread, CPU-ms per image, eager -> fused): D_R in bfloat16 16.8 -> 10.6, G' in
bfloat16 7.4 -> 4.9, C (dlib's ResNet, float32) 5.6 -> 4.3 (``bench/README.md``).

The fused kernels round differently from the op-by-op ones (D_R's bfloat16 reconstruction by up to
one bfloat16 step), so an export records that its networks ran fused (``refine.export.exporter``) and a
resume is computed alike. TorchScript's profiling executor runs a new graph's first call unfused
while it records shapes, then compiles (``warmup_calls``); ``Fused`` makes that call on a fixed
input before it returns, so every real batch goes through the same compiled partitions
(bit-identical from call to call, and with another process on the same machine and threads;
tested). The first calls fix the input's shape, dtype and memory format: the export's batches are
all one shape (padded).
"""
from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn


def warmup_calls() -> int:
    """Calls before a traced graph runs compiled: the profiling executor runs the first
    ``torch._C._jit_get_num_profiled_runs()`` calls (1 in torch 2.12) op by op while it records
    shapes, and compiles at the next, which already gives the compiled bits (tested)."""
    get = getattr(torch._C, "_jit_get_num_profiled_runs", None)
    return max(1, int(get()) if get else 1)


def available(device: str | torch.device) -> bool:
    """Whether networks on ``device`` can run fused: a CPU, and this torch's TorchScript has oneDNN
    Graph. (torch 2.12 deprecates ``torch.jit.trace`` and ``freeze`` in favour of ``torch.compile``,
    whose CPU backend fuses no ELU into a convolution and measured no faster here; a torch without
    them runs the networks op by op, and exports record which.)"""
    return torch.device(device).type == "cpu" and hasattr(torch.jit, "enable_onednn_fusion")


@contextlib.contextmanager
def _fusion_on():
    """oneDNN Graph fusion is one global TorchScript switch; on only while our graphs run."""
    was = torch.jit.onednn_fusion_enabled()
    torch.jit.enable_onednn_fusion(True)
    try:
        yield
    finally:
        torch.jit.enable_onednn_fusion(was)


class Fused:
    """``net`` traced on inputs like ``example`` (a tuple of tensors), frozen and compiled into
    oneDNN Graph partitions; called like ``net``, under ``torch.inference_mode``."""

    def __init__(self, net: nn.Module, example: tuple[torch.Tensor, ...]):
        g = torch.Generator().manual_seed(0)

        def fixed(t):  # (values in [-1, 1], laid out as the example's)
            if isinstance(t, (tuple, list)):
                return tuple(fixed(u) for u in t)
            return torch.empty_like(t).copy_(torch.rand(t.shape, generator=g) * 2 - 1)

        def first(t):
            return tuple(first(u) for u in t) if isinstance(t, (tuple, list)) else t[:1]

        warm = fixed(example)
        with torch.no_grad(), warnings.catch_warnings():
            # (the tracer warns of Python ints taken from shapes - the "SAME" padding; the shapes are
            # fixed - and torch 2.12 of TorchScript's deprecation: see ``available``)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            # traced on one image (the graph takes any batch; the warm-up below fixes the shapes):
            # 10x less tracing time, the same compiled bits (checked)
            self.graph = torch.jit.freeze(torch.jit.trace(net.eval(), first(warm), check_trace=False))
        with _fusion_on(), torch.inference_mode():
            for _ in range(warmup_calls()):
                self.graph(*warm)

    @torch.inference_mode()
    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        with _fusion_on():
            return self.graph(*inputs)


class _MaskedGenerator(nn.Module):
    """G with its dropout masks as inputs (``Generator.forward(x, masks=...)``): a traced graph
    cannot draw from per-image generators."""

    def __init__(self, G: nn.Module):
        super().__init__()
        self.G = G

    def forward(self, x: torch.Tensor, masks: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.G(x, masks=masks)


class FusedGenerator:
    """G (``refine.gan.nets.Generator``) fused for batches shaped like ``example``; called as G is
    (``noise_seeds``: one per image, or None for no dropout). Its masks are drawn outside the
    graph, as ``Generator.noise_masks`` draws them. Each of the two graphs (with and without
    masks) is compiled when first asked for: the warm-up makes its bits the same either way."""

    def __init__(self, G: nn.Module, example: torch.Tensor):
        self.G, self.example = G, example
        self.graphs: dict[bool, Fused] = {}

    def __call__(self, x: torch.Tensor, noise_seeds: list[int] | None = None) -> torch.Tensor:
        masked = noise_seeds is not None and self.G.dropout > 0.0
        if masked not in self.graphs:
            self.graphs[masked] = (Fused(_MaskedGenerator(self.G), (self.example, self._masks([0] * len(x), x)))
                                   if masked else Fused(self.G, (self.example,)))
        if masked:
            return self.graphs[True](x, self._masks(noise_seeds, x))
        return self.graphs[False](x)

    def _masks(self, noise_seeds, x):
        # (laid out as the activations they multiply: channels-last)
        return tuple(m.contiguous(memory_format=torch.channels_last)
                     for m in self.G.noise_masks(noise_seeds, x.shape[-2:], x.dtype, x.device))
