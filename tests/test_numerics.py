"""The machine facts that decide low bits: the ISA switches really switch, thread counts hold, and
every output records them.

The suite is meant to pass under this CPU's own kernels and under ``morph.base.numerics.AVX2_ENVIRONMENT``
(README, "Reproducibility"); the first test shows that the second setting does run other code on
a CPU with AVX-512, so that passing under both means something.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
from morph.base.numerics import AVX2_ENVIRONMENT as AVX2  # noqa: E402

PROBE = r"""
import json, numpy as np, torch, numba
with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
    torch.nn.functional.conv2d(torch.randn(2, 32, 32, 32), torch.randn(32, 32, 3, 3))
@numba.njit
def axpy(a, x, y):
    for i in range(x.shape[0]):
        y[i] += a * x[i]
axpy(2.0, np.ones(64), np.ones(64))
asm = next(iter(axpy.inspect_asm().values()))
from numba.core.codegen import get_host_cpu_features
print("PROBE" + json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "numba_cpu": numba.config.CPU_NAME,
                            "zmm": "zmm" in asm, "host_avx512": "+avx512f" in get_host_cpu_features()}))
"""


def _probe(env_extra: dict) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if k not in AVX2}
    env.update(env_extra, ONEDNN_VERBOSE="all")
    p = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120,
                       check=True)
    line = next(x for x in p.stdout.splitlines() if x.startswith("PROBE"))
    isa = next(x for x in (p.stdout + p.stderr).splitlines() if ",info,cpu,isa:" in x)
    return json.loads(line[5:]), isa


def test_the_avx2_switches_take_effect():
    """With the variables set, torch's ATen kernels, oneDNN's JIT and numba's code generator all
    target AVX2 (on a CPU with AVX-512 this is other code than the default). Without
    NUMBA_CPU_FEATURES, numba's haswell code would hold 512-bit (zmm) instructions."""
    held, isa = _probe(AVX2)
    assert held["capability"] == "AVX2"
    assert "AVX2" in isa and "AVX-512" not in isa, isa
    assert held["numba_cpu"] == "haswell" and not held["zmm"]
    own, own_isa = _probe({})
    if not own["host_avx512"]:
        pytest.skip(f"this CPU's own kernels are {own['capability']}: the two settings coincide here")
    assert own["capability"] == "AVX512" and "AVX-512" in own_isa


THREADS = r"""
import numpy as np, torch
from morph.base.numerics import set_threads
from morph.formats.named import load_model
from morph.model.priors import load_priors
from morph.render import RenderSettings, render_batch
from morph.model.sample import sample_block
n = set_threads(None if "{arg}" == "none" else int("{arg}"))
m, p = load_model("default"), load_priors(None)
render_batch(m, sample_block(m, p, 0, range(2), 2).render_params(), RenderSettings(image_size=32))
print("THREADS", n, torch.get_num_threads())
"""


@pytest.mark.parametrize("omp, arg, want", [("1", "none", 1), (None, "1", 1), ("2", "none", 2)])
def test_thread_count_holds_after_numba_starts(omp, arg, want):
    """torch computes with the count it was given (or OMP_NUM_THREADS, as torchrun sets per rank)
    after numba's OpenMP pool has started and rendered - which resets an unguarded count to
    every core."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    p = subprocess.run([sys.executable, "-c", THREADS.replace("{arg}", arg)], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=120, check=True)
    line = next(x for x in p.stdout.splitlines() if x.startswith("THREADS"))
    assert line.split()[1:] == [str(want), str(want)]


def test_every_h5_records_the_numerics(tmp_path):
    from cli.morph import main as morph

    res = CliRunner().invoke(morph, ["sample-identities", "--n-identities", "2", "--images-per-identity", "1",
                                     "--seed", "0", "-o", str(tmp_path / "ids.h5")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(morph, ["render", str(tmp_path / "ids.h5"), "-o", str(tmp_path / "r.h5"),
                                     "--threads", "1"])
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "r.h5", "r") as f:
        n = json.loads(f.attrs["numerics"])
    assert n["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert n["torch"] == str(torch.__version__) and n["onednn"].count(".") == 2 and n["numba"]
    assert n["torch_threads"] == 1 and n["numba_threads"] == 1 and n["numba_cpu"]


RENDER = r"""
import sys, numpy as np
from morph.formats.named import load_model
from morph.model.priors import load_priors
from morph.render import RenderSettings, render_batch
from morph.model.sample import sample_block
m, p = load_model("default"), load_priors(None)
s = sample_block(m, p, 3, range(4), 3)
r = render_batch(m, s.render_params(), RenderSettings(image_size=108))
np.savez(sys.argv[1], alpha=s.alpha, gamma=s.gamma, beta=s.beta, pose=s.pose, sh=s.sh, cam=s.camera_distance,
         image=r.image.numpy(), landmarks=r.landmarks.numpy(), mask=r.mask.numpy())
from numpy.lib.introspect import opt_func_info
from threadpoolctl import threadpool_info
print("TARGETS", opt_func_info("exp", "float64")["exp"]["dd"]["current"],
      [i.get("architecture") for i in threadpool_info() if i["internal_api"] == "openblas"][0])
"""


def test_samples_and_cpu_renders_are_the_same_bits_under_both_instruction_sets(tmp_path):
    """Identity i of seed s, its images' parameters and their numba renders do not depend on the
    instruction set: no BLAS or LAPACK kernel takes part (priors' ``cholesky_psd``, ``fsum``)."""
    out = {}
    for name, extra in (("own", {}), ("avx2", AVX2)):
        env = {k: v for k, v in os.environ.items() if k not in AVX2}
        env.update(extra)
        p = subprocess.run([sys.executable, "-c", RENDER, str(tmp_path / f"{name}.npz")], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=300, check=True)
        out[name] = next(x for x in p.stdout.splitlines() if x.startswith("TARGETS")).split()[1:]
    assert out["avx2"][0] == "X86_V3" and "Haswell" in out["avx2"][1]  # the switches took effect
    a, b = np.load(tmp_path / "own.npz"), np.load(tmp_path / "avx2.npz")
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert a["image"].std() > 0.1 and a["mask"].mean() > 0.2  # faces, not blanks
