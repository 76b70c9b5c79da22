"""What the evaluation commands write: PREFIX.json and PREFIX.png, and the figures in them
(``refine evaluate``'s Fig. 7 histograms beside the ROC; ``refine verify``'s ROC)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from morph.base.errors import UserError
from morph.base.files import write_atomic
from refine.evaluation.metrics import ROC

KIND_TITLES = {"rendered": "3DMM renders", "refined": "refined (GANFaces)", "real": "real faces",
               "unknown": "image set"}


def output_paths(prefix: str | Path) -> tuple[Path, Path]:
    """PREFIX.json and PREFIX.png (a .json or .png suffix given with the prefix is dropped)."""
    prefix = Path(prefix)
    if prefix.suffix.lower() in (".json", ".png"):
        prefix = prefix.with_suffix("")
    if not prefix.resolve().parent.is_dir():
        raise UserError(f"{prefix}: folder {prefix.resolve().parent} does not exist; create it first.")
    return prefix.with_name(prefix.name + ".json"), prefix.with_name(prefix.name + ".png")


def write_report(path: Path, write) -> None:
    """``write_atomic``, with one line naming the file when it cannot be written."""
    try:
        write_atomic(path, write)
    except OSError as e:
        raise UserError(f"{path}: cannot be written ({e.strerror or e}); choose another --output.") from None


def plot_distances(report: dict, roc: ROC, d_pos: np.ndarray, d_neg: np.ndarray, path: Path) -> None:
    """Fig. 7's histograms of positive and negative pair distances, beside the ROC, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.6), dpi=100)
    FigureCanvasAgg(fig)  # no pyplot: no global state, no display needed
    hist, curve = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.5, 1]})
    bins = np.linspace(min(d_pos.min(), d_neg.min()), max(d_pos.max(), d_neg.max()), 41)
    for d, colour, label in ((d_pos, "tab:blue", "same identity"), (d_neg, "tab:red", "different identities")):
        hist.hist(d, bins=bins, weights=np.full(len(d), 1 / len(d)), color=colour, alpha=0.55,
                  label=f"{label} ({len(d)} pairs)")
    hist.axvline(report["eer_threshold"], color="k", ls="--", lw=1,
                 label=f"EER threshold {report['eer_threshold']:.3f}")
    hist.set_xlabel("euclidean distance between embeddings")
    hist.set_ylabel("fraction of pairs")
    hist.legend(loc="upper left", fontsize=8)

    curve.plot(roc.fpr, roc.tpr, color="tab:purple", lw=1.8, label=f"AUC {report['auc']:.3f}")
    curve.plot([0, 1], [0, 1], color="0.6", ls=":", lw=1)
    curve.plot([report["eer"]], [1 - report["eer"]], "ko", ms=5, label=f"EER {100 * report['eer']:.1f}%")
    curve.set_xlim(0, 1)
    curve.set_ylim(0, 1.01)
    curve.set_xlabel("false accept rate")
    curve.set_ylabel("true accept rate")
    curve.set_aspect("equal")
    curve.legend(loc="lower right", fontsize=8)

    s = report["set"]
    fig.suptitle(f"{Path(s['path']).name}: {KIND_TITLES.get(s['kind'], s['kind'])}, {s['n_images']} images of "
                 f"{s['n_identities']} identities; {report['embedder']['name']} embeddings, seed {report['seed']}",
                 fontsize=11)
    line = f"MTCNN finds a face in {100 * report['face_detection']['fraction']:.1f}% of " \
           f"{report['face_detection']['n_images']} images"
    if report["against"]:
        a = report["against"]
        line += (f"   |   against {Path(a['path']).name}: Fréchet {a['frechet_distance']:.4f}, "
                 f"KID (MMD²) {a['kid_mmd2']:.5f}")
    fig.text(0.5, 0.015, line, ha="center", fontsize=9)
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    with open(path, "wb") as fh:
        fig.savefig(fh, format="png")


def plot_verification(report: dict, roc, path: Path) -> None:
    """``refine verify``'s ROC (log false accept rate) with its accuracy and AUC, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.5))
    far = np.clip(roc.fpr, 1e-5, 1)
    ax.semilogx(far, roc.tpr)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    a = report["accuracy"]
    ax.set_title(f"{Path(report['source']).name}: accuracy {a['mean']:.4f} ± {a['std']:.4f}, AUC {report['auc']:.4f}",
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    with open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
