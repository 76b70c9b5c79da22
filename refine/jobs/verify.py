"""`refine verify`: verification accuracy (10-fold), AUC, EER and TAR@FAR of an embedder on one
protocol's pairs (``refine.evaluation.verification``), as PREFIX.json and PREFIX.png."""
from __future__ import annotations

import json
from pathlib import Path


from morph.base.files import output_lock, write_atomic
from morph.base.h5io import provenance
from refine.evaluation.metrics import auc, equal_error_rate, roc_curve, tar_at_far
from refine.evaluation.report import output_paths, plot_verification
from refine.evaluation.verification import FARS, PairList, embed_pairs, fold_accuracy


def verify(pairs: PairList, prefix: str | Path, *, embedder: str = "dlib", flip: bool = True,
           batch_size: int = 64, device: str = "cpu") -> dict:
    """Verify ``pairs``; write PREFIX.json and PREFIX.png; return the report."""
    from morph.base.numerics import check_device
    from refine.embedders import load_embedder

    check_device(device)
    json_path, png_path = output_paths(prefix)
    with output_lock(json_path, "report"):
        net = load_embedder(embedder, device=device)
        emb = embed_pairs(pairs, net, flip, batch_size, device)
        distance = ((emb[pairs.first] - emb[pairs.second]) ** 2).sum(1)
        acc, thr = fold_accuracy(distance, pairs.same, pairs.folds)
        roc = roc_curve(distance[pairs.same], distance[~pairs.same])
        eer, eer_threshold = equal_error_rate(roc)
        n_neg = int((~pairs.same).sum())
        tar = {f"{far:g}": (dict(zip(("tar", "threshold"), tar_at_far(roc, far))) if n_neg * far >= 1 else None)
               for far in FARS}
        report = {
            "protocol": pairs.protocol, "source": pairs.source, "template": pairs.template,
            "pairs": {"total": len(distance), "same": int(pairs.same.sum()), "different": n_neg},
            "embedder": {"spec": str(embedder), "name": net.name, "dim": net.dim},
            "flip": flip,
            "distance": "squared euclidean between L2-normalised embeddings (0 to 4)",
            "accuracy": {"mean": float(acc.mean()), "std": float(acc.std()), "folds": pairs.folds,
                         "per_fold": acc.tolist(), "thresholds": thr.tolist()},
            "auc": auc(roc), "eer": eer, "eer_threshold": eer_threshold, "tar_at_far": tar,
            "figure": str(png_path), "provenance": provenance(),
            "raw": {"first": pairs.first.tolist(), "second": pairs.second.tolist(),
                    "same": pairs.same.tolist(), "distance": distance.tolist()},
        }
        write_atomic(png_path, lambda p: plot_verification(report, roc, p))
        write_atomic(json_path, json.dumps(report, indent=1).encode())
        return report
