"""The trainer does the paper's method: each network descends its own objective (Eq. 8-10) built
from the step's loss terms (Eq. 1-7), the balance terms, centroids and moving average move by
their formulas, and batches are grouped by identity.

The objectives are rebuilt here from the logged terms by the paper's formulas, independently of
``refine.gan.trainer.objectives``; the gradients the optimisers apply are captured at their ``step``.
``bench/mutants.py`` shows that breaking any of these rules fails one of these tests.
"""
import numpy as np
import pytest
import torch

from refine.gan import losses as L
from refine.gan.config import TrainConfig
from refine.gan.trainer import Trainer

CFG = dict(g_width=8, d_hidden=16, batch_size=4, images_per_identity=2, steps=100, seed=3)


def trainer(sets, tmp_path, **kw) -> Trainer:
    return Trainer(TrainConfig(**{**CFG, **kw}), sets / "synthetic.h5", sets / "real.h5", sets / "pairs.h5",
                   tmp_path / "run")


def paper_objectives(t: dict, c: TrainConfig) -> dict:
    """Eq. 8, 9, 10 (with the paper's L_id term) from the step's terms."""
    return {"G": t["L_G"] + c.lambda_cyc * t["L_cyc"] + c.lambda_c * t["L_C"] + c.lambda_id * t["L_id"],
            "Gp": t["L_Gp"] + c.lambda_cyc * t["L_cyc"] + c.lambda_dp * t["L_DP"],
            "D": t["L_DR"] + t["L_DS"]}


def mean_abs(a, b):
    return (a - b).abs().mean()


def paper_terms(tr: Trainer, b: dict, k: dict, aug_state: torch.Tensor) -> dict:
    """Eq. 1-7 and L_id recomputed here from the batch with the networks as they are, written
    out as the paper writes them (each network run on its own input, nothing detached)."""
    x, y, s, r = b["x"], b["y"], b["s"], b["r"]
    gx = tr.G(x)
    gpgx, gpr = tr.Gp(gx), tr.Gp(r)
    t = {"L_G": mean_abs(gx, tr.D_R(gx)), "L_real_R": mean_abs(y, tr.D_R(y)), "L_cyc": mean_abs(gpgx, x),
         "L_Gp": mean_abs(gpgx, tr.D_S(gpgx)), "L_real_S": mean_abs(x, tr.D_S(x)), "L_real_P": mean_abs(s, gpr),
         "L_id": ((x > -1) * (x - gx).abs()).mean()}
    t["L_DR"] = t["L_real_R"] - k["R"] * t["L_G"]      # Eq. 4
    t["L_DS"] = t["L_real_S"] - k["S"] * t["L_Gp"]     # Eq. 5
    t["L_DP"] = t["L_real_P"] - k["P"] * t["L_cyc"]    # Eq. 6
    gen = torch.Generator()
    gen.set_state(aug_state)  # the step's own crops of G(x) for C
    t["L_C"] = L.identity_set_loss(tr.C(tr.transform(gx, gen)), b["labels"], tr.centroids, tr.cfg.eta)  # Eq. 7
    return t


def instrumented_step(tr: Trainer) -> dict:
    """One ``train_step``, capturing its terms, the gradients of the paper's objectives recomputed
    from the batch (before the step moves anything), the gradients each optimiser applied, the
    embeddings, labels, k's and centroids before the step."""
    cap = {"k": dict(tr.k), "centroids": tr.centroids.clone(), "applied": {}, "aug": tr.aug_gen.get_state()}
    forward, gradients = tr.forward, tr.gradients

    def spy_forward(b):
        terms, emb = forward(b)
        cap.update(terms=terms, emb=emb, labels=b["labels"], batch=b)
        return terms, emb

    def spy_gradients(objs):
        cap["mine"] = paper_terms(tr, cap["batch"], cap["k"], cap["aug"])
        want = paper_objectives(cap["mine"], tr.cfg)
        cap["want"] = {}
        for name, params in tr.params().items():
            g = torch.autograd.grad(want[name], params, retain_graph=True, allow_unused=True)
            cap["want"][name] = [torch.zeros_like(p) if x is None else x for p, x in zip(params, g)]
        return gradients(objs)

    tr.forward, tr.gradients = spy_forward, spy_gradients
    steps = {}
    for name, opt in tr.opt.items():
        steps[name] = opt.step

        def spy_step(name=name, opt=opt):
            cap["applied"][name] = [p.grad.clone() for g in opt.param_groups for p in g["params"]]
            return steps[name]()
        opt.step = spy_step
    try:
        cap["log"] = tr.train_step()
    finally:
        tr.forward, tr.gradients = forward, gradients
        for name, opt in tr.opt.items():
            opt.step = steps[name]
    return cap


@pytest.fixture(scope="module")
def stepped(sets, tmp_path_factory):
    """A trainer two steps in, with every k away from 0, and the third step instrumented (G's
    dropout off, so that the step can be recomputed)."""
    tr = trainer(sets, tmp_path_factory.mktemp("method"))
    for _ in range(2):
        tr.train_step()
    tr.k = {"R": 0.3, "S": 0.2, "P": 0.1}
    tr.G.dropout = 0.0
    return tr, instrumented_step(tr)


def test_each_network_descends_its_own_objective_only(stepped):
    """Eq. 8-10: G's, G''s and the discriminators' applied gradients equal the gradients of their
    own objectives, recomputed from the batch - nothing of another network's objective reaches
    them, no term is missing, detached or of the wrong sign. (The trainer runs each network once
    on concatenated batches: equal to float rounding.)"""
    tr, cap = stepped
    for name in ("G", "Gp", "D"):
        applied, want = cap["applied"][name], cap["want"][name]
        assert len(applied) == len(want) and sum(w.abs().sum() for w in want) > 0
        scale = max(w.abs().max() for w in want)
        for a, w in zip(applied, want):
            torch.testing.assert_close(a, w, rtol=1e-3, atol=1e-4 * scale)


def test_the_steps_terms_are_the_equations(stepped):
    """Every logged term equals its equation recomputed from the batch (Eq. 1-7, L_id)."""
    tr, cap = stepped
    for name, v in cap["mine"].items():
        assert cap["log"][name] == pytest.approx(v.item(), rel=1e-4, abs=1e-7), name


def test_logged_terms_are_the_equations(stepped):
    """Eq. 4, 5, 6 hold between the logged terms with the k's the step used, and the logged
    objectives are Eq. 8-10 of the logged terms."""
    tr, cap = stepped
    log, k, c = cap["log"], cap["k"], tr.cfg
    assert log["L_DR"] == pytest.approx(log["L_real_R"] - k["R"] * log["L_G"], rel=1e-6)
    assert log["L_DS"] == pytest.approx(log["L_real_S"] - k["S"] * log["L_Gp"], rel=1e-6)
    assert log["L_DP"] == pytest.approx(log["L_real_P"] - k["P"] * log["L_cyc"], rel=1e-6)
    want = {n: v.item() for n, v in paper_objectives(cap["terms"], c).items()}
    for name in ("G", "Gp", "D"):
        assert log[f"obj_{name}"] == pytest.approx(want[name], rel=1e-6)


def test_balance_terms_move_by_their_formula(stepped):
    """k <- clip(k + lambda_k (gamma L_real - L_fake), 0, 1) for each game, from the logged losses."""
    tr, cap = stepped
    log, k, c = cap["log"], cap["k"], tr.cfg
    for key, real, fake in (("R", "L_real_R", "L_G"), ("S", "L_real_S", "L_Gp"), ("P", "L_real_P", "L_cyc")):
        want = min(max(k[key] + c.lambda_k * (c.gamma * log[real] - log[fake]), 0.0), 1.0)
        assert tr.k[key] == pytest.approx(want, rel=0, abs=1e-12) and log[f"k_{key}"] == tr.k[key]
        assert tr.k[key] != k[key]  # (it moved: not clipped here)


def test_centroids_move_towards_the_steps_embeddings(stepped):
    tr, cap = stepped
    want = L.update_centroids(cap["centroids"], cap["emb"], cap["labels"], tr.cfg.centroid_momentum)
    torch.testing.assert_close(tr.centroids, want, rtol=0, atol=0)
    assert not torch.equal(tr.centroids, cap["centroids"])


def test_moving_average_follows_its_formula(sets, tmp_path):
    """After n steps, ema = the running average of G's parameters after each step, with decay
    min(0.9999, (1 + t) / (10 + t)) at update t."""
    tr = trainer(sets, tmp_path)
    ema = [p.detach().clone() for p in tr.G.parameters()]
    for t in range(4):
        tr.train_step()
        d = min(0.9999, (1 + t) / (10 + t))
        for e, p in zip(ema, tr.G.parameters()):
            e.mul_(d).add_(p.detach(), alpha=1 - d)
    for e, p in zip(ema, tr.ema.parameters()):
        torch.testing.assert_close(p, e, rtol=1e-6, atol=1e-7)
    assert not all(torch.equal(p, q) for p, q in zip(tr.ema.parameters(), tr.G.parameters()))


def test_batches_are_grouped_by_identity(sets, tmp_path):
    """P x K: a batch of 4 with K = 2 holds 2 identities, 2 renders each; over many batches every
    identity comes up; K = 1 samples images uniformly."""
    tr = trainer(sets, tmp_path)
    seen = []
    for _ in range(60):
        _, labels = tr.syn.grouped_batch(tr.data_gen, 4, 2)
        counts = np.unique(labels.numpy(), return_counts=True)[1]
        assert sorted(counts) == [2, 2]
        seen += labels.tolist()
    assert set(seen) == set(range(6))
    assert tr.next_batch()["labels"].unique().numel() == 2
    flat = trainer(sets, tmp_path, images_per_identity=1)
    assert any(flat.next_batch()["labels"].unique().numel() > 2 for _ in range(10))


def test_all_three_balance_terms_move_from_zero(sets, tmp_path):
    """Each BEGAN game's k leaves 0 within a short run (none is frozen). k_P rises only once the
    cycle is reconstructed better than half the pair error (gamma L_real_P > L_cyc), which at the
    paper's lambda_cyc 0.5 and lr 8e-5 takes these narrow networks hundreds of steps; a larger
    step size and cycle weight get there in about 20 (measured: k_R and k_S at step 1, k_P at 22)."""
    tr = trainer(sets, tmp_path, lr=1e-3, lambda_cyc=5.0)
    moved = set()
    for _ in range(35):
        log = tr.train_step()
        moved |= {key for key in ("k_R", "k_S", "k_P") if log[key] > 0}
    assert moved == {"k_R", "k_S", "k_P"}


def test_warmup_teaches_g_to_copy_and_leaves_the_discriminators(sets, tmp_path):
    """``warmup_steps``: G learns |G(x) - x|, G' |G'(G(x)) - x|; D_R, D_S, k's and centroids wait."""
    tr = trainer(sets, tmp_path, warmup_steps=30, lr=1e-3)
    d_before = [p.detach().clone() for p in tr.d_params()]
    logs = [tr.train_step() for _ in range(30)]
    assert all("L_warm_G" in log and "L_G" not in log for log in logs)
    assert logs[-1]["L_warm_G"] < 0.5 * logs[0]["L_warm_G"] and logs[-1]["L_warm_Gp"] < logs[0]["L_warm_Gp"]
    assert all(torch.equal(a, b) for a, b in zip(d_before, tr.d_params()))
    assert tr.k == {"R": 0.0, "S": 0.0, "P": 0.0} and tr.centroids.abs().sum() == 0
    assert "L_G" in tr.train_step()  # then the game
