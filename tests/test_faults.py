"""Promises under concurrency and faults: one writer per output, completeness only when a file
says so, resume keyed by content, disk full and oversized photos as one-line errors."""
from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
from click.testing import CliRunner
from PIL import Image

from cli.morph import main as morph
from cli.refine import main as refine
from conftest import TESTDATA

ROOT = Path(__file__).resolve().parents[1]


def run(group, *args):
    return CliRunner().invoke(group, [str(a) for a in args])


def cli(*args, **kw) -> subprocess.Popen:
    group = "cli.morph" if args[0] in ("render", "align", "sample-identities") else "cli.refine"
    return subprocess.Popen([sys.executable, "-m", group, *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), **kw)


def test_two_renders_of_one_output_one_finishes_the_other_refuses(tmp_path):
    """Both run for real: the second stops at once naming the first's PID; the first writes a
    complete file equal to a render made alone."""
    assert run(morph, "sample-identities", "--n-identities", 150, "--images-per-identity", 4, "--seed", 3,
               "-o", tmp_path / "ids.h5").exit_code == 0
    out = tmp_path / "out.h5"
    first = cli("render", tmp_path / "ids.h5", "-o", out, "--threads", 1, "--batch-size", 8)
    deadline = time.time() + 120
    while not (tmp_path / "out.h5.partial").exists() and time.time() < deadline:
        time.sleep(0.02)
    # paused while the second starts (its imports take seconds on a loaded machine): the first is
    # then certainly still writing, whatever the machine's speed
    first.send_signal(signal.SIGSTOP)
    try:
        assert first.poll() is None, "the first render ended before it could be paused; give it more work"
        second = cli("render", tmp_path / "ids.h5", "-o", out)
        err = second.communicate(timeout=300)[1]
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2 and "Traceback" not in err
    assert f"is being written by another process (PID {first.pid}" in err
    assert first.wait(timeout=600) == 0
    assert run(morph, "render", tmp_path / "ids.h5", "-o", tmp_path / "alone.h5").exit_code == 0
    with h5py.File(out, "r") as a, h5py.File(tmp_path / "alone.h5", "r") as b:
        assert a.attrs["complete"] and np.array_equal(a["images"][()], b["images"][()])
    assert not (tmp_path / "out.h5.lock").exists()


def test_a_killed_writer_leaves_no_stale_lock(tmp_path):
    assert run(morph, "sample-identities", "--n-identities", 150, "--images-per-identity", 4, "-o",
               tmp_path / "ids.h5").exit_code == 0
    p = cli("render", tmp_path / "ids.h5", "-o", tmp_path / "out.h5", "--threads", 1, "--batch-size", 8)
    deadline = time.time() + 120
    while not (tmp_path / "out.h5.partial").exists() and time.time() < deadline:
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert (tmp_path / "out.h5.lock").exists()  # the file stays, its lock died with the process
    res = run(morph, "render", tmp_path / "ids.h5", "-o", tmp_path / "out.h5")
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "out.h5", "r") as f:
        assert f.attrs["complete"] and f["images"].shape[0] == 600


def test_two_trainings_of_one_run_folder(sets, tmp_path):
    args = ["train", "--synthetic", sets / "synthetic.h5", "--real", sets / "real.h5", "--variant", "no_pairs",
            "--out", tmp_path / "run", "--steps", 400, "--batch-size", 2, "--config", sets / "small.yaml"]
    first = cli(*args)
    deadline = time.time() + 120
    while not (tmp_path / "run" / "config.yaml").exists() and time.time() < deadline:
        time.sleep(0.02)  # (written under the lock: the first holds it from then on)
    second = run(refine, *args)
    try:
        assert second.exit_code == 2 and "is being written by another process" in second.output
        assert first.poll() is None
    finally:
        first.kill()
        first.wait()


def test_a_file_is_complete_only_if_it_says_so(sets, tmp_path):
    with h5py.File(sets / "real.h5", "r") as f:
        images = f["images"][()]
    with h5py.File(tmp_path / "real.h5", "w") as f:
        f["images"] = images  # another tool's file, or one cut off: no 'complete' attribute
    res = run(refine, "train", "--synthetic", sets / "synthetic.h5", "--real", tmp_path / "real.h5", "--variant",
              "no_pairs", "--out", tmp_path / "run", "--steps", 1)
    assert res.exit_code == 2 and "does not say it is complete" in res.output and "Traceback" not in res.output
    res = run(morph, "preview", tmp_path / "real.h5", "-o", tmp_path / "p.png")
    assert res.exit_code == 2


def test_align_resume_after_a_photo_changed_is_not_a_mix(tmp_path, monkeypatch):
    """The job is keyed by the photos' contents: after a photo is replaced under its own name, a
    re-run makes the new set from scratch instead of resuming the old one."""
    from morph.align import mtcnn

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut.png", "einstein.jpg", "takeo.ppm", "t1.jpg"):
        shutil.copy(TESTDATA / "real" / name, photos / name)
    calls = {"n": 0}
    original = mtcnn.MTCNN.detect

    def dying(self, images):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, images)

    monkeypatch.setattr(mtcnn.MTCNN, "detect", dying)
    assert run(morph, "align", photos, "-o", tmp_path / "out.h5", "--batch-size", 1).exit_code != 0
    monkeypatch.setattr(mtcnn.MTCNN, "detect", original)
    Image.open(photos / "astronaut.png").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(photos / "astronaut.png")
    assert run(morph, "align", photos, "-o", tmp_path / "out.h5", "--batch-size", 1).exit_code == 0
    assert run(morph, "align", photos, "-o", tmp_path / "fresh.h5", "--batch-size", 1).exit_code == 0
    with h5py.File(tmp_path / "out.h5", "r") as a, h5py.File(tmp_path / "fresh.h5", "r") as b:
        assert np.array_equal(a["images"][()], b["images"][()])


def test_disk_full_while_rendering_is_one_line_and_resumes(tmp_path):
    """A real file-size limit (RLIMIT_FSIZE): the render stops with one line, not a crash, and a
    re-run without the limit finishes the same file as a render made alone."""
    assert run(morph, "sample-identities", "--n-identities", 40, "--images-per-identity", 4, "-o",
               tmp_path / "ids.h5").exit_code == 0

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000))

    p = cli("render", tmp_path / "ids.h5", "-o", tmp_path / "out.h5", "--batch-size", 16, preexec_fn=limited)
    err = p.communicate(timeout=300)[1]
    assert p.returncode == 2, err[-2000:]
    assert "disk full while writing" in err and "Traceback" not in err
    res = run(morph, "render", tmp_path / "ids.h5", "-o", tmp_path / "out.h5")
    assert res.exit_code == 0, res.output
    assert run(morph, "render", tmp_path / "ids.h5", "-o", tmp_path / "alone.h5").exit_code == 0
    with h5py.File(tmp_path / "out.h5", "r") as a, h5py.File(tmp_path / "alone.h5", "r") as b:
        assert np.array_equal(a["images"][()], b["images"][()])


def test_an_oversized_photo_is_skipped_with_its_reason(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(TESTDATA / "real" / "astronaut.png", photos / "astronaut.png")
    Image.new("RGB", (9000, 8000), (120, 100, 90)).save(photos / "huge.png")  # 72 MP, a small file
    res = run(morph, "align", photos, "-o", tmp_path / "real.h5")
    assert res.exit_code == 0, res.output
    report = (tmp_path / "real.h5.report.tsv").read_text()
    assert "huge.png" in report and "72 MP" in report
    with h5py.File(tmp_path / "real.h5", "r") as f:
        assert f["images"].shape[0] == 1


def test_out_of_memory_is_one_line_and_resumes(tmp_path, monkeypatch):
    """Memory running out in the middle of a job (torch's CPU allocator, or Python's MemoryError):
    one line, exit 2, and the images written before it stay for the re-run."""
    import morph.render as job  # (render_job imports render_batch from here when it runs)

    assert run(morph, "sample-identities", "--n-identities", 8, "--images-per-identity", 4, "-o",
               tmp_path / "ids.h5").exit_code == 0
    from morph.render.renderer import render_batch as real

    for error in (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 99 bytes"),
                  MemoryError()):
        calls = {"n": 0}

        def failing(*a, error=error, calls=calls, **k):
            calls["n"] += 1
            if calls["n"] == 2:
                raise error
            return real(*a, **k)

        monkeypatch.setattr(job, "render_batch", failing)
        res = run(morph, "render", tmp_path / "ids.h5", "-o", tmp_path / "out.h5", "--batch-size", 8)
        assert res.exit_code == 2 and "out of memory" in res.output and "Traceback" not in res.output
        with h5py.File(tmp_path / "out.h5.partial", "r") as f:
            assert f.attrs["n_done"] >= 8  # (the second run resumes after the first one's batch)
    monkeypatch.setattr(job, "render_batch", real)
    assert run(morph, "render", tmp_path / "ids.h5", "-o", tmp_path / "out.h5").exit_code == 0
