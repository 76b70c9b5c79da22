"""The exporter of ``refine export-dataset``: new identities -> 3DMM renders -> G (EMA) -> a labelled
face dataset, as its options (``refine.export.options``) ask.

For every identity ``i`` in ``[first, first + N)`` of seed ``s`` and each of its ``M`` images:
sample (``morph.model.sample``: identity ``i`` of seed ``s`` is the same in any run), render aligned at
the checkpoint's image size (``morph.render``, the numba engine on the CPU), quantise to 8 bits as
``morph render`` stores training renders, refine with the exponential moving average of G
(``state["nets"]["ema"]``) and score (see ``SCORE_MEANINGS``). G's dropout (keep 0.9) stays on, as
in the authors' ``trainer.generate_dataset`` ("noise that could be caused by uncontrolled
environmental changes", paper section 4), each image's masks drawn from its own seed
(``noise_seed``); ``dropout=False`` (``--no-dropout``) turns it off. Output folder::

    imagefolder:  DIR/{identity:05d}/{image:04d}.jpg   (torchvision.datasets.ImageFolder reads DIR)
    hdf5:         DIR/ganfaces.h5   images, labels, index, draw, landmarks, masks, params/..., scores/...
    always:       DIR/scores.csv    one row per image;  DIR/manifest.json  what made the export

Determinism (README, "Reproducibility"): sampling and the numba renders are the same bits
anywhere; the networks' bits depend on batch shape, threads and instruction set, so the export
fixes which images share a network batch: identities are cut into chunks of ``per_chunk`` from
``first_identity`` (``export_state.chunk_ranges``), a chunk's images always run together in
batches of ``batch_size`` rounded up to a multiple of 8 and padded (``refiner.Refiner``), a
resumed chunk is recomputed whole and torchrun ranks take whole chunks. A resumed or
multi-process export thus writes one run's bytes, given the same network batch (recorded; a
resume with another is refused) and threads per process.

Scores' precision (``refine.export.refiner.score_dtype``, recorded as ``score_precision``): on a CPU with
bf16 units D_R and G' run in bfloat16, which moves dr_error and cycle_error from float32 scoring by
at most 1e-4 (measured on the paper-size networks: 1.1e-6 and 1.7e-5; ``bench/export.py``,
``score_tolerance``); G's images, C's embeddings and identity_loss are float32 and unchanged.
``precision="bf16"`` (``--precision bf16``, recorded as ``refine_precision`` when on) runs G in
bfloat16 too, where that is fast (``refiner.check_refine_precision``): about 3.7x less CPU time for
G, images within 4 8-bit levels of float32's (``bench/export.py``, ``refine_tolerance``; README).
On a CPU the scoring networks, and G in bfloat16, run as fused oneDNN Graph partitions
(``refine.export.onednn_graph``; recorded as ``onednn_graph`` when on), which round otherwise than op by
op: scores within the tolerances above, bfloat16 images within the same 4 levels.

Filtering (``max_dr_error`` / ``max_cycle_error``): an image above a threshold is replaced by a
new draw of the same identity, taking the next image numbers of the identity's per-image seed
stream (``M, M + 1, ...``, in slot order within each round) until it passes or ``max_retries``
re-draws were tried; then the best draw (lowest ``max(score / threshold)``) is kept and flagged.

Resume: an identity is written whole by its format's ``Sink`` (``export_sinks``) and then
recorded in a per-range progress file (``.export/progress-A-B.jsonl``). A re-run skips chunks
whose identities are all recorded. When all are done, rank 0 writes scores.csv, lets the sink
finish (hdf5: assembles ganfaces.h5), marks the manifest complete and removes ``.export``.

Several processes (``torchrun``): rank ``r`` of ``W`` exports chunks ``[r C / W, (r + 1) C / W)`` of
the ``C`` chunks; after a barrier rank 0 merges the progress files.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from morph.base.errors import UserError
from morph.base.files import check_size, disk_errors, file_sha256, job_key, write_atomic
from morph.base.numerics import numerics, set_threads
from morph.formats.named import model_files
from morph.align.template import DEFAULT_TEMPLATE
from refine.distributed import barrier, finish
from refine.export.options import (MANIFEST_VERSION, RENDER_BATCH, SCORE_COLUMNS, SCORE_MEANINGS, SCORES,
                                   ExportOptions, noise_seed, settings_of, versions)
from refine.export.sinks import FORMATS, SINKS
from refine.export.state import (MANIFEST, STATE_DIR, ProgressLog, check_out, chunk_ranges,
                                 rank_chunks, read_manifest, read_progress)
from refine.export.refiner import (Refiner, check_checkpoint, check_new_identities, check_refine_precision)

class Exporter:
    def __init__(self, o: ExportOptions, stats: dict | None = None, progress: bool = True):
        self.o, self.progress = o, progress
        self.stats = stats if stats is not None else {}
        self.out = Path(o.out)
        self.state_dir = self.out / STATE_DIR
        self.id_width = max(5, len(str(o.first_identity + o.n_identities - 1)))
        if o.format not in SINKS:
            raise UserError(f"format '{o.format}' is unknown; choose one of {', '.join(FORMATS)}.")
        self.sink = SINKS[o.format](o, self.out, self.state_dir, self.id_name,
                                    max(4, len(str(o.images_per_identity - 1))))

    def id_name(self, i: int) -> str:
        return f"{i:0{self.id_width}d}"

    # ---- per chunk
    def _tick(self, key, t0):
        t = time.perf_counter()
        self.stats[key] = self.stats.get(key, 0.0) + t - t0
        return t

    def make(self, todo: list[tuple[int, int, int]]) -> list[dict]:
        """Sample, render and refine draws (identity, slot, draw); one dict per draw."""
        from morph.render import render_batch
        from morph.render.output import crops_of
        from morph.model.sample import sample_identity, sample_image

        t = time.perf_counter()
        o, model, priors = self.o, self.model, self.priors
        for i in {i for i, _, _ in todo} - set(self.id_cache):
            self.id_cache[i] = sample_identity(model, priors, o.seed, i)
        imgs = [sample_image(model, priors, o.seed, i, d) for i, _, d in todo]
        params = {"alpha": np.stack([self.id_cache[i][0] for i, _, _ in todo]),
                  "gamma": np.stack([self.id_cache[i][1] for i, _, _ in todo]),
                  **{k: np.stack([p[k] for p in imgs]) for k in ("beta", "pose", "sh", "camera_distance")}}
        t = self._tick("sample", t)
        renders, landmarks, masks = [], [], []
        for s in range(0, len(todo), RENDER_BATCH):
            c = crops_of(render_batch(model, {k: v[s:s + RENDER_BATCH] for k, v in params.items()},
                                      self.render_settings))
            renders.append(c["images"])
            landmarks.append(c["landmarks"])
            masks.append(c["masks"])
        renders = np.concatenate(renders)
        t = self._tick("render", t)
        res = self.refiner.run(renders, np.array([noise_seed(o.seed, i, d) for i, _, d in todo], np.uint64)
                               if o.dropout else None)
        lm, mk = np.concatenate(landmarks), np.concatenate(masks)
        return [{"draw": d, "image": res["image"][k], "landmarks": lm[k], "mask": mk[k],
                 "dr_error": float(res["dr_error"][k]), "cycle_error": float(res["cycle_error"][k]),
                 "embedding": None if res["embedding"] is None else res["embedding"][k],
                 "params": {n: v[k] for n, v in params.items()}}
                for k, (_, _, d) in enumerate(todo)]

    def passes(self, c: dict) -> bool:
        o = self.o
        ok = True
        if o.max_dr_error is not None:
            ok &= c["dr_error"] <= o.max_dr_error
        if o.max_cycle_error is not None:
            ok &= c["cycle_error"] <= o.max_cycle_error
        return bool(ok)

    def badness(self, c: dict) -> float:
        o, r = self.o, []
        if o.max_dr_error is not None:
            r.append(c["dr_error"] / max(o.max_dr_error, 1e-12))
        if o.max_cycle_error is not None:
            r.append(c["cycle_error"] / max(o.max_cycle_error, 1e-12))
        v = max(r) if r else 0.0
        return v if np.isfinite(v) else float("inf")

    def process_chunk(self, ids: list[int]) -> dict[int, list[dict]]:
        """Final images of each identity in ``ids``: candidates, re-draws, selection, identity loss."""
        o, m = self.o, self.o.images_per_identity
        cands = {(i, s): [] for i in ids for s in range(m)}
        next_draw = {i: m for i in ids}
        todo = [(i, s, s) for i in ids for s in range(m)]
        while todo:
            made = self.make(todo)
            again = []
            for (i, s, _), c in zip(todo, made):
                cands[(i, s)].append(c)
                if o.filtering and not self.passes(c) and len(cands[(i, s)]) <= o.max_retries:
                    again.append((i, s, next_draw[i]))
                    next_draw[i] += 1
            todo = again
        result = {}
        for i in ids:
            final = []
            for s in range(m):
                tried = cands[(i, s)]
                c = tried[-1]
                flagged = False
                if o.filtering and not self.passes(c):
                    c = min(tried, key=self.badness)  # first of equals
                    flagged = True
                final.append({**c, "slot": s, "retries": len(tried) - 1, "flagged": flagged})
            if o.scores:
                e = np.stack([c["embedding"] for c in final]).astype(np.float64)
                d = np.linalg.norm(e - e.mean(0), axis=1)
                for c, v in zip(final, d):
                    c["identity_loss"] = float(v)
            else:
                for c in final:
                    c["identity_loss"] = float("nan")
            result[i] = final
        self.id_cache.clear()
        return result

    # ---- writing one identity
    def write_identity(self, i: int, final: list[dict]) -> None:
        tmp = self.state_dir / "tmp" / self.id_name(i)
        with disk_errors(tmp):
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
            self.sink.write(i, final, tmp)
            if self.o.scores:  # C's embeddings, for the data card (refine.export.datacard) when all are done
                e = np.stack([c["embedding"] for c in final]).astype(np.float32)

                def save(p, e=e):
                    with open(p, "wb") as f:
                        np.save(f, e)
                (self.state_dir / "emb").mkdir(exist_ok=True)
                write_atomic(self.state_dir / "emb" / f"{self.id_name(i)}.npy", save)
        self.log.record({"identity": i, "images": [
            {"image": c["slot"], "draw": int(c["draw"]), "dr_error": c["dr_error"], "cycle_error": c["cycle_error"],
             "identity_loss": c["identity_loss"], "retries": c["retries"], "flagged": c["flagged"]}
            for c in final]})

    # ---- the run
    def run(self) -> dict:
        """The export, holding OUT's lock (``refine.distributed.main_rank_lock``)."""
        from morph.base.numerics import check_device
        from refine.distributed import init_distributed, main_rank_lock

        check_device(self.o.device)
        with main_rank_lock(init_distributed(self.o.device), self.out, "export"):
            return self._run()

    def _run(self) -> dict:
        from tqdm import tqdm

        from morph.formats.named import load_model
        from morph.model.priors import load_priors
        from morph.render import RenderSettings
        from morph.model.sample import check_priors
        from refine.checkpoint import load_checkpoint
        from refine.distributed import init_distributed

        o = self.o
        if not 1 <= o.quality <= 100:
            raise UserError(f"--quality {o.quality}: JPEG quality must be in 1..100.")
        if o.filtering and not o.scores:
            raise UserError("--max-dr-error / --max-cycle-error filter on scores; drop --no-scores.")
        if o.references and not o.scores:
            raise UserError("--reference: the leakage audit compares C's embeddings, which --no-scores skips; "
                            "drop --no-scores.")
        if o.exclude_leaks and not o.references:
            raise UserError("--exclude-leaks leaves out identities near those of a --reference set; give one.")
        from refine.evaluation.image_sets import open_image_set
        for ref in o.references:  # checked before the long part
            open_image_set(ref, "reference set for the leakage audit", need_labels=False)
        ddp = init_distributed(o.device)
        self.world = ddp.world
        set_threads(o.threads)  # torchrun: OMP_NUM_THREADS per rank (1 unless set)
        state = load_checkpoint(o.checkpoint)
        cfg = check_checkpoint(state, o.checkpoint)
        self.embedder_spec = str(cfg.get("embedder", "dlib"))
        size = int(cfg["image_size"])
        warning = check_new_identities(state, o.checkpoint, o.seed, o.first_identity, o.n_identities)
        if o.max_cycle_error is not None and "Gp" not in state["nets"]:
            raise UserError(f"{o.checkpoint}: has no G' (variant {cfg.get('variant')}), so no cycle error; "
                            "drop --max-cycle-error.")
        self.model = load_model(o.model)
        self.priors = load_priors(o.priors)
        check_priors(self.model, self.priors)
        n_images = o.n_identities * o.images_per_identity
        per_image = {"hdf5": 24_000, "imagefolder": 40_000 if o.png else 6_000}[o.format] * (size / 108) ** 2
        check_size(self.out, 400 * n_images, int(per_image * n_images),
                   f"an export of {o.n_identities} x {o.images_per_identity} images",
                   "export fewer identities per run (--first-identity continues where one stopped).")
        sha = file_sha256(o.checkpoint)
        settings = settings_of(o, sha, self.model, self.priors, cfg, self.sink.settings())
        status = check_out(self.out, settings)
        manifest = self._manifest(settings, state, cfg, complete=False)
        if status == "complete":
            if ddp.main:
                self._clean()  # what a run stopped right after completing may have left
                if self.progress:
                    print(f"{self.out}: already complete.", file=sys.stderr)
            return read_manifest(self.out / MANIFEST)
        # the networks first: a checkpoint that cannot build them is refused before OUT exists
        self.refiner = Refiner(state, o.checkpoint, cfg, o.device, o.net_batch, o.scores, size, self.stats,
                               refine_dtype=check_refine_precision(o.precision, o.device))
        if ddp.main:
            if warning and self.progress:
                print(warning, file=sys.stderr)
            tm, tfiles, files = state.get("train_model"), state.get("train_model_files"), model_files(self.model.sources)
            if self.progress and ((tm and str(tm) != str(o.model)) or (tfiles and tfiles != files)):
                print(f"note: {o.checkpoint} was trained on renders of model '{tm}' (files {tfiles or 'not recorded'}); "
                      f"exporting with '{o.model}' (files {files}).", file=sys.stderr)
            with disk_errors(self.out):
                self.out.mkdir(exist_ok=True)
            if status == "new":
                write_atomic(self.out / MANIFEST, json.dumps(manifest, indent=2).encode())
            with disk_errors(self.state_dir):
                self.state_dir.mkdir(exist_ok=True)
        barrier(ddp)

        self.render_settings = RenderSettings(image_size=size, device="cpu", outputs=("image", "mask", "landmarks"),
                                              template=cfg.get("crop_template") or DEFAULT_TEMPLATE)
        self.id_cache = {}
        mine = rank_chunks(chunk_ranges(o.first_identity, o.n_identities, o.per_chunk), ddp.rank, ddp.world)
        done = read_progress(self.state_dir)
        is_done = lambda i: i in done and self.sink.artefact(i).exists()  # noqa: E731
        todo = [c for c in mine if not all(is_done(i) for i in c)]
        m, n_mine = o.images_per_identity, sum(len(c) for c in mine)
        bar = tqdm(total=n_mine * m, initial=sum(is_done(i) for c in mine for i in c) * m, unit="img",
                   smoothing=0.1, desc="export" if ddp.world == 1 else f"export (rank 0 of {ddp.world})",
                   disable=not (self.progress and ddp.main))
        if todo:
            self.log = ProgressLog(self.state_dir / f"progress-{self.id_name(mine[0][0])}-"
                                                    f"{self.id_name(mine[-1][-1])}.jsonl")
            try:
                for chunk in todo:  # a partly written chunk is recomputed whole: same batches, same bits
                    result = self.process_chunk(list(chunk))
                    t = time.perf_counter()
                    for i in chunk:
                        if not is_done(i):
                            self.write_identity(i, result[i])
                            bar.update(m)
                    self._tick("write", t)
            finally:
                self.log.close()
                bar.close()  # also on failure: an open bar garbles every later message
        bar.close()
        barrier(ddp)
        if ddp.main:
            manifest = self.finish(manifest)
        barrier(ddp)
        finish(ddp)
        return manifest

    def finish(self, manifest: dict) -> dict:
        o, m = self.o, self.o.images_per_identity
        done = read_progress(self.state_dir)
        ids = range(o.first_identity, o.first_identity + o.n_identities)
        aside = self.state_dir / "excluded"  # identities left out, until the export is complete
        missing = [i for i in ids if i not in done or not (self.sink.artefact(i).exists()
                                                           or (aside / self.id_name(i)).exists())]
        if missing:
            raise UserError(f"{self.out}: identities {missing[0]}.. are not exported (a process stopped early); "
                            "re-run the same command to resume.")
        t = time.perf_counter()
        s = manifest["settings"]
        card = self.data_card(manifest, ids, done)
        excluded = sorted({r["identity"] for r in card.get("leakage", {}).get("near", [])}) if o.exclude_leaks else []
        kept = [i for i in ids if i not in set(excluded)]
        if not kept:
            raise UserError(f"{self.out}: the leakage audit lists every identity; give a lower --leak-threshold "
                            "or drop --exclude-leaks.")
        if excluded:
            card["leakage"]["excluded"] = excluded
            self.sink.set_aside(excluded, aside)
        from morph.base.h5io import provenance
        self.sink.finish(kept, provenance(seed=o.seed, model=str(o.model), model_name=self.model.name,
                                          model_sources=self.model.sources, priors=self.priors.text,
                                          first_identity=o.first_identity, n_identities=o.n_identities,
                                          images_per_identity=m, checkpoint_sha256=s["checkpoint_sha256"],
                                          crop_template=s["crop_template"], n_images=len(kept) * m,
                                          **({"excluded_identities": excluded} if excluded else {})),
                         job_key(json.dumps(s, sort_keys=True)))
        rows, n_flagged, n_redraws = [], 0, 0

        def fmt(v):
            return "" if v is None or not np.isfinite(v) else f"{v:.6f}"

        for i in kept:
            for r in sorted(done[i]["images"], key=lambda r: r["image"]):
                n_flagged += bool(r["flagged"])
                n_redraws += int(r["retries"])
                rows.append(",".join([str(i), str(r["image"]), str(r["draw"]), self.sink.rel_path(i, r["image"]),
                                      fmt(r["dr_error"]), fmt(r["cycle_error"]), fmt(r["identity_loss"]),
                                      str(r["retries"]), str(int(bool(r["flagged"])))]))
        write_atomic(self.out / SCORES, (",".join(SCORE_COLUMNS) + "\n" + "".join(r + "\n" for r in rows)).encode())
        from refine.export import datacard
        datacard.write(self.out, card)  # before the manifest says complete
        manifest = {**manifest, "complete": True,
                    "counts": {"identities": len(kept), "images_per_identity": m,
                               "images": len(kept) * m, "flagged": n_flagged, "redraws": n_redraws,
                               "excluded_identities": excluded}}
        write_atomic(self.out / MANIFEST, json.dumps(manifest, indent=2).encode())
        self._clean()
        self._tick("finish", t)
        return manifest

    def data_card(self, manifest: dict, ids: range, done: dict) -> dict:
        """The data card's content (``refine.export.datacard``) of every exported identity."""
        from refine.export import datacard

        o, m = self.o, self.o.images_per_identity
        loss = np.array([r["identity_loss"] if r["identity_loss"] is not None else np.nan
                         for i in ids for r in sorted(done[i]["images"], key=lambda r: r["image"])], np.float64)
        emb = labels = None
        references = {}
        files = [self.state_dir / "emb" / f"{self.id_name(i)}.npy" for i in ids]
        if o.scores and all(f.is_file() for f in files):  # (not in an export begun by an earlier version)
            emb = np.concatenate([np.load(f, allow_pickle=False) for f in files])
            emb = emb.astype(np.float64)
            labels = np.repeat(np.asarray(ids, np.int64), m)
            for ref in o.references:
                references[str(ref)] = self.reference_means(ref)
        return datacard.build(manifest, self.embedder_spec, emb, labels, loss, references, o.leak_threshold)

    def reference_means(self, path) -> tuple[np.ndarray, list[str]]:
        """Unit mean embedding of each identity of a reference set (each image its own without labels)."""
        from refine.export.datacard import identity_means
        from refine.evaluation.embedding import embed
        from refine.evaluation.image_sets import open_image_set

        images = open_image_set(path, "reference set for the leakage audit", need_labels=False)
        e = embed(images, np.arange(images.n), self.refiner.C, device=str(self.refiner.device),
                  desc=f"embed {images.path.name}")
        if images.labels is None:
            names = [p.name for p in images.files] if images.files else [str(k) for k in range(images.n)]
            return e / np.linalg.norm(e, axis=1, keepdims=True), names
        ids, means = identity_means(e, images.labels)
        names = images.label_names or [str(k) for k in ids]
        return means, [names[k] if k < len(names) else str(k) for k in ids]

    def _clean(self) -> None:
        """Remove the work state of a complete export (ImageFolder would take it for a class)."""
        shutil.rmtree(self.state_dir, ignore_errors=True)
        for p in self.out.glob("*.partial"):
            p.unlink()

    def _manifest(self, settings: dict, state: dict, cfg: dict, complete: bool) -> dict:
        o = self.o
        fmt = self.sink.manifest()
        return {
            "format_version": MANIFEST_VERSION, "complete": complete,
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": versions(),
            "numerics": {**numerics(), "processes": self.world},
            "checkpoint": {"path": str(o.checkpoint), "sha256": settings["checkpoint_sha256"],
                           "step": int(state.get("step", -1)), "variant": cfg.get("variant"),
                           "train_seed": state.get("train_seed"), "train_model": state.get("train_model"),
                           "train_model_files": state.get("train_model_files"),
                           "generator": "exponential moving average of G (nets.ema), dropout "
                                        + ("on, seeded per identity and draw" if o.dropout else "off")},
            "model": str(o.model), "model_name": self.model.name, "model_sources": self.model.sources,
            "priors": self.priors.text, "priors_source": self.priors.source, "seed": o.seed,
            "first_identity": o.first_identity, "n_identities": o.n_identities,
            "images_per_identity": o.images_per_identity, "n_images": o.n_identities * o.images_per_identity,
            "format": o.format, "layout": fmt["layout"], "image": {"size": settings["image_size"], **fmt["image"]},
            "filter": {"max_dr_error": o.max_dr_error, "max_cycle_error": o.max_cycle_error,
                       "max_retries": settings["max_retries"]},
            "scores": {"file": SCORES, "columns": SCORE_MEANINGS} if o.scores else
                      {"file": SCORES, "columns": SCORE_MEANINGS, "note": "exported with --no-scores: score "
                       "columns are empty"},
            "settings": settings,
        }
