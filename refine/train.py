"""`refine train`: the run around ``refine.trainer.Trainer`` - resume, checkpoints, logs, grids.

Steps run until ``cfg.steps``; every ``checkpoint_every`` steps (and at the end, on Ctrl-C or
SIGTERM) the full state is written atomically (``refine.checkpoint``), so ``--resume`` continues
exactly: the same batches, the same dropout draws, the same networks. Rank 0 of a torchrun group
writes ``losses.jsonl`` (one JSON line per ``log_every`` steps), TensorBoard scalars and image
grids (``grid_every``).
"""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import torch
import yaml

from morph.errors import UserError
from morph.h5io import open_h5
from morph.numerics import check_device, set_threads
from refine.checkpoint import CheckpointStore, load_checkpoint
from refine.config import TrainConfig
from refine.distributed import finish, init_distributed, main_rank_lock
from refine.trainer import NonFiniteLoss, Trainer


def _check_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"{run_dir}: cannot write the run directory ({e.strerror}); choose another --out.") from None


def trim_log(path: Path, step: int) -> None:
    """Drop log lines past ``step`` (written by a run killed after its last checkpoint)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def train(cfg: TrainConfig, synthetic: Path, real: Path, pairs: Path | None, run_dir: Path,
          resume: bool | Path = False, progress: bool = True, threads: int | None = None) -> Path | None:
    """Train until ``cfg.steps``, holding the run folder's lock (``RUN.lock``); returns the final
    checkpoint (rank 0)."""
    check_device(cfg.device)
    ddp = init_distributed(cfg.device)
    set_threads(threads)  # torchrun: OMP_NUM_THREADS per rank, held (see morph.numerics.set_threads)
    run_dir = Path(run_dir)
    for path, what in ((synthetic, "synthetic image set"), (real, "real image set"), (pairs, "pairs file")):
        if path is not None:  # a missing or unreadable set is refused before --out exists
            open_h5(path, what).close()
    if ddp.main:
        _check_run_dir(run_dir)
    with main_rank_lock(ddp, run_dir, "training run"):
        return _train(cfg, synthetic, real, pairs, run_dir, resume, progress, ddp)


def open_tensorboard(run_dir: Path, step: int):
    """A TensorBoard writer of ``RUN/tensorboard`` that drops events past ``step`` (None without
    tensorboard: a dependency, but tolerated missing in a stripped environment)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=step + 1)


def _train(cfg: TrainConfig, synthetic: Path, real: Path, pairs: Path | None, run_dir: Path,
           resume: bool | Path, progress: bool, ddp) -> Path | None:
    from tqdm import tqdm

    store = CheckpointStore(run_dir, cfg.keep_checkpoints)
    start_from = None
    if resume:
        start_from = Path(resume) if not isinstance(resume, bool) else store.latest()
        if start_from is None:
            raise UserError(f"{run_dir}: holds no checkpoint to resume from; start without --resume.")
    elif store.latest() is not None:
        raise UserError(f"{run_dir}: already holds a run (checkpoints/); add --resume to continue it "
                        "or choose another --out.")
    trainer = Trainer(cfg, synthetic, real, pairs, run_dir, ddp)
    if start_from is not None:
        trainer.load_state(load_checkpoint(start_from), start_from)
    log_path = run_dir / "losses.jsonl"
    tb = None
    if ddp.main:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(
            {**cfg.to_dict(), "synthetic": str(synthetic), "real": str(real),
             "pairs": None if pairs is None else str(pairs)}, sort_keys=False))
        trim_log(log_path, trainer.step)
        tb = open_tensorboard(run_dir, trainer.step)
    last_path = None
    bar = tqdm(total=cfg.steps, initial=trainer.step, unit="step", desc="train",
               disable=not (progress and ddp.main))
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        with open(log_path, "a") if ddp.main else open(os.devnull, "w") as log:
            while trainer.step < cfg.steps:
                try:
                    values = trainer.train_step()
                except NonFiniteLoss as e:
                    good = store.latest()
                    raise UserError(f"training diverged: {e}; the last good checkpoint is "
                                    f"{good or 'none'}; lower --lr or check the input sets.") from None
                step = trainer.step
                if ddp.main:
                    if step % cfg.log_every == 0 or step == cfg.steps:
                        log.write(json.dumps({"step": step, **values}) + "\n")
                        log.flush()
                        if tb is not None:
                            for k, v in values.items():
                                tb.add_scalar(_tb_name(k), v, step)
                    if step % cfg.grid_every == 0:
                        save_grid(trainer, run_dir / "grids" / f"step_{step:08d}.png", tb)
                    if "M_R" in values:
                        bar.set_postfix(L_G=f"{values['L_G']:.3f}", k_R=f"{values['k_R']:.3f}",
                                        M=f"{values['M_R']:.3f}", refresh=False)
                    elif "L_G" in values:  # a patch discriminator: no balance term
                        bar.set_postfix(L_G=f"{values['L_G']:.3f}", L_DR=f"{values['L_DR']:.3f}", refresh=False)
                    else:  # refiner warm-up
                        bar.set_postfix(warm_up=f"{values['L_warm_G']:.3f}", refresh=False)
                    bar.update(1)
                if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                    trainer.check_ranks_agree()  # collective: every rank takes part
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
        for s in (trainer.syn, trainer.real, trainer.pairs):
            if s is not None:
                s.close()
        finish(ddp)
    return last_path


def _tb_name(key: str) -> str:
    if key.startswith("k_"):
        return f"balance/{key}"
    if key.startswith("M_"):
        return f"convergence/{key}"
    if key == "lr":
        return "lr"
    return f"loss/{key}"


@torch.no_grad()
def save_grid(trainer: Trainer, path: Path, tb=None, n: int = 8) -> Path:
    """Rows: x, G(x), G'(G(x)) (and pairs s, r, G(s)) for n fixed training images, every network
    in eval mode (no dropout), then back in the modes they were in."""
    from torchvision.utils import make_grid, save_image

    modes = {k: net.training for k, net in trainer.nets.items()}
    for net in trainer.nets.values():
        net.eval()
    try:
        idx = np.arange(min(n, trainer.syn.n))
        (x,), _ = trainer.syn.rows(idx)
        x = x.to(trainer.device)
        gx = trainer.G(x)
        rows = [x, gx]
        if trainer.Gp is not None:
            rows.append(trainer.Gp(gx))
        if trainer.pairs is not None:
            (s, r), _ = trainer.pairs.rows(np.arange(min(n, trainer.pairs.n)))
            rows += [s.to(trainer.device), r.to(trainer.device), trainer.G(s.to(trainer.device))]
    finally:
        for k, net in trainer.nets.items():
            net.train(modes[k])
    k = min(r.shape[0] for r in rows)
    grid = make_grid(torch.cat([r[:k] for r in rows]).float(), nrow=k, normalize=True, value_range=(-1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)
    if tb is not None:
        tb.add_image("grid", grid, trainer.step)
    return path
