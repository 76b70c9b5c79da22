"""`refine`: the GAN side (training, export, evaluation)."""
from pathlib import Path

import click

from cli.common import Group


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """The GAN side of GANFaces: make 3DMM renders photorealistic while keeping identity
    (Gecer et al., ECCV 2018), export and evaluate the dataset."""


@main.command("train")
@click.option("--synthetic", type=click.Path(path_type=Path), required=True, help="synthetic.h5 from 'morph render'.")
@click.option("--real", type=click.Path(path_type=Path), required=True, help="real.h5 from 'morph align'.")
@click.option("--pairs", type=click.Path(path_type=Path), default=None,
              help="pairs.h5 from 'morph render-pairs' (needed by the pair-matching game).")
@click.option("--out", "run_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run directory: checkpoints, TensorBoard logs, image grids, the resolved config.")
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="YAML of settings (see refine/config.py); options below override it.")
@click.option("--steps", type=click.IntRange(1), default=None, help="Training steps [paper: 248000].")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="[paper: 16]")
@click.option("--lr", type=float, default=None, help="Adam learning rate [paper: 8e-5], halved on the paper's schedule.")
@click.option("--variant", type=click.Choice(["ours", "no_pairs", "no_identity", "cyclegan", "simgan", "recons"]),
              default=None, help="The full method or an ablation of the paper's Fig. 5 / Table 1 [ours].")
@click.option("--embedder", default=None, help="Identity network C: 'dlib' (default), a TorchScript file, "
              "or a facenet-pytorch InceptionResnetV1 state dict.")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... [cpu]")
@click.option("--seed", type=int, default=None)
@click.option("--checkpoint-every", type=click.IntRange(1), default=None)
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in --out.")
def train(synthetic, real, pairs, run_dir, config_path, steps, batch_size, lr, variant, embedder, device, seed,
          checkpoint_every, resume):
    """Train G, G', D_R and D_S (paper Eq. 1-10). Ctrl-C saves a checkpoint; --resume continues
    exactly where it stopped. Under 'torchrun --nproc_per_node K' each process trains on its
    own batches and only rank 0 writes."""
    from refine.config import load_config
    from refine.train import train as run

    cfg = load_config(config_path, steps=steps, batch_size=batch_size, lr=lr, variant=variant,
                      embedder=embedder, device=device, seed=seed, checkpoint_every=checkpoint_every)
    last = run(cfg, synthetic, real, pairs, run_dir, resume=resume)
    if last is not None:
        click.echo(f"{run_dir}: trained to step {cfg.steps}; checkpoint {last}")


if __name__ == "__main__":
    main()
