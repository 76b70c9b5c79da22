"""`morph sample-identities`: a block of new identities and their per-image parameters, written
to identities.h5 (``morph.base.h5io`` layout) with what made them."""
from __future__ import annotations

from pathlib import Path

from morph.base.errors import UserError
from morph.base.files import check_size, output_lock
from morph.model.sample import MAX_IDENTITY


def sample_identities(output: Path, model_spec: str = "default", priors_path: str | None = None, *,
                      n_identities: int, images_per_identity: int, seed: int, first_identity: int = 0) -> Path:
    """Identities ``first_identity .. first_identity + n_identities - 1`` of ``seed`` (shape and
    colour from the model's Gaussian, expression, pose, lighting and camera per image from the
    priors; paper section 4, Data), written atomically to ``output``."""
    from morph.base.h5io import provenance
    from morph.model.identities import write_identities
    from morph.formats.named import load_model
    from morph.model.priors import load_priors
    from morph.model.sample import sample_block

    output = Path(output)
    if not output.resolve().parent.is_dir():
        raise UserError(f"{output}: folder {output.resolve().parent} does not exist; create it first.")
    model = load_model(model_spec)
    priors = load_priors(priors_path)
    n_images = n_identities * images_per_identity
    per_image = 4 * (model.n_expression + 3 + 27 + 1 + 2)  # float32 beta, pose, sh, distance, labels
    per_identity = 4 * (model.n_shape + model.n_texture)
    size = n_images * per_image + n_identities * per_identity
    check_size(output, 3 * size, size, f"{n_identities} identities x {images_per_identity} images",
               "sample fewer per file (--first-identity splits a set into several files).")
    if first_identity + n_identities > MAX_IDENTITY:
        raise UserError(f"identities {first_identity}..{first_identity + n_identities - 1} pass the largest identity "
                        f"number {MAX_IDENTITY}; lower --first-identity.")
    s = sample_block(model, priors, seed, range(first_identity, first_identity + n_identities), images_per_identity)
    with output_lock(output, "identities file"):
        write_identities(output, s, provenance(
            seed=seed, model=str(model_spec), model_name=model.name, model_sources=model.sources,
            priors=priors.text, priors_source=priors.source, n_identities=n_identities,
            images_per_identity=images_per_identity, first_identity=first_identity))
    return output
