"""refine.export.onednn_graph: the export's networks as fused oneDNN Graph partitions on a CPU.

Narrow networks at the export's layout (channels-last) keep these fast; the export's own tests
(tests/test_export.py) run the paper-shaped path end to end, resume and torchrun included.
"""
import numpy as np
import pytest
import torch

from refine.export import onednn_graph
from refine.gan.nets import BEGANDiscriminator, Generator

pytestmark = pytest.mark.skipif(not onednn_graph.available("cpu"), reason="this torch has no oneDNN Graph")

DTYPES = [torch.float32]
if torch.ops.mkldnn._is_mkldnn_bf16_supported():
    DTYPES.append(torch.bfloat16)


def _images(n: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 64, 64, generator=g) * 2 - 1
    return x.to(dtype).contiguous(memory_format=torch.channels_last)


def _net(net: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    return net.eval().requires_grad_(False).to(memory_format=torch.channels_last).to(dtype)


def _tolerance(dtype: torch.dtype, scale: float) -> float:
    """A few roundings of the output's precision at the output's scale."""
    return scale * (2e-2 if dtype == torch.bfloat16 else 1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")  # (as in Fused)
@pytest.mark.parametrize("dtype", DTYPES)
def test_d_r_runs_in_fused_partitions_the_same_bits_from_the_first_call(dtype):
    """D_R (convolutions + ELU) compiles into oneDNN Graph fusion groups; the first real call already
    gives the compiled graph's bits (without the warm-up, TorchScript's profiling call would run it
    op by op: other bits, and a resumed export would differ from an uninterrupted one); results are
    op by op's within rounding; the global switch is off again after each call."""
    D = _net(BEGANDiscriminator(64, hidden=16), dtype)
    x, y = _images(4, dtype), _images(4, dtype, seed=1)
    fused = onednn_graph.Fused(D, (x,))
    first = fused(x)
    assert "prim::oneDNNFusionGroup" in str(torch.jit.last_executed_optimized_graph())
    assert not torch.jit.onednn_fusion_enabled()
    fused(y)
    assert torch.equal(fused(x), first)
    with torch.inference_mode():
        eager = D(x)
    err = (first.float() - eager.float()).abs().max().item()
    assert err <= _tolerance(dtype, eager.float().abs().max().item()), err
    # (Fused traces on one image to save time; traced on the whole batch, the same compiled bits)
    whole = torch.jit.freeze(torch.jit.trace(D, (x,), check_trace=False))
    with onednn_graph._fusion_on(), torch.inference_mode():
        for _ in range(onednn_graph.warmup_calls()):
            whole(y)
        assert torch.equal(whole(x), first)


def test_each_image_is_independent_of_the_others_in_its_batch():
    """The export fixes which images share a batch; still, an image's result must not depend on the
    other images' contents (a fused reduction across the batch would)."""
    dtype = DTYPES[-1]
    D = _net(BEGANDiscriminator(64, hidden=16), dtype)
    x = _images(4, dtype)
    mixed = x.clone()
    mixed[2:] = _images(2, dtype, seed=3)
    fused = onednn_graph.Fused(D, (x,))
    assert torch.equal(fused(mixed)[:2], fused(x)[:2])


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_generator_applies_each_images_own_dropout_masks(dtype):
    """G with dropout takes its masks from outside the graph: per image, block by block, as
    ``Generator.noise_masks`` draws them and eager G applies them. Catches masks in another block
    order, another image's masks or masks not applied; without seeds (``--no-dropout``) the plain
    graph runs."""
    G = _net(Generator(width=8), dtype)
    x = _images(4, dtype)
    fused = onednn_graph.FusedGenerator(G, x)
    seeds = [11, 12, 13, 14]
    with torch.inference_mode():
        want, plain = G(x, seeds), G(x)
        other = G(x, seeds[::-1])
    scale = want.float().abs().max().item()
    errors = [(got.float() - ref.float()).abs().max().item()
              for got, ref in ((fused(x, seeds), want), (fused(x), plain), (fused(x, seeds[::-1]), other))]
    assert max(errors) <= _tolerance(dtype, scale), errors
    # (other masks move the output far more than fusion's rounding does: the comparison can tell)
    assert (want.float() - other.float()).abs().max().item() > 5 * max(errors)
    assert sorted(fused.graphs) == [False, True]


def test_noise_masks_are_the_draws_of_eager_dropout():
    """``noise_masks`` draws what ``Generator.forward(noise_seeds=...)`` drew before it existed: per
    image, block 1's mask, then block 2's ...; drop probability 0.1, kept values scaled by 1/0.9."""
    G = _net(Generator(width=8), torch.float32)
    masks = G.noise_masks([5, 6], (64, 64))
    assert len(masks) == 3 and masks[0].shape == (2, 32, 16, 16)
    g = torch.Generator().manual_seed(6)
    blocks = [torch.rand(32, 16, 16, generator=g) < 0.9 for _ in range(3)]
    for b in range(3):
        np.testing.assert_array_equal(masks[b][1].numpy(), blocks[b].float().numpy() / 0.9)
    kept = torch.cat([m.flatten() for m in masks]) > 0
    assert 0.88 < kept.float().mean().item() < 0.92
