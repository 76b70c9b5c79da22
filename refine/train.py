"""`refine train`: the semi-supervised, identity-preserving GAN of the paper (Eq. 1-10).

One step, for a batch x of 3DMM renders (identity labels i_x), a batch y of real faces and a
batch of pairs (s render, r real photo) - all 108x108 in [-1, 1]:

    G(x), G'(G(x))                                   refiners (Johnson-style ResNets)
    L_cyc = |G'(G(x)) - x|                           Eq. 1
    L_G   = |G(x) - D_R(G(x))|,  L_G' = |G'(G(x)) - D_S(G'(G(x)))|          Eq. 2, 3
    L_DR  = |y - D_R(y)| - k_R L_G,  L_DS = |x - D_S(x)| - k_S L_G'           Eq. 4, 5
    L_DP  = |s - G'(r)| - k_P L_cyc                  Eq. 6 (G' as pair-matching discriminator)
    L_C   = identity-set loss on C(T(G(x)))          Eq. 7 (centroids: moving averages)
    L_id  = |x - G(x)|                               (lambda_id 0.1, as in CycleGAN)

    theta_G  <- argmin L_G + l_cyc L_cyc + l_C L_C + l_id L_id          Eq. 8
    theta_G' <- argmin L_G' + l_cyc L_cyc + l_DP L_DP                    Eq. 9
    theta_D  <- argmin L_DR + L_DS                                       Eq. 10

The three updates are simultaneous: each network's gradient is taken of its own objective on
one shared forward graph (``torch.autograd.grad`` restricted to that network's parameters), then
all three optimisers step. Then the three BEGAN balance terms move,
k <- clip(k + lambda_k (gamma L_real - L_fake), 0, 1), and G's moving average is updated.

Several processes (``torchrun``): each rank draws its own batches from its own shard of each
set (rows rank, rank + world, ...; generator seeded by seed and rank); gradients are averaged over ranks with ``all_reduce`` before each step (data-parallel, as
DDP does - DDP's reducer expects one backward per forward, and this step takes three gradients
of one graph), the balance terms move by the rank-averaged losses and the centroids by the
all-gathered embeddings, so every rank holds identical networks, k's and centroids; only rank 0
writes.
"""
from __future__ import annotations

import contextlib
import copy
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from morph.errors import UserError
from morph.numerics import numerics, set_threads
from refine import losses as L
from refine.config import TrainConfig
from refine.data import open_sets
from refine.nets import BEGANDiscriminator, Generator

CHECKPOINT_FORMAT = 1


class NonFiniteLoss(RuntimeError):
    pass


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Dist:
    """torchrun sets WORLD_SIZE/RANK: join the group (NCCL on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


class Trainer:
    """Networks, optimisers, balance terms, centroids and data order: everything a step changes,
    and everything a checkpoint holds."""

    def __init__(self, cfg: TrainConfig, synthetic: Path, real: Path, pairs: Path | None, run_dir: Path,
                 ddp: Dist | None = None):
        self.cfg, self.run_dir, self.ddp = cfg, Path(run_dir), ddp or Dist()
        self.device = torch.device(cfg.device)
        if cfg.uses_pairs and pairs is None:
            raise UserError(f"variant '{cfg.variant}' needs paired data: give --pairs pairs.h5 "
                            "(from 'morph render-pairs'), or choose --variant no_pairs.")
        self.syn, self.real, self.pairs = open_sets(synthetic, real, pairs if cfg.uses_pairs or
                                                    cfg.variant == "recons" else None, cfg.image_size)
        # identity labels -> 0..N-1 rows of the centroid table
        self.id_values, self.id_rows = np.unique(self.syn.labels, return_inverse=True)
        # what sampled the training identities (synthetic.h5's root attributes), recorded in every
        # checkpoint so that 'refine export-dataset' refuses to re-sample them as "new" identities
        import h5py
        with h5py.File(synthetic, "r") as f:
            seed, model = f.attrs.get("seed"), f.attrs.get("model")
        self.train_seed = None if seed is None else int(seed)
        self.train_model = None if model is None else str(model)
        self.syn.labels = self.id_rows.astype(np.int64)
        torch.manual_seed(cfg.seed)  # initial weights: the same on every rank
        gen = lambda skips, dropout: Generator(skips=skips, dropout=dropout, norm=cfg.norm,  # noqa: E731
                                               width=cfg.g_width).to(self.device)
        disc = lambda: BEGANDiscriminator(cfg.image_size, hidden=cfg.d_hidden).to(self.device)  # noqa: E731
        self.G = gen(True, 0.1)
        self.D_R = disc()
        self.Gp = gen(False, 0.0) if cfg.uses_cycle else None
        self.D_S = disc() if cfg.uses_cycle else None
        self.C = self.transform = None
        if cfg.uses_identity:
            from refine.embedders import IdentityInputTransform, load_embedder
            self.C = load_embedder(cfg.embedder).to(self.device)
            self.transform = IdentityInputTransform(self.C.input_size)
        self.ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        torch.manual_seed(cfg.seed * 1000 + 700 + self.ddp.rank)  # dropout: its own draws per rank
        opt = lambda params: torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas)  # noqa: E731
        self.opt = {"G": opt(self.G.parameters()), "D": opt(self.d_params())}
        if self.Gp is not None:
            self.opt["Gp"] = opt(self.Gp.parameters())
        self.sched = {k: torch.optim.lr_scheduler.MultiStepLR(o, cfg.milestones(), gamma=0.5)
                      for k, o in self.opt.items()}
        self.k = {"R": 0.0, "S": 0.0, "P": 0.0}
        dim = self.C.dim if self.C is not None else 0
        self.centroids = torch.zeros(len(self.id_values), dim, device=self.device)
        self.data_gen = torch.Generator().manual_seed(cfg.seed * 1000 + self.ddp.rank)
        self.aug_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 500 + self.ddp.rank)
        self.step = 0

    def d_params(self):
        nets = [self.D_R] + ([self.D_S] if self.D_S is not None else [])
        return [p for n in nets for p in n.parameters()]

    # ------------------------------------------------------------------------------ a step --

    def train_step(self) -> dict[str, float]:
        cfg, dev = self.cfg, self.device
        shard = (self.ddp.rank, self.ddp.world)
        (x,), labels = self.syn.batch(self.data_gen, cfg.batch_size, *shard)
        (y,), _ = self.real.batch(self.data_gen, cfg.batch_size, *shard)
        x, y, labels = x.to(dev), y.to(dev), labels.to(dev)
        pair = None
        if self.pairs is not None:
            (s, r), _ = self.pairs.batch(self.data_gen, cfg.batch_size, *shard)
            pair = (s.to(dev), r.to(dev))
        self.G.train()
        logs: dict[str, torch.Tensor] = {}
        # mixed precision on CUDA: bfloat16 autocast (no loss scaling needed); the losses,
        # gradients and optimiser states stay float32
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if cfg.amp and dev.type == "cuda" else contextlib.nullcontext()
        with amp:
            logs, g_obj, gp_obj, d_obj, emb = self._objectives(x, y, labels, pair, logs)
        self._check_finite(logs)
        return self._apply(logs, g_obj, gp_obj, d_obj, emb, labels)

    def _check_finite(self, logs):
        for name, v in logs.items():
            if not torch.isfinite(v.detach()).all():
                raise NonFiniteLoss(f"{name} is {v.item()} at step {self.step + 1}")

    def _objectives(self, x, y, labels, pair, logs):
        cfg = self.cfg

        gx = self.G(x)
        l_g = L.began_generator_loss(gx, self.D_R(gx))  # Eq. 2
        l_real_r = L.l1(y, self.D_R(y))
        l_dr = l_real_r - self.k["R"] * l_g  # Eq. 4
        g_obj = l_g
        gp_obj = d_obj = l_dr
        logs.update(L_G=l_g, L_real_R=l_real_r, L_DR=l_dr)

        if self.Gp is not None:
            gpgx = self.Gp(gx)
            l_cyc = L.cycle_loss(x, gpgx)  # Eq. 1
            l_gp = L.began_generator_loss(gpgx, self.D_S(gpgx))  # Eq. 3
            l_real_s = L.l1(x, self.D_S(x))
            l_ds = l_real_s - self.k["S"] * l_gp  # Eq. 5
            g_obj = g_obj + cfg.lambda_cyc * l_cyc
            gp_obj = l_gp + cfg.lambda_cyc * l_cyc
            d_obj = d_obj + l_ds
            logs.update(L_cyc=l_cyc, L_Gp=l_gp, L_real_S=l_real_s, L_DS=l_ds)
            if cfg.uses_pairs:
                s, r = pair
                l_real_p = L.l1(s, self.Gp(r))
                l_dp = l_real_p - self.k["P"] * l_cyc  # Eq. 6
                gp_obj = gp_obj + cfg.lambda_dp * l_dp
                logs.update(L_real_P=l_real_p, L_DP=l_dp)
        if cfg.variant == "simgan":
            l_reg = L.l1(x, gx)
            g_obj = g_obj + cfg.lambda_reg * l_reg
            logs.update(L_reg=l_reg)
        else:
            l_id = L.identity_loss(x, gx)
            g_obj = g_obj + cfg.lambda_id * l_id
            logs.update(L_id=l_id)
        if cfg.variant == "recons":
            s, r = pair
            l_rec = L.l1(r, self.G(s))
            g_obj = g_obj + cfg.lambda_reg * l_rec
            logs.update(L_recons=l_rec)
        emb = None
        if self.C is not None:
            emb = self.C(self.transform(gx, self.aug_gen))
            l_c = L.identity_set_loss(emb, labels, self.centroids, eta=cfg.eta)  # Eq. 7
            g_obj = g_obj + cfg.lambda_c * l_c
            logs.update(L_C=l_c)
        logs.update(obj_G=g_obj, obj_D=d_obj)
        if self.Gp is not None:
            logs["obj_Gp"] = gp_obj
        return logs, g_obj, gp_obj, d_obj, emb

    def _apply(self, logs, g_obj, gp_obj, d_obj, emb, labels):
        cfg = self.cfg
        # Eq. 8-10: each network's gradient of its own objective, then all step together.
        groups = [("G", g_obj, list(self.G.parameters())), ("D", d_obj, self.d_params())]
        if self.Gp is not None:
            groups.append(("Gp", gp_obj, list(self.Gp.parameters())))
        for i, (name, obj, params) in enumerate(groups):
            grads = torch.autograd.grad(obj, params, retain_graph=i < len(groups) - 1)
            for p, g in zip(params, grads):
                p.grad = g
        if self.ddp.world > 1:
            self._average_gradients()
        for name, o in self.opt.items():
            o.step()
            o.zero_grad(set_to_none=True)
            self.sched[name].step()

        # balance terms and centroids move with (rank-averaged) values of this step
        vals = {k: v.detach().float() for k, v in logs.items()}
        if self.ddp.world > 1:
            stacked = torch.stack(list(vals.values()))
            dist.all_reduce(stacked)
            vals = dict(zip(vals, stacked / self.ddp.world))
        self.k["R"] = L.k_update(self.k["R"], cfg.gamma, vals["L_real_R"].item(), vals["L_G"].item(), cfg.lambda_k)
        out = {k: v.item() for k, v in vals.items()}
        out["M_R"] = L.convergence_measure(out["L_real_R"], out["L_G"], cfg.gamma)
        if self.Gp is not None:
            self.k["S"] = L.k_update(self.k["S"], cfg.gamma, out["L_real_S"], out["L_Gp"], cfg.lambda_k)
            out["M_S"] = L.convergence_measure(out["L_real_S"], out["L_Gp"], cfg.gamma)
            if "L_real_P" in out:
                self.k["P"] = L.k_update(self.k["P"], cfg.gamma, out["L_real_P"], out["L_cyc"], cfg.lambda_k)
                out["M_P"] = L.convergence_measure(out["L_real_P"], out["L_cyc"], cfg.gamma)
        if emb is not None:
            e, lab = emb.detach(), labels
            if self.ddp.world > 1:
                e, lab = _all_gather(e), _all_gather(lab)
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
        # batch-norm statistics differ per rank's batch: average them so the nets stay identical
        for net in (self.G, self.Gp, self.D_R, self.D_S):
            for name, b in (net.named_buffers() if net is not None else ()):
                if b.is_floating_point():
                    dist.all_reduce(b)
                    b /= self.ddp.world

    @torch.no_grad()
    def _update_ema(self):
        d = self.cfg.ema_decay
        for pe, p in zip(self.ema.parameters(), self.G.parameters()):
            pe.mul_(d).add_(p.detach(), alpha=1 - d)
        for be, b in zip(self.ema.buffers(), self.G.buffers()):
            be.copy_(b)

    # ------------------------------------------------------------------------- checkpoints --

    def check_ranks_agree(self) -> None:
        """Every rank must hold the same networks, k's and centroids (a cheap checksum)."""
        if self.ddp.world <= 1:
            return
        nets = [n for n in (self.G, self.Gp, self.D_R, self.D_S, self.ema) if n is not None]
        total = sum(p.detach().double().sum() for n in nets for p in n.parameters())
        total = total + self.centroids.double().sum() + sum(self.k.values())
        t = torch.stack([total, -total]).to(self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if not torch.isclose(t[0], -t[1], rtol=1e-9, atol=1e-9):
            raise RuntimeError(f"ranks disagree at step {self.step} (checksums {t[0]} vs {-t[1]}): "
                               "this is a bug, please report it")

    def state(self) -> dict:
        nets = {"G": self.G, "D_R": self.D_R, "ema": self.ema}
        if self.Gp is not None:
            nets.update(Gp=self.Gp, D_S=self.D_S)
        return {
            "format": CHECKPOINT_FORMAT, "step": self.step, "config": self.cfg.to_dict(),
            "numerics": numerics(),
            "world_size": self.ddp.world,
            "architecture": self.cfg.architecture_key(),
            "nets": {k: v.state_dict() for k, v in nets.items()},
            "optim": {k: o.state_dict() for k, o in self.opt.items()},
            "sched": {k: s.state_dict() for k, s in self.sched.items()},
            "k": dict(self.k), "centroids": self.centroids.cpu(),
            "identities": torch.from_numpy(self.id_values),
            "train_seed": self.train_seed, "train_model": self.train_model,
            "rng": {"data": self.data_gen.get_state(), "aug": self.aug_gen.get_state(),
                    "torch": torch.get_rng_state()},
        }

    def load_state(self, st: dict, source: Path) -> None:
        if st.get("format") != CHECKPOINT_FORMAT or st.get("architecture") != self.cfg.architecture_key():
            raise UserError(f"{source}: was written with another configuration (variant, image size or "
                            "embedder); resume with the config saved in its run directory.")
        if not torch.equal(st["identities"], torch.from_numpy(self.id_values)):
            raise UserError(f"{source}: was trained on another synthetic set; give the same --synthetic.")
        nets = {"G": self.G, "D_R": self.D_R, "ema": self.ema}
        if self.Gp is not None:
            nets.update(Gp=self.Gp, D_S=self.D_S)
        for k, net in nets.items():
            net.load_state_dict(st["nets"][k])
        for k, o in self.opt.items():
            o.load_state_dict(st["optim"][k])
            self.sched[k].load_state_dict(st["sched"][k])
        self.k = {k: float(v) for k, v in st["k"].items()}
        self.centroids = st["centroids"].to(self.device)
        self.data_gen.set_state(st["rng"]["data"])
        self.aug_gen.set_state(st["rng"]["aug"])
        torch.set_rng_state(st["rng"]["torch"])
        self.step = int(st["step"])


def _all_gather(t: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint, read without executing code (``weights_only``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint; check the path.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a foreign or truncated file
        raise UserError(f"{path}: not a readable checkpoint ({e.__class__.__name__}); "
                        "give a file written by 'refine train'.") from None


class CheckpointStore:
    """``RUN/checkpoints/step_00001000.pt`` written atomically (temporary name, then rename); the
    last ``keep`` are kept. ``latest`` is the newest complete one."""

    def __init__(self, run_dir: Path, keep: int):
        self.dir = Path(run_dir) / "checkpoints"
        self.keep = keep

    def save(self, state: dict) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"step_{state['step']:08d}.pt"
        tmp = path.with_name(path.name + ".partial")
        torch.save(state, tmp)
        os.replace(tmp, path)
        for old in self.all()[:-self.keep]:
            old.unlink()
        return path

    def all(self) -> list[Path]:
        return sorted(self.dir.glob("step_*.pt")) if self.dir.is_dir() else []

    def latest(self) -> Path | None:
        found = self.all()
        return found[-1] if found else None


# ---------------------------------------------------------------------------------- the run --

def _check_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"{run_dir}: cannot write the run directory ({e.strerror}); choose another --out.") from None


def _trim_log(path: Path, step: int) -> None:
    """Drop log lines past ``step`` (written by a run killed after its last checkpoint)."""
    if not path.exists():
        return
    import json
    keep = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def train(cfg: TrainConfig, synthetic: Path, real: Path, pairs: Path | None, run_dir: Path,
          resume: bool | Path = False, progress: bool = True, threads: int | None = None) -> Path | None:
    """Train until ``cfg.steps``; returns the final checkpoint (rank 0)."""
    import json

    from tqdm import tqdm

    ddp = init_distributed(cfg.device)
    set_threads(threads)  # torchrun: OMP_NUM_THREADS per rank, held (see morph.numerics.set_threads)
    run_dir = Path(run_dir)
    store = CheckpointStore(run_dir, cfg.keep_checkpoints)
    if ddp.main:
        _check_run_dir(run_dir)
    start_from = None
    if resume:
        start_from = Path(resume) if not isinstance(resume, bool) else store.latest()
        if start_from is None:
            raise UserError(f"{run_dir}: holds no checkpoint to resume from; start without --resume.")
    elif store.latest() is not None:
        raise UserError(f"{run_dir}: already holds a run (checkpoints/); add --resume to continue it "
                        "or choose another --out.")
    trainer = Trainer(cfg, synthetic, real, pairs, run_dir, ddp)
    if start_from is not None:
        trainer.load_state(load_checkpoint(start_from), start_from)
    log_path = run_dir / "losses.jsonl"
    tb = None
    if ddp.main:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(
            {**cfg.to_dict(), "synthetic": str(synthetic), "real": str(real),
             "pairs": None if pairs is None else str(pairs)}, sort_keys=False))
        _trim_log(log_path, trainer.step)
        try:
            from torch.utils.tensorboard import SummaryWriter
            tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=trainer.step + 1)
        except ImportError:  # tensorboard is a dependency; tolerate a stripped environment
            tb = None
    last_path = None
    bar = tqdm(total=cfg.steps, initial=trainer.step, unit="step", desc="train",
               disable=not (progress and ddp.main))
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        with open(log_path, "a") if ddp.main else open(os.devnull, "w") as log:
            while trainer.step < cfg.steps:
                try:
                    values = trainer.train_step()
                except NonFiniteLoss as e:
                    good = store.latest()
                    raise UserError(f"training diverged: {e}; the last good checkpoint is "
                                    f"{good or 'none'}; lower --lr or check the input sets.") from None
                step = trainer.step
                if ddp.main:
                    if step % cfg.log_every == 0 or step == cfg.steps:
                        log.write(json.dumps({"step": step, **values}) + "\n")
                        log.flush()
                        if tb is not None:
                            for k, v in values.items():
                                tb.add_scalar(_tb_name(k), v, step)
                    if step % cfg.grid_every == 0:
                        save_grid(trainer, run_dir / "grids" / f"step_{step:08d}.png", tb)
                    bar.set_postfix(L_G=f"{values['L_G']:.3f}", k_R=f"{values['k_R']:.3f}",
                                    M=f"{values['M_R']:.3f}", refresh=False)
                    bar.update(1)
                if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                    trainer.check_ranks_agree()  # collective: every rank takes part
                    if ddp.main:
                        last_path = store.save(trainer.state())
    except KeyboardInterrupt:
        if ddp.main and trainer.step > 0:
            last_path = store.save(trainer.state())
            print(f"\nInterrupted at step {trainer.step}; saved {last_path}. Resume with --resume.")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        bar.close()
        if tb is not None:
            tb.close()
        for s in (trainer.syn, trainer.real, trainer.pairs):
            if s is not None:
                s.close()
        if ddp.world > 1 and dist.is_initialized():
            # a gloo group left to interpreter shutdown aborted a rank ("terminate called without
            # an active exception", exit -6) after a complete run
            dist.destroy_process_group()
    return last_path


def _tb_name(key: str) -> str:
    if key.startswith("k_"):
        return f"balance/{key}"
    if key.startswith("M_"):
        return f"convergence/{key}"
    if key == "lr":
        return "lr"
    return f"loss/{key}"


@torch.no_grad()
def save_grid(trainer: Trainer, path: Path, tb=None, n: int = 8) -> Path:
    """Rows: x, G(x), G'(G(x)) (and pairs s, r, G(s)) for n fixed training images."""
    from torchvision.utils import make_grid, save_image

    idx = np.arange(min(n, trainer.syn.n))
    (x,), _ = trainer.syn.rows(idx)
    x = x.to(trainer.device)
    trainer.G.eval()
    gx = trainer.G(x)
    rows = [x, gx]
    if trainer.Gp is not None:
        rows.append(trainer.Gp(gx))
    if trainer.pairs is not None:
        (s, r), _ = trainer.pairs.rows(np.arange(min(n, trainer.pairs.n)))
        rows += [s.to(trainer.device), r.to(trainer.device), trainer.G(s.to(trainer.device))]
    trainer.G.train()
    k = min(r.shape[0] for r in rows)
    grid = make_grid(torch.cat([r[:k] for r in rows]), nrow=k, normalize=True, value_range=(-1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)
    if tb is not None:
        tb.add_image("grid", grid, trainer.step)
    return path
