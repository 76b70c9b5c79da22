"""Benchmark: how well a face recogniser tells apart the identities a model samples (issue 15).

For each model: N identities x M images drawn under the priors (``morph.model.sample.sample_block``, as
``morph sample-identities`` does), rendered at the crop template's size as ``morph render`` does
(``morph.render.render_batch``: aligned 108x108 crops on black), then
- verification: dlib's ResNet embeddings (``refine.embedders.load_embedder('dlib')``, centre crop
  of the aligned render), Euclidean distance between L2-normalised embeddings, on up to ``--pairs``
  same-identity and as many different-identity pairs (``refine.evaluation.metrics.draw_pairs``); ROC AUC
  and EER (``refine.evaluation.metrics``). Higher AUC: identities differ more than the images of one
  identity do under the priors' pose, light and expression.
- detection: the share of renders in which MTCNN (``morph.align.mtcnn.MTCNN``, default thresholds,
  20 px minimum face) finds exactly one face: renders a real-photo aligner would not accept are
  wasted training data.
Every model gets the same seed, so the draws of the priors' pose and light are alike where the
models' dimensions agree.

    python bench/identities.py [--model default --model menpo3d ...] [--identities 100]
                               [--images 10] [--priors PRIORS.yaml] [--seed 0] [--pairs 5000]

The last line printed is one JSON object: per model its auc, eer, one_face_share, the numbers of
pairs, and seconds; and ``auc_gain`` (first model minus second) when two or more are given.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np
import torch
from realset import embed  # noqa: E402  (bench/ is not a package; unit-length dlib embeddings)


def render(model, priors, n_identities: int, n_images: int, seed: int, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(B, H, W, 3) uint8 aligned renders and (B,) identity labels."""
    from morph.render import RenderSettings, render_batch
    from morph.render.output import to_uint8
    from morph.model.sample import sample_block

    s = sample_block(model, priors, seed, range(n_identities), n_images)
    params = s.render_params()
    settings = RenderSettings(outputs=("image",))
    images = [to_uint8(render_batch(model, {k: v[i:i + batch] for k, v in params.items()}, settings).image.numpy())
              for i in range(0, len(s.identity), batch)]
    return np.concatenate(images), s.identity


def verification(e: np.ndarray, labels: np.ndarray, n_pairs: int, seed: int) -> dict:
    from refine.evaluation.metrics import auc, draw_pairs, equal_error_rate, roc_curve

    pairs = draw_pairs(labels, n_pairs, np.random.default_rng(seed))

    def dist(p):
        return np.linalg.norm(e[p[:, 0]] - e[p[:, 1]], axis=1)

    roc = roc_curve(dist(pairs.positive), dist(pairs.negative))
    return {"auc": round(auc(roc), 4), "eer": round(equal_error_rate(roc)[0], 4),
            "positive_pairs": len(pairs.positive), "negative_pairs": len(pairs.negative)}


@torch.inference_mode()
def one_face_share(images: np.ndarray, batch: int = 64) -> float:
    from morph.align.mtcnn import MTCNN

    det = MTCNN()
    counts = [len(d.boxes) for i in range(0, len(images), batch) for d in det.detect(images[i:i + batch])]
    return float(np.mean(np.asarray(counts) == 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", help="model SPEC (as --model of morph; repeat to compare) "
                    "[default, then menpo3d: the embedded default and the one before it]")
    ap.add_argument("--priors", default=None, help="priors YAML [the default priors]")
    ap.add_argument("--identities", type=int, default=100)
    ap.add_argument("--images", type=int, default=10, help="images per identity")
    ap.add_argument("--pairs", type=int, default=5000, help="same- and different-identity pairs each (at most)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from morph.formats.named import load_model
    from morph.model.priors import load_priors

    specs = args.model or ["default", "menpo3d"]
    priors = load_priors(args.priors)
    out = {"identities": args.identities, "images_per_identity": args.images, "seed": args.seed,
           "priors": str(priors.source), "models": {}}
    for spec in specs:
        t0 = time.perf_counter()
        model = load_model(spec)
        images, labels = render(model, priors, args.identities, args.images, args.seed)
        t1 = time.perf_counter()
        result = verification(embed(images), labels, args.pairs, args.seed)
        result["one_face_share"] = round(one_face_share(images), 4)
        result["seconds"] = {"render": round(t1 - t0, 1), "judge": round(time.perf_counter() - t1, 1)}
        out["models"][spec] = result
        print(f"{spec}: {json.dumps(result)}", flush=True)
    if len(specs) >= 2:
        out["auc_gain"] = round(out["models"][specs[0]]["auc"] - out["models"][specs[1]]["auc"], 4)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
