"""Mutation check of the method's tests: break the trainer (its options, and the landmark fit) one
rule at a time, and show that a default-suite test fails for each break.

Each mutant is one exact text substitution in the package (the script refuses to run when a
substitution's original text is no longer found exactly once, so mutants cannot go stale
silently). For each, the tracked files are copied beside ``../shared`` into a temporary folder,
the mutation is applied there, and the method's test files run on the copy with ``pytest -x``;
a mutant is caught when pytest fails. Prints one row per mutant and, last, one JSON object.

    python bench/mutants.py [--only NAME ...] [--tests tests/test_method.py ...]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ["tests/test_method.py", "tests/test_losses.py", "tests/test_nets.py", "tests/test_train.py"]

T, LOSS, NETS = "refine/gan/trainer.py", "refine/gan/losses.py", "refine/gan/nets.py"
KNOWN_GAP = "tests/test_known_gap.py"
FIT, FITTING = "morph/fitting/landmarks.py", "tests/test_fitting.py"
OPTIONS = "tests/test_train_options.py"
#: (name, file, original text, mutated text[, the tests to run instead of --tests])
MUTANTS = [
    ("Eq. 8: -L_G", T, 'g = terms["L_G"]\n', 'g = -terms["L_G"]\n'),
    ("Eq. 8: -L_cyc", T, 'g = g + cfg.lambda_cyc * terms["L_cyc"]', 'g = g - cfg.lambda_cyc * terms["L_cyc"]'),
    ("Eq. 8: -L_C", T, 'g = g + cfg.lambda_c * terms["L_C"]', 'g = g - cfg.lambda_c * terms["L_C"]'),
    ("Eq. 8: -L_id", T, 'g = g + cfg.lambda_id * terms["L_id"]', 'g = g - cfg.lambda_id * terms["L_id"]'),
    ("Eq. 9: -L_G'", T, 'gp = terms["L_Gp"] + cfg.lambda_cyc', 'gp = -terms["L_Gp"] + cfg.lambda_cyc'),
    ("Eq. 9: -L_cyc", T, 'gp = terms["L_Gp"] + cfg.lambda_cyc', 'gp = terms["L_Gp"] - cfg.lambda_cyc'),
    ("Eq. 9: -L_DP", T, 'gp = gp + cfg.lambda_dp * terms["L_DP"]', 'gp = gp - cfg.lambda_dp * terms["L_DP"]'),
    ("Eq. 10: D ascends L_DR + L_DS", T, '"D": terms["L_DR"] + terms.get("L_DS", 0.0)',
     '"D": -(terms["L_DR"] + terms.get("L_DS", 0.0))'),
    ("Eq. 10: -L_DS", T, '"D": terms["L_DR"] + terms.get("L_DS", 0.0)', '"D": terms["L_DR"] - terms.get("L_DS", 0.0)'),
    ("Eq. 4/5: +k L_G", LOSS, "return l_real - k * l_fake, l_real", "return l_real + k * l_fake, l_real"),
    ("Eq. 6: +k L_cyc", LOSS, "return l_real - k * l_cyc, l_real", "return l_real + k * l_cyc, l_real"),
    ("Eq. 1: cycle against y", T, 't["L_cyc"] = L.cycle_loss(x, gpgx)', 't["L_cyc"] = L.cycle_loss(y, gpgx)'),
    ("one gradient of all objectives (no restriction: a missing detach)", T,
     "out[name] = torch.autograd.grad(objs[name], groups[name]",
     "out[name] = torch.autograd.grad(sum(objs.values()), groups[name]"),
    ("D's reconstruction detached in L_G and L_G'", T, "l_g = L.began_generator_loss(f, d_f, weight=self.face_weight)",
     "l_g = L.began_generator_loss(f, d_f.detach(), weight=self.face_weight)"),
    ("k_R frozen", T, 'for key, real, fake in (("R", "L_real_R", "L_G"),', 'for key, real, fake in ('),
    ("k_P frozen", T, '("S", "L_real_S", "L_Gp"), ("P", "L_real_P", "L_cyc")):', '("S", "L_real_S", "L_Gp")):'),
    ("k moves by L_fake - gamma L_real", LOSS, "lambda_k * (gamma * float(l_real) - float(l_fake))",
     "lambda_k * (float(l_fake) - gamma * float(l_real))"),
    ("centroid update skipped", T,
     "self.centroids = L.update_centroids(self.centroids, e, lab, cfg.centroid_momentum)", "pass"),
    ("centroid step not normalised by 1 + n_j", LOSS, "return centroids - (1.0 - beta) * step / (1.0 + n)[:, None]",
     "return centroids - (1.0 - beta) * step"),
    ("EMA skipped", T, "for pe, p in zip(self.ema.parameters(), self.G.parameters()):", "for pe, p in ():"),
    ("EMA without warm-up", T, "d = L.ema_decay(self.cfg.ema_decay, self.step)", "d = self.cfg.ema_decay"),
    ("L_id unmasked", LOSS, "mask = (x > -1.0).to(torch.float32)\n    return (mask *",
     "mask = torch.ones_like(x, dtype=torch.float32)\n    return (mask *"),
    ("batches not grouped by identity", T, "if cfg.images_per_identity > 1:", "if False:"),
    ("seeded dropout drawn from the global generator", NETS,
     "torch.rand(shape, generator=g) < keep for _ in self.res", "torch.rand(shape) < keep for _ in self.res"),
    # issue 24: what tests/test_known_gap.py (a refiner closing a known gap) must catch - run on it alone
    ("known gap: D ascends L_DR + L_DS", T, '"D": terms["L_DR"] + terms.get("L_DS", 0.0)',
     '"D": -(terms["L_DR"] + terms.get("L_DS", 0.0))', [KNOWN_GAP]),
    ("known gap: G not updated", T, "            o.step()\n", '            o.step() if name != "G" else None\n',
     [KNOWN_GAP]),
    ("known gap: L_id left out of Eq. 8", T, 'g = g + cfg.lambda_id * terms["L_id"]', 'g = g + 0.0 * terms["L_id"]',
     [KNOWN_GAP]),
    # issue 25: the landmark fit's known answers (tests/test_fitting.py)
    ("fit: contour re-match dropped", FIT, "        turned = torch.nonzero(yaw.abs() >= CONTOUR_MIN_YAW).flatten()\n",
     "        turned = torch.nonzero(yaw.abs() > 360).flatten()\n", [FITTING]),
    ("fit: the near side's jaw re-matched", FIT, "away = right if k > 8 else ~right", "away = ~right if k > 8 else right",
     [FITTING]),
    ("fit: contour re-matched at every yaw", FIT, "CONTOUR_MIN_YAW = 30.0", "CONTOUR_MIN_YAW = 0.0", [FITTING]),
    ("fit: expression left out", FIT, "parts = [p for p in (model.shape, model.expression) if p is not None]",
     "parts = [p for p in (model.shape,) if p is not None]", [FITTING]),
    # issue 24's face discriminator and split refiner (tests/test_train_options.py)
    ("options: D_F given the whole image", T, "self.D_F(torch.cat([gx, y])[..., top:bottom, left:right])",
     "self.D_F(torch.cat([gx, y]))", [OPTIONS]),
    ("options: L_GF left out of Eq. 8", T, 'g = g + cfg.lambda_adv * cfg.lambda_face * terms["L_GF"]', "g = g",
     [OPTIONS]),
    ("options: L_GF unweighted", T, 'g = g + cfg.lambda_adv * cfg.lambda_face * terms["L_GF"]',
     'g = g + cfg.lambda_adv * terms["L_GF"]', [OPTIONS]),
    ("options: L_GF outside lambda_adv", T, 'g = g + cfg.lambda_adv * cfg.lambda_face * terms["L_GF"]',
     'g = g + cfg.lambda_face * terms["L_GF"]', [OPTIONS]),
    ("options: D_F not optimised", T, "for n in (self.D_R, self.D_S, self.D_F)", "for n in (self.D_R, self.D_S)",
     [OPTIONS]),
    ("options: least-squares targets swapped", LOSS,
     "return (f - 1.0).pow(2).mean(), (y - 1.0).pow(2).mean() + f.pow(2).mean()",
     "return f.pow(2).mean(), y.pow(2).mean() + (f - 1.0).pow(2).mean()", [OPTIONS]),
    ("options: split's mask inverted", NETS, "out = drawn * face + (1.0 - drawn) * background",
     "out = (1.0 - drawn) * face + drawn * background", [OPTIONS]),
    ("options: split's mask where every channel is drawn", NETS, "drawn = (x > -1.0).any(1, keepdim=True)",
     "drawn = (x > -1.0).all(1, keepdim=True)", [OPTIONS]),
    ("options: split's halves swapped", NETS, "face, background = out.chunk(2, 1)",
     "background, face = out.chunk(2, 1)", [OPTIONS]),
    # L_id on structure only (id_loss: structure)
    ("options: structure L_id keeps the mean change", LOSS,
     "dc = mask * (d - (mask * d).sum((2, 3), keepdim=True) / n)", "dc = mask * d", [OPTIONS]),
    ("options: structure L_id fits no slope", LOSS,
     "a = (xc * dc).sum((2, 3), keepdim=True) / (xc * xc).sum((2, 3), keepdim=True).clamp_min(1e-6)", "a = 0.0",
     [OPTIONS]),
    ("options: structure L_id fitted over the background too", LOSS,
     "mask = (x > -1.0).to(torch.float32)\n    x, d = _f32(x)", "mask = torch.ones_like(x)\n    x, d = _f32(x)",
     [OPTIONS]),
    ("options: id_loss ignored", T, "L.IDENTITY_LOSSES[cfg.id_loss](x, gx)", "L.identity_loss(x, gx)", [OPTIONS]),
    # L_id on what no colour curve shared by the batch explains (id_loss: curve)
    ("options: curve L_id fitted per image", LOSS,
     "    mask = (x > -1.0).any(1)  # (B, H, W): the pixels the render has drawn\n",
     "    if x.shape[0] > 1:\n        return sum(curve_identity_loss(x[i:i + 1], gx[i:i + 1]) for i in range(x.shape[0])) / x.shape[0]\n"
     "    mask = (x > -1.0).any(1)  # (B, H, W): the pixels the render has drawn\n", [OPTIONS]),
    ("options: curve L_id fits no curve", LOSS, "total = total + (pd[:, c] - f @ w).abs().sum()",
     "total = total + pd[:, c].abs().sum()", [OPTIONS]),
    ("options: curve L_id over the background too", LOSS,
     "    mask = (x > -1.0).any(1)  # (B, H, W): the pixels the render has drawn\n",
     "    mask = (x > -2.0).any(1)  # (B, H, W): the pixels the render has drawn\n", [OPTIONS]),
    # the colour histogram term (lambda_hist)
    ("options: L_hist left out of Eq. 8", T, 'g = g + cfg.lambda_adv * cfg.lambda_hist * terms["L_hist"]', "g = g",
     [OPTIONS]),
    ("options: L_hist outside lambda_adv", T, 'g = g + cfg.lambda_adv * cfg.lambda_hist * terms["L_hist"]',
     'g = g + cfg.lambda_hist * terms["L_hist"]', [OPTIONS]),
    ("options: L_hist without the sort", LOSS,
     "out.append((a.sort(dim=1).values - c.sort(dim=1).values).abs().mean())", "out.append((a - c).abs().mean())",
     [OPTIONS]),
    ("options: L_hist's regions pooled", LOSS, "    for region in (inside, ~inside):\n",
     "    for region in (torch.ones_like(inside),):\n", [OPTIONS]),
    # D_F on O-Net's frozen features (face_discriminator: projected)
    ("options: face_discriminator ignored", NETS, 'if get("face_discriminator", "patch") == "projected":',
     "if False:", [OPTIONS]),
]


def copy_tree(dest: Path) -> Path:
    """The tracked files (and untracked, not ignored ones) of the working tree, beside ../shared."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    repo = dest / "repo"
    for f in files:
        src = ROOT / f
        if src.is_file():
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / f)
    (dest / "shared").symlink_to(ROOT.parent / "shared")
    return repo


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="run the mutants whose name contains one of these")
    ap.add_argument("--tests", nargs="*", default=TESTS)
    a = ap.parse_args()
    for name, f, old, new, *_ in MUTANTS:
        n = (ROOT / f).read_text().count(old)
        if n != 1:
            raise SystemExit(f"mutant '{name}': its original text occurs {n} times in {f}; update the mutant.")
    todo = [m for m in MUTANTS if not a.only or any(o in m[0] for o in a.only)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = copy_tree(Path(tmp))
        env = dict(os.environ, PYTHONPATH=str(repo), OMP_WAIT_POLICY="PASSIVE")
        where = subprocess.run([sys.executable, "-c", "import refine; print(refine.__file__)"], cwd=repo, env=env,
                               capture_output=True, text=True, check=True).stdout.strip()
        if not where.startswith(str(repo)):
            raise SystemExit(f"the copy's package is not the one imported ({where}); cannot test mutants")
        for name, f, old, new, *tests in todo:
            path = repo / f
            original = path.read_text()
            path.write_text(original.replace(old, new, 1))
            t = time.perf_counter()
            p = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *(tests[0] if tests else a.tests)],
                               cwd=repo, env=env, capture_output=True, text=True)
            path.write_text(original)
            failed = [line.split(" ")[1] for line in p.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
            caught = p.returncode != 0
            rows.append({"mutant": name, "caught": caught, "by": failed[0] if failed else None,
                         "tests": tests[0] if tests else a.tests, "seconds": round(time.perf_counter() - t)})
            print(f"{'caught  ' if caught else 'SURVIVED'}  {name:60s}  {failed[0] if failed else ''}", flush=True)
    survived = [r["mutant"] for r in rows if not r["caught"]]
    print(json.dumps({"mutants": len(rows), "caught": len(rows) - len(survived), "survived": survived,
                      "tests": a.tests, "rows": rows}))


if __name__ == "__main__":
    main()
