"""CPU accounting shared by the benchmarks: how much of the machine other processes used while a
benchmark ran (a figure measured on a busy machine is not comparable to one on an idle one)."""
from __future__ import annotations

import os
from pathlib import Path


def cpu_jiffies() -> tuple[int, int, int]:
    """(all, idle, this process's) CPU jiffies so far, from /proc (zeros where unavailable)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        own = Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(fields), fields[3] + fields[4], int(own[11]) + int(own[12])
    except (OSError, ValueError, IndexError):
        return 0, 0, 0


def busy_elsewhere(before, after) -> float:
    """Share of the machine's CPU time that other processes used between two ``cpu_jiffies``."""
    total, idle, own = (a - b for a, b in zip(after, before))
    return 0.0 if total <= 0 else max(total - idle - own, 0) / total
