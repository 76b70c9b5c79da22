"""Where the KID between renders and real faces comes from, on the sets ``bench/learn.py`` wrote:
KID of each set to the held-out real faces, before and after moving the set's dlib embeddings by
the difference of the two means (nothing else changes). When the shifted KID is about zero, the gap
a refiner must close is a shift of the mean in the embedding space, not a difference of spread.

    python bench/kid_gap.py LEARN_OUT     # the --out folder of bench/learn.py
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from realset import embed  # noqa: E402  (bench/ is not a package)

from refine.evaluation.metrics import polynomial_mmd2  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="the --out folder of bench/learn.py")
    a = ap.parse_args()
    sets = {}
    for name in ("raw", "refined", "real_heldout"):
        with h5py.File(a.out / f"{name}.h5", "r") as f:
            sets[name] = embed(f["images"][()])
    real = sets.pop("real_heldout")
    spread = float(np.linalg.norm(real - real.mean(0), axis=1).mean())
    row = {"real_spread": round(spread, 4)}
    for name, e in sets.items():
        gap = real.mean(0) - e.mean(0)
        row[f"kid_{name}"] = round(polynomial_mmd2(e, real), 5)
        row[f"kid_{name}_mean_shifted"] = round(polynomial_mmd2(e + gap, real), 5)
        row[f"mean_gap_{name}"] = round(float(np.linalg.norm(gap)), 4)
        print(f"{name}: KID {row[f'kid_{name}']}, after the mean shift {row[f'kid_{name}_mean_shifted']}; "
              f"|mean gap| {row[f'mean_gap_{name}']} (real faces lie {spread:.3f} from their mean)")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
