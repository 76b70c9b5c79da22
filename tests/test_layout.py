"""The house's rules (README, "Layout"), read from the code's own imports (every import statement,
at module level or inside a function):

- libraries never import a job (``morph/jobs``, ``refine/jobs``), and a job imports no other job,
  except the two that compose jobs by design (``refine.jobs.pipeline``, ``refine.jobs.table1``);
- the base package (``morph/base``) imports nothing else of the project;
- no module of the project (builders under ``data/``, benchmarks and tools included) is over 450 lines;
- no import cycle among the project's modules.

Each rule is checked on the tree and, so that the test itself is known to catch a break, on the
tree with one import (or line count) added that breaks it."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("morph", "refine", "cli")
COMPOSERS = {"refine.jobs.pipeline", "refine.jobs.table1"}
MAX_LINES = 450


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    if parts and parts[0] == "data":
        parts = ("ganfaces_data", *parts[1:])
    return ".".join(parts)


def sources() -> dict[str, Path]:
    out = {}
    for top in (*PACKAGES, "data"):
        for p in sorted((ROOT / top).rglob("*.py")):
            out[module_name(p)] = p
    return out


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The project modules ``path`` imports (a ``from package import name`` of a submodule counts
    as that submodule)."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[:len(pkg) - node.level + 1]
                base = ".".join([*pkg, base] if base else pkg)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def import_graph() -> dict[str, set[str]]:
    src = sources()
    return {name: imports(path, name, set(src)) for name, path in src.items()}


def is_job(name: str) -> bool:
    return name.startswith(("morph.jobs.", "refine.jobs."))


def job_import_breaks(graph: dict[str, set[str]]) -> list[str]:
    return [f"{a} imports {b}" for a, deps in sorted(graph.items()) for b in sorted(deps)
            if is_job(b) and a not in COMPOSERS and not a.startswith("cli.")]


def base_breaks(graph: dict[str, set[str]]) -> list[str]:
    return [f"{a} imports {b}" for a, deps in sorted(graph.items()) if a.startswith("morph.base")
            for b in sorted(deps) if not b.startswith("morph.base")]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def long_modules() -> list[str]:
    files = [p for top in (*PACKAGES, "data", "bench", "tools") for p in (ROOT / top).rglob("*.py")]
    return [f"{p.relative_to(ROOT)}: {n} lines" for p in sorted(files)
            if (n := len(p.read_text().splitlines())) > MAX_LINES]


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_libraries_import_no_job_and_jobs_no_other_job(graph):
    assert job_import_breaks(graph) == []
    broken = {k: set(v) for k, v in graph.items()}
    broken["refine.gan.trainer"].add("refine.jobs.train")  # a library reaching into a job
    assert job_import_breaks(broken) == ["refine.gan.trainer imports refine.jobs.train"]
    broken = {k: set(v) for k, v in graph.items()}
    broken["morph.jobs.render"].add("morph.jobs.align")  # a job borrowing from another
    assert job_import_breaks(broken) == ["morph.jobs.render imports morph.jobs.align"]


def test_base_package_imports_nothing_else_of_the_project(graph):
    assert any(k.startswith("morph.base.") for k in graph)
    assert base_breaks(graph) == []
    broken = {k: set(v) for k, v in graph.items()}
    broken["morph.base.h5io"].add("morph.model.sample")
    assert base_breaks(broken) == ["morph.base.h5io imports morph.model.sample"]


def test_no_import_cycle(graph):
    assert cycles(graph) == []
    broken = {k: set(v) for k, v in graph.items()}
    broken["morph.base.errors"].add("morph.align.template")  # template imports errors: a cycle
    assert cycles(broken) == [["morph.align.template", "morph.base.errors"]]


def test_no_module_over_450_lines():
    assert long_modules() == []


def test_the_graph_reads_relative_and_from_imports(tmp_path):
    """``from refine.gan import losses`` counts as ``refine.gan.losses``; a relative import resolves."""
    known = {"refine", "refine.gan", "refine.gan.losses", "refine.gan.nets"}
    f = tmp_path / "trainer.py"
    f.write_text("from refine.gan import losses as L\nfrom .nets import x\n\ndef f():\n    import refine\n")
    assert imports(f, "refine.gan.trainer", known) == {"refine.gan.losses", "refine.gan.nets", "refine"}
