"""Each loss against values worked out by hand on tiny tensors (plain Python arithmetic)."""
import math

import pytest
import torch

from refine.gan import losses as L


def img(*values):
    """A 1x1x2x2 image from four values, row-major."""
    return torch.tensor(values, dtype=torch.float64).view(1, 1, 2, 2)


A = img(0.0, 1.0, -1.0, 0.5)
B = img(0.5, 1.0, 0.0, -0.5)  # |A - B| = 0.5, 0, 1, 1 -> mean 2.5 / 4 = 0.625


def test_l1_is_a_mean_over_elements():
    assert L.l1(A, B).item() == pytest.approx(0.625)
    # a batch of two copies: the same mean, not twice the sum
    assert L.l1(torch.cat([A, A]), torch.cat([B, B])).item() == pytest.approx(0.625)


def test_cycle_generator_and_identity_losses():
    assert L.cycle_loss(A, B).item() == pytest.approx(0.625)            # Eq. 1
    assert L.began_generator_loss(A, B).item() == pytest.approx(0.625)  # Eq. 2/3
    # per image: the mean of each image alone
    two = L.cycle_loss(torch.cat([A, B]), torch.cat([B, B]), per_image=True)
    assert two.tolist() == pytest.approx([0.625, 0.0])
    # L_id counts only the rendered face: A's third pixel is background (-1, 8-bit 0), so of
    # |A - B| = 0.5, 0, 1, 1 the 1 at the background drops out; the mean is still over all 4
    assert L.identity_loss(A, B).item() == pytest.approx((0.5 + 0 + 1) / 4)
    assert L.identity_loss(B, A).item() == pytest.approx(0.625)  # no background in B


def test_losses_are_float32_under_bfloat16():
    a, b = A.to(torch.bfloat16), B.to(torch.bfloat16)
    for loss in (L.l1(a, b), L.cycle_loss(a, b), L.identity_loss(a, b)):
        assert loss.dtype == torch.float32


def test_began_discriminator_loss():
    real, real_rec = A, B                                # L_real = 0.625
    l_fake = L.began_generator_loss(img(1, 1, 1, 1), img(0, 0, 0, 0))  # Eq. 2: L_G = 1
    loss, l_real = L.began_discriminator_loss(real, real_rec, l_fake, k=0.25)
    assert l_real.item() == pytest.approx(0.625)
    assert loss.item() == pytest.approx(0.625 - 0.25 * 1.0)  # Eq. 4/5


def test_pair_matching_loss():
    l_cyc = torch.tensor(0.5, dtype=torch.float64)
    loss, l_real = L.pair_matching_loss(A, B, k=0.1, l_cyc=l_cyc)
    assert l_real.item() == pytest.approx(0.625)
    assert loss.item() == pytest.approx(0.625 - 0.1 * 0.5)  # Eq. 6


def test_k_update_moves_and_clips():
    # 0.2 + 0.001 * (0.5 * 0.6 - 0.1) = 0.2002
    assert L.k_update(0.2, 0.5, 0.6, 0.1, 0.001) == pytest.approx(0.2002)
    assert L.k_update(0.0, 0.5, 0.1, 0.9, 0.001) == 0.0        # would go to -0.00085
    assert L.k_update(1.0, 0.5, 0.9, 0.1, 0.001) == 1.0        # would go to 1.00035
    assert L.k_update(0.5, 0.5, 100.0, 0.0, 1.0) == 1.0        # big step clipped
    assert L.k_update(torch.tensor(0.2), 0.5, torch.tensor(0.6), torch.tensor(0.1)) == pytest.approx(0.2002)
    assert isinstance(L.k_update(0.2, 0.5, 0.6, 0.1), float)


def test_convergence_measure():
    assert L.convergence_measure(0.6, 0.1, 0.5) == pytest.approx(0.6 + abs(0.3 - 0.1))
    assert L.convergence_measure(0.2, 0.5, 0.5) == pytest.approx(0.2 + abs(0.1 - 0.5))
    t = L.convergence_measure(torch.tensor(0.6), torch.tensor(0.1), 0.5)
    assert t.item() == pytest.approx(0.8)


def magnet_by_hand(emb, labels, cents, eta):
    """Eq. 7 with plain floats: sigma = sum own / (M - 1), exponent -d / (2 sigma^2), hinge, mean."""
    def d2(a, b):
        return sum((ai - bi) ** 2 for ai, bi in zip(a, b))
    own = [d2(e, cents[i]) for e, i in zip(emb, labels)]
    sigma = sum(own) / (len(emb) - 1)
    s = 1.0 / (2.0 * sigma ** 2)
    out = []
    for e, i, o in zip(emb, labels, own):
        num = math.exp(-s * o - eta)
        den = sum(math.exp(-s * d2(e, c)) for j, c in enumerate(cents) if j != i)
        out.append(max(0.0, -math.log(num / den)))
    return sum(out) / len(out)


def test_identity_set_loss_two_identities_three_samples():
    cents = [(0.0, 0.0), (1.0, 0.0)]
    emb = [(0.0, 1.0), (1.0, 1.0), (0.5, 0.0)]
    labels = [0, 1, 0]
    # by hand: own = 1, 1, 0.25 -> sigma = 2.25 / 2 = 1.125, s = 1 / (2 * 1.125^2) = 0.395...
    # other = 2, 2, 0.25 -> per-sample s*(own - other) + eta = 1 - s, 1 - s, 1
    s = 1.0 / (2.0 * 1.125 ** 2)
    expected = ((1 - s) + (1 - s) + 1.0) / 3
    assert magnet_by_hand(emb, labels, cents, 1.0) == pytest.approx(expected)
    got = L.identity_set_loss(torch.tensor(emb, dtype=torch.float64), torch.tensor(labels),
                              torch.tensor(cents, dtype=torch.float64), eta=1.0)
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_identity_set_loss_denominator_covers_identities_absent_from_the_batch():
    cents = [(0.0, 0.0), (1.0, 0.0), (0.0, 0.0), (3.0, -2.0)]  # 2 and 3 not in the batch; 2 still at zero
    emb = [(0.1, 0.9), (1.2, 0.7), (0.4, -0.2), (0.9, 0.1)]
    labels = [0, 1, 0, 1]
    for eta in (1.0, 0.0, 5.0):
        got = L.identity_set_loss(torch.tensor(emb), torch.tensor(labels), torch.tensor(cents), eta=eta)
        assert got.item() == pytest.approx(magnet_by_hand(emb, labels, cents, eta), rel=1e-5)


def test_identity_set_loss_hinge_at_zero():
    # well separated, no margin: every log-ratio is positive, so the hinged loss is exactly 0
    cents = [(0.0, 0.0), (10.0, 0.0)]
    emb = torch.tensor([(0.1, 0.0), (9.9, 0.0), (0.0, 0.1)])
    assert L.identity_set_loss(emb, torch.tensor([0, 1, 0]), torch.tensor(cents), eta=0.0).item() == 0.0


def test_identity_set_loss_gradients_reach_embeddings_not_centroids():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(6, 8, generator=g, requires_grad=True)
    cents = torch.randn(5, 8, generator=g, requires_grad=True)
    loss = L.identity_set_loss(emb, torch.tensor([0, 0, 1, 1, 2, 3]), cents)
    loss.backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    assert cents.grad is None


def test_identity_set_loss_is_stable_for_far_points():
    # distances of 1e4 would underflow exp() without logsumexp
    cents = torch.tensor([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])
    emb = torch.tensor([[1.0, 0.0], [99.0, 0.0], [0.0, 101.0]], requires_grad=True)
    loss = L.identity_set_loss(emb, torch.tensor([0, 1, 2]), cents)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(emb.grad).all()


def test_identity_set_loss_rejects_a_single_sample():
    with pytest.raises(ValueError, match="M - 1"):
        L.identity_set_loss(torch.zeros(1, 2), torch.tensor([0]), torch.zeros(3, 2))


def test_update_centroids_rule():
    cents = torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    emb = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]])
    new = L.update_centroids(cents, emb, torch.tensor([0, 0, 1]), beta=0.95)
    # c0 (n = 2): 0 - 0.05 * ((0 - 1) + (0 - 0), (0 - 0) + (0 - 2)) / 3 = (0.05 / 3, 0.10 / 3)
    # c1 (n = 1): 1 - 0.05 * (1 - 3, 1 - 1) / 2 = (1.05, 1.00); c2 untouched
    assert torch.allclose(new, torch.tensor([[0.05 / 3, 0.10 / 3], [1.05, 1.00], [5.0, 5.0]]))
    assert torch.equal(cents, torch.tensor([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]]))  # not in place


def test_update_centroids_step_is_normalised_by_the_identitys_count():
    """K samples of one identity at its centroid's old value plus d move it by 0.05 K / (1 + K) d:
    never more than the 0.05 of one full step, however many samples a batch holds."""
    c = torch.tensor([[2.0, -1.0], [0.0, 0.0]])
    for k in (1, 4, 16):
        e = (c[0] + torch.tensor([4.0, 2.0])).repeat(k, 1)
        new = L.update_centroids(c, e, torch.zeros(k, dtype=torch.long), beta=0.95)
        assert torch.allclose(new[0], c[0] + 0.05 * k / (1 + k) * torch.tensor([4.0, 2.0]))
        assert torch.equal(new[1], c[1])


def test_ema_decay_warms_up_as_tensorflow():
    """min(decay, (1 + t) / (10 + t)): 0.1 at the first update, 0.9999 only after ~90k updates."""
    assert L.ema_decay(0.9999, 0) == pytest.approx(0.1)
    assert L.ema_decay(0.9999, 90) == pytest.approx(91 / 100)
    assert L.ema_decay(0.9999, 10 ** 6) == 0.9999
    assert L.ema_decay(0.5, 10) == 0.5


def test_update_centroids_takes_no_gradient():
    e = torch.randn(3, 4, requires_grad=True)
    new = L.update_centroids(torch.zeros(2, 4), e * 2, torch.tensor([0, 1, 1]))
    assert not new.requires_grad


def test_default_settings_are_the_papers_and_the_authors():
    from refine.gan.config import TrainConfig

    c = TrainConfig()
    assert (c.lambda_cyc, c.lambda_dp, c.lambda_c, c.lambda_id) == (0.5, 0.5, 0.001, 0.1)  # paper section 4
    assert (c.gamma, c.lambda_k, c.eta, c.centroid_momentum) == (0.5, 0.001, 1.0, 0.95)
    assert (c.lr, c.batch_size, c.steps) == (8e-5, 16, 248_000)
    # facegan trainer.py: AdamOptimizer(lr) with TF's default betas; EMA 0.9999; no batch norm in G
    assert c.betas == (0.9, 0.999) and c.ema_decay == 0.9999 and c.norm == "authors"
