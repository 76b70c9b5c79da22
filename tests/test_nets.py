"""The authors' G, G' and BEGAN discriminators: sizes, shapes, ranges, modes, seeded dropout and a
quick overfit check."""
import pytest
import torch
from torch.nn import functional as F

from refine.gan.nets import BEGANDiscriminator, Generator


def n_params(net):
    return sum(p.numel() for p in net.parameters())


@pytest.fixture(scope="module")
def x108():
    return torch.rand(2, 3, 108, 108, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_parameter_counts_are_the_authors():
    """Counted from facegan's cycleGen.Generator / ops.py and models.DiscriminatorCNN at 108 px
    (no biases in G; IN scale and offset in the residual blocks only):
    G:  c7s1 7*7*3*32 + d64 3*3*32*64 + d128 3*3*64*128 + 3 R128 (2*3*3*128*128 + 2*2*128)
        + u64 3*3*128*64 + u32 3*3*(64+64)*32 (concat[u64, d64]) + out 7*7*(32+32)*3 = 1,103,136;
    G': the same with u32 3*3*64*32 and out 7*7*32*3 = 1,080,000;
    D:  repeat_num int(log2 108) - 2 = 4 levels 108 -> 54 -> 27 -> 14, channels 64..256:
        encoder 2,399,616 + fc 14*14*256 -> 64 (3,211,328) + fc 64 -> 14*14*64 (815,360)
        + decoder 8 3x3 64-ch convs and the 3-ch output (297,155) = 6,723,459."""
    g, gp, d = Generator(), Generator(skips=False, dropout=0.0), BEGANDiscriminator(108)
    assert (n_params(g), n_params(gp), n_params(d)) == (1_103_136, 1_080_000, 6_723_459)
    assert (d.levels, d.base, d.decoded) == (4, 14, 112)
    assert not any(m.bias is not None for m in g.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)))


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


def test_tensorflow_same_padding():
    from refine.gan.nets import tf_same_pad

    assert tf_same_pad(108, 3, 2) == (0, 1) and tf_same_pad(27, 3, 2) == (1, 1) and tf_same_pad(54, 3, 2) == (0, 1)
    assert tf_same_pad(108, 3, 1) == (1, 1)


def test_skips_carry_the_encoders_features(x108):
    """G's output layer sees c7s1-32 directly (concat): with the decoder's path silenced (u32's
    weights zero), G(x) still depends on x; G' has no such path."""
    torch.manual_seed(0)
    for skips in (True, False):
        g = Generator(skips=skips, dropout=0.0).eval()
        with torch.no_grad():
            g.u32.conv.weight.zero_()
            a, b = g(x108), g(-x108)
        assert (not torch.allclose(a, b)) == skips


def test_dropout_only_in_train_mode_or_when_seeded(x108):
    torch.manual_seed(0)
    g = Generator(dropout=0.1)
    with torch.no_grad():
        g.train()
        assert not torch.equal(g(x108), g(x108))
        g.eval()
        assert torch.equal(g(x108), g(x108))
        seeded = g(x108, [11, 12])  # seeded noise, in eval mode too (the export's)
        assert not torch.allclose(seeded, g(x108))
        assert torch.equal(seeded, g(x108, [11, 12]))
        assert not torch.allclose(g(x108, [11, 13])[1], seeded[1])
        gp = Generator(skips=False, dropout=0.0).train()
        assert torch.equal(gp(x108), gp(x108))


def test_seeded_dropout_is_per_image_whatever_the_batch(x108):
    """An image's noise depends on its own seed only: alone, or second in a batch, it gets the
    same masks (values equal to float rounding: the convolutions run on other batch shapes)."""
    torch.manual_seed(0)
    g = Generator(dropout=0.1).eval()
    with torch.no_grad():
        pair = g(x108, [5, 9])
        alone = g(x108[1:], [9])
        flipped = g(x108.flip(0), [9, 5])
    assert torch.allclose(pair[1], alone[0], atol=1e-5) and torch.allclose(pair[1], flipped[0], atol=1e-5)


def test_deterministic_under_a_seed(x108):
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        g, d = Generator().eval(), BEGANDiscriminator(108)
        with torch.no_grad():
            outs.append((g(x108), d(x108)))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_instance_norm_everywhere_is_an_option(x108):
    g = Generator(norm="instance").eval()
    assert sum(isinstance(m, torch.nn.InstanceNorm2d) for m in g.modules()) == 6 + 5  # blocks + c7s1, dk, uk
    with torch.no_grad():
        assert g(x108).shape == x108.shape


def test_bad_arguments():
    with pytest.raises(ValueError, match="norm"):
        Generator(norm="batch")
    with pytest.raises(ValueError, match="at least 16"):
        BEGANDiscriminator(image_size=8)
    with pytest.raises(ValueError, match="built for 108x108"):
        BEGANDiscriminator(108)(torch.zeros(1, 3, 64, 64))


@pytest.mark.parametrize("size, levels, base", [(64, 4, 8), (100, 4, 13), (128, 5, 8)])
def test_discriminator_levels_follow_the_authors_rule(size, levels, base):
    d = BEGANDiscriminator(size, hidden=8)
    assert (d.levels, d.base) == (levels, base)
    with torch.no_grad():
        assert d(torch.zeros(1, 3, size, size)).shape == (1, 3, size, size)


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
