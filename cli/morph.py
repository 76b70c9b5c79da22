"""`morph`: 3DMM files -> sampled identities -> rendered, aligned faces."""
from __future__ import annotations

from pathlib import Path

import click

from cli.common import BATCH, THREADS, FiniteRange, Group
from morph.render.raster import BACKENDS
from morph.model.sample import MAX_IDENTITIES, MAX_IDENTITY, MAX_IMAGES, MAX_SEED
from morph.align.template import DEFAULT_TEMPLATE, TEMPLATES


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """The 3D morphable model side of GANFaces: sample new identities from a 3DMM, render
    them aligned like MTCNN-cropped photos, and preview the result.

    \b
    Quickstart (embedded default model, no licensed files needed):
      morph sample-identities --model default --n-identities 8 --images-per-identity 6 -o identities.h5
      morph render identities.h5 -o synthetic.h5
      morph preview synthetic.h5 -o sheet.png
    """


MODEL_HELP = ("3DMM: 'default' (embedded: the ICT Face Model Light with a synthetic colour model), "
              "'menpo3d' (embedded: the previous default), a model file (BFM 2009 .mat, BFM 2017 .h5, "
              "LSFM .mat, face3d .mat, eos .bin, 3DDFA_V2 .pkl), an ICT-FaceKit FaceXModel folder, or a "
              "YAML composing files (shape:, texture:, expression:, landmarks:).")


@main.command("sample-identities")
@click.option("--model", "model_spec", default="default", show_default=True, help=MODEL_HELP)
@click.option("--priors", "priors_path", default=None,
              help="Priors YAML for expression, pose, lighting and camera (default: embedded).")
@click.option("--n-identities", type=click.IntRange(1, MAX_IDENTITIES), required=True, help="Number of new identities.")
@click.option("--images-per-identity", type=click.IntRange(1, MAX_IMAGES), required=True, help="Images of each identity.")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True,
              help="Identity i of seed s is the same in any run, batch size or machine.")
@click.option("--first-identity", type=click.IntRange(0, MAX_IDENTITY), default=0, show_default=True,
              help="Number of the first identity (to continue or split a set).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
def sample_identities(model_spec, priors_path, n_identities, images_per_identity, seed, first_identity, output):
    """Sample shape and colour of new identities from the model's Gaussian, and expression,
    pose, lighting and camera per image from the priors (paper section 4, Data)."""
    from morph.jobs.sample import sample_identities as run

    run(output, model_spec, priors_path, n_identities=n_identities, images_per_identity=images_per_identity,
        seed=seed, first_identity=first_identity)
    click.echo(f"{output}: {n_identities} identities x {images_per_identity} images (seed {seed}).")


@main.command("render")
@click.argument("identities", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--model", "model_spec", default=None, help="Override the model recorded in IDENTITIES. " + MODEL_HELP)
@click.option("--size", type=click.IntRange(16, 1024), default=None, help="Image size in pixels [the template's].")
@click.option("--template", type=click.Choice(TEMPLATES), default=DEFAULT_TEMPLATE, show_default=True,
              help="Crop template: where the 5 points land (morph/align/template.py); --size scales it.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="Rasterizer: our CPU z-buffer (cpu), PyTorch3D, or plain torch on any device (torch) "
                   "(auto: ours on CPU; on CUDA PyTorch3D, or torch where PyTorch3D does not import).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--batch-size", type=BATCH, default=64, show_default=True)
@click.option("--threads", type=THREADS, default=None, help="CPU threads (default: all cores).")
@click.option("--with", "extra", type=click.Choice(["depth", "normals"]), multiple=True,
              help="Also store per-pixel depth (mm) or camera-frame normals; repeatable.")
@click.option("--align-by", type=click.Choice(["projection", "mtcnn", "ibug68"]), default="projection",
              show_default=True,
              help="Crop by the 5 points projected from the 3DMM (exact), or by MTCNN run on the render "
                   "(its points, or refined to the 68 iBUG points as 'morph align' does), as the paper did.")
def render(identities, output, model_spec, size, template, backend, device, batch_size, threads, extra, align_by):
    """Render every image of IDENTITIES, aligned to the 5-point template (the same crop rule as
    'morph align' uses for real photos). Resumes after a kill."""
    from morph.jobs.render import render_identities

    render_identities(identities, output, model_spec=model_spec, size=size, backend=backend,
                      device=device, batch_size=batch_size, threads=threads, extra_outputs=extra,
                      align_by=align_by, template=template)


@main.command("mesh")
@click.argument("identities", type=click.Path(path_type=Path))
@click.option("--image", "image_index", type=click.IntRange(0), default=0, show_default=True,
              help="Row of the image in IDENTITIES (its identity, expression and colour).")
@click.option("--neutral", is_flag=True, help="Leave the expression out.")
@click.option("--model", "model_spec", default=None, help="Override the model recorded in IDENTITIES.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help=".obj or .ply, with per-vertex colours (albedo).")
def mesh(identities, image_index, neutral, model_spec, output):
    """Export the 3D face of one sampled image as a mesh with vertex colours."""
    from morph.jobs.mesh import export_sample_mesh

    _check_writable(output)
    export_sample_mesh(identities, image_index, output, model_spec=model_spec, neutral=neutral)
    click.echo(f"{output}")


def _photo_options(f):
    """The crop and detector options of the commands that read photos (align, fit)."""
    opts = [
        click.option("--size", type=click.IntRange(16, 1024), default=None,
                     help="Crop size in pixels [the template's]."),
        click.option("--template", type=click.Choice(TEMPLATES), default=DEFAULT_TEMPLATE, show_default=True,
                     help="Crop template: where the 5 points land (morph/align/template.py); --size scales it."),
        click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True),
        click.option("--batch-size", type=BATCH, default=16, show_default=True, help="Photos per detector batch."),
        click.option("--min-face-size", type=FiniteRange(1, 10000), default=20.0, show_default=True,
                     help="Smallest face in pixels."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


@main.command("align")
@click.argument("photos", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="The HDF5 set, or with --format folder the folder of crops (its set beside it, OUTPUT.h5).")
@click.option("--format", "fmt", type=click.Choice(["hdf5", "folder"]), default="hdf5", show_default=True,
              help="hdf5: one file with the points; folder: also OUTPUT/<sub-folder>/<photo>.png, the image-folder "
                   "tree other tools read (torchvision's ImageFolder, 'refine verify --lfw-pairs').")
@click.option("--all-faces", is_flag=True, help="Keep every face, not just the largest, most confident one near the centre.")
@_photo_options
@click.option("--thresholds", type=(float, float, float), default=(0.6, 0.7, 0.7), show_default=True,
              help="P-Net, R-Net, O-Net face probability thresholds.")
@click.option("--landmarks", type=click.Choice(["ibug68", "mtcnn"]), default="ibug68", show_default=True,
              help="Crop points: MTCNN's refined to the 68 iBUG points and taken as the renders take them "
                   "(dlib's 300-W model: iBUG 300-W excludes commercial use), or MTCNN's own.")
def align(photos, output, fmt, all_faces, size, template, device, batch_size, min_face_size, thresholds, landmarks):
    """Detect faces in a folder of photos with MTCNN and crop them with the renders' 5-point
    template (sub-folders = identity labels). Unreadable or faceless photos are listed in
    OUTPUT.report.tsv. Resumes after a kill."""
    from morph.jobs.align import align_folder

    r = align_folder(photos, output, all_faces=all_faces, size=size, device=device, batch_size=batch_size,
                     min_face_size=min_face_size, thresholds=thresholds, landmarks=landmarks,
                     report=lambda line: click.echo(line, err=True), template=template, format=fmt)
    click.echo(f"{output}: {r['n_faces']} faces; {len(r['skipped'])} photos skipped (see {r.get('report', '')}).")


@main.command("fit")
@click.argument("photos", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--model", "model_spec", default="default", show_default=True,
              help="The 3DMM to fit: 'default', 'menpo3d', a model file or a YAML spec (it needs 68 landmarks).")
@click.option("--priors", default=None,
              help="Priors YAML whose camera distance the fits take, and whose light they start from [default].")
@click.option("--photometric/--no-photometric", default=True, show_default=True,
              help="Fit the colour coefficients and the light to the face's pixels (else: mean colour, the priors' light).")
@click.option("--contour/--no-contour", default=True, show_default=True,
              help="On faces turned 30 degrees or more, re-match the far side's jaw points to the cheek's outline as "
                   "the pose changes (a detector marks the outline there; morph/fitting/landmarks.py).")
@_photo_options
def fit(photos, output, model_spec, priors, photometric, contour, size, template, device, batch_size, min_face_size):
    """Fit the model to every face of a folder of photos by its 68 points: pose, identity shape
    and expression; then by its pixels: colour and light (morph/jobs/fit.py). OUTPUT holds the
    aligned faces as 'morph align' writes them and the fits in the layout 'morph render' reads: 'morph render OUTPUT' renders each fit.
    Faceless photos are listed in OUTPUT.report.tsv. Resumes after a kill."""
    from morph.jobs.fit import fit_folder

    r = fit_folder(photos, output, model_spec=model_spec, priors=priors, size=size, device=device,
                   batch_size=batch_size, min_face_size=min_face_size,
                   report=lambda line: click.echo(line, err=True), template=template, photometric=photometric,
                   contour=contour)
    click.echo(f"{output}: {r['n_faces']} faces fitted; {len(r['skipped'])} photos skipped (see {r.get('report', '')}).")


@main.command("preview")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.option("--identities", "max_identities", type=click.IntRange(1), default=8, show_default=True,
              help="Rows: the first N identities.")
@click.option("--images", "max_images", type=click.IntRange(1), default=8, show_default=True,
              help="Columns: up to N images per identity.")
def preview(file, output, max_identities, max_images):
    """Contact sheet of an image set (synthetic.h5, real.h5): one row per identity."""
    from morph.jobs.preview import contact_sheet

    contact_sheet(file, output, max_identities, max_images)
    click.echo(f"{output}")


@main.command("fit-priors")
@click.argument("annotations", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Priors YAML to write.")
@click.option("--base", default=None, help="Priors YAML whose other groups are kept (default: embedded).")
@click.option("--expression-model", type=click.Path(path_type=Path), default=None,
              help="3DDFA Model_Expression.mat or face3d BFM.mat, to fit expression in its basis.")
def fit_priors(annotations, output, base, expression_model):
    """Fit pose, lighting (and expression) priors to a folder of 300W-LP / AFLW2000-3D .mat
    annotations: mean and covariance, as the paper does (section 4, Data). Or measure pose,
    expression and lighting priors on your own photos: ANNOTATIONS = fits.h5 of 'morph fit' (the
    renders then look like that photo set; use them with the same --model; fits made with
    --no-photometric keep the base priors' lighting)."""
    from morph.jobs.fit_priors import fit_priors as fit

    _check_writable(output)
    r = fit(annotations, output, base=base, expression_model=expression_model,
            report=lambda line: click.echo(line, err=True))
    click.echo(f"{output}: fitted to {r['n_used']} of {r['n_files']} files "
               f"(expression {r['n_expression']}, lighting {r['n_lighting']}).")


@main.command("render-pairs")
@click.argument("annotated", type=click.Path(path_type=Path), required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="pairs.h5 to write.")
@click.option("--fits", type=click.Path(path_type=Path), default=None,
              help="Instead of ANNOTATED: fits.h5 of 'morph fit' (any photos, any model with 68 landmarks).")
@click.option("--model", "model_spec", default=None,
              help="The 3DMM the annotations were fitted with (300W-LP / AFLW2000-3D: face3d's BFM.mat; "
                   "with --fits: the fits' own by default). " + MODEL_HELP)
@click.option("--size", type=click.IntRange(16, 1024), default=None, help="Crop size in pixels [the template's].")
@click.option("--template", type=click.Choice(TEMPLATES), default=DEFAULT_TEMPLATE, show_default=True,
              help="Crop template: where the 5 points land (morph/align/template.py); --size scales it.")
@click.option("--max-landmark-error", type=FiniteRange(0, min_open=True), default=None,
              help="Flag pairs whose mean landmark error exceeds this many photo pixels "
                   "[default: 10% of the annotation's inter-ocular distance].")
@click.option("--batch-size", type=BATCH, default=32, show_default=True)
def render_pairs(annotated, output, fits, model_spec, size, template, max_landmark_error, batch_size):
    """Pair real photos with renders of their fitted 3DMM parameters (paper section 3.2: the
    paired data of G'). ANNOTATED is a folder in 300W-LP / AFLW2000-3D layout: NAME.jpg (or .png)
    next to NAME.mat (Pose_Para, Shape_Para, Exp_Para, Tex_Para, Color_Para, Illum_Para, pt2d).
    Each photo's parameters are rendered in the photo's own frame (the dataset's weak perspective
    and Phong lighting) and photo and render are cropped by the same 5-point similarity, so each
    pair is pixel-aligned. Files that cannot be used are skipped with one line each. Resumes
    after a kill. With --fits instead of ANNOTATED: the photos 'morph fit' aligned, each beside the
    render of its fit in the same crop (the pairs of the paper's full method from your own photos)."""
    from morph.base.errors import UserError
    from morph.jobs.render_pairs import render_fit_pairs, render_pairs as run

    if (annotated is None) == (fits is None):
        raise UserError("give either ANNOTATED (a 300W-LP / AFLW2000-3D folder, with --model) or --fits fits.h5.")
    if fits is not None:
        r = render_fit_pairs(fits, output, model_spec, batch_size=batch_size)
        click.echo(f"{output}: {r['n_pairs']} pairs of photos and renders of their fits.")
        return
    if model_spec is None:
        raise UserError(f"{annotated}: give --model, the 3DMM its annotations were fitted with "
                        "(300W-LP / AFLW2000-3D: face3d's BFM.mat).")

    r = run(annotated, output, model_spec, size=size, max_landmark_error=max_landmark_error,
            batch_size=batch_size, template=template)
    if not r["complete"]:
        ignored = (f"; {r['n_mat_without_image']} .mat files without an image ignored"
                   if r["n_mat_without_image"] else "")
        click.echo(f"{output}: {r['n_pairs']} pairs ({r['n_skipped']} files skipped, {r['n_flagged']} pairs "
                   f"flagged for landmark error{ignored}).")


def _check_writable(path: Path) -> None:
    from morph.base.errors import UserError
    parent = path.resolve().parent
    if not parent.is_dir():
        raise UserError(f"{path}: folder {parent} does not exist; create it first.")


if __name__ == "__main__":
    main()
