"""`refine pipeline`: sample -> render -> align -> fit -> render-pairs -> train -> export -> evaluate.

One YAML (see ``ganfaces_data/pipeline_example.yaml``) drives every stage; all outputs go under
``out``::

    OUT/identities.h5  OUT/synthetic.h5  OUT/real.h5  OUT/fits.h5  OUT/pairs.h5
    OUT/run/           (checkpoints, logs, config.yaml)
    OUT/export/FORMAT/ (one folder per export format)
    OUT/report.json  OUT/report.png

Each stage is skipped when its output is already complete, so re-running the same command after
a kill resumes where it stopped: render, align, render-pairs and export resume by themselves;
training is skipped when ``run/checkpoints/step_<steps>.pt`` exists and resumed from the newest
checkpoint otherwise; sampling is skipped when identities.h5 holds the same sample; evaluation
is skipped when the report was made from the same export with the same settings.

Pairs for the full method (variant ``ours``) come from 300W-LP-style annotations
(``pairs: {annotated: FOLDER, model: SPEC}``), from a pairs.h5 (``pairs: {h5: FILE}``), or from the
real photos themselves (``pairs: {fit: true}``): the fit stage fits the pipeline's model to every
face of ``real: photos`` (``morph fit`` -> OUT/fits.h5) and render-pairs pairs each aligned photo
with the render of its fit (``morph render-pairs --fits``), so a folder of photos is all the full
method needs. Without that, the fit stage is skipped.

Relative paths in the YAML are resolved against the YAML's folder.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from morph.base.errors import UserError
from morph.base.files import file_sha256, job_key, output_lock

STAGES = ("sample", "render", "align", "fit", "render-pairs", "train", "export", "evaluate")
TOP_KEYS = ("out", "model", "priors", "device", "sample", "real", "pairs", "train", "export", "evaluate")
SAMPLE_KEYS = ("n_identities", "images_per_identity", "seed")
REAL_KEYS = ("photos", "h5", "all_faces", "min_face_size", "batch_size")
PAIRS_KEYS = ("annotated", "model", "h5", "fit", "max_landmark_error", "batch_size")
EXPORT_KEYS = ("n_identities", "images_per_identity", "seed", "format", "quality", "png", "max_dr_error",
               "max_cycle_error", "max_retries", "scores", "dropout", "batch_size", "threads", "precision")
EVALUATE_KEYS = ("pairs", "against", "seed", "embedder", "max_images", "min_face_size", "batch_size")
STATE_DIR = ".pipeline"


@dataclass
class PipelineConfig:
    source: Path
    out: Path
    model: str = "default"
    priors: str | None = None
    device: str = "cpu"
    sample: dict = field(default_factory=dict)
    real: dict = field(default_factory=dict)
    pairs: dict | None = None
    train: dict = field(default_factory=dict)
    export: dict = field(default_factory=dict)
    evaluate: dict | None = field(default_factory=dict)

    @property
    def formats(self) -> list[str]:
        f = self.export.get("format", "imagefolder")
        return [f] if isinstance(f, str) else list(f)


# ------------------------------------------------------------------------------ the config --

def _check_keys(d, allowed, where: str, source: Path) -> dict:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise UserError(f"{source}: '{where}' must be a mapping; allowed keys: {', '.join(allowed)}.")
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise UserError(f"{source}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} in "
                        f"'{where}'; allowed: {', '.join(allowed)}.")
    return dict(d)


def _path(value, base: Path) -> Path:
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else (base / p)


def _spec(value, base: Path):
    """A model/priors spec: a file path relative to the YAML, or a name like 'default'."""
    if value is None:
        return None
    value = str(value)
    if value == "default" or not any(c in value for c in "/\\."):
        return value
    return str(_path(value, base))


def load_pipeline(path: str | Path) -> PipelineConfig:
    from refine.gan.config import TrainConfig

    source = Path(path)
    if not source.is_file():
        raise UserError(f"{source}: no such pipeline file; check the path.")
    try:
        raw = yaml.safe_load(source.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{source}: not valid YAML ({str(e).splitlines()[0]}); fix the syntax.") from None
    raw = _check_keys(raw, TOP_KEYS, "the top level", source)
    base = source.resolve().parent
    if "out" not in raw:
        raise UserError(f"{source}: needs 'out: FOLDER' (where every output goes).")
    sample = _check_keys(raw.get("sample"), SAMPLE_KEYS, "sample", source)
    for k in ("n_identities", "images_per_identity"):
        if k not in sample:
            raise UserError(f"{source}: 'sample' needs {k}.")
    sample.setdefault("seed", 0)
    real = _check_keys(raw.get("real"), REAL_KEYS, "real", source)
    if ("photos" in real) == ("h5" in real):
        raise UserError(f"{source}: 'real' needs exactly one of photos: FOLDER (to align) or h5: real.h5.")
    for k in ("photos", "h5"):
        if k in real:
            real[k] = _path(real[k], base)
    pairs = None
    if raw.get("pairs") is not None:
        pairs = _check_keys(raw["pairs"], PAIRS_KEYS, "pairs", source)
        if "fit" in pairs and pairs["fit"] is not True:
            raise UserError(f"{source}: 'pairs: fit' must be true (fit the model to the real photos) or left out.")
        if sum(k in pairs for k in ("annotated", "h5", "fit")) != 1:
            raise UserError(f"{source}: 'pairs' needs exactly one of annotated: FOLDER (with model: SPEC), "
                            "h5: pairs.h5 or fit: true (fit the model to the real photos); or leave 'pairs' out "
                            "to train without pairs.")
        if "fit" in pairs:
            if "photos" not in real:
                raise UserError(f"{source}: 'pairs: fit: true' fits the real photos; give real: photos: FOLDER.")
            if "model" in pairs:
                raise UserError(f"{source}: 'pairs: fit: true' fits the pipeline's own model; drop pairs: model.")
        elif "annotated" in pairs:
            if "model" not in pairs:
                raise UserError(f"{source}: 'pairs' needs model: SPEC, the 3DMM the annotations were fitted with.")
            pairs["annotated"] = _path(pairs["annotated"], base)
            pairs["model"] = _spec(pairs["model"], base)
        else:
            pairs["h5"] = _path(pairs["h5"], base)
    train = _check_keys(raw.get("train"), [f.name for f in dataclasses.fields(TrainConfig)], "train", source)
    export = _check_keys(raw.get("export"), EXPORT_KEYS, "export", source)
    for k in ("n_identities", "images_per_identity"):
        if k not in export:
            raise UserError(f"{source}: 'export' needs {k}.")
    evaluate = raw.get("evaluate", {})
    evaluate = None if evaluate is False else _check_keys(evaluate, EVALUATE_KEYS, "evaluate", source)
    cfg = PipelineConfig(source=source, out=_path(raw["out"], base), model=_spec(raw.get("model", "default"), base),
                         priors=_spec(raw.get("priors"), base), device=str(raw.get("device", "cpu")),
                         sample=sample, real=real, pairs=pairs, train=train, export=export, evaluate=evaluate)
    export.setdefault("seed", int(sample["seed"]) + 1)
    if int(export["seed"]) == int(sample["seed"]):
        raise UserError(f"{source}: export seed {export['seed']} is the training sample's seed; the export "
                        "would re-make the training identities. Choose another 'export: seed'.")
    bad = [f for f in cfg.formats if f not in ("imagefolder", "hdf5")]
    if bad or not cfg.formats:
        raise UserError(f"{source}: export format {', '.join(map(str, bad)) or '(empty)'} is unknown; "
                        "use imagefolder, hdf5 or a list of both.")
    if evaluate is not None:
        against = evaluate.get("against")
        if against is not None and str(against) != "real":
            evaluate["against"] = _path(against, base)
    return cfg


def train_config(cfg: PipelineConfig):
    from refine.gan.config import TrainConfig

    values = dict(cfg.train)
    values.setdefault("device", cfg.device)
    values.setdefault("seed", int(cfg.sample["seed"]))
    if cfg.pairs is None:
        values.setdefault("variant", "no_pairs")
    try:
        tc = TrainConfig(**values)
    except TypeError as e:
        raise UserError(f"{cfg.source}: train: {e}.") from None
    if tc.uses_pairs and cfg.pairs is None:
        raise UserError(f"{cfg.source}: train variant '{tc.variant}' needs paired data; add a 'pairs' section "
                        "or choose variant no_pairs, cyclegan or simgan.")
    return tc


# ---------------------------------------------------------------------------------- stages --

def _h5_complete(path: Path) -> bool:
    import h5py
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            return bool(f.attrs.get("complete"))
    except OSError:
        return False


def _sample_stage(cfg: PipelineConfig, path: Path) -> str:
    from morph.model.priors import load_priors
    from morph.jobs.sample import sample_identities

    s = cfg.sample
    want = {"seed": int(s["seed"]), "model": str(cfg.model), "n_identities": int(s["n_identities"]),
            "images_per_identity": int(s["images_per_identity"]), "first_identity": 0}
    priors = load_priors(cfg.priors)
    if path.exists():
        import h5py
        try:
            with h5py.File(path, "r") as f:
                have = {k: f.attrs.get(k) for k in (*want, "priors")}
        except OSError:
            have = {}
        same = all(have.get(k) is not None and type(v)(have[k]) == v for k, v in want.items())
        prior_text = have.get("priors")
        if same and (prior_text.decode() if isinstance(prior_text, bytes) else prior_text) == priors.text:
            return "already complete"
        raise UserError(f"{path}: holds another sample (different seed, size, model or priors); delete it "
                        f"(and what was made from it) or choose another 'out'.")
    sample_identities(path, cfg.model, cfg.priors, n_identities=want["n_identities"],
                      images_per_identity=want["images_per_identity"], seed=want["seed"])
    return f"{want['n_identities']} identities x {want['images_per_identity']} images"


def _file_key(*parts) -> str:
    """A job key over settings and the contents of the files among ``parts``."""
    return job_key(*(file_sha256(p) if isinstance(p, Path) and p.is_file() else
                     json.dumps(p, sort_keys=True, default=str) for p in parts))


def run_pipeline(config_path: str | Path, echo: Callable[[str], None] = print, progress: bool = True) -> dict:
    """Run (or resume) every stage; return {stage: status} and the paths written."""
    from morph.jobs.align import align_folder
    from morph.jobs.fit import fit_folder
    from morph.jobs.render_pairs import render_fit_pairs, render_pairs
    from morph.jobs.render import render_identities
    from refine.jobs.evaluate import evaluate
    from refine.export.options import ExportOptions
    from refine.export.state import MANIFEST
    from refine.jobs.export_dataset import export_dataset
    from refine.jobs.train import train

    cfg = load_pipeline(config_path)
    tc = train_config(cfg)
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out, "pipeline folder"):
        (out / STATE_DIR).mkdir(exist_ok=True)
        ids, syn = out / "identities.h5", out / "synthetic.h5"
        status: dict[str, str] = {}
        n = len(STAGES)

        def header(i: int, text: str, done: bool, skipped: bool = False):
            status[STAGES[i]] = "skipped" if skipped else "complete" if done else "run"
            note = " (skipped)" if skipped else " (already complete)" if done else ""
            echo(f"[{i + 1}/{n}] {STAGES[i]}: {text}{note}")

        # 1 sample
        done = ids.exists()
        header(0, f"{cfg.sample['n_identities']} identities x {cfg.sample['images_per_identity']} images, "
                  f"seed {cfg.sample['seed']} -> {ids}", done)
        _sample_stage(cfg, ids)

        # 2 render
        done = _h5_complete(syn)
        header(1, f"{ids.name} -> {syn}", done)
        render_identities(ids, syn, progress=progress and not done)

        # 3 align
        if "h5" in cfg.real:
            real = _given_h5(cfg, "real", 2, header)
        else:
            real = out / "real.h5"
            done = _h5_complete(real)
            header(2, f"{cfg.real['photos']} -> {real}", done)
            opts = {k: cfg.real[k] for k in ("all_faces", "min_face_size", "batch_size") if k in cfg.real}
            r = align_folder(cfg.real["photos"], real, device="cpu", progress=progress and not done,
                             report=(lambda line: None) if done else echo, **opts)
            if not done:
                echo(f"  {r['n_faces']} faces; {len(r['skipped'])} photos skipped")

        # 4 fit
        fits = out / "fits.h5"
        if cfg.pairs is None or "fit" not in cfg.pairs:
            header(3, "pairs do not come from the real photos' fits", True, skipped=True)
        else:
            done = _h5_complete(fits)
            header(3, f"{cfg.model} to the faces of {cfg.real['photos']} -> {fits}", done)
            opts = {k: cfg.real[k] for k in ("min_face_size", "batch_size") if k in cfg.real}
            r = fit_folder(cfg.real["photos"], fits, model_spec=cfg.model, priors=cfg.priors,
                           progress=progress and not done, report=(lambda line: None) if done else echo, **opts)
            if not done:
                echo(f"  {r['n_faces']} faces fitted; {len(r['skipped'])} photos skipped")

        # 5 render-pairs
        pairs = None
        if cfg.pairs is None:
            header(4, "no 'pairs' section; training without paired data", True, skipped=True)
        elif "h5" in cfg.pairs:
            pairs = _given_h5(cfg, "pairs", 4, header)
        elif "fit" in cfg.pairs:
            pairs = out / "pairs.h5"
            done = _h5_complete(pairs)
            header(4, f"{fits} -> {pairs}", done)
            opts = {k: cfg.pairs[k] for k in ("batch_size",) if k in cfg.pairs}
            render_fit_pairs(fits, pairs, progress=progress and not done, **opts)
        else:
            pairs = out / "pairs.h5"
            done = _h5_complete(pairs)
            header(4, f"{cfg.pairs['annotated']} -> {pairs}", done)
            opts = {k: cfg.pairs[k] for k in ("max_landmark_error", "batch_size") if k in cfg.pairs}
            render_pairs(cfg.pairs["annotated"], pairs, cfg.pairs["model"], progress=progress and not done,
                         report=(lambda line: None) if done else (lambda line: echo(f"  {line}")), **opts)

        # 6 train
        run_dir = out / "run"
        ckpt_dir = run_dir / "checkpoints"
        final = ckpt_dir / f"step_{tc.steps:08d}.pt"
        existing = sorted(ckpt_dir.glob("step_*.pt")) if ckpt_dir.is_dir() else []
        done = final.is_file()
        resume = bool(existing) and not done
        header(5, f"{tc.variant}, {tc.steps} steps, batch {tc.batch_size} -> {run_dir}"
                  + (f" (resuming from {existing[-1].name})" if resume else ""), done)
        if not done:
            if existing and int(existing[-1].stem.split("_")[1]) > tc.steps:
                raise UserError(f"{run_dir}: holds a run past {tc.steps} steps ({existing[-1].name}); raise "
                                "'train: steps' or choose another 'out'.")
            train(tc, syn, real, pairs, run_dir, resume=resume, progress=progress)
            if not final.is_file():
                raise UserError(f"{run_dir}: training ended without {final.name}.")

        # 7 export
        exports = {}
        for fmt in cfg.formats:
            exports[fmt] = out / "export" / fmt
        manifests_done = all(_export_complete(p / MANIFEST) for p in exports.values())
        e = cfg.export
        header(6, f"{e['n_identities']} identities x {e['images_per_identity']} images, seed {e['seed']} -> "
                  + ", ".join(str(p) for p in exports.values()), manifests_done)
        (out / "export").mkdir(exist_ok=True)
        extra = {k: e[k] for k in ("quality", "png", "max_dr_error", "max_cycle_error", "max_retries", "scores",
                                   "dropout", "batch_size", "threads", "precision") if k in e}
        for fmt, path in exports.items():
            was = _export_complete(path / MANIFEST)
            m = export_dataset(ExportOptions(checkpoint=final, out=path, n_identities=int(e["n_identities"]),
                                             images_per_identity=int(e["images_per_identity"]), seed=int(e["seed"]),
                                             model=str(cfg.model), priors=cfg.priors, format=fmt,
                                             device=cfg.device, **extra), progress=progress and not was)
            if not was:
                echo(f"  {path}: {m.get('counts', {}).get('flagged', 0)} flagged")

        # 8 evaluate
        report_prefix = out / "report"
        report = None
        if cfg.evaluate is None:
            header(7, "disabled ('evaluate: false')", True, skipped=True)
        else:
            ev = dict(cfg.evaluate)
            dataset = exports[cfg.formats[0]]
            against = ev.pop("against", None)
            if against is not None and str(against) == "real":
                against = real
            kwargs = {"n_pairs": int(ev.pop("pairs", 1000)), **ev}
            key = _file_key(dataset / MANIFEST, str(dataset), str(against), kwargs,
                            against if isinstance(against, Path) else None)
            key_file = out / STATE_DIR / "evaluate.key"
            json_path = out / "report.json"
            done = (json_path.is_file() and (out / "report.png").is_file() and key_file.is_file()
                    and key_file.read_text().strip() == key)
            header(7, f"{dataset}" + (f" against {against}" if against else "") + f" -> {json_path}", done)
            if done:
                report = json.loads(json_path.read_text())
            else:
                key_file.unlink(missing_ok=True)
                report = evaluate(dataset, report_prefix, against=against, device=cfg.device, **kwargs)
                key_file.write_text(key + "\n")
                echo(f"  AUC {report['auc']:.4f}, EER {100 * report['eer']:.2f}%")
        return {"status": status, "out": out, "identities": ids, "synthetic": syn, "real": real,
                "fits": fits if fits.is_file() else None, "pairs": pairs,
                "run": run_dir, "checkpoint": final, "exports": exports,
                "report": None if report is None else out / "report.json"}


def _export_complete(manifest: Path) -> bool:
    try:
        return bool(json.loads(manifest.read_text()).get("complete"))
    except (OSError, ValueError):
        return False


def _given_h5(cfg, section: str, stage: int, header) -> Path:
    """A stage's output given in the YAML (``section: {h5: FILE}``) instead of made: check it exists."""
    path = getattr(cfg, section)["h5"]
    if not path.is_file():
        raise UserError(f"{cfg.source}: {section}: h5 {path} does not exist.")
    header(stage, f"using existing {path}", True)
    return path
