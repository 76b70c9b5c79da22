"""The losses of the paper (Eq. 1-7), one pure function per equation, and the BEGAN balance terms.

Where the paper is silent or its printed formula is ambiguous we follow the authors' TensorFlow
code (github.com/barisgecer/facegan: ``trainer.py`` ``build_model``, ``modules.py``
``magnet_loss``, ``config.py``); each docstring says where.

Every ||.||_1 of the paper is a mean over all elements (the authors' ``tf.reduce_mean(tf.abs(.))``),
not a sum, so the losses do not depend on batch or image size.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LossWeights:
    """The paper's settings (section 4, "Training Details"; BEGAN terms from section 3.1)."""

    lambda_cyc: float = 0.5   # Eq. 8, 9
    lambda_dp: float = 0.5    # Eq. 9
    lambda_c: float = 0.001   # Eq. 8
    lambda_id: float = 0.1    # L_id, as CycleGAN's identity loss
    gamma: float = 0.5        # BEGAN diversity ratio (authors' config ``gamma``)
    lambda_k: float = 0.001   # step of the balance terms k
    eta: float = 1.0          # margin of Eq. 7
    beta: float = 0.95        # centroid momentum (authors' ``center_loss_alfa``)


def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a - b||_1 as the mean absolute difference over every element (authors' reduce_mean)."""
    return (a - b).abs().mean()


def cycle_loss(x: torch.Tensor, x_cyc: torch.Tensor) -> torch.Tensor:
    """Eq. 1, the forward cycle only: L_cyc = E_x ||G'(G(x)) - x||_1, with ``x_cyc`` = G'(G(x))."""
    return l1(x_cyc, x)


def began_generator_loss(fake: torch.Tensor, d_fake_recon: torch.Tensor) -> torch.Tensor:
    """Eq. 2 / 3: L_G = E ||G(x) - D_R(G(x))||_1 (and L_G' = E ||G'(G(x)) - D_S(G'(G(x)))||_1):
    how badly the auto-encoder discriminator reconstructs the generated image."""
    return l1(fake, d_fake_recon)


def began_discriminator_loss(real: torch.Tensor, d_real_recon: torch.Tensor, fake: torch.Tensor,
                             d_fake_recon: torch.Tensor, k: float
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 4 / 5: L_D = E ||y - D(y)||_1 - k_t L_G, with L_G = ||fake - D(fake)||_1 (Eq. 2/3).

    Returns (L_D, L_real, L_fake) so that the caller can move k with ``k_update(k, gamma,
    L_real, L_fake)``. Only D's parameters should take this gradient (Eq. 10); ``fake`` is the
    generator's output, which D must not push (detach it, or restrict the gradient to D).
    """
    l_real = l1(real, d_real_recon)
    l_fake = l1(fake, d_fake_recon)
    return l_real - k * l_fake, l_real, l_fake


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
    momentum of 0.95". We follow the authors' code (``magnet_loss``/``center_loss``: ``diff =
    (1 - center_alpha) * (centers_batch - features)``, ``tf.scatter_sub``), where 0.95 is the
    momentum and 1 - beta the step:

        c_j <- c_j - (1 - beta) * sum_{x: i_x = j} (c_j - C(G(x)))

    with every sample of identity j measured from the same old c_j and their steps summed (as
    ``scatter_sub`` does with repeated indices). Identities absent from the batch keep theirs.
    """
    e = embeddings.detach().to(centroids.dtype)
    labels = labels.long()
    step = torch.zeros_like(centroids).index_add_(0, labels, centroids[labels] - e)
    return centroids - (1.0 - beta) * step


def identity_loss(x: torch.Tensor, gx: torch.Tensor) -> torch.Tensor:
    """L_id = ||x - G(x)||_1 (section 4, weighted by lambda_id = 0.1), as written in the paper."""
    return l1(x, gx)


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
