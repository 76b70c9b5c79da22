"""An export folder's state: which export it holds (its manifest's settings), which identities are
done (append-only progress files), and how identities are cut into chunks and shared by ranks."""
from __future__ import annotations

import json
from pathlib import Path

from morph.base.errors import UserError
from morph.base.files import disk_errors

MANIFEST = "manifest.json"
STATE_DIR = ".export"
BATCH_MULTIPLE = 8


def chunk_ranges(first: int, n: int, per_chunk: int) -> list[range]:
    """Identities ``[first, first + n)`` cut into runs of ``per_chunk`` (the last may be shorter):
    the images of one chunk always share network batches, whatever the run, rank or resume."""
    return [range(a, min(a + per_chunk, first + n)) for a in range(first, first + n, per_chunk)]


def rank_chunks(chunks: list[range], rank: int, world: int) -> list[range]:
    """Rank ``rank``'s contiguous share of whole chunks."""
    c = len(chunks)
    return chunks[rank * c // world:(rank + 1) * c // world]


def read_manifest(path: Path) -> dict:
    try:
        m = json.loads(path.read_text())
        if not isinstance(m, dict) or "settings" not in m:
            raise ValueError
        return m
    except (OSError, ValueError):
        raise UserError(f"{path}: is not a readable export manifest; remove the folder or choose another "
                        "--out.") from None


def check_out(out: Path, settings: dict) -> str:
    """'new', 'resume' or 'complete'; refuses a file, a foreign folder or another export."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: is a file; --out must be a folder (new or from the same export).")
    if not out.exists():
        if not out.resolve().parent.is_dir():
            raise UserError(f"{out}: folder {out.resolve().parent} does not exist; create it first.")
        return "new"
    mpath = out / MANIFEST
    if not mpath.exists():  # (a run stopped before its manifest was in place leaves only these)
        if any(p.name != STATE_DIR and not p.name.endswith(".partial") for p in out.iterdir()):
            raise UserError(f"{out}: is not empty and holds no export ({MANIFEST}); choose a new or empty --out.")
        return "new"
    m = read_manifest(mpath)
    diff = sorted(k for k in set(settings) | set(m["settings"]) if settings.get(k) != m["settings"].get(k))
    if diff == ["network_batch"] and m.get("complete"):
        return "complete"  # the batch size decides only the last bits of work that is done
    if diff == ["network_batch"] and isinstance(m["settings"]["network_batch"], int):
        was = m["settings"]["network_batch"]
        raise UserError(f"{out}: was started with network batches of {was} images (--batch-size "
                        f"{was - BATCH_MULTIPLE + 1}..{was}); resume with such a --batch-size, so that the "
                        "images already written and the rest are computed alike.")
    if diff:
        raise UserError(f"{out}: holds another export (different {', '.join(diff)}); choose another --out, "
                        "or delete it to start over.")
    return "complete" if m.get("complete") else "resume"


class ProgressLog:
    """Append-only JSON lines, one per completed identity; a line cut by a kill is dropped."""

    def __init__(self, path: Path):
        self.path = path
        with disk_errors(path):
            if path.exists():
                data = path.read_bytes()
                cut = data.rfind(b"\n") + 1
                if cut != len(data):
                    with open(path, "r+b") as f:
                        f.truncate(cut)
            self.f = open(path, "a")  # noqa: SIM115 - kept open for the run, closed by close()

    def record(self, rec: dict) -> None:
        with disk_errors(self.path):
            self.f.write(json.dumps(rec) + "\n")
            self.f.flush()

    def close(self):
        self.f.close()


def read_progress(state_dir: Path) -> dict[int, dict]:
    done = {}
    for p in sorted(state_dir.glob("progress-*.jsonl")):
        for line in p.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            done[int(rec["identity"])] = rec
    return done
