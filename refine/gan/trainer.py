"""One training step of the paper's semi-supervised, identity-preserving GAN (Eq. 1-10).

For a batch x of 3DMM renders (identity labels i_x), a batch y of real faces and a batch of pairs
(s render, r real photo), all S x S in [-1, 1] (``refine.gan.losses`` has each equation):

    G(x); G' once on [G(x), r]: G'(G(x)) and G'(r)      (the authors' G_inv on the concatenation)
    D_R once on [G(x), y], D_S once on [G'(G(x)), x]     (the authors' DiscriminatorCNN calls)
    L_cyc = |G'(G(x)) - x|                                                  Eq. 1
    L_G = |G(x) - D_R(G(x))|,  L_G' = |G'(G(x)) - D_S(G'(G(x)))|            Eq. 2, 3
    L_DR = |y - D_R(y)| - k_R L_G,  L_DS = |x - D_S(x)| - k_S L_G'           Eq. 4, 5
    L_DP = |s - G'(r)| - k_P L_cyc                                           Eq. 6
    L_C = identity-set loss of C(T(G(x))) against the centroids              Eq. 7
    L_id = |x - G(x)| on the rendered face                                   (lambda_id 0.1)
           (id_loss: structure - only what no per-image colour map of x explains; not the paper's)
    L_GF, L_DF = LSGAN terms of D_F on the face box of [G(x), y]          (lambda_face; not the paper's)
    L_hist = per-channel Wasserstein distance of G(x)'s and y's colours    (lambda_hist; not the paper's)

    theta_G  <- argmin l_adv (L_G + l_face L_GF + l_hist L_hist) + l_cyc L_cyc + l_C L_C + l_id L_id
                (Eq. 8; l_adv 1, no D_F and no L_hist: the paper's)
    theta_G' <- argmin L_G' + l_cyc L_cyc + l_DP L_DP                        Eq. 9
    theta_D  <- argmin L_DR + L_DS (+ L_DF)                                  Eq. 10

The three updates are simultaneous: each network's gradient is taken of its own objective on one
shared forward graph (``torch.autograd.grad`` restricted to its parameters), then the three Adam
optimisers step; then the BEGAN balance terms move, k <- clip(k + lambda_k (gamma L_real -
L_fake), 0, 1), the centroids move towards this batch's embeddings and G's moving average is
updated with TensorFlow's warm-up (``losses.ema_decay``).

Several processes (``torchrun``): each rank draws its own batches from its own shard of each set
(generators seeded by seed and rank); gradients are averaged with ``all_reduce`` before each step
(data-parallel as DDP is; DDP's reducer expects one backward per forward, this step takes three
gradients of one graph), k moves by the rank-averaged losses and the centroids by the gathered
embeddings, so every rank holds identical networks, k's and centroids.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.distributed as dist

from morph.align.template import crop_template
from morph.base.errors import UserError
from morph.formats.named import model_files
from morph.base.numerics import numerics
from refine.gan import losses as L
from refine.checkpoint import CHECKPOINT_FORMAT
from refine.gan.config import TrainConfig
from refine.gan.data import image_size_of, open_sets
from refine.distributed import Dist, all_gather
from refine.gan.nets import build_nets


class NonFiniteLoss(RuntimeError):
    pass


def objectives(terms: dict[str, torch.Tensor], cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """Eq. 8-10 from the step's loss terms: each network's objective, by its optimiser's name."""
    g = terms["L_G"]
    if cfg.lambda_adv != 1.0:  # G's adversarial weight (issue 24; 1 is the paper's Eq. 8)
        g = cfg.lambda_adv * g
    if "L_cyc" in terms:
        g = g + cfg.lambda_cyc * terms["L_cyc"]
    if "L_C" in terms:
        g = g + cfg.lambda_c * terms["L_C"]
    if "L_id" in terms:
        g = g + cfg.lambda_id * terms["L_id"]
    for reg in ("L_reg", "L_recons"):  # the ablations' extra terms (config.py)
        if reg in terms:
            g = g + cfg.lambda_reg * terms[reg]
    if "L_GF" in terms:  # D_F's term is adversarial too: lambda_adv 0 must switch it off as well
        g = g + cfg.lambda_adv * cfg.lambda_face * terms["L_GF"]
    if "L_hist" in terms:  # as is L_hist, G's other pull towards the real set
        g = g + cfg.lambda_adv * cfg.lambda_hist * terms["L_hist"]
    out = {"G": g, "D": terms["L_DR"] + terms.get("L_DS", 0.0) + terms.get("L_DF", 0.0)}
    if "L_Gp" in terms:
        gp = terms["L_Gp"] + cfg.lambda_cyc * terms["L_cyc"]
        if "L_DP" in terms:
            gp = gp + cfg.lambda_dp * terms["L_DP"]
        out["Gp"] = gp
    return out


class Trainer:
    """Networks, optimisers, balance terms, centroids and data order: everything a step changes,
    and everything a checkpoint holds."""

    def __init__(self, cfg: TrainConfig, synthetic: Path, real: Path, pairs: Path | None, run_dir: Path,
                 ddp: Dist | None = None):
        self.cfg, self.run_dir, self.ddp = cfg, Path(run_dir), ddp or Dist()
        if cfg.image_size is None:
            cfg.image_size = image_size_of(synthetic)
        self.device = torch.device(cfg.device)
        if cfg.uses_pairs and pairs is None:
            raise UserError(f"variant '{cfg.variant}' needs paired data: give --pairs pairs.h5 "
                            "(from 'morph render-pairs'), or choose --variant no_pairs.")
        self.syn, self.real, self.pairs = open_sets(synthetic, real, pairs if cfg.uses_pairs or
                                                    cfg.variant == "recons" else None, cfg.image_size)
        if cfg.crop_template is None:
            cfg.crop_template = self.syn.template
        elif cfg.crop_template != self.syn.template:
            raise UserError(f"{synthetic}: was aligned by crop template '{self.syn.template}', but the config asks "
                            f"for '{cfg.crop_template}'; re-create the sets with --template {cfg.crop_template}.")
        # identity labels -> 0..N-1 rows of the centroid table
        self.id_values, self.id_rows = np.unique(self.syn.labels, return_inverse=True)
        if cfg.uses_identity and len(self.id_values) < 2:
            raise UserError(f"{synthetic}: holds renders of one identity; the identity-set loss (Eq. 7) tells "
                            "identities apart, so render at least 2 (or train --variant no_identity).")
        # what sampled the training identities (synthetic.h5's root attributes), recorded in every
        # checkpoint so that 'refine export-dataset' refuses to re-sample them as "new" identities
        with h5py.File(synthetic, "r") as f:
            seed, model, sources = f.attrs.get("seed"), f.attrs.get("model"), f.attrs.get("model_sources")
        self.train_seed = None if seed is None else int(seed)
        self.train_model = None if model is None else str(model)
        # and the files it came from: 'default' named another model before the ICT default (issue 15)
        self.train_model_files = model_files(json.loads(sources)) if sources is not None else None
        self.syn.labels = self.id_rows.astype(np.int64)
        torch.manual_seed(cfg.seed)  # initial weights: the same on every rank
        # channels-last on the CPU: oneDNN's convolutions then need no layout reorders; a paper-size
        # step in bf16 9.9 -> 7.1 CPU-s (bench/README.md). Not on CUDA, where it is not measured yet.
        layout = torch.channels_last if self.device.type == "cpu" else torch.contiguous_format
        self.nets = {k: v.to(self.device, memory_format=layout) for k, v in build_nets(cfg).items()}
        self.G, self.D_R, self.ema = self.nets["G"], self.nets["D_R"], self.nets["ema"]
        self.D_F = self.nets.get("D_F")
        self.Gp, self.D_S = self.nets.get("Gp"), self.nets.get("D_S")
        self.C = self.transform = None
        if cfg.uses_identity:
            from refine.embedders import load_embedder
            self.C = load_embedder(cfg.embedder).to(self.device)
            self.transform = self.C.transform(cfg.image_size, cfg.crop_template)
        torch.manual_seed(cfg.seed * 1000 + 700 + self.ddp.rank)  # dropout: its own draws per rank
        opt = lambda params: torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=1e-8)  # noqa: E731
        self.opt = {"G": opt(self.G.parameters()), "D": opt(self.d_params())}
        if self.Gp is not None:
            self.opt["Gp"] = opt(self.Gp.parameters())
        if cfg.lr_schedule == "paper":
            self.sched = {k: torch.optim.lr_scheduler.MultiStepLR(o, cfg.milestones(), gamma=0.5)
                          for k, o in self.opt.items()}
        else:  # constant, or constant with a linear tail (TrainConfig.lr_factor)
            self.sched = {k: torch.optim.lr_scheduler.LambdaLR(o, lambda step: cfg.lr_factor(step))
                          for k, o in self.opt.items()}
        self.k = {"R": 0.0, "S": 0.0, "P": 0.0}
        dim = self.C.dim if self.C is not None else 0
        self.centroids = torch.zeros(len(self.id_values), dim, device=self.device)
        self.data_gen = torch.Generator().manual_seed(cfg.seed * 1000 + self.ddp.rank)
        self.aug_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 500 + self.ddp.rank)
        # the discriminators' input augmentation and the history buffer's draws (issue 24's options)
        self.d_aug_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 600 + self.ddp.rank)
        self.history = torch.zeros(0, 3, cfg.image_size, cfg.image_size, device=self.device)
        points = crop_template(cfg.crop_template).points(cfg.image_size)  # the aligned crop's five points
        self.face_weight = None if cfg.face_weight == 1.0 else L.face_weight_map(
            cfg.image_size, points, cfg.face_weight).to(self.device)
        self.face_box = L.face_box(cfg.image_size, points)
        self.step = 0

    def d_params(self):
        """D_R's, D_S's and D_F's trainable parameters (a projected D's frozen backbone is not)."""
        return [p for n in (self.D_R, self.D_S, self.D_F) if n is not None for p in n.parameters() if p.requires_grad]

    def params(self) -> dict[str, list[torch.nn.Parameter]]:
        """Each optimiser's parameters: what its objective's gradient is restricted to."""
        out = {"G": list(self.G.parameters()), "D": self.d_params()}
        if self.Gp is not None:
            out["Gp"] = list(self.Gp.parameters())
        return out

    # ------------------------------------------------------------------------------ a step --

    def next_batch(self) -> dict[str, torch.Tensor]:
        cfg, dev, shard = self.cfg, self.device, (self.ddp.rank, self.ddp.world)
        if cfg.images_per_identity > 1:
            (x,), labels = self.syn.grouped_batch(self.data_gen, cfg.batch_size, cfg.images_per_identity, *shard)
        else:
            (x,), labels = self.syn.batch(self.data_gen, cfg.batch_size, *shard)
        (y,), _ = self.real.batch(self.data_gen, cfg.batch_size, *shard)
        batch = {"x": x.to(dev), "y": y.to(dev), "labels": labels.to(dev)}
        if self.pairs is not None:
            (s, r), _ = self.pairs.batch(self.data_gen, cfg.batch_size, *shard)
            batch.update(s=s.to(dev), r=r.to(dev))
        return batch

    def forward(self, b: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """The step's loss terms (named as logged; graphs kept) and C's embeddings of G(x)."""
        cfg, k = self.cfg, self.k
        x, y = b["x"], b["y"]
        n = x.shape[0]
        t: dict[str, torch.Tensor] = {}
        gx = self.G(x)
        t["L_G"], t["L_DR"], real_r = self.adversarial(self.D_R, gx, y, k["R"], self.history_sample(gx))  # Eq. 2, 4
        if real_r is not None:
            t["L_real_R"] = real_r
        if self.D_F is not None:  # the face discriminator (lambda_face): D_F once on both face boxes
            top, bottom, left, right = self.face_box
            logits = self.D_F(torch.cat([gx, y])[..., top:bottom, left:right])
            t["L_GF"], t["L_DF"] = L.lsgan_losses(logits[:n], logits[n:])
        if cfg.lambda_hist > 0:  # the colour distributions of G's batch and the real batch
            t["L_hist"] = L.colour_histogram_loss(gx, y, self.face_box)
        if self.Gp is not None:
            paired = cfg.uses_pairs
            out = self.Gp(torch.cat([gx, b["r"]]) if paired else gx)
            gpgx = out[:n]
            t["L_cyc"] = L.cycle_loss(x, gpgx)                                         # Eq. 1
            t["L_Gp"], t["L_DS"], real_s = self.adversarial(self.D_S, gpgx, x, k["S"])  # Eq. 3, 5
            if real_s is not None:
                t["L_real_S"] = real_s
            if paired:
                t["L_DP"], t["L_real_P"] = L.pair_matching_loss(b["s"], out[n:], k["P"], t["L_cyc"])  # Eq. 6
        if cfg.variant == "simgan":
            t["L_reg"] = L.l1(x, gx)  # SimGAN's self-regularisation in place of L_id
        else:
            t["L_id"] = L.IDENTITY_LOSSES[cfg.id_loss](x, gx)  # id_loss: pixel (the authors'), structure, curve
        if cfg.variant == "recons":
            t["L_recons"] = L.l1(b["r"], self.G(b["s"]))
        emb = None
        if self.C is not None:
            emb = self.C(self.transform(gx, self.aug_gen))
            t["L_C"] = L.identity_set_loss(emb, b["labels"], self.centroids, eta=cfg.eta)  # Eq. 7
        return t, emb

    def adversarial(self, D, fake: torch.Tensor, real: torch.Tensor, k: float, past: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One game of D against a generator: (the generator's term, D's objective, L_real for
        BEGAN's balance term or None), D run once on the concatenation of its inputs.

        The authors' BEGAN game (Eq. 2-5): L_G = |f - D(f)|, L_D = |y - D(y)| - k L_G. A patch
        discriminator (``discriminator: patch``) scores patches by logits: non-saturating, L_G =
        E softplus(-D(f)), L_D = E softplus(D(f)) + E softplus(-D(y)), or hinge, L_G = -E D(f),
        L_D = E relu(1 + D(f)) + E relu(1 - D(y)); plus, with ``r1``, (r1 / 2) E ||grad_y D(y)||^2
        (Mescheder et al. 2018) on its real inputs, D(y) being the mean of y's patch logits. With ``augment``, D sees both inputs through
        ``refine.gan.augment.diff_augment``. ``past``: refined images of earlier steps (``history``),
        which take the place of the second half of ``fake`` in D's objective only."""
        cfg, n = self.cfg, fake.shape[0]
        parts = [fake, real] + ([past] if past is not None else [])
        if cfg.augment == "diffaugment":
            from refine.gan.augment import diff_augment
            parts = [diff_augment(p, self.d_aug_gen) for p in parts]
        if cfg.discriminator == "began":
            f, y = parts
            d_f, d_y = D(torch.cat([f, y])).split([n, y.shape[0]])
            l_g = L.began_generator_loss(f, d_f, weight=self.face_weight)
            l_d, l_real = L.began_discriminator_loss(y, d_y, l_g, k, self.face_weight)
            return l_g, l_d, l_real
        if cfg.r1 > 0:
            parts[1] = parts[1].detach().requires_grad_(True)
        logits = D(torch.cat(parts)).float()
        lf, ly = logits[:n], logits[n:n + real.shape[0]]
        lf_d = lf if past is None else torch.cat([lf[:n - past.shape[0]], logits[n + real.shape[0]:]])
        l_g, l_d = L.logit_gan_losses(lf, lf_d, ly, cfg.gan_loss)
        if cfg.r1 > 0:
            # the gradient of each image's mean patch logit, as R1 takes it of one logit per image
            (grad,) = torch.autograd.grad(ly.flatten(1).mean(1).sum(), parts[1], create_graph=True)
            l_d = l_d + 0.5 * cfg.r1 * grad.float().pow(2).flatten(1).sum(1).mean()
        return l_g, l_d, None

    def history_sample(self, gx: torch.Tensor) -> torch.Tensor | None:
        """SimGAN's history of refined images (Shrivastava et al. 2017, section 2.3; ``history``
        images): returns half a batch of earlier refined images for D_R (None while the buffer
        holds fewer, or without a buffer), then puts half of this batch's G(x) (detached) in
        their place, or appends them while the buffer is not full. Draws from ``d_aug_gen``."""
        size = self.cfg.history
        if size == 0:
            return None
        h = gx.shape[0] // 2
        past = None
        if len(self.history) >= h:
            pick = torch.randperm(len(self.history), generator=self.d_aug_gen)[:h].to(self.device)
            past = self.history[pick].to(gx.dtype)
        new = gx.detach()[torch.randperm(gx.shape[0], generator=self.d_aug_gen)[:h].to(self.device)].float()
        if len(self.history) < size:
            self.history = torch.cat([self.history, new])[:size]
        else:
            self.history[torch.randperm(size, generator=self.d_aug_gen)[:h].to(self.device)] = new[:size]
        return past

    def gradients(self, objs: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, ...]]:
        """Each network's gradient of its own objective only (Eq. 8-10), on one shared graph."""
        groups = self.params()
        out = {}
        for i, name in enumerate(groups):
            out[name] = torch.autograd.grad(objs[name], groups[name], retain_graph=i < len(groups) - 1,
                                            allow_unused=True)
        return out

    def warmup_step(self, b: dict[str, torch.Tensor]) -> dict[str, float]:
        """A refiner warm-up step (``warmup_steps``; SimGAN trains its refiner on its
        self-regularisation alone for the first 1,000 steps, Shrivastava et al. 2017, section 3.4):
        G learns to copy the renders, |G(x) - x| over the whole image, and G' to undo G,
        |G'(G(x)) - x|; the discriminators, k's and centroids wait. From random weights G's
        output starts grey (N(0, 0.02) weights, no normalisation before the residual blocks);
        started as copies, G and G' begin the adversarial game from the renders, not from grey."""
        x = b["x"]
        t = {"L_warm_G": L.l1(self.G(x), x)}
        objs = {"G": t["L_warm_G"]}
        if self.Gp is not None:
            with torch.no_grad():
                gx = self.G(x)
            t["L_warm_Gp"] = L.cycle_loss(x, self.Gp(gx))
            objs["Gp"] = t["L_warm_Gp"]
        self._check_finite(t)
        for name, params in self.params().items():
            if name in objs:
                for p, g in zip(params, torch.autograd.grad(objs[name], params)):
                    p.grad = g
        self._step_optimisers()
        self._update_ema()
        self.step += 1
        return {**{k: v.item() for k, v in t.items()}, **{f"k_{n}": v for n, v in self.k.items()},
                "lr": self.opt["G"].param_groups[0]["lr"]}

    def _step_optimisers(self):
        if self.ddp.world > 1:
            self._average_gradients()
        for name, o in self.opt.items():  # (an optimiser without gradients leaves its parameters)
            o.step()
            o.zero_grad(set_to_none=True)
            self.sched[name].step()

    def train_step(self) -> dict[str, float]:
        cfg = self.cfg
        b = self.next_batch()
        self.G.train()
        if self.step < cfg.warmup_steps:
            return self.warmup_step(b)
        # mixed precision (``amp``): bfloat16 autocast for the networks, on CUDA and on CPUs (fast
        # where the CPU has bf16 units: AMX / AVX512-BF16; measured here at widths 16/32, batch 16:
        # 3.8 -> 1.5 s per step); every loss is float32 (refine.gan.losses), and so are the weights,
        # gradients and optimiser states
        amp = (torch.autocast(self.device.type, dtype=torch.bfloat16) if cfg.amp
               else contextlib.nullcontext())
        with amp:
            terms, emb = self.forward(b)
            objs = objectives(terms, cfg)
        self._check_finite(terms)
        grads = self.gradients(objs)
        for name, params in self.params().items():
            for p, g in zip(params, grads[name]):
                p.grad = g
        self._step_optimisers()
        return self._after_step(terms, objs, emb, b["labels"])

    def _check_finite(self, terms):
        for name, v in terms.items():
            if not torch.isfinite(v.detach()).all():
                raise NonFiniteLoss(f"{name} is {v.item()} at step {self.step + 1}")

    def _after_step(self, terms, objs, emb, labels) -> dict[str, float]:
        """Balance terms, centroids and the moving average move with (rank-averaged) values of
        this step; returns what the step logs."""
        cfg = self.cfg
        vals = {**{k: v.detach().float() for k, v in terms.items()},
                **{f"obj_{k}": v.detach().float() for k, v in objs.items()}}
        if self.ddp.world > 1:
            stacked = torch.stack(list(vals.values()))
            dist.all_reduce(stacked)
            vals = dict(zip(vals, stacked / self.ddp.world))
        out = {k: v.item() for k, v in vals.items()}
        for key, real, fake in (("R", "L_real_R", "L_G"), ("S", "L_real_S", "L_Gp"), ("P", "L_real_P", "L_cyc")):
            if real in out:
                self.k[key] = L.k_update(self.k[key], cfg.gamma, out[real], out[fake], cfg.lambda_k)
                out[f"M_{key}"] = L.convergence_measure(out[real], out[fake], cfg.gamma)
        if emb is not None:
            e, lab = emb.detach().float(), labels
            if self.ddp.world > 1:
                e, lab = all_gather(e), all_gather(lab)
            self.centroids = L.update_centroids(self.centroids, e, lab, cfg.centroid_momentum)
        self._update_ema()
        self.step += 1
        out.update({f"k_{n}": v for n, v in self.k.items()})
        out["lr"] = self.opt["G"].param_groups[0]["lr"]
        return out

    def _average_gradients(self):
        for o in self.opt.values():
            for group in o.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad /= self.ddp.world

    @torch.no_grad()
    def _update_ema(self):
        d = L.ema_decay(self.cfg.ema_decay, self.step)
        for pe, p in zip(self.ema.parameters(), self.G.parameters()):
            pe.mul_(d).add_(p.detach(), alpha=1 - d)
        for be, b in zip(self.ema.buffers(), self.G.buffers()):
            be.copy_(b)

    # ------------------------------------------------------------------------- checkpoints --

    def check_ranks_agree(self) -> None:
        """Every rank must hold the same networks, k's and centroids (a cheap checksum)."""
        if self.ddp.world <= 1:
            return
        total = sum(p.detach().double().sum() for n in self.nets.values() for p in n.parameters())
        total = total + self.centroids.double().sum() + sum(self.k.values())
        t = torch.stack([total, -total]).to(self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if not torch.isclose(t[0], -t[1], rtol=1e-9, atol=1e-9):
            raise RuntimeError(f"ranks disagree at step {self.step} (checksums {t[0]} vs {-t[1]}): "
                               "this is a bug, please report it")

    def state(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT, "step": self.step, "config": self.cfg.to_dict(),
            "numerics": numerics(), "world_size": self.ddp.world,
            "architecture": self.cfg.architecture_key(),
            "nets": {k: v.state_dict() for k, v in self.nets.items()},
            "optim": {k: o.state_dict() for k, o in self.opt.items()},
            "sched": {k: s.state_dict() for k, s in self.sched.items()},
            "k": dict(self.k), "centroids": self.centroids.cpu(),
            "identities": torch.from_numpy(self.id_values),
            "train_seed": self.train_seed, "train_model": self.train_model,
            "train_model_files": self.train_model_files,
            "rng": {"data": self.data_gen.get_state(), "aug": self.aug_gen.get_state(),
                    "torch": torch.get_rng_state(),
                    **({"d_aug": self.d_aug_gen.get_state()} if self._uses_d_aug_gen() else {})},
            **({"history": self.history.detach().cpu().clone()} if self.cfg.history else {}),
        }

    def _uses_d_aug_gen(self) -> bool:
        return self.cfg.augment != "none" or self.cfg.history > 0

    def load_state(self, st: dict, source: Path) -> None:
        if st.get("architecture") != self.cfg.architecture_key():
            raise UserError(f"{source}: was written with another configuration (variant, image size, widths, "
                            "normalisation or embedder); resume with the config saved in its run directory.")
        if not torch.equal(st["identities"], torch.from_numpy(self.id_values)):
            raise UserError(f"{source}: was trained on another synthetic set; give the same --synthetic.")
        for k, net in self.nets.items():
            net.load_state_dict(st["nets"][k])
        for k, o in self.opt.items():
            o.load_state_dict(st["optim"][k])
            self.sched[k].load_state_dict(st["sched"][k])
        self.k = {k: float(v) for k, v in st["k"].items()}
        self.centroids = st["centroids"].to(self.device)
        self.data_gen.set_state(st["rng"]["data"])
        self.aug_gen.set_state(st["rng"]["aug"])
        if "d_aug" in st["rng"]:
            self.d_aug_gen.set_state(st["rng"]["d_aug"])
        if "history" in st:
            self.history = st["history"].to(self.device)
        torch.set_rng_state(st["rng"]["torch"])
        self.step = int(st["step"])
