"""Which Python versions the project installs on: for each version, resolve every dependency
(the package's, and its "pytorch3d", "sfm" and "test" extras) as prebuilt wheels for x86-64 Linux
with ``pip install --dry-run --only-binary=:all: --python-version X``; nothing is installed.

``face_recognition_models`` is left out: it is a pure-data source distribution (dlib's model
files), which builds on any Python, and pip refuses source distributions for another Python
version. Environment markers are evaluated for the version checked (eos-py: Python < 3.13).
Prints one line per version and, last, one JSON object.

    python tools/wheels.py [3.11 3.12 3.13 ...]
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PLATFORMS = ["any", "linux_x86_64", "manylinux1_x86_64", "manylinux2014_x86_64",
             *(f"manylinux_2_{i}_x86_64" for i in range(5, 40))]
SDIST_ONLY = {"face_recognition_models"}


def requirements(version: str) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    name = project["name"]
    reqs = list(project["dependencies"])
    for extra in ("pytorch3d", "sfm", "test"):
        reqs += project["optional-dependencies"][extra]
    env = {"python_version": version, "python_full_version": f"{version}.0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "extra": ""}
    out = []
    for r in map(Requirement, reqs):
        if r.name in SDIST_ONLY or r.name == name or (r.marker and not r.marker.evaluate(env)):
            continue
        out.append(str(Requirement(f"{r.name}{r.specifier}")))
    return out


def resolve(version: str) -> dict:
    reqs = requirements(version)
    with tempfile.TemporaryDirectory() as target:
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--only-binary=:all:",
               "--python-version", version, "--target", target, "--quiet", "--report", "-",
               *(a for p in PLATFORMS for a in ("--platform", p)), *reqs]
        p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        err = [ln for ln in p.stderr.splitlines() if ln.startswith("ERROR")]
        return {"resolves": False, "error": err[0] if err else p.stderr[-300:]}
    report = json.loads(p.stdout)
    pins = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in report["install"]}
    return {"resolves": True, "packages": len(pins),
            **{k: pins.get(k) for k in ("torch", "easypytorch3d", "numba", "dlib-bin", "eos-py")}}


def main():
    versions = sys.argv[1:] or ["3.11", "3.12", "3.13"]
    out = {}
    for v in versions:
        out[v] = resolve(v)
        print(v, out[v], flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
