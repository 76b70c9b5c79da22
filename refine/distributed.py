"""torchrun: the process group and the few collectives training and export use."""
from __future__ import annotations

import os
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from morph.base.errors import UserError
from morph.base.files import output_lock


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Dist:
    """torchrun sets WORLD_SIZE/RANK: join the group (NCCL on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if str(device).startswith("cuda") else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def barrier(ddp: Dist) -> None:
    if ddp.world > 1:
        dist.barrier()


def all_gather(t: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def finish(ddp: Dist) -> None:
    """Leave the group: a gloo group left to interpreter shutdown aborted a rank ("terminate
    called without an active exception", exit -6) after a complete run."""
    if ddp.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def main_rank_lock(ddp: Dist, path, what: str):
    """``morph.base.files.output_lock`` of ``path`` for the whole group: rank 0 takes it, and when
    another process holds it every rank stops with an error (the group is left first)."""
    with ExitStack() as stack:
        error = None
        if ddp.main:
            try:
                stack.enter_context(output_lock(path, what))
            except UserError as e:
                error = e
        if ddp.world > 1:
            device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            held = torch.tensor([0 if error is None else 1], device=device)
            dist.broadcast(held, 0)
            if held.item() and error is None:
                error = UserError(f"{path}: is being written by another process (rank 0 holds no lock); wait for "
                                  f"it to finish, or write the {what} elsewhere.")
        if error is not None:
            finish(ddp)
            raise error
        yield
