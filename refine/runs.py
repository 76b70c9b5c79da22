"""A training run's folder and loop, shared by ``refine train`` and ``refine train-recognizer``.

RUN/ holds ``checkpoints/step_NNNNNNNN.pt`` (``refine.checkpoint.CheckpointStore``), the resolved
settings (``config.yaml``), one JSON line of logged values per ``log_every`` steps
(``losses.jsonl``) and TensorBoard events (``tensorboard/``). Steps run until ``steps``; the full
state is saved every ``checkpoint_every`` steps, at the end, and on Ctrl-C or SIGTERM, so that a
re-run with ``--resume`` continues exactly where it stopped: lines and events logged after the
last checkpoint by a killed run are dropped first. Under torchrun only rank 0 writes.
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Callable

import yaml

from morph.base.errors import UserError
from refine.checkpoint import CheckpointStore


def check_run_dir(run_dir: Path) -> None:
    """Create ``run_dir`` and check that it can be written (before any work is done)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"{run_dir}: cannot write the run directory ({e.strerror}); choose another --out.") from None


def resume_point(store: CheckpointStore, run_dir: Path, resume: bool | Path) -> Path | None:
    """The checkpoint to continue from (``resume``: True for the newest, or a path), or None for a
    new run; refuses to start over a run that exists, and to resume one that does not."""
    if resume:
        start_from = Path(resume) if not isinstance(resume, bool) else store.latest()
        if start_from is None:
            raise UserError(f"{run_dir}: holds no checkpoint to resume from; start without --resume.")
        return start_from
    if store.latest() is not None:
        raise UserError(f"{run_dir}: already holds a run (checkpoints/); add --resume to continue it "
                        "or choose another --out.")
    return None


def trim_log(path: Path, step: int) -> None:
    """Drop log lines past ``step`` (written by a run killed after its last checkpoint)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def open_tensorboard(run_dir: Path, step: int):
    """A TensorBoard writer of ``RUN/tensorboard`` that drops events past ``step`` (None without
    tensorboard: a dependency, but tolerated missing in a stripped environment)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=step + 1)


def run_steps(trainer, store: CheckpointStore, ddp, run_dir: Path, config: dict, *, steps: int, log_every: int,
              checkpoint_every: int, desc: str, progress: bool, scalar_name: Callable[[str], str],
              postfix: Callable[[dict], dict], after_step: Callable[[int, dict, object], None] | None = None,
              before_save: Callable[[], None] | None = None) -> Path | None:
    """Call ``trainer.train_step()`` (a dict of logged values) until ``trainer.step`` reaches
    ``steps``, saving ``trainer.state()``; returns the last checkpoint written (rank 0).

    ``after_step(step, values, tensorboard)`` runs on rank 0 after each step's logging;
    ``before_save()`` on every rank before each periodic save (a collective check may go there).
    Ctrl-C and SIGTERM save the state (rank 0) and re-raise ``KeyboardInterrupt``."""
    from tqdm import tqdm

    log_path = run_dir / "losses.jsonl"
    tb = None
    if ddp.main:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        trim_log(log_path, trainer.step)
        tb = open_tensorboard(run_dir, trainer.step)
    last_path = None
    bar = tqdm(total=steps, initial=trainer.step, unit="step", desc=desc, disable=not (progress and ddp.main))
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        with open(log_path, "a") if ddp.main else open(os.devnull, "w") as log:
            while trainer.step < steps:
                values = trainer.train_step()
                step = trainer.step
                if ddp.main:
                    if step % log_every == 0 or step == steps:
                        log.write(json.dumps({"step": step, **values}) + "\n")
                        log.flush()
                        if tb is not None:
                            for k, v in values.items():
                                tb.add_scalar(scalar_name(k), v, step)
                    if after_step is not None:
                        after_step(step, values, tb)
                    bar.set_postfix(**postfix(values), refresh=False)
                    bar.update(1)
                if step % checkpoint_every == 0 or step == steps:
                    if before_save is not None:
                        before_save()
                    if ddp.main:
                        last_path = store.save(trainer.state())
    except KeyboardInterrupt:
        if ddp.main and trainer.step > 0:
            last_path = store.save(trainer.state())
            print(f"\nInterrupted at step {trainer.step}; saved {last_path}. Resume with --resume.")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        bar.close()
        if tb is not None:
            tb.close()
    return last_path
