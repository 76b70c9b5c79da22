"""Benchmark: coefficients -> shaded 108x108 images on 2 CPU threads, our rasterizer vs PyTorch3D's
(and the plain-torch rasterizer, ``backend="torch"``, the fallback for CUDA without PyTorch3D).

Renders a batch of 16 faces of the default model (53,349 vertices, 106,111 triangles) with SH
lighting, end to end (``morph.render.render_batch``: blend, pose, projection, alignment,
normals, shading, rasterization, interpolation), once to compile the numba kernels and then
timed; then the same batch with the plain-torch rasterizer (``morph.render.raster_torch``) in
place of ours; then 2 images of the same batch with PyTorch3D's CPU rasterizer and the same
shading.
The numba kernels are compiled into a fresh cache directory, so ``numba_compile_s`` is the
cost of a first run on a new machine (later runs load them from numba's cache).

Without ``data/default_model.h5`` (or with ``--template TARBALL``) it uses menpo3d's template
head (same mesh) with random bases of the default model's sizes.

The last line printed is one JSON object: cpu_img_per_s (wall clock), torch_backend_img_per_s
(wall clock; with its mask agreement and largest image difference against ours, and the share of
the machine other processes used meanwhile),
pytorch3d_img_per_s, ratio, numba_compile_s, the timings of the CPU engine's parallel regions
(ms per image), and - because a shared machine skews wall-clock rates - the share of CPU time
other processes used during the timing and our images per CPU-second.

    python bench/render.py [--batch 16] [--repeats 5] [--template menpo3d-0.8.6.tar.gz]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="ganfaces-bench-numba-")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numba
import numpy as np
from cpu_load import busy_elsewhere, cpu_jiffies


def template_model(tarball: Path, n_shape=25, n_expression=11, n_texture=10):
    """menpo3d's template head with random unit bases (a stand-in for the default model)."""
    import io
    import tarfile

    import trimesh
    from scipy.spatial import cKDTree

    from morph.model.morphable import MorphableModel, PCAModel

    with tarfile.open(tarball) as tar:
        ply = tar.extractfile("menpo3d-0.8.6/menpo3d/data/template.ply").read()
        ljson = json.loads(tar.extractfile("menpo3d-0.8.6/menpo3d/data/template.ljson").read())
    mesh = trimesh.load(io.BytesIO(ply), file_type="ply", process=False)
    verts = np.asarray(mesh.vertices, np.float32) * 1e-3  # micrometres -> mm
    points = np.asarray(ljson["groups"]["LJSON"]["landmarks"]["points"], np.float32) * 1e-3
    landmarks = cKDTree(verts).query(points)[1]
    rng = np.random.default_rng(0)

    def part(mean, k, std):
        basis = rng.standard_normal((mean.size, k)).astype(np.float32)
        return PCAModel(mean.reshape(-1), basis / np.linalg.norm(basis, axis=0), np.full(k, std, np.float32))

    albedo = np.tile(np.array([0.75, 0.58, 0.5], np.float32), (len(verts), 1))
    return MorphableModel(shape=part(verts, n_shape, 20.0), triangles=np.asarray(mesh.faces),
                          texture=part(albedo, n_texture, 2.0),
                          expression=part(np.zeros_like(verts), n_expression, 10.0),
                          landmarks=landmarks, name="menpo3d template (random bases)")


def load(args):
    if args.template is None and (ROOT / "data" / "default_model.h5").exists():
        from morph.formats.named import load_model
        return load_model("default")
    tarball = Path(args.template or "/tmp/menpo/menpo3d-0.8.6.tar.gz")
    return template_model(tarball)


def sample_params(model, n, seed=0):
    rng = np.random.default_rng(seed)
    sh = np.zeros((n, 9, 3), np.float32)
    sh[:, 0] = 1.0 + 0.2 * rng.standard_normal((n, 1))
    sh[:, 1:4] = 0.3 * rng.standard_normal((n, 3, 1))
    return {"alpha": rng.standard_normal((n, model.n_shape)).astype(np.float32),
            "beta": 0.7 * rng.standard_normal((n, model.n_expression)).astype(np.float32),
            "gamma": rng.standard_normal((n, model.n_texture)).astype(np.float32),
            "pose": (rng.standard_normal((n, 3)) * [10, 25, 6]).clip(-60, 60).astype(np.float32),
            "camera_distance": rng.uniform(500, 1200, n).astype(np.float32), "sh": sh}


def stage_times(model, params, repeats):
    """Seconds per batch of the CPU engine's parallel regions, called as render_batch calls them."""
    from morph.render import camera, cpu, shading
    from morph.render.raster_cpu import pixel_centres_ndc, pixel_stage
    from morph.render.prepared import check_params, prepare_model
    from morph.align.template import five_point_template

    prep = prepare_model(model)
    p = check_params(model, prep, params)
    b, n = p.n, prep.n_vertices
    shape, albedo = np.empty((b, 3 * n), np.float32), np.empty((b, 3 * n), np.float32)
    groups = prep.five_groups
    index = np.concatenate(groups).astype(np.int64)
    start = np.cumsum([0] + [len(g) for g in groups]).astype(np.int64)
    pix, ndc = np.empty((b, n, 2), np.float32), np.empty((b, n, 3), np.float32)
    normals, colors = np.empty((b, n, 3), np.float32), np.empty((b, n, 3), np.float32)
    xs, ys = pixel_centres_ndc(108, 108)
    mask, depth = np.empty((b, 1, 108, 108), bool), np.empty((b, 1, 108, 108), np.float32)
    image, no_normals = np.empty((b, 3, 108, 108), np.float32), np.empty((0, 3, 108, 108), np.float32)
    rot = camera.compute_rotation(p.pose)
    stages = {
        "blend_shape": lambda: cpu.blend(prep.shape_mean, prep.shape_basis_t, p.shape_coeffs, shape),
        "blend_albedo": lambda: cpu.blend(prep.tex_mean, prep.tex_basis_t, p.tex_coeffs, albedo),
        "vertex_stage": lambda: cpu.vertex_stage(
            shape.reshape(b, n, 3), rot, p.distance, np.float32(500), np.float32(54), np.float32(54), True,
            index, start, five_point_template(108), 108, 108, prep.triangles, True,
            albedo.reshape(b, n, 3), p.sh, shading.SH_BASIS_SCALE, pix, ndc, normals, colors),
        "pixel_stage": lambda: pixel_stage(ndc, prep.triangles, xs, ys, 108.0, True, colors,
                                           np.zeros(3, np.float32), normals, mask, depth, image, no_normals),
    }
    out = {}
    for name, fn in stages.items():
        fn()
        t = time.perf_counter()
        for _ in range(repeats):
            fn()
        out[name] = (time.perf_counter() - t) / repeats
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="torch and numba threads (default 2)")
    ap.add_argument("--template", help="menpo3d-0.8.6 sdist tarball: bench its template with random bases")
    args = ap.parse_args()
    from morph.base.numerics import set_threads
    from morph.render import RenderSettings, render_batch

    set_threads(args.threads)

    model = load(args)
    print(f"model {model.name}: {model.n_vertices} vertices, {len(model.triangles)} triangles, "
          f"{model.n_shape}+{model.n_expression}+{model.n_texture} components", flush=True)
    params = sample_params(model, args.batch)
    ours = RenderSettings(image_size=108, backend="cpu")

    t = time.perf_counter()
    render_batch(model, params, ours)
    first = time.perf_counter() - t
    before = cpu_jiffies()
    t = time.perf_counter()
    for _ in range(args.repeats):
        render_batch(model, params, ours)
    per_batch = (time.perf_counter() - t) / args.repeats
    after = cpu_jiffies()
    others = busy_elsewhere(before, after)
    own_cpu_s = (after[2] - before[2]) / os.sysconf("SC_CLK_TCK")
    per_cpu_s = args.batch * args.repeats / own_cpu_s if own_cpu_s > 0 else float("nan")
    compile_s = first - per_batch
    cpu_rate = args.batch / per_batch
    print(f"ours: first call {first:.2f} s (numba compile), then {per_batch * 1e3:.1f} ms per batch of "
          f"{args.batch} = {cpu_rate:.0f} images/s (numba threading layer {numba.threading_layer()}; "
          f"other processes used {others:.0%} of the machine meanwhile; {per_cpu_s:.0f} images per "
          f"CPU-second of this process)", flush=True)

    plain = RenderSettings(image_size=108, backend="torch")
    mine = render_batch(model, params, ours)
    theirs_t = render_batch(model, params, plain)
    before = cpu_jiffies()
    t = time.perf_counter()
    for _ in range(args.repeats):
        render_batch(model, params, plain)
    torch_rate = args.batch * args.repeats / (time.perf_counter() - t)
    torch_others = busy_elsewhere(before, cpu_jiffies())
    torch_same = (theirs_t.mask == mine.mask).float().mean().item()
    torch_diff = (theirs_t.image - mine.image).abs().max().item()
    print(f"torch backend: {torch_rate:.1f} images/s (other processes used {torch_others:.0%} of the machine); "
          f"masks agree with ours on {torch_same:.4%} of pixels, images differ by at most {torch_diff:.2g}", flush=True)

    stages = stage_times(model, params, args.repeats)
    print("stages (ms per image): " + ", ".join(f"{k} {v / args.batch * 1e3:.2f}" for k, v in stages.items()),
          flush=True)

    two = {k: v[:2] for k, v in params.items()}
    theirs = RenderSettings(image_size=108, backend="pytorch3d")
    print("PyTorch3D's CPU rasterizer on 2 images ...", flush=True)
    render_batch(model, two, RenderSettings(image_size=4, backend="pytorch3d", align=False))  # compile our shading
    t = time.perf_counter()
    ref = render_batch(model, two, theirs)
    p3d_s = time.perf_counter() - t
    p3d_rate = 2 / p3d_s
    mine = render_batch(model, two, ours)
    same = (ref.mask == mine.mask).float().mean().item()
    print(f"pytorch3d: {p3d_s:.1f} s for 2 images = {p3d_rate:.3f} images/s; masks agree on {same:.4%} of pixels",
          flush=True)
    print(json.dumps({
        "cpu_img_per_s": round(cpu_rate, 1), "torch_backend_img_per_s": round(torch_rate, 1),
        "torch_backend_mask_agreement": round(torch_same, 6), "torch_backend_image_max_diff": torch_diff,
        "torch_backend_cpu_used_by_other_processes": round(torch_others, 3),
        "pytorch3d_img_per_s": round(p3d_rate, 4),
        "ratio": round(cpu_rate / p3d_rate, 1), "numba_compile_s": round(compile_s, 2),
        "batch": args.batch, "threads": args.threads, "image_size": 108, "model": model.name,
        "n_vertices": model.n_vertices, "n_triangles": len(model.triangles),
        "stage_ms_per_image": {k: round(v / args.batch * 1e3, 3) for k, v in stages.items()},
        "mask_agreement_with_pytorch3d": round(same, 6), "numba_threading_layer": numba.threading_layer(),
        "cpu_used_by_other_processes": round(others, 3), "cpu_img_per_cpu_s": round(per_cpu_s, 1)}))


if __name__ == "__main__":
    main()
