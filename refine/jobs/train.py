"""`refine train`: the run around ``refine.gan.trainer.Trainer`` (``refine.runs``: resume, checkpoints,
logs), with image grids every ``grid_every`` steps.

The checkpoints hold the full state (``refine.checkpoint``), so ``--resume`` continues exactly: the
same batches, the same dropout draws, the same networks.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from morph.base.errors import UserError
from morph.base.h5io import open_h5
from morph.base.numerics import check_device, set_threads
from refine.checkpoint import CheckpointStore, load_checkpoint
from refine.runs import check_run_dir, resume_point, run_steps
from refine.gan.config import TrainConfig
from refine.distributed import finish, init_distributed, main_rank_lock
from refine.gan.trainer import NonFiniteLoss, Trainer


def train(cfg: TrainConfig, synthetic: Path, real: Path, pairs: Path | None, run_dir: Path,
          resume: bool | Path = False, progress: bool = True, threads: int | None = None) -> Path | None:
    """Train until ``cfg.steps``, holding the run folder's lock (``RUN.lock``); returns the final
    checkpoint (rank 0)."""
    check_device(cfg.device)
    ddp = init_distributed(cfg.device)
    set_threads(threads)  # torchrun: OMP_NUM_THREADS per rank, held (see morph.base.numerics.set_threads)
    run_dir = Path(run_dir)
    for path, what in ((synthetic, "synthetic image set"), (real, "real image set"), (pairs, "pairs file")):
        if path is not None:  # a missing or unreadable set is refused before --out exists
            open_h5(path, what).close()
    if ddp.main:
        check_run_dir(run_dir)
    with main_rank_lock(ddp, run_dir, "training run"):
        return _train(cfg, synthetic, real, pairs, run_dir, resume, progress, ddp)


def _train(cfg: TrainConfig, synthetic: Path, real: Path, pairs: Path | None, run_dir: Path,
           resume: bool | Path, progress: bool, ddp) -> Path | None:
    store = CheckpointStore(run_dir, cfg.keep_checkpoints)
    start_from = resume_point(store, run_dir, resume)
    trainer = Trainer(cfg, synthetic, real, pairs, run_dir, ddp)
    if start_from is not None:
        trainer.load_state(load_checkpoint(start_from), start_from)

    def after_step(step: int, values: dict, tb) -> None:
        if step % cfg.grid_every == 0:
            save_grid(trainer, run_dir / "grids" / f"step_{step:08d}.png", tb)

    def postfix(values: dict) -> dict:
        if "M_R" in values:
            return {"L_G": f"{values['L_G']:.3f}", "k_R": f"{values['k_R']:.3f}", "M": f"{values['M_R']:.3f}"}
        if "L_G" in values:  # a patch discriminator: no balance term
            return {"L_G": f"{values['L_G']:.3f}", "L_DR": f"{values['L_DR']:.3f}"}
        return {"warm_up": f"{values['L_warm_G']:.3f}"}  # refiner warm-up

    config = {**cfg.to_dict(), "synthetic": str(synthetic), "real": str(real),
              "pairs": None if pairs is None else str(pairs)}
    try:
        return run_steps(trainer, store, ddp, run_dir, config, steps=cfg.steps, log_every=cfg.log_every,
                         checkpoint_every=cfg.checkpoint_every, desc="train", progress=progress,
                         scalar_name=_tb_name, postfix=postfix, after_step=after_step,
                         before_save=trainer.check_ranks_agree)  # collective: every rank takes part
    except NonFiniteLoss as e:
        good = store.latest()
        raise UserError(f"training diverged: {e}; the last good checkpoint is "
                        f"{good or 'none'}; lower --lr or check the input sets.") from None
    finally:
        for s in (trainer.syn, trainer.real, trainer.pairs):
            if s is not None:
                s.close()
        finish(ddp)


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
