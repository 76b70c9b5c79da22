"""The training options of issue 24 (``refine/gan/config.py``): each does what it says, and at their
defaults nothing of the authors' training changes (``test_method.py`` holds the method itself)."""
import dataclasses
import copy
import math

import pytest
import torch

from morph.base.errors import UserError
from refine.gan.augment import cutout, diff_augment
from refine.gan.config import TrainConfig
from refine.gan.nets import Generator, PatchDiscriminator, build_nets
from refine.gan.trainer import Trainer


def test_default_architecture_key_is_the_one_earlier_checkpoints_hold():
    # measured on learn24 before the options existed: checkpoints of the authors' networks resume
    assert TrainConfig().architecture_key() == "4a367cf482477421"
    assert TrainConfig(lr_schedule="tail", augment="diffaugment").architecture_key() == "4a367cf482477421"
    assert TrainConfig(residual=True).architecture_key() != "4a367cf482477421"
    assert TrainConfig(upsample="resize").architecture_key() != "4a367cf482477421"


def test_resize_upsampling_paints_no_checkerboard():
    """On a constant input, the authors' 3x3 stride-2 transposed convolution gives even and odd
    pixels different sums of kernel taps - a 2-pixel checkerboard in G's output from the start -
    while resize-then-convolve gives a constant interior. Mutant caught: ``resize`` still building
    the transposed convolution (or resizing after it)."""
    torch.manual_seed(0)
    x = torch.ones(1, 3, 16, 16)
    for upsample, flat in (("transpose", False), ("resize", True)):
        g = Generator(width=4, upsample=upsample, skips=False, dropout=0.0).eval()
        h = g.u64(torch.ones(1, 16, 8, 8), (16, 16))[..., 2:-2, 2:-2]  # the interior
        assert (h.std(dim=(-2, -1)).max() < 1e-6) == flat, upsample
        assert g(x).shape == x.shape
    odd = Generator(width=4, upsample="resize")(torch.rand(2, 3, 27, 27))
    assert odd.shape == (2, 3, 27, 27)  # odd sizes round-trip as the authors' do


def test_residual_generator_starts_as_an_exact_copy_and_learns_a_correction():
    g = Generator(width=8, residual=True)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(g.eval()(x), x)
    torch.manual_seed(0)
    assert not torch.equal(Generator(width=8)(x), x)  # the authors' G does not
    g.train()
    (g(x) - 0.5).abs().mean().backward()
    assert g.c7s1_3.conv.weight.grad.abs().sum() > 0


def test_defaults_build_the_authors_networks_with_the_same_initial_weights():
    torch.manual_seed(5)
    a = build_nets(TrainConfig(g_width=8, d_hidden=8, image_size=32))
    torch.manual_seed(5)
    b = build_nets({"g_width": 8, "d_hidden": 8, "image_size": 32})
    for k in a:
        for (n, p), q in zip(a[k].state_dict().items(), b[k].state_dict().values()):
            assert torch.equal(p, q), (k, n)
    assert isinstance(build_nets({"discriminator": "patch", "image_size": 32})["D_R"], PatchDiscriminator)


@pytest.mark.parametrize("kw, words", [
    ({"r1": 1.0}, "apply to patch discriminators"),
    ({"history": 8}, "apply to patch discriminators"),
    ({"gan_loss": "hinge"}, "apply to patch discriminators"),
    ({"lr_schedule": "cosine"}, "lr_schedule 'cosine' is unknown"),
    ({"augment": "ada"}, "augment 'ada' is unknown"),
    ({"lambda_adv": -1.0}, "lambda_adv must be a finite number"),
    ({"residual": "yes"}, "residual must be true or false"),
    ({"face_weight": 4.0, "discriminator": "patch"}, "face_weight applies to the BEGAN"),
    ({"face_weight": 0.0}, "face_weight must be"),
    ({"upsample": "bilinear"}, "upsample 'bilinear' is unknown"),
    ({"lambda_face": -0.1}, "lambda_face must be a finite number"),
])
def test_bad_option_values_are_refused_in_one_sentence(kw, words):
    with pytest.raises(UserError, match=words):
        TrainConfig(**kw)


def test_tail_schedule_is_constant_then_linear_to_zero():
    c = TrainConfig(steps=100, lr_schedule="tail")
    assert [c.lr_factor(s) for s in (0, 79, 80, 90, 100)] == [1.0, 1.0, 1.0, 0.5, 0.0]
    assert TrainConfig(steps=100, lr_schedule="constant").lr_factor(99) == 1.0


def test_diff_augment_draws_from_its_generator_and_passes_gradients():
    x = (torch.rand(4, 3, 32, 32) * 2 - 1).requires_grad_(True)
    a = diff_augment(x, torch.Generator().manual_seed(1))
    b = diff_augment(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert not torch.equal(a, diff_augment(x, torch.Generator().manual_seed(2)))
    # cutout alone: a square of half the side (a quarter of the image), less where it reaches past the edge
    zero = (cutout(torch.rand(16, 3, 32, 32) + 1, torch.Generator().manual_seed(3)) == 0).all(1)
    zero = zero.flatten(1).float().mean(1)
    assert ((zero >= 0.25 * 0.25) & (zero <= 0.25)).all() and (zero == 0.25).any()
    a.sum().backward()
    assert x.grad.abs().sum() > 0


def test_patch_game_with_every_option_trains_and_resumes_its_state(sets, tmp_path):
    cfg = dict(g_width=8, d_hidden=8, batch_size=4, images_per_identity=2, steps=10, seed=1, variant="no_pairs",
               residual=True, discriminator="patch", gan_loss="hinge", r1=1.0, history=4, augment="diffaugment",
               lr_schedule="tail", lambda_adv=0.5)
    tr = Trainer(TrainConfig(**cfg), sets / "synthetic.h5", sets / "real.h5", None, tmp_path / "a")
    for _ in range(3):
        v = tr.train_step()
    assert all(math.isfinite(x) for x in v.values()) and "L_real_R" not in v and v["k_R"] == 0.0
    assert len(tr.history) == 4
    st = copy.deepcopy(tr.state())  # as a checkpoint holds it: a copy
    again = Trainer(TrainConfig(**cfg), sets / "synthetic.h5", sets / "real.h5", None, tmp_path / "b")
    again.load_state(st, tmp_path / "a")
    assert torch.equal(again.history, tr.history)
    assert torch.equal(again.d_aug_gen.get_state(), tr.d_aug_gen.get_state())
    resumed = again.train_step()["L_G"]
    torch.set_rng_state(st["rng"]["torch"])  # dropout draws from the global generator, which both share here
    assert resumed == tr.train_step()["L_G"]


def test_face_weight_map_covers_the_template_face_and_weights_d_rs_reconstruction(sets, tmp_path):
    """Mutants: the box built from the wrong points (not around eyes and mouth), the weight left
    out of D_R's loss (L_G equals the plain mean), the weight applied as a plain scale."""
    from morph.align.template import crop_template
    from refine.gan import losses as L

    pts = crop_template(None).points(108)
    w = L.face_weight_map(108, pts, 4.0)[0, 0]
    assert w.shape == (108, 108) and set(w.unique().tolist()) == {1.0, 4.0}
    for x, y in pts.round().astype(int):  # eyes, nose, mouth inside; corners outside
        assert w[y, x] == 4.0
    assert w[0, 0] == w[-1, -1] == w[54, 2] == w[2, 54] == 1.0
    assert 0.3 < (w == 4.0).float().mean() < 0.5  # about 40% of the crop: the face, not the whole image
    a, b = torch.zeros(2, 3, 108, 108), torch.zeros(2, 3, 108, 108)
    a[..., w == 4.0] = 1.0  # errors on the face only: the weighted mean is 4x as large a share
    plain, weighted = L.l1(a, b), L.l1(a, b, weight=w[None, None])
    share = (w == 4.0).float().mean()
    assert math.isclose(float(weighted), float(4 * share / (4 * share + 1 - share)), rel_tol=1e-5)
    assert math.isclose(float(L.l1(a, b, weight=torch.ones(1, 1, 108, 108))), float(plain), rel_tol=1e-6)
    cfg = dict(g_width=8, d_hidden=8, batch_size=4, images_per_identity=2, steps=10, variant="no_pairs")
    tr = Trainer(TrainConfig(**cfg, face_weight=4.0), sets / "synthetic.h5", sets / "real.h5", None, tmp_path / "f")
    b = tr.next_batch()
    torch.manual_seed(0)
    terms, _ = tr.forward(b)
    gx = tr.G(b["x"])
    fw = tr.face_weight
    assert fw.shape[-1] == tr.cfg.image_size and fw.max() == 4.0
    # the trainer's L_G is D_R's face-weighted reconstruction error of G(x)
    torch.manual_seed(0)
    gx = tr.G(b["x"])
    want = L.l1(gx, tr.D_R(torch.cat([gx, b["y"]]))[:4], weight=fw)
    assert torch.allclose(terms["L_G"], want, rtol=1e-4)
    assert not torch.allclose(terms["L_G"], L.l1(gx, tr.D_R(torch.cat([gx, b["y"]]))[:4]), rtol=1e-4)


def test_lambda_adv_zero_leaves_g_without_any_discriminators_gradient(sets, tmp_path):
    """With ``lambda_adv`` 0, G's objective holds no adversarial term: neither D_R's L_G nor the
    face discriminator's L_GF (mutant: L_GF left outside lambda_adv, so the no-adversary control
    still moves the face); at 0.5 both are halved (mutant: lambda_adv on L_G only)."""
    from refine.gan.trainer import objectives

    cfg = TrainConfig(g_width=8, d_hidden=8, batch_size=4, images_per_identity=2, steps=10, variant="no_pairs",
                      lambda_adv=0.0, lambda_face=0.3)
    tr = Trainer(cfg, sets / "synthetic.h5", sets / "real.h5", None, tmp_path / "c")
    terms, _ = tr.forward(tr.next_batch())
    assert terms["L_GF"].item() > 0
    rest = cfg.lambda_cyc * terms["L_cyc"] + cfg.lambda_c * terms["L_C"] + cfg.lambda_id * terms["L_id"]
    assert torch.allclose(objectives(terms, cfg)["G"], rest)
    half = objectives(terms, dataclasses.replace(cfg, lambda_adv=0.5))["G"]
    assert torch.allclose(half, rest + 0.5 * (terms["L_G"] + cfg.lambda_face * terms["L_GF"]))


def test_an_export_of_a_residual_refiner_starts_from_the_renders(tmp_path, sets):
    """``refine export-dataset`` builds G as the checkpoint's config says: a residual G one step
    from its zero-initialised start returns the renders of the same draws within a few levels
    (the moving average of a copy), with its dropout on as exported. Mutant caught: the exporter
    building the authors' G for a residual checkpoint (the same weights, no input added)."""
    import h5py
    import numpy as np
    from click.testing import CliRunner

    from cli.morph import main as morph
    from cli.refine import main as refine

    def run(group, *args):
        res = CliRunner().invoke(group, [str(a) for a in args])
        assert res.exit_code == 0, res.output

    (tmp_path / "res.yaml").write_text("g_width: 8\nd_hidden: 8\nresidual: true\nlr_schedule: tail\n")
    run(refine, "train", "--synthetic", sets / "synthetic.h5", "--real", sets / "real.h5", "--variant", "no_pairs",
        "--steps", 1, "--out", tmp_path / "run", "--config", tmp_path / "res.yaml")
    run(refine, "export-dataset", "--checkpoint", tmp_path / "run" / "checkpoints" / "step_00000001.pt",
        "--model", "menpo3d", "--n-identities", 2, "--images-per-identity", 2, "--seed", 1, "--format", "hdf5",
        "--no-scores", "--out", tmp_path / "export")
    run(morph, "sample-identities", "--model", "menpo3d", "--n-identities", 2, "--images-per-identity", 2,
        "--seed", 1, "-o", tmp_path / "ids.h5")
    run(morph, "render", tmp_path / "ids.h5", "-o", tmp_path / "raw.h5")
    with h5py.File(tmp_path / "export" / "ganfaces.h5", "r") as f, h5py.File(tmp_path / "raw.h5", "r") as g:
        diff = np.abs(f["images"][()].astype(int) - g["images"][()].astype(int))
    assert diff.mean() < 3.0, diff.mean()


def test_projected_discriminator_trains_its_heads_on_frozen_o_net_features(sets, tmp_path):
    """``discriminator: projected``: the backbone is MTCNN's pretrained O-Net (its conv1 weights are
    the detector's), and after training steps the backbone and the random projections are as they
    were while every head moved; the trainer's D optimiser holds the heads alone. Mutants caught:
    the backbone left trainable (its weights move, and D's parameter count includes it), a fresh
    random backbone instead of the detector's weights, a head left out of the logits; the heads are
    spectrally normalised as Projected GAN's (caught: the parametrisation left out)."""
    from morph.align.mtcnn_nets import ONet
    from refine.gan.projected import ProjectedDiscriminator

    d = ProjectedDiscriminator(hidden=8)
    assert torch.equal(d.backbone.conv1.weight, ONet().conv1.weight)
    logits = d(torch.rand(2, 3, 108, 108) * 2 - 1)
    assert logits.shape == (2, 5 * 5 + 5 * 5 + 4 * 4)  # 47 -> 23 -> 11 -> 5, 22 -> 11 -> 5, 9 -> 4 px (96 px input)
    convs = [m for h in d.heads for m in h if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(torch.nn.utils.parametrize.is_parametrized(m, "weight") for m in convs)
    cfg = dict(g_width=8, d_hidden=8, batch_size=4, images_per_identity=2, steps=10, seed=1, variant="no_pairs",
               residual=True, discriminator="projected", gan_loss="hinge", r1=1.0, augment="diffaugment",
               lr_schedule="tail")
    tr = Trainer(TrainConfig(**cfg), sets / "synthetic.h5", sets / "real.h5", None, tmp_path / "p")
    before = copy.deepcopy(tr.D_R.state_dict())
    heads = sum(p.numel() for n in (tr.D_R, tr.D_S) for p in n.heads.parameters())
    assert sum(p.numel() for p in tr.d_params()) == heads
    for _ in range(2):
        v = tr.train_step()
    assert all(math.isfinite(x) for x in v.values()), v
    after = tr.D_R.state_dict()
    for name, w in before.items():
        moved = not torch.equal(w, after[name])
        if name.startswith("heads."):  # (a head's last bias may stay: under the hinge, while every logit
            # is within (-1, 1), its gradient is zero; and a 1-channel convolution's spectral-norm u is +-1)
            assert moved or name.endswith(("bias", "._u")), name
        else:
            assert not moved, name


def test_face_discriminator_judges_only_the_face_box_with_the_least_squares_loss(sets, tmp_path):
    """``lambda_face``: D_F sees the face box of G(x) and of y alone (real pixels outside it change
    nothing), its least-squares terms enter G's objective weighted by ``lambda_face`` and D's
    objective as they are, and a step moves D_F's weights. Mutants caught: D_F given the whole
    image (the shape and the outside pixels), L_GF left out of Eq. 8 or unweighted, D_F's
    parameters left out of D's optimiser, the least-squares targets swapped."""
    from morph.align.template import crop_template
    from refine.gan import losses as L
    from refine.gan.trainer import objectives

    ones, zeros = torch.ones(2, 1, 3, 3), torch.zeros(2, 1, 3, 3)
    assert [float(v) for v in L.lsgan_losses(zeros, ones)] == [1.0, 0.0]  # D right: G's term 1, D's 0
    assert [float(v) for v in L.lsgan_losses(ones, zeros)] == [0.0, 2.0]  # D fooled both ways
    cfg = TrainConfig(g_width=8, d_hidden=8, batch_size=4, images_per_identity=2, steps=10, variant="no_pairs",
                      residual=True, lambda_face=0.5)
    assert cfg.architecture_key() != TrainConfig(**{**cfg.to_dict(), "lambda_face": 0.0}).architecture_key()
    tr = Trainer(cfg, sets / "synthetic.h5", sets / "real.h5", None, tmp_path / "f")
    t, b_, l, r = tr.face_box
    assert (t, b_, l, r) == L.face_box(tr.cfg.image_size, crop_template(tr.cfg.crop_template).points(tr.cfg.image_size))
    assert 0 < t < b_ < tr.cfg.image_size and 0 < l < r < tr.cfg.image_size
    seen = []
    tr.D_F.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    batch = tr.next_batch()
    torch.manual_seed(0)
    terms, _ = tr.forward(batch)
    assert seen[-1][-2:] == (b_ - t, r - l) and seen[-1][0] == 8  # G(x) and y, both cropped
    outside = dict(batch, y=batch["y"].clone())
    outside["y"][..., :t, :] = torch.rand_like(outside["y"][..., :t, :]) * 2 - 1
    torch.manual_seed(0)
    moved, _ = tr.forward(outside)
    assert torch.equal(moved["L_DF"], terms["L_DF"]) and not torch.equal(moved["L_DR"], terms["L_DR"])
    objs = objectives(terms, cfg)
    without = objectives({k: v for k, v in terms.items() if k not in ("L_GF", "L_DF")}, cfg)
    assert torch.allclose(objs["G"] - without["G"], 0.5 * terms["L_GF"])
    assert torch.allclose(objs["D"] - without["D"], terms["L_DF"])
    before = [p.detach().clone() for p in tr.D_F.parameters()]
    tr.train_step()
    assert all(not torch.equal(p, q) for p, q in zip(tr.D_F.parameters(), before))


def test_projected_face_discriminator_judges_the_face_box_on_frozen_o_net_features(sets, tmp_path):
    """``face_discriminator: projected``: D_F is Projected GAN's discriminator (O-Net's frozen trunk,
    trainable heads) on the face box, D's optimiser holds its heads and not its trunk, and a step
    moves the heads and leaves the trunk. Mutants caught: the option ignored (D_F a patch
    discriminator), the trunk left trainable, the architecture key unchanged (a patch D_F's
    checkpoint would then load into a projected one)."""
    from refine.gan.projected import ProjectedDiscriminator

    base = dict(g_width=8, d_hidden=8, batch_size=4, images_per_identity=2, steps=10, variant="no_pairs",
                residual=True, lambda_face=0.5)
    cfg = TrainConfig(**base, face_discriminator="projected")
    assert cfg.architecture_key() != TrainConfig(**base).architecture_key()
    assert TrainConfig(**base).architecture_key() == TrainConfig(**base, face_discriminator="patch").architecture_key()
    tr = Trainer(cfg, sets / "synthetic.h5", sets / "real.h5", None, tmp_path / "pf")
    assert isinstance(tr.D_F, ProjectedDiscriminator)
    heads = {id(p) for p in tr.D_F.heads.parameters()}
    trunk = {id(p) for p in tr.D_F.backbone.parameters()}
    held = {id(p) for p in tr.d_params()}
    assert heads <= held and not trunk & held
    before = copy.deepcopy(tr.D_F.state_dict())
    tr.train_step()
    after = tr.D_F.state_dict()
    assert all(torch.equal(w, after[k]) for k, w in before.items() if not k.startswith("heads."))
    assert any(not torch.equal(w, after[k]) for k, w in before.items() if k.startswith("heads.") and "weight" in k)


def test_colour_histogram_loss_compares_distributions_region_by_region():
    """``colour_histogram_loss``: batches with the same colours in other images and places cost 0,
    an offset c costs |c|, colours right overall but swapped between the face box and the rest
    cost their difference, and the gradient moves G's colours towards the real ones. Mutants
    caught: the sort left out (a pixel-by-pixel L1: the shuffled batch would cost), the two
    regions pooled (the swap would cost 0.3), the sign of the difference dropped."""
    from refine.gan.losses import colour_histogram_loss

    box = (4, 12, 3, 13)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[4:12, 3:13] = True
    shuffled = x[[2, 0, 3, 1]].clone()
    shuffled[..., inside] = shuffled[..., inside].flip(-1)  # other images, other places in each region
    assert colour_histogram_loss(x, shuffled, box) == 0
    assert torch.isclose(colour_histogram_loss(x, x - 0.2, box), torch.tensor(0.2), atol=1e-6)
    a, b = torch.full((2, 3, 16, 16), 0.5), torch.full((2, 3, 16, 16), -0.3)
    fake = torch.where(inside, a, b)
    real = torch.where(inside, b, a)
    # (80 of 256 pixels inside: pooled, only the surplus of one colour over the other would cost, 0.3)
    assert torch.isclose(colour_histogram_loss(fake, real, box), torch.tensor(0.8), atol=1e-6)
    p = x.clone().requires_grad_(True)
    colour_histogram_loss(p, x + 0.3, box).backward()
    assert (p.grad < 0).all()  # descending raises every colour towards the real batch's
    with pytest.raises(ValueError):
        colour_histogram_loss(x, x[:2], box)


def test_lambda_hist_adds_l_hist_to_g_scaled_by_lambda_adv(sets, tmp_path):
    """``lambda_hist``: the trainer computes L_hist of G(x) against the real batch in its face
    box, and Eq. 8 adds lambda_adv * lambda_hist * L_hist to G's objective alone. Mutants caught:
    L_hist left out of Eq. 8, left unweighted, left outside lambda_adv (the lambda_adv 0 control
    would then still pull G towards the real set), added to D's objective."""
    from refine.gan import losses as L
    from refine.gan.trainer import objectives

    cfg = TrainConfig(g_width=8, d_hidden=8, batch_size=4, images_per_identity=2, steps=10, variant="no_pairs",
                      residual=True, lambda_hist=0.7)
    tr = Trainer(cfg, sets / "synthetic.h5", sets / "real.h5", None, tmp_path / "h")
    batch = tr.next_batch()
    torch.manual_seed(0)
    terms, _ = tr.forward(batch)
    torch.manual_seed(0)
    gx = tr.G(batch["x"])
    assert torch.allclose(terms["L_hist"], L.colour_histogram_loss(gx, batch["y"], tr.face_box))
    assert terms["L_hist"] > 0
    without = {k: v for k, v in terms.items() if k != "L_hist"}
    for adv in (1.0, 0.5, 0.0):
        c = dataclasses.replace(cfg, lambda_adv=adv)
        objs, base = objectives(terms, c), objectives(without, c)
        assert torch.allclose(objs["G"] - base["G"], adv * 0.7 * terms["L_hist"])
        assert torch.equal(objs["D"], base["D"])
    assert "L_hist" not in Trainer(dataclasses.replace(cfg, lambda_hist=0.0), sets / "synthetic.h5",
                                   sets / "real.h5", None, tmp_path / "h0").forward(batch)[0]


def test_split_generator_corrects_the_drawn_face_and_the_background_apart():
    """``split_background``: a residual G whose output layer's first three channels correct the
    pixels the render has drawn (any channel above -1) and its last three the black background.
    Zeroing one half's weights leaves exactly its pixels as rendered and the others as they were.
    Mutants caught: the mask inverted or taken where every channel (not any) is above -1, the two
    halves swapped, the split applied to a non-residual G."""
    torch.manual_seed(0)
    g = Generator(width=4, residual=True, split=True, dropout=0.0).eval()
    x = torch.rand(1, 3, 24, 24) * 2 - 1
    x[..., :, :8] = -1.0  # background: the render's 8-bit 0
    x[0, 0, 12, 12] = x[0, 1, 12, 12] = -1.0  # a drawn pixel black in two channels is still drawn
    assert torch.equal(g(x), x)  # starts as a copy
    torch.nn.init.normal_(g.c7s1_3.conv.weight, 0.0, 0.05)
    both = g(x).detach()
    drawn = (x > -1).any(1, keepdim=True).expand_as(x)
    w = g.c7s1_3.conv.weight.data
    keep = w.clone()
    w[3:] = 0  # no background correction
    face_only = g(x).detach()
    assert torch.equal(face_only[~drawn], x[~drawn]) and torch.equal(face_only[drawn], both[drawn])
    w.copy_(keep)
    w[:3] = 0  # no face correction
    bg_only = g(x).detach()
    assert torch.equal(bg_only[drawn], x[drawn]) and torch.equal(bg_only[~drawn], both[~drawn])
    with pytest.raises(ValueError, match="needs residual"):
        Generator(width=4, split=True)
    with pytest.raises(UserError, match="needs residual: true"):
        TrainConfig(split_background=True)


def test_structure_identity_loss_is_blind_to_colour_maps_and_not_to_drawing():
    """``id_loss: structure``: L_id of a per-image, per-channel affine change of the face's colours
    is 0 (and its gradient has no part along an offset or a gain), background pixels do not count, and a change that differs
    between pixels of one colour costs about what the pixel L_id charges. Mutants caught: the
    mean change not removed (an offset costs), the slope not fitted (a gain costs), the fit taken
    over the background too (the black background then sets the slope), the mask dropped."""
    from refine.gan import losses as L

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 20, 20, generator=g) * 1.6 - 0.8
    x[..., :6] = -1.0  # the render's black background
    drawn = (x > -1).float()
    gain = torch.rand(3, 3, 1, 1, generator=g) + 0.5
    offset = torch.rand(3, 3, 1, 1, generator=g) * 0.4 - 0.2
    coloured = (drawn * (gain * x + offset) + (1 - drawn) * (torch.rand(3, 3, 20, 20, generator=g) * 2 - 1))
    coloured.requires_grad_(True)
    loss = L.structure_identity_loss(x, coloured)
    assert loss.item() < 1e-6
    loss.backward()  # nor does its gradient push along a colour map: zero against an offset and a gain
    grad = coloured.grad * drawn
    assert grad.sum((2, 3)).abs().max().item() < 1e-6 and (grad * x).sum((2, 3)).abs().max().item() < 1e-6
    drawing = x + drawn * 0.2 * torch.randn(x.shape, generator=g)
    s, p = L.structure_identity_loss(x, drawing).item(), L.identity_loss(x, drawing).item()
    assert 0.8 * p < s <= p
    assert L.identity_loss(x, coloured).item() > 0.05  # the authors' L_id charges the colour map


def test_curve_identity_loss_frees_the_batchs_shared_colour_curve_and_nothing_else():
    """``id_loss: curve``: a colour map shared by every image of the batch (a channel mix and a
    cubic curve) costs nearly nothing, the background does not count, one image's own tone change
    costs (``structure`` charges it nothing), and drawing costs about what the pixel L_id charges.
    Mutants caught: the curve fitted per image (the one image's change would cost 0), the fit left
    out (the shared map would cost), the mask dropped (the background's change would cost)."""
    from refine.gan import losses as L

    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 20, 20, generator=g) * 1.6 - 0.8
    x[..., :6] = -1.0  # the render's black background
    drawn = (x > -1).float()
    mix = torch.tensor([[0.9, 0.1, 0.0], [0.05, 1.0, -0.05], [0.0, 0.1, 0.8]])
    shared = torch.einsum("oc,bchw->bohw", mix, x) + 0.1 + 0.15 * x ** 3 - 0.1 * x ** 2
    shared = drawn * shared + (1 - drawn) * (torch.rand(x.shape, generator=g) * 2 - 1)
    assert L.curve_identity_loss(x, shared).item() < 1e-4
    assert L.identity_loss(x, shared).item() > 0.05 and L.structure_identity_loss(x, shared).item() > 1e-3
    own = x.clone()
    own[0] = drawn[0] * (0.7 * x[0] + 0.2) + (1 - drawn[0]) * x[0]  # one face's tone, alone
    assert L.structure_identity_loss(x, own).item() < 1e-6
    assert L.curve_identity_loss(x, own).item() > 0.3 * L.identity_loss(x, own).item()
    drawing = x + drawn * 0.2 * torch.randn(x.shape, generator=g)
    c, p = L.curve_identity_loss(x, drawing).item(), L.identity_loss(x, drawing).item()
    assert 0.8 * p < c <= p


def test_id_loss_option_chooses_the_trainers_l_id(sets, tmp_path):
    """The trainer's L_id is the structure loss under ``id_loss: structure``, the curve loss under
    ``curve`` and the authors' pixel loss by default, of the same G(x). Mutant caught: the option
    ignored (or one value taken for another)."""
    from refine.gan import losses as L

    got = {}
    for kind, fn in (("pixel", L.identity_loss), ("structure", L.structure_identity_loss),
                     ("curve", L.curve_identity_loss)):
        torch.manual_seed(0)
        cfg = TrainConfig(g_width=8, d_hidden=8, batch_size=4, images_per_identity=2, steps=10,
                          variant="no_pairs", residual=True, id_loss=kind)
        tr = Trainer(cfg, sets / "synthetic.h5", sets / "real.h5", None, tmp_path / kind)
        torch.nn.init.normal_(tr.G.c7s1_3.conv.weight, 0.0, 0.05)
        tr.G.dropout = 0.0  # G(x) the same in the trainer's forward and here
        b = tr.next_batch()
        terms, _ = tr.forward(b)
        with torch.no_grad():
            want = fn(b["x"], tr.G(b["x"]))
        assert torch.allclose(terms["L_id"].detach(), want, rtol=1e-5)
        got[kind] = want.item()
    # the three differ on this G, so the check above tells them apart
    assert len({round(v, 6) for v in got.values()}) == 3, got
    with pytest.raises(UserError, match="id_loss"):
        TrainConfig(id_loss="colour")


def test_train_takes_the_face_discriminator_and_the_split_from_the_command_line(tmp_path, sets):
    """``refine train --lambda-face W --split-background --id-loss curve --lambda-hist H
    --face-discriminator projected``: the run's config records all five and its checkpoint holds a
    projected D_F and a G with two corrections. Mutant caught: a flag not passed on to the config
    (the checkpoint then holds no D_F or a patch one, or G's output layer has three channels, or
    the config's id_loss is pixel or its lambda_hist 0)."""
    import yaml
    from click.testing import CliRunner

    from cli.refine import main as refine
    from refine.checkpoint import load_checkpoint

    (tmp_path / "small.yaml").write_text("g_width: 8\nd_hidden: 8\n")
    res = CliRunner().invoke(refine, [str(a) for a in (
        "train", "--synthetic", sets / "synthetic.h5", "--real", sets / "real.h5", "--variant", "no_pairs",
        "--steps", 1, "--out", tmp_path / "run", "--config", tmp_path / "small.yaml", "--residual",
        "--lambda-face", 0.25, "--split-background", "--id-loss", "curve", "--lambda-hist", 0.5,
        "--face-discriminator", "projected")])
    assert res.exit_code == 0, res.output
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["lambda_face"] == 0.25 and cfg["split_background"] is True and cfg["id_loss"] == "curve"
    assert cfg["lambda_hist"] == 0.5 and cfg["face_discriminator"] == "projected"
    st = load_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000001.pt")
    assert any(k.startswith("heads.") for k in st["nets"]["D_F"])  # Projected GAN's heads, not a patch D
    assert st["nets"]["G"]["c7s1_3.conv.weight"].shape[0] == 6
