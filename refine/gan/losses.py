"""The losses of the paper (Eq. 1-7), one pure function per equation, and the BEGAN balance terms.

Where the paper is silent or its printed formula is ambiguous we follow the authors' TensorFlow
code (github.com/barisgecer/facegan: ``trainer.py`` ``build_model``, ``modules.py``
``magnet_loss``, ``config.py``); each docstring says where.

Every ||.||_1 of the paper is a mean over all elements (the authors' ``tf.reduce_mean(tf.abs(.))``),
not a sum, so the losses do not depend on batch or image size; ``per_image=True`` gives one mean
per image instead (the export's scores). Every loss is computed in float32 at least, also when
the networks run under bfloat16 autocast.
"""
from __future__ import annotations

import numpy as np
import torch


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


def l1(a: torch.Tensor, b: torch.Tensor, per_image: bool = False, weight: torch.Tensor | None = None
       ) -> torch.Tensor:
    """||a - b||_1 as the mean absolute difference over every element (authors' reduce_mean);
    ``per_image``: one mean per image (over all but the first dimension). ``weight``: a map
    broadcast over the elements (``face_weight_map``), the mean then weighted by it,
    sum(w |a - b|) / sum(w), so that a map of ones is the plain mean."""
    d = (_f32(a) - _f32(b)).abs()
    if weight is not None:
        w = weight.to(d.dtype).expand_as(d)
        return (d * w).flatten(1).sum(1) / w.flatten(1).sum(1) if per_image else (d * w).sum() / w.sum()
    return d.flatten(1).mean(1) if per_image else d.mean()


def face_box(size: int, points: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) pixel rows and columns, bottom and right exclusive, of the face
    box of an aligned ``size`` crop whose template points (eyes, nose tip, mouth corners) are
    ``points``: their box widened by 0.6 of the eye distance on each side and by 0.8 of it above
    the eyes and below the mouth, so that it holds brows, cheeks and chin - the part of an aligned
    image a render shares with a photo. A pixel is inside when its centre is."""
    p = np.asarray(points, np.float64)
    eye = float(np.linalg.norm(p[1] - p[0]))
    x0, x1 = p[:, 0].min() - 0.6 * eye, p[:, 0].max() + 0.6 * eye
    y0, y1 = p[:, 1].min() - 0.8 * eye, p[:, 1].max() + 0.8 * eye
    first = lambda lo: max(0, int(np.ceil(lo - 0.5)))  # noqa: E731  (first centre >= lo)
    last = lambda hi: min(size, int(np.floor(hi - 0.5)) + 1)  # noqa: E731  (one past the last centre <= hi)
    return first(y0), last(y1), first(x0), last(x1)


def face_weight_map(size: int, points: np.ndarray, weight: float) -> torch.Tensor:
    """(1, 1, size, size): ``weight`` on the face box (``face_box``) of an aligned crop, 1 elsewhere.
    It lets the BEGAN discriminators spend their reconstruction on the face rather than on the
    background, which is about half of every render (``face_weight``, issue 24)."""
    t, b, l, r = face_box(size, points)
    w = torch.ones(1, 1, size, size)
    w[..., t:b, l:r] = float(weight)
    return w


def cycle_loss(x: torch.Tensor, x_cyc: torch.Tensor, per_image: bool = False) -> torch.Tensor:
    """Eq. 1, the forward cycle only: L_cyc = E_x ||G'(G(x)) - x||_1, with ``x_cyc`` = G'(G(x))
    (the authors' ``s_loss``)."""
    return l1(x_cyc, x, per_image)


def began_generator_loss(fake: torch.Tensor, d_fake_recon: torch.Tensor, per_image: bool = False,
                         weight: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 2 / 3: L_G = E ||G(x) - D_R(G(x))||_1 (and L_G' = E ||G'(G(x)) - D_S(G'(G(x)))||_1):
    how badly the auto-encoder discriminator reconstructs the generated image (``weight``: the
    face-weighted mean of ``l1``, not the authors')."""
    return l1(fake, d_fake_recon, per_image, weight)


def began_discriminator_loss(real: torch.Tensor, d_real_recon: torch.Tensor, l_fake: torch.Tensor,
                             k: float, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 4 / 5: L_D = E ||y - D(y)||_1 - k_t L_G, with ``l_fake`` = L_G from Eq. 2 / 3
    (``began_generator_loss``). Returns (L_D, L_real); k moves by ``k_update(k, gamma, L_real,
    L_G)`` (the authors' ``balance = gamma * d_loss_real - g_loss``). Only D's parameters take this
    gradient (Eq. 10): the trainer restricts each gradient to its own network."""
    l_real = l1(real, d_real_recon, weight=weight)
    return l_real - k * l_fake, l_real


def pair_matching_loss(s: torch.Tensor, g_prime_of_r: torch.Tensor, k: float, l_cyc: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6: L_DP = E_(s, r) ||s - G'(r)||_1 - k_t^DP L_cyc, G' as a BEGAN discriminator of pairs.

    The real pairs (render s, photo r) play BEGAN's real images, L_cyc (Eq. 1) its fake term: G'
    learns to map photos to their renders while G is pushed to make G(x) that G' maps back to x as
    well as it maps real photos back to theirs. Returns (L_DP, L_real) with L_real =
    ||s - G'(r)||_1, the term the balance k_DP is moved by (the authors' ``sd_loss_real_forw``;
    their ``balance3 = gamma * L_real - L_cyc``).
    """
    l_real = l1(s, g_prime_of_r)
    return l_real - k * l_cyc, l_real


def identity_set_loss(embeddings: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor,
                      eta: float = 1.0) -> torch.Tensor:
    """Eq. 7, the identity-set (simplified magnet) loss on C's embeddings of G(x):

        L_C = mean_x max(0, -log( exp(-||e_x - c_{i_x}||^2 / (2 sigma^2) - eta)
                                  / sum_{j != i_x} exp(-||e_x - c_j||^2 / (2 sigma^2)) ))
        sigma = sum_x ||e_x - c_{i_x}||^2 / (M - 1)

    ``embeddings`` (M, D) = C(G(x)); ``labels`` (M,) rows of ``centroids`` (N, D), the identities'
    moving-average embeddings (``update_centroids``). Differentiable in the embeddings only: the
    centroids are treated as constants.

    The printed Eq. 7 lost the minus signs inside exp; this is the magnet-loss form (Rippel et al.
    2016, Eq. 4), which is also what the authors' ``modules.magnet_loss`` computes. From that code:
    - sigma is the paper's own formula, the summed squared distance over M - 1, and it is squared
      in the exponent (``-1 / (2 * variance ** 2)``), not used as a variance as in Rippel et al.;
      it is computed from the batch and gradients flow through it;
    - the denominator runs over every identity with a centroid (all N rows, including identities
      not in the batch, whose centroids may still be the initial zeros), except x's own;
    - the per-sample loss is hinged at 0 and averaged over the batch (the paper writes a sum);
    - the authors' feature network L2-normalises the embeddings before this loss.
    Computed with logsumexp rather than the authors' epsilons.
    """
    m = embeddings.shape[0]
    if m < 2:
        raise ValueError("identity_set_loss needs at least 2 embeddings (sigma divides by M - 1)")
    if centroids.shape[0] < 2:
        raise ValueError("identity_set_loss needs at least 2 identities (the denominator is over j != i_x)")
    e = embeddings.to(torch.promote_types(embeddings.dtype, torch.float32))
    c = centroids.detach().to(e)
    labels = labels.long()
    own = (e - c[labels]).pow(2).sum(1)  # exact, for the numerator and sigma
    sigma = own.sum() / (m - 1)
    scale = 1.0 / (2.0 * sigma.clamp_min(1e-6) ** 2)
    dist = ((e * e).sum(1, keepdim=True) - 2.0 * e @ c.T + (c * c).sum(1)).clamp_min(0.0)
    others = (-scale * dist).scatter(1, labels[:, None], float("-inf"))
    log_ratio = (-scale * own - eta) - torch.logsumexp(others, dim=1)
    return torch.relu(-log_ratio).mean()


@torch.no_grad()
def update_centroids(centroids: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor,
                     beta: float = 0.95) -> torch.Tensor:
    """Section 3.3: move each identity's centroid towards its new embeddings; returns new centroids.

    The paper writes c_j <- c_j - beta * delta(i_x = j) (c_j - C(G(x))) with beta = 0.95, "a
    momentum of 0.95". The authors' code (``modules.magnet_loss``: ``diff = (1 - center_alpha) *
    (centers_batch - features)``, ``tf.scatter_sub``) makes 0.95 the momentum and 1 - beta the
    step. With several samples of identity j in a batch (the identity-grouped batches of
    ``refine.gan.data``), ``scatter_sub`` would sum their steps; we divide the sum by 1 + n_j, as
    centre loss does (Wen et al. 2016, Eq. 4), so a step never overshoots:

        c_j <- c_j - (1 - beta) * sum_{x: i_x = j} (c_j - C(G(x))) / (1 + n_j)

    every sample measured from the same old c_j. Identities absent from the batch keep theirs.
    """
    e = embeddings.detach().to(centroids.dtype)
    labels = labels.long()
    step = torch.zeros_like(centroids).index_add_(0, labels, centroids[labels] - e)
    n = torch.zeros(len(centroids), dtype=centroids.dtype, device=centroids.device)
    n.index_add_(0, labels, torch.ones_like(labels, dtype=centroids.dtype))
    return centroids - (1.0 - beta) * step / (1.0 + n)[:, None]


def identity_loss(x: torch.Tensor, gx: torch.Tensor) -> torch.Tensor:
    """L_id = ||x - G(x)||_1 (section 4, weighted by lambda_id = 0.1) over the rendered face only,
    as the authors' ``trainer.build_model`` computes ``p_loss``: ``mask = syn_raw > 0`` per pixel
    and channel, ``reduce_mean(mask * |x - G(x)|)`` over every element (not divided by the mask's
    area). Renders have a black background (8-bit 0, -1 here): unmasked, L_id would pull G's
    background to black while D_R pushes it towards the photos' backgrounds."""
    mask = (x > -1.0).to(torch.float32)
    return (mask * (_f32(x) - _f32(gx)).abs()).mean()


def structure_identity_loss(x: torch.Tensor, gx: torch.Tensor) -> torch.Tensor:
    """L_id on structure only (``id_loss: structure``, issue 24; not the authors'): the mean, as
    ``identity_loss`` takes it over the rendered face, of |r| where r is the part of the change
    d = G(x) - x that no affine map of x explains, per image and channel:

        r = d - mean(d) - a (x - mean(x)),   a = cov(x, d) / var(x)   (least squares, face pixels)

    i.e. the residual of regressing G(x) on x over the face. A colour, brightness or contrast
    change of the whole face costs nothing; a change that differs between pixels of the same
    colour (drawn shapes, noise, blur) costs about what ``identity_loss`` charges. Measured on the
    known gap's T1 (a colour map the pixel L_id resists): the face's red stayed about 8 levels
    short of the truth under ``pixel``, with L_id's pull the largest term against D_F's
    (bench/README.md)."""
    mask = (x > -1.0).to(torch.float32)
    x, d = _f32(x), _f32(gx) - _f32(x)
    n = mask.sum((2, 3), keepdim=True).clamp_min(1.0)
    xc = mask * (x - (mask * x).sum((2, 3), keepdim=True) / n)
    dc = mask * (d - (mask * d).sum((2, 3), keepdim=True) / n)
    a = (xc * dc).sum((2, 3), keepdim=True) / (xc * xc).sum((2, 3), keepdim=True).clamp_min(1e-6)
    return (dc - a * xc).abs().mean()


def curve_identity_loss(x: torch.Tensor, gx: torch.Tensor) -> torch.Tensor:
    """L_id on what no colour curve shared by the batch explains (``id_loss: curve``, issue 24; not
    the authors'): the mean, as ``identity_loss`` takes it over the rendered face, of |r|, where r
    is the part of the change d = G(x) - x that one map of colours, the same for every image of the
    batch, does not explain. The map is fitted by least squares over the face pixels of the whole
    batch, for each output channel c, as d_c ~ w0 + w1 R + w2 G + w3 B + w4 x_c^2 + w5 x_c^3 (an
    affine mix of the three channels, for casts, and a cubic curve of the channel itself, for
    gamma). A colour change that the whole domain shares (the gap between renders and photos)
    costs nothing; a change that differs between images - one face's skin tone moved towards
    another's - or between pixels of one colour - drawn shapes, blur, noise - costs about what
    ``identity_loss`` charges. ``structure`` frees each image's own affine map, so that one face's
    tone may move towards another's at no cost; here an image keeps its place among the others.
    Measured on the known gap's T1 (bench/README.md): both forms end at the same figure (0.625
    against 0.630 with ``lambda_hist`` 1), and both leave dark faces brightened and pale ones
    darkened, so that compression of tones is not L_id's doing."""
    mask = (x > -1.0).any(1)  # (B, H, W): the pixels the render has drawn
    x32 = _f32(x)
    d = _f32(gx) - x32
    px = x32.permute(0, 2, 3, 1)[mask]  # (N, 3)
    pd = d.permute(0, 2, 3, 1)[mask]
    if px.shape[0] == 0:
        return d.sum() * 0.0
    ones = torch.ones_like(px[:, :1])
    total = d.new_zeros(())
    for c in range(px.shape[1]):
        f = torch.cat([ones, px, px[:, c:c + 1] ** 2, px[:, c:c + 1] ** 3], 1)  # (N, 6)
        a = f.T @ f + 1e-4 * torch.eye(f.shape[1], dtype=f.dtype, device=f.device)
        w = torch.linalg.solve(a, f.T @ pd[:, c])
        total = total + (pd[:, c] - f @ w).abs().sum()
    return total / x.numel()


#: L_id by ``TrainConfig.id_loss``
IDENTITY_LOSSES = {"pixel": identity_loss, "structure": structure_identity_loss, "curve": curve_identity_loss}


def logit_gan_losses(fake_g: torch.Tensor, fake_d: torch.Tensor, real: torch.Tensor, kind: str
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """A logit discriminator's terms (``discriminator: patch`` or ``projected``): (G's, D's), each
    a mean over every logit. ``nonsaturating``: E softplus(-D(f)) and E softplus(D(f)) + E
    softplus(-D(y)); ``hinge``: -E D(f) and E relu(1 + D(f)) + E relu(1 - D(y)). ``fake_g``: the
    logits of G's images for G's term, ``fake_d``: those D's term sees (with ``history``, partly
    earlier images)."""
    if kind == "hinge":
        return -fake_g.mean(), torch.relu(1 + fake_d).mean() + torch.relu(1 - real).mean()
    sp = torch.nn.functional.softplus
    return sp(-fake_g).mean(), sp(fake_d).mean() + sp(-real).mean()


def lsgan_losses(logits_fake: torch.Tensor, logits_real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The least-squares GAN's terms (Mao et al. 2017, Eq. 2 with a = 0, b = c = 1): the
    generator's E (D(f) - 1)^2 and the discriminator's E (D(y) - 1)^2 + E D(f)^2, each a mean over
    every patch logit - the mean squared error against targets 1 and 0 that ``GANLoss`` with
    ``gan_mode='lsgan'`` computes (taesungp/contrastive-unpaired-translation, ``models/networks.py``).
    Returns (L_G, L_D)."""
    f, y = _f32(logits_fake), _f32(logits_real)
    return (f - 1.0).pow(2).mean(), (y - 1.0).pow(2).mean() + f.pow(2).mean()


def colour_histogram_loss(fake: torch.Tensor, real: torch.Tensor, box: tuple[int, int, int, int]
                          ) -> torch.Tensor:
    """How far the colours of a batch of G's images lie from those of a batch of real images, as
    distributions (not the paper's; ``lambda_hist``, issue 24): for each colour channel, the 1-D
    Wasserstein-1 distance between the two batches' pixel values, the mean absolute difference
    of their sorted values (their quantiles), taken inside the face box (``face_box``: top, bottom,
    left, right) and outside it separately, and the two averaged. Histogram matching is the
    textbook colour transfer between two sets (histogram specification, a per-channel monotone
    map); as a training loss it follows the idea of Risser et al. 2017, "Stable and Controllable
    Neural Texture Synthesis and Style Transfer Using Histogram Losses" (the distance of values
    to their histogram-matched version; their code not read). It compares the two sets'
    distributions only, never one image with another, so it holds each batch's spread of skin
    tones; it needs no discriminator, so it pulls steadily where the adversarial game swings.
    Both batches must have the same size (each region then has as many values on either side)."""
    if fake.shape != real.shape:
        raise ValueError(f"colour_histogram_loss: batches of {tuple(fake.shape)} and {tuple(real.shape)}")
    t, b, l, r = box
    inside = torch.zeros(fake.shape[-2:], dtype=torch.bool, device=fake.device)
    inside[t:b, l:r] = True
    f, y = _f32(fake), _f32(real)
    out = []
    for region in (inside, ~inside):
        a = f[..., region].transpose(0, 1).reshape(f.shape[1], -1)  # (C, B * pixels)
        c = y[..., region].transpose(0, 1).reshape(y.shape[1], -1)
        out.append((a.sort(dim=1).values - c.sort(dim=1).values).abs().mean())
    return sum(out) / len(out)


def ema_decay(decay: float, step: int) -> float:
    """The decay of G's moving average at update ``step`` (0 for the first), with TensorFlow's
    warm-up (``tf.train.ExponentialMovingAverage(0.9999, num_updates)`` in the authors'
    ``trainer.build_model``): min(decay, (1 + t) / (10 + t)). Without it, averaging from the
    random initial weights at 0.999 leaves 90% of them in after 100 steps and 13% after 2k."""
    return min(float(decay), (1.0 + step) / (10.0 + step))


def k_update(k: float, gamma: float, l_real: float, l_fake: float, lambda_k: float = 0.001) -> float:
    """The BEGAN balance term (section 3.1; Berthelot et al. Eq. 4), one per game:

        k_t = clip(k_{t-1} + lambda_k (gamma L_real - L_fake), 0, 1)

    D_R: L_real = ||y - D_R(y)||, L_fake = L_G; D_S: ||x - D_S(x)||, L_G'; D_P: ||s - G'(r)||,
    L_cyc. The paper prints k + 0.001 (0.5 L_D - L_G) without the clip; the authors' code clips to
    [0, 1] and uses L_real, not L_D, with gamma 0.5. Takes and returns plain numbers.
    """
    return float(min(max(float(k) + lambda_k * (gamma * float(l_real) - float(l_fake)), 0.0), 1.0))


def convergence_measure(l_real, l_fake, gamma: float):
    """BEGAN's M_global = L_real + |gamma L_real - L_fake| (Berthelot et al. section 3.4.1; the
    authors log it as ``measure``). Works on numbers and on tensors."""
    return l_real + abs(gamma * l_real - l_fake)
