"""`refine evaluate`: how real and how identity-preserving an image set looks to a face network.

The paper's Fig. 7 (section 5.2): 1,000 same-identity ("positive") and 1,000 different-identity
("negative") pairs of one set are embedded by a pre-trained face-recognition network, and the
histograms of their euclidean distances show how well identities separate. The paper compares
three kinds of set - 3DMM renders, refined renders (GANFaces) and real faces (VGG Face): "as
the images become more realistic, they become better separable in the pre-trained embedding
space". Here, for any one set:

- pairs drawn uniformly from all positive (all negative) pairs of the set, from ``seed``; all of
  them when the set has fewer (the report says so);
- embeddings of C (default dlib's ResNet) of the face framed as C was trained (its face chip,
  ``Embedder.transform().centre``: dlib's 150 px chip with padding 0.25); distances between the
  L2-normalised embeddings, so in [0, 2];
- the ROC of "same identity when distance <= t", its AUC, the equal error rate with its
  threshold, and TAR at FAR 1e-2 / 1e-3 when there are enough negative pairs to measure them;
- the fraction of images in which MTCNN finds a face (a crude realism check of the renders);
- with a real set to compare with: the Fréchet distance between Gaussians fitted to the two
  sets' embeddings (FID's formula in C's feature space, so no Inception weights) and the
  unbiased squared MMD with KID's cubic polynomial kernel.

Sets: see ``refine.evaluation.image_sets`` (the report's pair indices refer to its image order); metrics:
``refine.evaluation.metrics``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from morph.base.errors import UserError
from morph.base.files import output_lock
from morph.base.h5io import provenance
from refine.evaluation.embedding import embed, face_fraction
from refine.evaluation.image_sets import open_image_set
from refine.evaluation.metrics import (auc, draw_pairs, equal_error_rate, frechet_distance, polynomial_mmd2,
                                       roc_curve, tar_at_far)
from refine.evaluation.report import output_paths, plot_distances, write_report
#: TAR is reported at these FARs when there are at least 1/FAR negative pairs.
FARS = (1e-2, 1e-3)
#: Independent random streams derived from --seed (numpy SeedSequence entropy [seed, stream]).
PAIR_STREAM, SET_SAMPLE_STREAM, AGAINST_SAMPLE_STREAM = 0, 1, 2



def _sample(n: int, k: int, seed: int, stream: int) -> np.ndarray:
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, stream]).choice(n, k, replace=False))


def _stats(d: np.ndarray) -> dict:
    return {"mean": float(d.mean()), "std": float(d.std()), "min": float(d.min()), "max": float(d.max())}


def evaluate(dataset: str | Path, prefix: str | Path, *, against: str | Path | None = None,
             embedder: str = "dlib", n_pairs: int = 1000, seed: int = 0, max_images: int = 2000,
             min_face_size: float = 20.0, kind: str | None = None, batch_size: int = 64,
             device: str = "cpu") -> dict:
    """Evaluate ``dataset``; write PREFIX.json and PREFIX.png; return the report (the JSON's content)."""
    from refine.embedders import load_embedder

    from morph.base.numerics import check_device

    check_device(device)
    json_path, png_path = output_paths(prefix)
    with output_lock(json_path, "report"):
        images = open_image_set(dataset, "image set")
        reference = open_image_set(against, "real set to compare with", need_labels=False) if against else None
        try:
            pairs = draw_pairs(images.labels, n_pairs, np.random.default_rng([seed, PAIR_STREAM]))
        except UserError as e:
            raise UserError(f"{images.path}: {e}") from None
        net = load_embedder(embedder, device=device)

        sample = _sample(images.n, max_images, seed, SET_SAMPLE_STREAM)
        used = np.unique(np.concatenate([pairs.positive.ravel(), pairs.negative.ravel(), sample]))
        emb = embed(images, used, net, batch_size, device, desc=f"embed {images.path.name}")
        row = {int(i): r for r, i in enumerate(used)}

        def distances(p):
            a, b = emb[[row[i] for i in p[:, 0]]], emb[[row[i] for i in p[:, 1]]]
            return np.linalg.norm(a - b, axis=1)

        d_pos, d_neg = distances(pairs.positive), distances(pairs.negative)
        roc = roc_curve(d_pos, d_neg)
        eer, eer_threshold = equal_error_rate(roc)
        notes = []
        for what, got, available in (("positive", len(d_pos), pairs.available_positive),
                                     ("negative", len(d_neg), pairs.available_negative)):
            if got < n_pairs:
                notes.append(f"the set has only {available} {what} pairs ({n_pairs} asked); all are used")
        tar = {}
        for far in FARS:
            if len(d_neg) * far >= 1:
                t, thr = tar_at_far(roc, far)
                tar[f"{far:g}"] = {"tar": t, "threshold": thr}
            else:
                tar[f"{far:g}"] = None
                notes.append(f"TAR at FAR {far:g} needs at least {round(1 / far)} negative pairs; not reported")

        n_detect = len(sample)
        detection = {"n_images": n_detect, "min_face_size": min_face_size,
                     "fraction": face_fraction(images, sample, min_face_size, device)}

        comparison = None
        if reference is not None:
            ref_idx = _sample(reference.n, max_images, seed, AGAINST_SAMPLE_STREAM)
            ref_emb = embed(reference, ref_idx, net, batch_size, device, desc=f"embed {reference.path.name}")
            set_emb = emb[[row[int(i)] for i in sample]]
            if min(len(set_emb), len(ref_emb)) < 2:
                raise UserError(f"{reference.path if len(ref_emb) < 2 else images.path}: a distribution distance "
                                "needs at least 2 images in each set.")
            comparison = {"path": str(reference.path), "kind": reference.kind, "n_images": len(ref_emb),
                          "n_images_set": len(set_emb), "frechet_distance": frechet_distance(set_emb, ref_emb),
                          "kid_mmd2": polynomial_mmd2(set_emb, ref_emb),
                          "kid_kernel": "(x.y / dim + 1)^3, unbiased MMD^2 over all images"}
            if min(len(set_emb), len(ref_emb)) <= net.dim:
                notes.append(f"Fréchet distance from {min(len(set_emb), len(ref_emb))} images in {net.dim} "
                             "dimensions: covariances are singular and the value is biased upwards; "
                             "compare only values from equal numbers of images")

        report = {
            "set": {"path": str(images.path), "layout": images.layout, "kind": kind or images.kind,
                    "n_images": images.n, "n_identities": len(images.label_names),
                    "n_identities_with_2_images": int((np.bincount(images.labels) >= 2).sum()),
                    "image_size": images.size},
            "embedder": {"spec": str(embedder), "name": net.name, "dim": net.dim, "input_size": net.input_size,
                         "transform": "centre 96x96 crop of the 108x108 image, resized to the input size"},
            "seed": seed,
            "pairs": {"requested": n_pairs, "positive": len(d_pos), "negative": len(d_neg),
                      "available_positive": pairs.available_positive,
                      "available_negative": pairs.available_negative},
            "distance": "euclidean between L2-normalised embeddings (0 to 2)",
            "positive_distance": _stats(d_pos),
            "negative_distance": _stats(d_neg),
            "auc": auc(roc),
            "eer": eer,
            "eer_threshold": eer_threshold,
            "tar_at_far": tar,
            "face_detection": detection,
            "against": comparison,
            "notes": notes,
            "figure": str(png_path),
            "provenance": provenance(),
            "raw": {"positive_pairs": pairs.positive.tolist(), "positive_distances": d_pos.tolist(),
                    "negative_pairs": pairs.negative.tolist(), "negative_distances": d_neg.tolist()},
        }
        write_report(png_path, lambda p: plot_distances(report, roc, d_pos, d_neg, p))
        write_report(json_path, lambda p: p.write_text(json.dumps(report, indent=1, ensure_ascii=False)))
        return report


