"""What decides the low bits of this machine's float results, recorded in every output's provenance.

oneDNN (torch's convolutions), MKL (its matrix products) and ATen's vectorised kernels pick their
code by instruction set (AVX2, AVX-512, AMX), tensor shape and thread count, so a network's output
can differ in the last bits between two machines, or between 1 and 2 threads on one machine. The
README's "Reproducibility" section says which results are bit-identical (same machine, threads and
settings) and which are equal within a tolerance; this records the facts a reader needs to tell
which case two files are in. The environment variables that hold an AVX-512 CPU to its AVX2 code
(``AVX2_ENVIRONMENT``) are recorded when set.
"""
from __future__ import annotations

import os
import re

from morph.base.errors import UserError

#: Run an AVX-512 CPU's AVX2 code paths: ATen's vectorised kernels, oneDNN's JIT, MKL, numpy's
#: dispatched loops (X86_V3 = AVX2 is what remains), numpy's OpenBLAS, and numba's code generator.
#: numba needs both variables: with ``NUMBA_CPU_NAME=haswell`` alone it keeps the
#: host's feature list, AVX-512 included, and then emits *more* 512-bit code than by default
#: (checked here: an axpy loop got zmm registers, none without the variable); an explicit feature
#: string makes LLVM take haswell's own features (``tests/test_numerics.py``).
AVX2_ENVIRONMENT = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR", "OPENBLAS_CORETYPE": "Haswell",
                    "NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": "+avx2"}
ISA_VARIABLES = tuple(AVX2_ENVIRONMENT)


def onednn_version() -> str | None:
    """oneDNN's version as torch was built with it (``torch.__config__.show()``: "MKL-DNN v3.x.y")."""
    import torch

    m = re.search(r"MKL-DNN v([\w.]+)", torch.__config__.show())
    return m.group(1) if m else None


def numba_target() -> str:
    """The CPU numba compiles for: ``NUMBA_CPU_NAME`` when set, else the host's (LLVM's name)."""
    import numba

    if numba.config.CPU_NAME:
        return str(numba.config.CPU_NAME)
    import llvmlite.binding as ll
    return str(ll.get_host_cpu_name())


def numerics() -> dict:
    """The instruction set, library versions and thread counts this process computes with (and
    its GPU, when it has used one)."""
    import numba
    import torch

    out = {"torch": str(torch.__version__), "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
           "onednn": onednn_version(), "numba": numba.__version__, "numba_cpu": numba_target(),
           "torch_threads": torch.get_num_threads(), "numba_threads": numba.get_num_threads()}
    env = {k: os.environ[k] for k in ISA_VARIABLES if os.environ.get(k)}
    if env:
        out["isa_environment"] = env
    if torch.cuda.is_initialized():
        out["cuda_device"] = torch.cuda.get_device_name()
        out["cuda"] = torch.version.cuda
    return out


def set_threads(threads: int | None = None) -> int:
    """Fix this process's torch and numba thread counts; returns torch's.

    ``None`` keeps torch's own default (``OMP_NUM_THREADS``, else every core). Numba's OpenMP
    pool, when it starts, resets the OpenMP thread count the two libraries share to every core
    (measured here with ``OMP_NUM_THREADS=1`` on 2 cores: ``torch.get_num_threads()`` 1 -> 2 at
    numba's first thread-pool call, also after ``torch.set_num_threads(1)``), so torchrun ranks
    would compete for the cores and compute with other kernels than they record. Hence numba's
    pool is started first and torch's count set after it.
    """
    import numba
    import torch

    n = int(threads) if threads is not None else torch.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))  # starts numba's pool ...
    torch.set_num_threads(n)  # ... and only then torch's count holds
    return n


def check_device(device: str) -> str:
    """``device`` if this machine can compute on it ("cpu", "cuda", "cuda:N"); a clear error for a
    name torch does not know or a GPU that is not there."""
    import torch

    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"device '{device}' is unknown; give cpu, cuda or cuda:N.") from None
    if d.type == "cpu":
        return str(device)
    if d.type != "cuda":
        raise UserError(f"device '{device}' is not supported; give cpu, cuda or cuda:N.")
    if not torch.cuda.is_available():
        raise UserError(f"device '{device}': this machine has no CUDA GPU torch can use; give cpu.")
    if d.index is not None and d.index >= torch.cuda.device_count():
        raise UserError(f"device '{device}': there are {torch.cuda.device_count()} GPUs (cuda:0 .. "
                        f"cuda:{torch.cuda.device_count() - 1}).")
    return str(device)
