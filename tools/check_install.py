"""Check an installed (not editable) toolkit, as a user who ran `pip install` from a wheel has it.

Run from anywhere after `pip install ".[test]"` (which builds the wheel and installs it):
every package imports from site-packages, not from this checkout (a package left out of the
wheel fails here, where an editable install would find it in the tree); every `morph` and
`refine` command answers `--help` through its console script; and a tiny render runs end to end
(sample-identities -> render -> preview). Exits non-zero, naming what failed.

    python tools/check_install.py
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]


def run(args: list, cwd: Path, env: dict) -> str:
    p = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"FAILED ({p.returncode}): {' '.join(map(str, args))}\n{p.stdout[-2000:]}{p.stderr[-4000:]}")
    return p.stdout


def main() -> int:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    packages = sorted(str(p.parent.relative_to(CHECKOUT)).replace(os.sep, ".")
                      for top in ("morph", "refine", "cli") for p in (CHECKOUT / top).rglob("__init__.py"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        probe = ("import importlib, json, sys; names = json.loads(sys.argv[1]); "
                 "print(json.dumps({n: importlib.import_module(n).__file__ for n in [*names, 'ganfaces_data']}))")
        where = json.loads(run([sys.executable, "-c", probe, json.dumps(packages)], tmp, env))
        inside = [n for n, f in where.items() if Path(f).resolve().is_relative_to(CHECKOUT)]
        if inside:
            raise SystemExit(f"FAILED: {', '.join(inside)} import from the checkout ({CHECKOUT}), not from an "
                             "installed wheel; install with 'pip install .' (not -e) first.")
        print(f"{len(where)} packages import from {Path(where['morph']).parents[1]}")
        listing = "import json, sys; from cli.{0} import main; print(json.dumps(sorted(main.commands)))"
        for group in ("morph", "refine"):
            exe = shutil.which(group)
            if exe is None:
                raise SystemExit(f"FAILED: the console script '{group}' is not on PATH.")
            commands = json.loads(run([sys.executable, "-c", listing.format(group)], tmp, env))
            run([exe, "--help"], tmp, env)
            for cmd in commands:
                run([exe, cmd, "--help"], tmp, env)
            print(f"{group}: --help of {len(commands)} commands: {', '.join(commands)}")
        run(["morph", "sample-identities", "--model", "default", "--n-identities", 2, "--images-per-identity", 2,
             "--seed", 0, "-o", tmp / "ids.h5"], tmp, env)
        run(["morph", "render", tmp / "ids.h5", "-o", tmp / "synthetic.h5", "--size", 64], tmp, env)
        run(["morph", "preview", tmp / "synthetic.h5", "-o", tmp / "sheet.png"], tmp, env)
        if (tmp / "sheet.png").stat().st_size == 0:
            raise SystemExit("FAILED: morph preview wrote an empty sheet.")
        print("sample-identities -> render -> preview: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
