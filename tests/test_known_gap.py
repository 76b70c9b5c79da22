"""The refiner learns a gap whose answer is known, and breaking the method stops it (issue 24).

A reduced T1 of ``bench/known_gap.py``, its ``--small`` form (32 px, 16 + 16 + 8 identities, 150
steps, G width 8, batch 8; about 1.5 CPU-minutes with the renders): the "real" set is renders of other identities
through a per-channel gain, gamma and offset; after training with the bench's recipe ``learns``
(residual G, constant LR with a linear tail, BEGAN gamma 1 with a k step of 0.1, resize
upsampling), G's moving average must move held-out renders towards their known T1 versions on the
face and on the background, keep their identity for C, and - L_id's part, the term (lambda_id 0.1)
that holds the rendered face to the render - move the face by less of its gap than the
background, which L_id does not cover, moves.

Each of these breaks of ``refine/gan/trainer.py`` makes this test fail (``python bench/mutants.py
--only "known gap"`` applies them one at a time; all three caught with this recipe, 2026-12-06).
Unbroken, this recipe gives: face gap closed 0.492, background 0.781, identity cosine 0.997, face
moved 0.60 of its gap. The breaks' figures below were measured with the older recipe (gamma 0.5,
k step 0.01, transposed convolutions: unbroken 0.472, 0.840, 0.997, 0.53):
- D's objective negated (``objectives``: ``"D": -(L_DR + L_DS)``): face -6.30, background -9.37;
- G not updated (``Trainer._step_optimisers`` skips G's optimiser): face 0.0, background 0.0;
- L_id left out of Eq. 8 (``objectives`` without ``lambda_id * L_id``): face 0.589, background
  0.849, identity 0.9965, but the face moved 0.71 of its gap. On a colour gap L_id works against
  closing the face's gap (it pulls G(x) to x), so only its restraint can show it is there; a
  recipe that closes the face's gap further would also trip that bound, and must lower it.
"""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def known_gap():
    spec = importlib.util.spec_from_file_location("known_gap", ROOT / "bench" / "known_gap.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def t1_result(tmp_path_factory):
    kg = known_gap()
    d = tmp_path_factory.mktemp("known_gap")
    sets = kg.renders(d, kg.SMALL["image_size"], 2, kg.SMALL_SETS)  # bench/known_gap.py --small
    values = {**kg.BASE, **kg.RECIPES["learns"], **kg.SMALL, "seed": 0}
    result = kg.run_level("T1", sets, d, values, 0, "test")
    print(result)
    return result


def test_refiner_closes_a_known_colour_gap_and_keeps_identity(t1_result):
    r = t1_result
    assert r["gap_closed_face"] >= 0.35, r
    assert r["gap_closed_background"] >= 0.6, r
    assert r["identity_cosine"] >= 0.95, r
    # L_id holds the face: it moves by well under its gap while the background moves by most of its own
    assert r["background_change_levels"] >= 0.8 * r["background_gap_levels"], r
    assert r["face_change_levels"] <= 0.62 * r["face_gap_levels"], r
