"""`morph render`: identities.h5 -> synthetic.h5, in batches, resumable after a kill."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from morph.base.errors import UserError
from morph.base.files import job_key, output_lock
from morph.base.h5io import ImageWriter, completed_output, provenance
from morph.model.identities import read_identities
from morph.base.numerics import check_device, set_threads
from morph.align.template import crop_template
from morph.render.output import check_dims, check_render, crops_of, to_numpy


def render_identities(identities: Path, output: Path, model_spec: str | None = None, size: int | None = None,
                      backend: str = "auto", device: str = "cpu", batch_size: int = 64,
                      threads: int | None = None, progress: bool = True, extra_outputs=(),
                      align_by: str = "projection", template: str | None = None) -> Path:
    """Render every image of ``identities`` into ``output`` at ``size`` px (default: the crop
    template's own size), cropped onto ``template`` (``morph.align.template``) by the projected 5 points
    (``align_by="projection"``) or by a detector run on the render (``"mtcnn"``, ``"ibug68"``:
    ``morph.align.realign``)."""
    from morph.formats.named import load_model
    from morph.render import RenderSettings, render_batch

    set_threads(threads)
    check_device(device)
    tpl = crop_template(template)
    size = size or tpl.size
    s, attrs = read_identities(identities)
    spec = model_spec or str(attrs.get("model", "default"))
    model = load_model(spec)
    check_dims(model, s, identities)
    extra_outputs = tuple(sorted(set(extra_outputs)))
    from morph.align.realign import ALIGNED_BY, UPSCALE, DetectorAlignment
    if align_by not in ALIGNED_BY:
        raise UserError(f"--align-by {align_by}: unknown; choose one of {', '.join(ALIGNED_BY)}.")
    if align_by != "projection" and extra_outputs:
        raise UserError(f"--with {' '.join(extra_outputs)} needs --align-by projection: depth and normals "
                        "are not re-cropped by a detector.")
    key = job_key(s.alpha, s.gamma, s.identity, s.beta, s.pose, s.sh, s.camera_distance, spec, size, backend,
                  extra_outputs, align_by, tpl.name)
    output = Path(output)
    with output_lock(output, "image set"):
        if completed_output(output, key, "image set"):
            if progress:
                print(f"{output}: already complete.")
            return output

        m = len(s.identity)
        first = int(attrs.get("first_identity", 0))
        extra = {"landmarks": ((68, 2), np.float32), "masks": ((size, size), bool),
                 "params/beta": ((s.beta.shape[1],), np.float32), "params/pose": ((3,), np.float32),
                 "params/sh": ((9, 3), np.float32), "params/camera_distance": ((), np.float32),
                 "params/alpha": ((s.alpha.shape[1],), np.float32), "params/gamma": ((s.gamma.shape[1],), np.float32)}
        realign = None
        if align_by != "projection":
            extra["aligned_by"] = ((), np.uint8)
            realign = DetectorAlignment(align_by, size, device, tpl.name)
        if "depth" in extra_outputs:
            extra["depth"] = ((size, size), np.float32)
        if "normals" in extra_outputs:
            extra["normals"] = ((size, size, 3), np.float32)
        keep = {k: attrs[k] for k in ("seed", "model", "model_name", "model_sources", "priors") if k in attrs}
        writer = ImageWriter(output, m, size, provenance(**keep, identities=str(identities), size=size,
                                                         backend=backend, n_images=m, align_by=align_by,
                                                         crop_template=tpl.name),
                             key, extra)
        settings = RenderSettings(image_size=size if realign is None else UPSCALE * size, backend=backend, device=device,
                                  template=tpl.name,
                                  outputs=("image", "mask", "landmarks", *extra_outputs))
        bar = tqdm(total=m, initial=writer.n_done, unit="img", desc="render", disable=not progress)
        try:
            for start in range(writer.n_done, m, batch_size):
                sl = slice(start, min(start + batch_size, m))
                rows = s.identity[sl] - first
                params = {"alpha": s.alpha[rows], "gamma": s.gamma[rows], "beta": s.beta[sl],
                          "pose": s.pose[sl], "sh": s.sh[sl], "camera_distance": s.camera_distance[sl]}
                out = render_batch(model, params, settings)
                check_render(out, sl.start, identities)
                crops = crops_of(out)
                if realign is not None:
                    crops = realign(**crops)
                writer.write(start, {
                    **crops, "labels": s.identity[sl], "index": s.image[sl],
                    **{f"params/{k}": v for k, v in params.items()},
                    **({"depth": to_numpy(out.depth)[:, 0]} if "depth" in extra_outputs else {}),
                    **({"normals": to_numpy(out.normals).transpose(0, 2, 3, 1)} if "normals" in extra_outputs else {})})
                bar.update(sl.stop - sl.start)
            bar.close()
            writer.finish()
        finally:
            bar.close()  # also on failure: an open bar garbles every later message
            writer.close()
        return output
