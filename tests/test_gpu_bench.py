"""``bench/gpu.py``, the one script run on a GPU machine, runs here first: on the CPU, small, every
section (render, detect, train, export) must finish without an error and give sane figures.

Marked slow (about 35 s, which kept the default run over its 15 minutes): run it before any GPU
session with ``python -m pytest -m slow tests/test_gpu_bench.py``."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def figures():
    p = subprocess.run([sys.executable, "bench/gpu.py", "--device", "cpu", "--small"], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_every_section_runs_on_the_cpu(figures):
    for name in ("render", "detect", "train", "export"):
        assert "error" not in figures[name], (name, figures[name])


def test_figures_are_sane(figures):
    torch_backend = figures["render"]["torch"]  # the plain-torch rasterizer against the numba engine
    assert torch_backend["pix_to_face_equal_to_cpu"] >= 0.999 and torch_backend["img_per_s"] > 0
    d = figures["detect"]
    assert d["faces"] > 0 and d["max_box_diff_px"] == 0 and d["max_landmark_diff_px"] == 0  # same device
    t = figures["train"]
    assert t["fp32_s_per_step"] > 0 and t["bf16_s_per_step"] > 0
    assert t["max_loss_diff_bf16_vs_fp32"]["relative"] < 0.05  # bf16 autocast follows the float32 run
    e = figures["export"]
    assert e["no_scores_img_per_s"] > 0 and e["with_scores_img_per_s"] > 0
