"""torchrun: the process group and the few collectives training and export use."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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
