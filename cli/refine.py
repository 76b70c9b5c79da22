"""`refine`: the GAN side (training, export, evaluation)."""
from pathlib import Path

import click

from cli.common import BATCH, THREADS, FiniteRange, Group
from morph.model.sample import MAX_IDENTITIES, MAX_IDENTITY, MAX_IMAGES, MAX_SEED
from morph.align.template import DEFAULT_TEMPLATE, TEMPLATES
from refine.gan.config import CHOICES, VARIANTS
from refine.export.sinks import FORMATS


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
              help="YAML of settings (see refine/gan/config.py); options below override it.")
@click.option("--steps", type=click.IntRange(1), default=None, help="Training steps [paper: 248000].")
@click.option("--batch-size", type=BATCH, default=None, help="[paper: 16]")
@click.option("--lr", type=FiniteRange(0, 1, min_open=True), default=None,
              help="Adam learning rate [paper: 8e-5], halved on the paper's schedule.")
@click.option("--variant", type=click.Choice(VARIANTS),
              default=None, help="The full method or an ablation of the paper's Fig. 5 / Table 1 [ours].")
@click.option("--embedder", default=None, help="Identity network C: 'dlib' (default), a TorchScript file, "
              "or a facenet-pytorch InceptionResnetV1 state dict.")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... [cpu]")
@click.option("--seed", type=click.IntRange(0, 2 ** 32 - 1), default=None, help="Initial weights, batches, noise [0].")
@click.option("--checkpoint-every", type=click.IntRange(1), default=None)
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in --out.")
@click.option("--amp/--no-amp", default=None,
              help="bfloat16 autocast of the networks (losses, weights and optimiser states stay float32), "
                   "on CUDA and on the CPU; fast on CPUs with bf16 units (AMX / AVX512-BF16), slow on "
                   "others (bench/train_step.py) [off].")
@click.option("--threads", type=THREADS, default=None,
              help="CPU threads (default: OMP_NUM_THREADS, else all cores). A resumed run repeats the "
                   "uninterrupted one bit for bit with the same threads (README, Reproducibility).")
@click.option("--lambda-adv", type=FiniteRange(0, 1e6), default=None,
              help="Weight of G's adversarial terms in Eq. 8, D_R's L_G, D_F's and L_hist [1]; 0 is a control "
                   "(G ignores every discriminator and the real set).")
@click.option("--residual/--no-residual", default=None,
              help="G and G' output their input plus a bounded correction, starting as copies [off: the authors'].")
@click.option("--lr-schedule", type=click.Choice(CHOICES["lr_schedule"]), default=None,
              help="paper: halvings at the paper's steps scaled to --steps; constant; tail: constant, then "
                   "linear decay to 0 over the last 20% of the steps [paper].")
@click.option("--augment", type=click.Choice(CHOICES["augment"]), default=None,
              help="DiffAugment (colour, translation, cutout) on both inputs of D_R and D_S [none].")
@click.option("--discriminator", type=click.Choice(CHOICES["discriminator"]), default=None,
              help="D_R and D_S: the authors' BEGAN auto-encoders, patch discriminators, or heads on frozen "
                   "MTCNN O-Net features (projected, as Projected GAN) [began].")
@click.option("--gan-loss", type=click.Choice(CHOICES["gan_loss"]), default=None,
              help="A patch or projected discriminator's loss [nonsaturating].")
@click.option("--r1", type=FiniteRange(0, 1e6), default=None,
              help="R1 penalty gamma on a patch or projected discriminator's real inputs [0: none].")
@click.option("--history", type=click.IntRange(0, 1_000_000), default=None,
              help="Refined images kept for a patch D_R; half its generated inputs come from them (SimGAN) [0].")
@click.option("--upsample", type=click.Choice(CHOICES["upsample"]), default=None,
              help="How G and G' upsample: the authors' transposed convolutions, or resize then convolve (no "
                   "checkerboard) [transpose].")
@click.option("--face-weight", type=FiniteRange(0, 1e3, min_open=True), default=None,
              help="Weight of the face box in the BEGAN discriminators' L1 reconstruction, the background's "
                   "being 1 [1].")
@click.option("--lambda-face", type=FiniteRange(0, 1e6), default=None,
              help="Weight in Eq. 8 of a least-squares patch discriminator D_F of the face box alone, beside "
                   "D_R [0: no D_F].")
@click.option("--split-background/--no-split-background", default=None,
              help="A residual G corrects the drawn face and the render's black background apart [off].")
@click.option("--face-discriminator", type=click.Choice(CHOICES["face_discriminator"]), default=None,
              help="D_F's network: a patch discriminator trained from scratch, or heads on frozen MTCNN "
                   "O-Net features (projected) [patch].")
@click.option("--id-loss", type=click.Choice(CHOICES["id_loss"]), default=None,
              help="What L_id holds G to: every change of the face (pixel, the authors'), only what no "
                   "per-image colour map explains (structure), or only what no colour curve shared by the "
                   "batch explains (curve) [pixel].")
@click.option("--lambda-hist", type=FiniteRange(0, 1e6), default=None,
              help="Weight in Eq. 8 of L_hist, the distance between the colour distributions of G's batch "
                   "and the real batch, in the face box and outside it [0: none].")
def train(synthetic, real, pairs, run_dir, config_path, steps, batch_size, lr, variant, embedder, device, seed,
          checkpoint_every, resume, amp, threads, lambda_adv, residual, lr_schedule, augment, discriminator,
          gan_loss, r1, history, upsample, face_weight, lambda_face, split_background, face_discriminator,
          id_loss, lambda_hist):
    """Train G, G', D_R and D_S (paper Eq. 1-10). Ctrl-C saves a checkpoint; --resume continues
    exactly where it stopped. Under 'torchrun --nproc_per_node K' each process trains on its
    own batches and only rank 0 writes."""
    from refine.gan.config import load_config
    from refine.jobs.train import train as run

    cfg = load_config(config_path, steps=steps, batch_size=batch_size, lr=lr, variant=variant,
                      embedder=embedder, device=device, seed=seed, checkpoint_every=checkpoint_every, amp=amp,
                      lambda_adv=lambda_adv, residual=residual, lr_schedule=lr_schedule, augment=augment,
                      discriminator=discriminator, gan_loss=gan_loss, r1=r1, history=history, upsample=upsample,
                      face_weight=face_weight, lambda_face=lambda_face, split_background=split_background,
                      face_discriminator=face_discriminator, id_loss=id_loss, lambda_hist=lambda_hist)
    last = run(cfg, synthetic, real, pairs, run_dir, resume=resume, threads=threads)
    if last is not None:
        click.echo(f"{run_dir}: trained to step {cfg.steps}; checkpoint {last}")


@main.command("evaluate")
@click.argument("dataset", type=click.Path(path_type=Path))
@click.option("-o", "--output", "prefix", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Report prefix: writes PREFIX.json and PREFIX.png (e.g. -o reports/ganfaces).")
@click.option("--against", type=click.Path(path_type=Path), default=None,
              help="A real set (real.h5 from 'morph align', or any set this command reads) to measure the "
                   "Fréchet distance and KID to, in the embedder's feature space.")
@click.option("--embedder", default="dlib", show_default=True,
              help="Face network: 'dlib', a TorchScript file, a facenet-pytorch InceptionResnetV1 state dict, "
                   "or RUN/recognizer.pt from 'refine train-recognizer'.")
@click.option("--pairs", "n_pairs", type=click.IntRange(1), default=1000, show_default=True,
              help="Same-identity and different-identity pairs, each [paper: 1000]; fewer if the set has fewer.")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True,
              help="Draws the pairs and the image samples.")
@click.option("--max-images", type=click.IntRange(2), default=2000, show_default=True,
              help="Images per set (drawn with --seed) for face detection, Fréchet distance and KID.")
@click.option("--min-face-size", type=FiniteRange(min=1.0), default=20.0, show_default=True,
              help="MTCNN's smallest face, in px of the 108x108 images.")
@click.option("--kind", type=click.Choice(["rendered", "refined", "real"]), default=None,
              help="What the set is, for the report (default: told from the file).")
@click.option("--batch-size", type=BATCH, default=64, show_default=True, help="Images per embedder call.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1 ...")
def evaluate(dataset, prefix, against, embedder, n_pairs, seed, max_images, min_face_size, kind, batch_size,
             device):
    """Verification report of an image set, as the paper's Fig. 7: distances of same- and
    different-identity pairs embedded by a pre-trained face network, their histograms, ROC,
    AUC and EER; the fraction of images where MTCNN finds a face; with --against, distribution
    distances to a real set.

    \b
    DATASET: an .h5 with 'images' and 'labels' (synthetic.h5 from 'morph render', real.h5 from
    'morph align', an exported ganfaces.h5), a folder holding ganfaces.h5, or an ImageFolder
    tree DIR/IDENTITY/IMAGE.jpg.
    \b
    Example:
      refine evaluate synthetic.h5 --against real.h5 -o reports/synthetic
    """
    from refine.jobs.evaluate import evaluate as run

    r = run(dataset, prefix, against=against, embedder=embedder, n_pairs=n_pairs, seed=seed,
            max_images=max_images, min_face_size=min_face_size, kind=kind, batch_size=batch_size, device=device)
    for note in r["notes"]:
        click.echo(f"Note: {note}.", err=True)
    line = (f"{dataset}: AUC {r['auc']:.4f}, EER {100 * r['eer']:.2f}% (distance {r['eer_threshold']:.3f}) on "
            f"{r['pairs']['positive']} + {r['pairs']['negative']} pairs; MTCNN finds a face in "
            f"{100 * r['face_detection']['fraction']:.1f}% of {r['face_detection']['n_images']} images")
    if r["against"]:
        line += f"; Fréchet {r['against']['frechet_distance']:.4f}, KID {r['against']['kid_mmd2']:.5f}"
    click.echo(f"{line}.\n{r['figure'][:-4]}.json, {r['figure']}")

@main.command("verify")
@click.option("--lfw-pairs", type=click.Path(path_type=Path), default=None,
              help="LFW's pairs.txt (or a file in its layout); the images are in --images.")
@click.option("--images", type=click.Path(path_type=Path), default=None,
              help="With --lfw-pairs: the folder of NAME/NAME_0001.jpg ...: photos (LFW as distributed), "
                   "or crops aligned by --template.")
@click.option("--align", type=click.Choice(("auto", "always", "never")), default="auto", show_default=True,
              help="With --lfw-pairs: align the photos as 'morph align' does (always), take them as aligned crops "
                   "(never), or tell which from a sample (auto).")
@click.option("--bin", "bin_path", type=click.Path(path_type=Path), default=None,
              help="An insightface verification file (lfw.bin, cfp_fp.bin, agedb_30.bin ...).")
@click.option("--set", "labelled_set", type=click.Path(path_type=Path), default=None,
              help="A labelled set (as 'refine evaluate' reads): --pairs same and different pairs drawn from it.")
@click.option("-o", "--output", "prefix", type=click.Path(path_type=Path), required=True,
              help="Report prefix: writes PREFIX.json and PREFIX.png (the ROC).")
@click.option("--embedder", default="dlib", show_default=True,
              help="Face network: 'dlib', a TorchScript file, a facenet-pytorch InceptionResnetV1 state dict, "
                   "or RUN/recognizer.pt from 'refine train-recognizer'.")
@click.option("--template", type=click.Choice(TEMPLATES), default=DEFAULT_TEMPLATE, show_default=True,
              help="With --lfw-pairs: the crop template the images were aligned by (.bin files are arcface112).")
@click.option("--folds", type=click.IntRange(2, 100), default=10, show_default=True,
              help="Folds of the accuracy (LFW: its file's folds; insightface: 10).")
@click.option("--pairs", "n_pairs", type=click.IntRange(1), default=3000, show_default=True,
              help="With --set: same- and different-identity pairs, each.")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True, help="With --set: draws the pairs.")
@click.option("--flip/--no-flip", default=True, show_default=True,
              help="Add each image's mirror image's embedding, as insightface reports its accuracy.")
@click.option("--batch-size", type=BATCH, default=64, show_default=True, help="Images per embedder call.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1 ...")
def verify(lfw_pairs, images, align, bin_path, labelled_set, prefix, embedder, template, folds, n_pairs, seed, flip,
           batch_size, device):
    """Face verification on a standard protocol: k-fold accuracy (mean +- std), AUC, EER and TAR at
    FAR 1e-3 / 1e-2, as insightface's verification reports them; PREFIX.json and the ROC in PREFIX.png.

    \b
    Examples:
      refine verify --lfw-pairs lfw/pairs.txt --images lfw -o reports/lfw
      refine verify --lfw-pairs lfw/pairs.txt --images lfw-aligned --template arcface112 -o reports/lfw
      refine verify --bin faces_emore/agedb_30.bin -o reports/agedb30
      refine verify --set export/ -o reports/export
    """
    from refine.jobs.verify import verify

    r = verify(prefix, lfw_pairs=lfw_pairs, images=images, template=template, bin_path=bin_path,
               labelled_set=labelled_set, n_pairs=n_pairs, seed=seed, folds=folds, embedder=embedder, flip=flip,
               batch_size=batch_size, device=device, align=align)
    a = r["accuracy"]
    tar = ", ".join(f"TAR@FAR={k} {v['tar']:.4f}" for k, v in r["tar_at_far"].items() if v)
    click.echo(f"{r['source']}: accuracy {100 * a['mean']:.2f}% +- {100 * a['std']:.2f} over {a['folds']} folds of "
               f"{r['pairs']['total']} pairs; AUC {r['auc']:.4f}, EER {100 * r['eer']:.2f}%"
               f"{'; ' + tar if tar else ''}.\n{r['figure'][:-4]}.json, {r['figure']}")


def _recipe_options(f):
    """The recogniser recipe's options, shared by train-recognizer and table1."""
    opts = [
        click.option("--steps", type=click.IntRange(1), default=2000, show_default=True, help="Training steps."),
        click.option("--batch-size", type=click.IntRange(2, 4096), default=128, show_default=True,
                     help="Images per step (per process under torchrun)."),
        click.option("--lr", type=FiniteRange(0, 10, min_open=True), default=0.1, show_default=True,
                     help="SGD learning rate after the warm-up; decays to 0 (cosine)."),
        click.option("--warmup-steps", type=click.IntRange(0), default=100, show_default=True),
        click.option("--width", type=FiniteRange(0, 8, min_open=True), default=1.0, show_default=True,
                     help="MobileFaceNet's width multiplier (1: the paper's table; 0.5 for a CPU budget)."),
        click.option("--embedding-size", type=click.IntRange(8, 4096), default=128, show_default=True),
        click.option("--crop", type=click.Choice(TEMPLATES), default=DEFAULT_TEMPLATE, show_default=True,
                     help="The recogniser's input: our 108 px crop, or the 112 px ArcFace crop (warped from it)."),
        click.option("--margin", type=click.Choice(["arcface", "cosface"]), default="arcface", show_default=True,
                     help="ArcFace (m 0.5) or CosFace (m 0.35), scale 64."),
        click.option("--margin-m", type=FiniteRange(0, 1.5), default=None, help="The margin [the paper's]."),
        click.option("--margin-s", type=FiniteRange(1, 256), default=None,
                     help="The logits' scale [64]; a smaller one (30) starts faster on a few hundred identities."),
        click.option("--augment", type=click.Choice(["standard", "strong", "none"]), default="standard",
                     show_default=True, help="standard: flip + random erasing; strong: also shift, rotation, "
                                             "scale, colour, greyscale and blur."),
        click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True,
                     help="Initial weights, batches and augmentation."),
        click.option("--amp", is_flag=True, help="bfloat16 autocast (CUDA, and CPUs with AMX/AVX512-BF16)."),
        click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1 ..."),
        click.option("--threads", type=THREADS, default=None, help="CPU threads (default: all cores)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _recipe(steps, batch_size, lr, warmup_steps, width, embedding_size, crop, margin, margin_m, margin_s, augment,
            seed, amp, device, **extra):
    from refine.recognition.trainer import RecognizerConfig

    return RecognizerConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps, width=width,
                            embedding_size=embedding_size, crop=crop, margin=margin, margin_m=margin_m,
                            margin_s=margin_s, augment=augment, seed=seed,
                            amp=amp, device=device, **extra)


@main.command("train-recognizer")
@click.option("--data", "data", multiple=True, required=True, type=click.Path(path_type=Path),
              help="A labelled set: an export (folder or ganfaces.h5), 'morph render' output, 'morph align' "
                   "output of a folder per identity, an ImageFolder tree; repeatable (identities kept apart).")
@click.option("--proportion", "proportions", multiple=True, type=FiniteRange(0), default=(),
              help="Share of each --data in every batch, in the same order [by set sizes].")
@click.option("--out", "run_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run directory: checkpoints, losses.jsonl, TensorBoard logs, recognizer.pt.")
@click.option("--checkpoint-every", type=click.IntRange(1), default=500, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in --out.")
@_recipe_options
def train_recognizer(data, proportions, run_dir, checkpoint_every, resume, threads, **recipe):
    """Train a face recogniser (MobileFaceNet with an ArcFace or CosFace head) on labelled sets,
    to measure what a dataset is worth; verify it with 'refine verify --embedder RUN/recognizer.pt'.
    Ctrl-C saves a checkpoint; --resume continues exactly. Under 'torchrun --nproc_per_node K'
    each process trains on its own batches and only rank 0 writes.

    \b
    Example:
      refine train-recognizer --data export/ --data casia_real.h5 --out runs/rec --width 0.5
    """
    from morph.base.errors import UserError
    from refine.jobs.train_recognizer import train_recognizer as run

    if proportions and len(proportions) != len(data):
        raise UserError(f"{len(proportions)} --proportion for {len(data)} --data; give one per set, or none.")
    cfg = _recipe(**recipe, checkpoint_every=checkpoint_every, proportions=list(proportions) or None)
    model = run(cfg, list(data), run_dir, resume=resume, threads=threads)
    if model is not None:
        click.echo(f"{run_dir}: trained to step {cfg.steps}; recogniser {model}")


@main.command("table1")
@click.option("-o", "--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder: a run per row, OUT/table1.md and OUT/table1.json.")
@click.option("--real", multiple=True, type=click.Path(path_type=Path),
              help="Real labelled training set(s) ('morph align' of a folder per identity); repeatable.")
@click.option("--rendered", type=click.Path(path_type=Path), default=None, help="Raw renders ('morph render' output).")
@click.option("--refined", type=click.Path(path_type=Path), default=None,
              help="Refined images ('refine export-dataset', ideally of the same draws as --rendered).")
@click.option("--lfw-pairs", type=click.Path(path_type=Path), default=None, help="A benchmark: LFW's pairs.txt ...")
@click.option("--images", type=click.Path(path_type=Path), default=None,
              help="... over this folder: LFW's photos as distributed, or crops aligned by --template.")
@click.option("--template", type=click.Choice(TEMPLATES), default=DEFAULT_TEMPLATE, show_default=True,
              help="The crop template of --images.")
@click.option("--bin", "bins", multiple=True, type=click.Path(path_type=Path),
              help="A benchmark: an insightface .bin (lfw.bin, cfp_fp.bin ...); repeatable.")
@click.option("--set", "sets", multiple=True, type=click.Path(path_type=Path),
              help="A benchmark: pairs drawn from a labelled set of identities no row trains on; repeatable.")
@click.option("--pairs", "n_pairs", type=click.IntRange(1), default=3000, show_default=True,
              help="With --set: same- and different-identity pairs, each.")
@click.option("--row", "only", multiple=True,  # refine.jobs.table1.ROWS, spelt here to keep torch out of --help
              type=click.Choice(["real", "real+rendered", "real+refined", "rendered", "refined"]),
              help="Run only this row (repeatable; the untrained row always runs), e.g. the rows to repeat "
                   "with another --seed.")
@_recipe_options
def table1(out, real, rendered, refined, lfw_pairs, images, template, bins, sets, n_pairs, only, threads, **recipe):
    """The paper's Table 1 at your scale: one recogniser recipe trained on real data, real + raw
    renders, real + refined images (and synthetic data alone), beside the untrained network,
    each verified on your benchmarks; OUT/table1.md and OUT/table1.json.

    \b
    Example:
      refine table1 --real casia.h5 --rendered synthetic.h5 --refined export/ \\
                    --lfw-pairs lfw/pairs.txt --images lfw108/ -o table1 --width 0.5
    """
    from refine.jobs.table1 import table1 as run

    report = run(out, _recipe(**recipe), real=list(real), rendered=rendered, refined=refined, lfw_pairs=lfw_pairs,
                 images=images, template=template, bins=bins, sets=sets, n_pairs=n_pairs, threads=threads,
                 only=only)
    click.echo((Path(out) / "table1.md").read_text().rstrip())
    click.echo(f"{out / 'table1.json'} ({len(report['rows'])} rows)")


@main.command("export-dataset")
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True,
              help="A checkpoint of 'refine train' (RUN/checkpoints/step_*.pt); its EMA generator refines.")
@click.option("--model", "model_spec", default="default", show_default=True,
              help="3DMM to sample and render new identities from: 'default', a model file or a composing YAML "
                   "(as 'morph sample-identities --model').")
@click.option("--priors", "priors_path", default=None,
              help="Priors YAML for expression, pose, lighting and camera (default: embedded).")
@click.option("--n-identities", type=click.IntRange(1, MAX_IDENTITIES), required=True,
              help="Number of new identities (classes).")
@click.option("--images-per-identity", type=click.IntRange(1, MAX_IMAGES), required=True, help="Images of each identity.")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), required=True,
              help="Sampling seed; must not re-make the checkpoint's training identities.")
@click.option("--first-identity", type=click.IntRange(0, MAX_IDENTITY), default=0, show_default=True,
              help="Number of the first identity (identities first .. first+N-1 of the seed).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder (new, empty, or this export's own folder to resume it).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="imagefolder",
              show_default=True, help="imagefolder: OUT/IDENTITY/IMAGE.jpg; hdf5: OUT/ganfaces.h5 with every "
                                      "parameter of each image.")
@click.option("--quality", type=click.IntRange(1, 100), default=95, show_default=True, help="JPEG quality.")
@click.option("--png", is_flag=True, help="Write lossless PNG instead of JPEG (imagefolder).")
@click.option("--max-dr-error", type=FiniteRange(0), default=None,
              help="Re-draw an image whose D_R reconstruction error |G(x) - D_R(G(x))| is above this.")
@click.option("--max-cycle-error", type=FiniteRange(0), default=None,
              help="Re-draw an image whose cycle error |G'(G(x)) - x| is above this.")
@click.option("--max-retries", type=click.IntRange(0, 1000), default=10, show_default=True,
              help="Re-draws per image before the best draw is kept (and flagged in scores.csv).")
@click.option("--reference", "references", multiple=True, type=click.Path(path_type=Path),
              help="A set whose identities must not reappear (your training or benchmark faces; any set "
                   "'refine evaluate' reads, labels optional); repeatable. The data card lists synthetic "
                   "identities nearer to one than --leak-threshold.")
@click.option("--leak-threshold", type=FiniteRange(0, 2), default=None,
              help="Distance (unit embeddings) below which the leakage audit lists a pair [the set's EER distance].")
@click.option("--exclude-leaks", is_flag=True,
              help="Leave out of the dataset the identities the leakage audit lists (the data card names them).")
@click.option("--scores/--no-scores", default=True, show_default=True,
              help="Score every image with D_R, G' and C (most of the time on a CPU); --no-scores leaves the "
                   "score columns of scores.csv empty.")
@click.option("--dropout/--no-dropout", default=True, show_default=True,
              help="Keep G's dropout (keep 0.9) on, as the authors generate, each image's noise seeded by "
                   "(seed, identity, draw); --no-dropout refines without it.")
@click.option("--batch-size", type=BATCH, default=16, show_default=True,
              help="Images per network batch, rounded up to a multiple of 8. Changes results only in their "
                   "last bits (README, Reproducibility); an unfinished export resumes with its own.")
@click.option("--precision", type=click.Choice(["float32", "bf16"]), default="float32", show_default=True,
              help="G's precision. bf16, on a CPU with AMX or AVX512-BF16 or a GPU that has bf16: G about 3.7x "
                   "faster, images within 4 levels of float32's (README, Reproducibility).")
@click.option("--device", default="cpu", show_default=True, help="Where the networks run: cpu, cuda, cuda:1 ...")
@click.option("--threads", type=THREADS, default=None, help="CPU threads (default: all cores).")
def export_dataset(checkpoint, model_spec, priors_path, n_identities, images_per_identity, seed, first_identity,
                   out, fmt, quality, png, max_dr_error, max_cycle_error, max_retries, references, leak_threshold,
                   exclude_leaks, scores, dropout, batch_size, precision, device, threads):
    """Sample new identities, render them, refine them with the checkpoint's EMA generator and
    write a labelled dataset (paper section 5, GANFaces) with OUT/scores.csv, OUT/manifest.json and
    its data card, OUT/DATACARD.md and OUT/datacard.json (what made it, identity separability,
    consistency and uniqueness under C, and with --reference a leakage audit).
    Resumes after a kill (re-run the same command); under 'torchrun --nproc_per_node K' each
    process exports its own chunks of identities, with the same bytes as one process with the
    same threads per process (OMP_NUM_THREADS / --threads)."""
    import os

    from refine.export.options import ExportOptions
    from refine.jobs.export_dataset import export_dataset as run

    opts = ExportOptions(checkpoint=checkpoint, out=out, n_identities=n_identities,
                         images_per_identity=images_per_identity, seed=seed, model=model_spec, priors=priors_path,
                         first_identity=first_identity, format=fmt, quality=quality, png=png,
                         max_dr_error=max_dr_error, max_cycle_error=max_cycle_error, max_retries=max_retries,
                         scores=scores, dropout=dropout, batch_size=batch_size, device=device,
                         threads=threads, references=tuple(references), leak_threshold=leak_threshold,
                         exclude_leaks=exclude_leaks, precision=precision)
    manifest = run(opts)
    if int(os.environ.get("RANK", "0")) == 0:
        c = manifest.get("counts", {})
        click.echo(f"{out}: {n_identities} identities x {images_per_identity} images ({fmt}); "
                   f"{c.get('flagged', 0)} flagged; scores in {out / 'scores.csv'}, data card {out / 'DATACARD.md'}")


@main.command("pipeline")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Pipeline YAML (example: ganfaces_data/pipeline_example.yaml); relative paths in it are "
                   "resolved against its folder.")
@click.option("--quiet", is_flag=True, help="No progress bars (stage headers are still printed).")
def pipeline(config_path, quiet):
    """Everything in one command: sample-identities -> render -> align -> fit -> render-pairs -> train
    -> export-dataset -> evaluate, all outputs under the YAML's 'out' folder. Each stage is skipped
    when its output is already complete, so re-running the same command resumes after a kill.

    \b
    YAML keys: out, model, priors, device, sample, real, pairs, train, export, evaluate
    (see ganfaces_data/pipeline_example.yaml for every one).
    \b
    Example:
      refine pipeline --config pipeline.yaml
    """
    from refine.jobs.pipeline import run_pipeline

    r = run_pipeline(config_path, echo=click.echo, progress=not quiet)
    click.echo(f"{r['out']}: done; checkpoint {r['checkpoint']}; export "
               + ", ".join(str(p) for p in r["exports"].values())
               + (f"; report {r['report']}" if r["report"] else "") + ".")


if __name__ == "__main__":
    main()
