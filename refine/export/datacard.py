"""The data card of an export: ``DATACARD.md`` (for people) and ``datacard.json`` (for tools).

What made the set (model files, priors, checkpoint, seeds: from the manifest), its counts, and
what the identity network C (the checkpoint's embedder, through its own face chip) says of it:

- **separability**: same- against different-identity pairs of exported images (up to 3,000 of
  each, drawn with the export's seed as ``refine evaluate`` draws them): AUC, EER and the EER's
  distance, Euclidean between L2-normalised embeddings;
- **consistency**: each image's distance to its identity's mean embedding (the ``identity_loss``
  column of scores.csv), summarised (an intra-identity consistency);
- **uniqueness**: each identity's distance to the nearest other identity's mean (L2-normalised),
  and the share of identities whose nearest other one is farther than the EER distance (an
  inter-identity uniqueness, measured on means; named after the kind of metric DCFace reports,
  not computed as its code does, which was not read);
- **leakage audit** against reference sets the user names (their training or benchmark
  identities): synthetic identities whose mean is nearer to a reference identity's mean than the
  threshold (default: the EER distance above), nearest first. A reference set without labels counts
  every image as its own identity. With ``--exclude-leaks`` the export leaves those identities out
  and the card names them (``leakage.excluded``); its other figures describe every identity made.

Nothing here holds the time or the command (the manifest does), so an export's data card is the
same bytes whenever its images are.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from morph.base.files import write_atomic
from refine.evaluation.metrics import auc, draw_pairs, equal_error_rate, roc_curve

DATACARD_MD, DATACARD_JSON = "DATACARD.md", "datacard.json"
MAX_PAIRS = 3000


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def identity_means(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(identities, unit mean embedding per identity) of L2-normalised ``embeddings``."""
    ids, inverse = np.unique(labels, return_inverse=True)
    sums = np.zeros((len(ids), embeddings.shape[1]))
    np.add.at(sums, inverse, embeddings)
    return ids, _unit(sums)


def separability(embeddings: np.ndarray, labels: np.ndarray, seed: int) -> dict | None:
    """AUC, EER and its distance of same- against different-identity pairs; None without both kinds."""
    counts = np.bincount(np.unique(labels, return_inverse=True)[1])
    if len(counts) < 2 or counts.max() < 2:
        return None
    pairs = draw_pairs(np.unique(labels, return_inverse=True)[1], MAX_PAIRS, np.random.default_rng([seed, 7]))
    d = lambda p: np.linalg.norm(embeddings[p[:, 0]] - embeddings[p[:, 1]], axis=1)  # noqa: E731
    roc = roc_curve(d(pairs.positive), d(pairs.negative))
    eer, threshold = equal_error_rate(roc)
    return {"auc": auc(roc), "eer": eer, "eer_distance": threshold, "pairs": [len(pairs.positive), len(pairs.negative)]}


def uniqueness(means: np.ndarray, threshold: float | None) -> dict | None:
    if len(means) < 2:
        return None
    d = np.sqrt(np.maximum(0, 2 - 2 * means @ means.T))
    np.fill_diagonal(d, np.inf)
    nearest = d.min(1)
    out = {"nearest_other_identity": _summary(nearest)}
    if threshold is not None:
        out["unique_share"] = float((nearest > threshold).mean())
    return out


def leakage(ids: np.ndarray, means: np.ndarray, references: dict[str, tuple[np.ndarray, list[str]]],
            threshold: float) -> list[dict]:
    """Synthetic identities nearer than ``threshold`` to a reference identity, nearest first.
    ``references``: name -> (unit identity means, identity names)."""
    found = []
    for name, (ref_means, ref_names) in references.items():
        d = np.sqrt(np.maximum(0, 2 - 2 * means @ ref_means.T))
        j = d.argmin(1)
        for k in np.flatnonzero(d[np.arange(len(ids)), j] < threshold):
            found.append({"identity": int(ids[k]), "reference": name, "reference_identity": ref_names[j[k]],
                          "distance": float(d[k, j[k]])})
    return sorted(found, key=lambda r: (r["distance"], r["identity"]))


def _summary(x: np.ndarray) -> dict:
    x = np.asarray(x, np.float64)
    return {"mean": float(x.mean()), "p5": float(np.percentile(x, 5)), "median": float(np.median(x)),
            "p95": float(np.percentile(x, 95)), "max": float(x.max())}


def build(manifest: dict, embedder: str | None, embeddings: np.ndarray | None, labels: np.ndarray | None,
          identity_loss: np.ndarray, references: dict, leak_threshold: float | None) -> dict:
    """The data card's content (see the module docstring)."""
    card = {
        "dataset": {"identities": manifest["n_identities"], "images_per_identity": manifest["images_per_identity"],
                    "images": manifest["n_images"], "format": manifest["format"], "image": manifest["image"],
                    "first_identity": manifest["first_identity"]},
        "made_by": {"model": manifest["model"], "model_name": manifest["model_name"],
                    "model_sources": manifest["model_sources"], "priors": manifest["priors_source"] or "default",
                    "seed": manifest["seed"], "checkpoint": manifest["checkpoint"],
                    "software": manifest["versions"]},
        "embedder": embedder,
    }
    if embeddings is None:
        card["note"] = ("no embeddings were kept (exported with --no-scores, or begun by an earlier version), "
                        "so no identity measures")
        return card
    sep = separability(embeddings, labels, manifest["seed"])
    ids, means = identity_means(embeddings, labels)
    threshold = leak_threshold if leak_threshold is not None else (sep["eer_distance"] if sep else None)
    card["separability"] = sep
    card["consistency"] = {"distance_to_identity_mean": _summary(identity_loss[np.isfinite(identity_loss)])}
    card["uniqueness"] = uniqueness(means, sep["eer_distance"] if sep else None)
    if references:
        card["leakage"] = {"threshold": threshold, "threshold_from": "--leak-threshold" if leak_threshold is not None
                           else "the EER distance of the set's own pairs",
                           "references": {k: len(v[1]) for k, v in references.items()},
                           "near": leakage(ids, means, references, threshold) if threshold is not None else []}
    return card


def write(out: Path, card: dict) -> None:
    write_atomic(Path(out) / DATACARD_JSON, (json.dumps(card, indent=1) + "\n").encode())
    write_atomic(Path(out) / DATACARD_MD, markdown(card).encode())


def markdown(card: dict) -> str:
    d, m = card["dataset"], card["made_by"]
    ck = m["checkpoint"]
    lines = [
        "# Data card", "",
        f"{d['identities']} synthetic identities x {d['images_per_identity']} images = {d['images']} images "
        f"({d['format']}, {d['image']['size']} px), identities {d['first_identity']} to "
        f"{d['first_identity'] + d['identities'] - 1}. Made by the GANFaces toolkit; `manifest.json` holds the "
        "command, the time and every setting.", "",
        "## What made it", "",
        f"- 3D morphable model: `{m['model']}` ({m['model_name']}); files: "
        + ", ".join(f"{k} `{v}`" for k, v in m["model_sources"].items()) + " (their licences apply to the images).",
        f"- Priors: {m['priors']}; seed {m['seed']}.",
        f"- Refiner: checkpoint `{ck['path']}` (sha256 {ck['sha256'][:16]}..., step {ck['step']}, variant "
        f"{ck['variant']}), trained on model `{ck['train_model']}` with seed {ck['train_seed']}; {ck['generator']}.",
        "",
    ]
    if "note" in card:
        return "\n".join(lines + [card["note"].capitalize() + ".", ""])
    lines += [f"## What the identity network says ({card['embedder']})", ""]
    s = card["separability"]
    if s:
        lines.append(f"- Separability: AUC {s['auc']:.4f}, EER {100 * s['eer']:.2f}% at distance "
                     f"{s['eer_distance']:.3f} ({s['pairs'][0]} same- and {s['pairs'][1]} different-identity pairs).")
    c = card["consistency"]["distance_to_identity_mean"]
    lines.append(f"- Consistency: an image lies {c['mean']:.3f} from its identity's mean on average "
                 f"(95% within {c['p95']:.3f}); per image in scores.csv (identity_loss).")
    u = card["uniqueness"]
    if u:
        share = f"; {100 * u['unique_share']:.1f}% of identities are farther than the EER distance" \
            if "unique_share" in u else ""
        lines.append(f"- Uniqueness: the nearest other identity's mean lies {u['nearest_other_identity']['mean']:.3f} "
                     f"away on average (5% nearer than {u['nearest_other_identity']['p5']:.3f}){share}.")
    if "leakage" in card:
        lk = card["leakage"]
        lines += ["", "## Leakage audit", "",
                  "Reference sets: " + ", ".join(f"`{k}` ({n} identities)" for k, n in lk["references"].items())
                  + f"; threshold {lk['threshold']:.3f} ({lk['threshold_from']}).", ""]
        if lk["near"]:
            lines += ["| synthetic identity | reference | reference identity | distance |", "|---|---|---|---|"]
            lines += [f"| {r['identity']} | `{r['reference']}` | {r['reference_identity']} | {r['distance']:.4f} |"
                      for r in lk["near"]]
        else:
            lines.append("No synthetic identity is nearer than the threshold to a reference identity.")
        if lk.get("excluded"):
            lines += ["", f"Left out of the dataset (--exclude-leaks): {len(lk['excluded'])} identities, "
                      + ", ".join(map(str, lk["excluded"])) + ". The counts above include them."]
    return "\n".join(lines) + "\n"
