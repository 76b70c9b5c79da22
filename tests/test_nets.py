"""Shapes, ranges, modes and a quick overfit check of G, G' and the BEGAN discriminator."""
import pytest
import torch
from torch.nn import functional as F

from refine.nets import BEGANDiscriminator, Generator


def n_params(net):
    return sum(p.numel() for p in net.parameters())


@pytest.fixture(scope="module")
def x108():
    return torch.rand(2, 3, 108, 108, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_parameter_counts(capsys):
    torch.manual_seed(0)
    g, gp, d = Generator(), Generator(skips=False, dropout=0.0), BEGANDiscriminator(108)
    with capsys.disabled():
        print(f"\nparameters: G {n_params(g):,}  G' {n_params(gp):,}  D (108 px) {n_params(d):,}")
    assert n_params(g) == n_params(gp)  # skips are additive, dropout has no weights
    assert (d.base, d.levels) == (27, 3)


def test_shapes_at_108(x108):
    torch.manual_seed(0)
    for net in (Generator(), Generator(skips=False, dropout=0.0), BEGANDiscriminator(108)):
        with torch.no_grad():
            assert net(x108).shape == x108.shape


def test_generator_keeps_any_size():
    g = Generator().eval()
    with torch.no_grad():
        for size in ((101, 77), (64, 64), (30, 46)):
            assert g(torch.zeros(1, 3, *size)).shape == (1, 3, *size)


def test_generator_output_in_range(x108):
    torch.manual_seed(0)
    g = Generator()
    with torch.no_grad():
        y = g(x108 * 50)  # saturating input: tanh keeps it in [-1, 1]
    assert y.min() >= -1 and y.max() <= 1


def test_skips_change_the_output(x108):
    torch.manual_seed(0)
    g = Generator(skips=True, dropout=0.0).eval()
    g_noskip = Generator(skips=False, dropout=0.0).eval()
    g_noskip.load_state_dict(g.state_dict())  # same weights: only the forward differs
    with torch.no_grad():
        assert not torch.allclose(g(x108), g_noskip(x108))


def test_dropout_only_in_train_mode(x108):
    torch.manual_seed(0)
    g = Generator(dropout=0.1)
    with torch.no_grad():
        g.train()
        assert not torch.equal(g(x108), g(x108))
        g.eval()
        assert torch.equal(g(x108), g(x108))
        gp = Generator(skips=False, dropout=0.0).train()
        assert torch.equal(gp(x108), gp(x108))


def test_deterministic_under_a_seed(x108):
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        g, d = Generator().eval(), BEGANDiscriminator(108)
        with torch.no_grad():
            outs.append((g(x108), d(x108)))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("norm", ["instance", "none"])
def test_other_normalisations(norm, x108):
    g = Generator(norm=norm).eval()
    with torch.no_grad():
        assert g(x108).shape == x108.shape


def test_bad_arguments():
    with pytest.raises(ValueError, match="norm"):
        Generator(norm="group")
    with pytest.raises(ValueError, match="multiple of 4"):
        BEGANDiscriminator(image_size=102)
    with pytest.raises(ValueError, match="built for 108x108"):
        BEGANDiscriminator(108)(torch.zeros(1, 3, 64, 64))


def test_discriminator_levels_follow_began():
    assert (BEGANDiscriminator(64, hidden=8).levels, BEGANDiscriminator(64, hidden=8).base) == (4, 8)
    assert (BEGANDiscriminator(128, hidden=8).levels, BEGANDiscriminator(128, hidden=8).base) == (5, 8)


def test_discriminator_learns_to_autoencode():
    torch.manual_seed(0)
    d = BEGANDiscriminator(image_size=32, hidden=16, z_dim=16)
    # smooth images (4x4 noise, upsampled) that a 16-d bottleneck can hold
    coarse = torch.rand(4, 3, 4, 4, generator=torch.Generator().manual_seed(2)) * 2 - 1
    x = F.interpolate(coarse, size=32, mode="bilinear", align_corners=False)
    opt = torch.optim.Adam(d.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        loss = (d(x) - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
