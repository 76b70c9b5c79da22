"""`refine train-recognizer`: the run around ``refine.recognition.trainer.RecognizerTrainer``
(``refine.runs``: resume, checkpoints, logs), then ``RUN/recognizer.pt``
(``refine.recognition.model_file``), the file ``refine verify --embedder`` takes.

``--resume`` continues with the same batches, augmentation draws and weights (the uninterrupted
run's, bit for bit on one machine with the same threads).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from morph.base.numerics import check_device, set_threads
from refine.checkpoint import CheckpointStore
from refine.distributed import finish, init_distributed, main_rank_lock
from refine.recognition.data import Mixture
from refine.recognition.model_file import save_model
from refine.recognition.trainer import RecognizerConfig, RecognizerTrainer, load_run_state
from refine.runs import check_run_dir, resume_point, run_steps


def train_recognizer(cfg: RecognizerConfig, data: list[Path], run_dir: Path, resume: bool = False,
                     progress: bool = True, threads: int | None = None) -> Path | None:
    """Train until ``cfg.steps`` holding the run folder's lock; returns ``RUN/recognizer.pt`` (rank 0)."""
    check_device(cfg.device)
    ddp = init_distributed(cfg.device)
    set_threads(threads)
    run_dir, data = Path(run_dir), [Path(p) for p in data]
    mixture = Mixture(data, cfg.check().proportions)  # a set it cannot read is refused before --out exists
    if ddp.main:
        check_run_dir(run_dir)
    with main_rank_lock(ddp, run_dir, "training run"):
        return _train(cfg, data, run_dir, resume, progress, ddp, mixture)


def _train(cfg, data, run_dir, resume, progress, ddp, mixture=None):
    store = CheckpointStore(run_dir, cfg.keep_checkpoints)
    start_from = resume_point(store, run_dir, resume)
    trainer = RecognizerTrainer(cfg, data, ddp, mixture)
    if start_from is not None:
        trainer.load_state(load_run_state(start_from), start_from)
    started, cpu0, first_step = time.time(), time.process_time(), trainer.step
    try:
        run_steps(trainer, store, ddp, run_dir, {**cfg.to_dict(), "data": [str(p) for p in data]},
                  steps=cfg.steps, log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
                  desc="train-recognizer", progress=progress,
                  scalar_name=lambda k: k if k == "lr" else f"train/{k}",
                  postfix=lambda v: {"loss": f"{v['loss']:.3f}", "acc": f"{v['train_accuracy']:.2f}"})
    finally:
        finish(ddp)
    model_path = None
    if ddp.main:
        model_path = save_model(run_dir / "recognizer.pt", trainer.model.backbone, cfg.arch, cfg.crop,
                                {"steps": trainer.step, "config": cfg.recipe(), "sets": trainer.mixture.describe(),
                                 "classes": trainer.mixture.classes})
        # the time goes beside the model, not in it: the file stays the same bytes when resumed
        (run_dir / "time.json").write_text(json.dumps({"steps_this_process": trainer.step - first_step,
                                                       "seconds": round(time.time() - started, 1),
                                                       "cpu_seconds": round(time.process_time() - cpu0, 1)}) + "\n")
    return model_path
