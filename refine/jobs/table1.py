"""`refine table1`: the paper's Table 1 at the user's scale - one recogniser recipe trained on
real data alone, real + raw renders, real + refined images (and synthetic data alone), each
verified on the user's benchmarks, printed as one table (Markdown and JSON).

The paper (section 5.2, Table 1) trains one network on VGG-Face, on VGG-Face plus GANFaces and on
further variants, and compares verification on LFW and IJB-A. Here every row is
``refine train-recognizer`` with the same settings on that row's sets (concatenated, as the paper
adds GANFaces to VGG-Face), followed by ``refine verify`` on each benchmark. The first row is the
same architecture untrained (its initial weights, the seed of the others): what a benchmark gives
with no learning at all, the floor a training set must clear.

Rows appear for the sets given: ``real`` needs ``--real``, ``real+rendered`` needs both, and so on.
Each row's run lives in ``OUT/ROW/`` and resumes after a kill (a finished row is reused when its
settings are the same; other settings are refused).
"""
from __future__ import annotations

import json
from pathlib import Path

from morph.base.errors import UserError
from morph.base.files import write_atomic
from morph.base.h5io import provenance
from refine.evaluation.image_sets import open_image_set
from refine.evaluation.verification import read_benchmarks, verify_pairs
from refine.recognition.model_file import read_model_file
from refine.jobs.train_recognizer import train_recognizer
from refine.recognition.trainer import RecognizerConfig, untrained_model


ROWS = ("untrained", "real", "real+rendered", "real+refined", "rendered", "refined")


def rows(real: list[Path], rendered: Path | None, refined: Path | None,
         only: tuple[str, ...] = ()) -> list[tuple[str, list[Path]]]:
    """(row name, training sets) in the table's order, for the sets given; ``only`` keeps the rows
    it names (the untrained row always stays: it is every benchmark's floor and costs no training)."""
    if only:
        given = [name for name, _ in rows(real, rendered, refined)]
        missing = [r for r in only if r not in given]
        if missing:
            raise UserError(f"--row {missing[0]}: this table has no such row with the sets given "
                            f"(its rows: {', '.join(given)}); give the sets that row trains on.")
        return [(name, data) for name, data in rows(real, rendered, refined) if name == "untrained" or name in only]
    out = [("untrained", [])]
    if real:
        out.append(("real", list(real)))
        if rendered is not None:
            out.append(("real+rendered", [*real, rendered]))
        if refined is not None:
            out.append(("real+refined", [*real, refined]))
    if rendered is not None:
        out.append(("rendered", [rendered]))
    if refined is not None:
        out.append(("refined", [refined]))
    return out


def _trained(run: Path, cfg: RecognizerConfig, data: list[Path], progress: bool, threads: int | None) -> Path:
    model = run / "recognizer.pt"
    if model.is_file():
        state = read_model_file(model) or {}
        done = state.get("trained", {})
        # an export folder is recorded as the file it holds (``open_image_set``'s path)
        same = (done.get("config") == cfg.recipe()
                and [s["path"] for s in done.get("sets", [])] == [str(open_image_set(p).path) for p in data])
        if not same:
            raise UserError(f"{model}: was trained with other settings or sets than this table's; "
                            "delete its folder or write the table elsewhere (-o).")
        return model
    resume = (run / "checkpoints").is_dir() and any((run / "checkpoints").glob("step_*.pt"))
    return train_recognizer(cfg, data, run, resume=resume, progress=progress, threads=threads)


def table1(out: Path, cfg: RecognizerConfig, real: list[Path] | None = None, rendered: Path | None = None,
           refined: Path | None = None, *, lfw_pairs=None, images=None, template: str | None = None, bins=(),
           sets=(), n_pairs: int = 1000, progress: bool = True, threads: int | None = None,
           batch_size: int = 64, only: tuple[str, ...] = ()) -> dict:
    """Train and verify every row on every benchmark given (``read_benchmarks``; labelled sets'
    pairs drawn with the recipe's seed), or the rows ``only`` names (``rows``); write OUT/table1.md and
    OUT/table1.json; return the JSON."""
    benchmarks = read_benchmarks(lfw_pairs, images, template, bins, sets, n_pairs, cfg.seed)
    if not benchmarks:
        raise UserError("give at least one benchmark to verify on (--lfw-pairs, --bin or --set).")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg.check()
    chosen = rows(list(real or []), rendered, refined, tuple(only))
    results = []
    for name, data in chosen:
        run = out / name
        if name == "untrained":
            run.mkdir(exist_ok=True)
            model = untrained_model(run / "recognizer.pt", cfg)
        else:
            if progress:
                print(f"{name}: training on {', '.join(map(str, data))}", flush=True)
            model = _trained(run, cfg, data, progress, threads)
        trained = (read_model_file(model) or {}).get("trained", {})
        row = {"row": name, "sets": trained.get("sets", []), "steps": trained.get("steps", 0),
               "identities": trained.get("classes", 0), "model": str(model), "benchmarks": {}}
        spent = run / "time.json"
        if spent.is_file():
            row["time"] = json.loads(spent.read_text())
        for b in benchmarks:
            r = verify_pairs(b.pairs, run / f"verify_{b.name}", embedder=str(model), batch_size=batch_size,
                       device=cfg.device)
            row["benchmarks"][b.name] = {
                "accuracy": round(r["accuracy"]["mean"], 4), "accuracy_std": round(r["accuracy"]["std"], 4),
                "auc": round(r["auc"], 4), "eer": round(r["eer"], 4),
                "tar_at_far": {k: (None if v is None else round(v["tar"], 4)) for k, v in r["tar_at_far"].items()},
                "pairs": r["pairs"]["total"]}
        results.append(row)
        if progress:
            print("  " + "; ".join(f"{b}: accuracy {v['accuracy']:.4f} AUC {v['auc']:.4f}"
                                   for b, v in row["benchmarks"].items()), flush=True)
    report = {"recipe": cfg.to_dict(), "benchmarks": {b.name: b.pairs.source for b in benchmarks},
              "rows": results, "provenance": provenance()}
    write_atomic(out / "table1.md", markdown(report).encode())
    write_atomic(out / "table1.json", json.dumps(report, indent=1).encode())
    return report


def markdown(report: dict) -> str:
    """The table: a row per training set, per benchmark its accuracy (mean +- std over folds), AUC
    and TAR at FAR 1e-3."""
    names = list(report["benchmarks"])
    head = "| training data | identities | images | " + " | ".join(
        f"{b} accuracy | {b} AUC | {b} TAR@FAR=1e-3" for b in names) + " |"
    rule = "| --- | ---: | ---: | " + " | ".join("---: | ---: | ---:" for _ in names) + " |"
    lines = [head, rule]
    for row in report["rows"]:
        images = sum(s["images"] for s in row["sets"])
        cells = []
        for b in names:
            v = row["benchmarks"][b]
            tar = v["tar_at_far"].get("0.001")
            cells += [f"{100 * v['accuracy']:.2f} ± {100 * v['accuracy_std']:.2f}", f"{v['auc']:.4f}",
                      "-" if tar is None else f"{tar:.4f}"]
        lines.append(f"| {row['row']} | {row['identities']} | {images} | " + " | ".join(cells) + " |")
    r = report["recipe"]
    lines += ["", f"Recipe: {r['arch']} (width {r['width']}, {r['embedding_size']}-D, {r['crop']} crop), "
              f"{r['margin']} margin" + (f" (m {r['margin_m']})" if r.get("margin_m") is not None else "")
              + (f" (s {r['margin_s']})" if r.get("margin_s") is not None else "") + f", {r['steps']} steps of {r['batch_size']} images, SGD lr {r['lr']}, "
              f"augmentation {r['augment']}, seed {r['seed']}. Accuracy: 10-fold, mean ± std (%)."]
    return "\n".join(lines) + "\n"
