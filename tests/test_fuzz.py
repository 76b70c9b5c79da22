"""Every command driven with generated bad input: wrong types, NaN/Inf, out-of-range numbers,
truncated, foreign and mismatched files. None may end in a traceback or Python's uncaught-error
exit (1), and none may exit 0 with a blank or non-finite output; each refusal is one line.

The cases are generated per command from a few kinds of fault (numbers outside their range or
not numbers, missing / foreign / truncated / wrong-layout files, bad config and priors values)
crossed with the options and inputs each command takes; the count is printed.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from cli.morph import main as morph
from cli.refine import main as refine
from conftest import TESTDATA

BAD_INTS = ["-1", "0", "abc", "1.5", str(2 ** 64), "nan"]
BAD_FLOATS = ["-1", "abc", "nan", "inf", "-inf", "1e400"]


@pytest.fixture(scope="module")
def inputs(sets, tmp_path_factory):
    """Good inputs to mutate, and bad files of every kind."""
    d = tmp_path_factory.mktemp("fuzz")
    (d / "text.h5").write_text("not an hdf5 file")
    data = (sets / "synthetic.h5").read_bytes()
    (d / "truncated.h5").write_bytes(data[:len(data) // 3])
    (d / "folder").mkdir()
    with h5py.File(sets / "synthetic.h5", "r") as f:
        images, labels = f["images"][()], f["labels"][()]

    def h5(name, complete=True, **arrays):
        with h5py.File(d / name, "w") as f:
            for k, v in arrays.items():
                f[k] = v
            if complete:
                f.attrs["complete"] = True
        return d / name

    bad_sets = {
        "empty": h5("empty.h5"),
        "float_images": h5("float.h5", images=images.astype(np.float32) / 255, labels=labels),
        "uint16_images": h5("uint16.h5", images=images.astype(np.uint16) * 257, labels=labels),
        "rank3_images": h5("rank3.h5", images=images[..., 0], labels=labels),
        "short_labels": h5("short.h5", images=images, labels=labels[:3]),
        "float_labels": h5("flabels.h5", images=images, labels=labels.astype(np.float64) + 0.5),
        "2d_labels": h5("2dlabels.h5", images=images, labels=labels[:, None]),
        "one_identity": h5("one.h5", images=images, labels=np.zeros_like(labels)),
        "incomplete": h5("incomplete.h5", complete=False, images=images, labels=labels),
        "no_images": h5("noimages.h5", images=images[:0], labels=labels[:0]),
    }
    with h5py.File(sets / "ids.h5", "r") as f:
        ids = {k: f[k][()] for k in ("identity/alpha", "identity/gamma", "image/identity", "image/index",
                                      "image/beta", "image/pose", "image/sh", "image/camera_distance")}
        attrs = dict(f.attrs)

    def identities(name, **change):
        with h5py.File(d / name, "w") as f:
            for k, v in {**ids, **change}.items():
                f[k] = v
            for k, v in attrs.items():
                f.attrs[k] = v
        return d / name

    a = ids["identity/alpha"].copy()
    a[0, 0] = np.nan
    bad_ids = {
        "nan_alpha": identities("nan.h5", **{"identity/alpha": a}),
        "inf_pose": identities("inf.h5", **{"image/pose": np.full_like(ids["image/pose"], np.inf)}),
        "behind_camera": identities("behind.h5", **{"image/camera_distance": -ids["image/camera_distance"]}),
        "short_beta": identities("short_beta.h5", **{"image/beta": ids["image/beta"][:2]}),
        "float_identity": identities("fid.h5", **{"image/identity": ids["image/identity"] + 0.5}),
        "wrong_dims": identities("dims.h5", **{"identity/alpha": ids["identity/alpha"][:, :3]}),
    }
    base = yaml.safe_load((Path(__file__).resolve().parents[1] / "data" / "priors_default.yaml").read_text())

    def priors(name, group, **change):
        doc = json.loads(json.dumps(base))
        doc[group] = {**doc[group], **change}
        (d / name).write_text(yaml.safe_dump(doc))
        return d / name

    bad_priors = {
        "camera_negative": priors("p1.yaml", "camera_distance", mean=[-800], low=None),
        "camera_huge": priors("p2.yaml", "camera_distance", mean=[1e12]),
        "std_scale_huge": priors("p3.yaml", "shape", std_scale=1e200),
        "cov_string": priors("p4.yaml", "pose", std=None, cov="abc"),
        "mean_nan": priors("p5.yaml", "pose", mean=[float("nan"), 0, 0]),
        "std_string": priors("p6.yaml", "pose", std=["a", 1, 1]),
    }
    for p in bad_priors.values():  # yaml keys set to None: drop them
        doc = yaml.safe_load(p.read_text())
        doc = {g: ({k: v for k, v in spec.items() if v is not None} if isinstance(spec, dict) else spec)
               for g, spec in doc.items()}
        p.write_text(yaml.safe_dump(doc))
    (d / "broken.yaml").write_text("shape: [unclosed")
    bad_configs = {}
    for key, value in (("g_width", 0), ("norm", "weird"), ("lr", "abc"), ("ema_decay", 2), ("gamma", math.inf),
                       ("lambda_cyc", -1), ("steps", 0), ("batch_size", "x"), ("seed", -1), ("betas", [2, 3]),
                       ("image_size", 8), ("amp", "yes"), ("device", "tpu"), ("crop_template", "vgg"),
                       ("nonsense", 1), ("warmup_steps", -5), ("lambda_k", math.nan)):
        (d / f"cfg_{key}.yaml").write_text(yaml.safe_dump({key: value}))
        bad_configs[key] = d / f"cfg_{key}.yaml"
    ckpt = None
    return {"d": d, "sets": sets, "bad_sets": bad_sets, "bad_ids": bad_ids, "bad_priors": bad_priors,
            "bad_configs": bad_configs, "ckpt": ckpt}


def trained_checkpoint(inputs) -> Path:
    if inputs["ckpt"] is None:
        s, d = inputs["sets"], inputs["d"]
        res = CliRunner().invoke(refine, ["train", "--synthetic", str(s / "synthetic.h5"), "--real", str(s / "real.h5"),
                                          "--variant", "no_pairs", "--out", str(d / "run"), "--steps", "1",
                                          "--batch-size", "2", "--config", str(s / "small.yaml")])
        assert res.exit_code == 0, res.output
        inputs["ckpt"] = d / "run" / "checkpoints" / "step_00000001.pt"
    return inputs["ckpt"]


def bad_checkpoints(inputs) -> dict[str, Path]:
    good = torch.load(trained_checkpoint(inputs), weights_only=True)
    d = inputs["d"]
    out = {}
    for name, change in (("config_list", {"config": [1, 2]}), ("nets_string", {"nets": "x"}),
                         ("ema_missing", {"nets": {k: v for k, v in good["nets"].items() if k != "ema"}}),
                         ("bad_width", {"config": {**good["config"], "g_width": -3}}),
                         ("wrong_shapes", {"config": {**good["config"], "g_width": 16}})):
        torch.save({**good, **change}, d / f"{name}.pt")
        out[name] = d / f"{name}.pt"
    (d / "junk.pt").write_bytes(b"PK\x03\x04 not a zip")
    out["junk"] = d / "junk.pt"
    return out


def cases(inputs) -> list[tuple[str, object, list]]:
    """(name, command group, arguments) for every generated case."""
    s, d = inputs["sets"], inputs["d"]
    out = []
    o = d / "out"

    def add(name, group, *args):
        out.append((name, group, [str(a) for a in args]))

    sample = ["sample-identities", "--n-identities", 2, "--images-per-identity", 2, "-o", o / "ids.h5"]
    for opt in ("--n-identities", "--images-per-identity", "--seed", "--first-identity"):
        for v in BAD_INTS + ([str(10 ** 12)] if "identit" in opt else []):
            add(f"sample {opt} {v}", morph, *_set(sample, opt, v))
    for name, p in inputs["bad_priors"].items():
        add(f"sample priors {name}", morph, *sample, "--priors", p)
    for bad in ("missing.mat", d / "text.h5", d / "folder", d / "broken.yaml"):
        add(f"sample model {bad}", morph, *_set(sample, "-o", o / "m.h5"), "--model", bad)
    add("sample huge", morph, *_set(_set(sample, "--n-identities", "1000000000"), "--images-per-identity", "1000000"))
    add("sample into a folder", morph, *_set(sample, "-o", d / "folder"))
    add("sample into a missing folder", morph, *_set(sample, "-o", d / "nowhere" / "ids.h5"))

    render = ["render", s / "ids.h5", "-o", o / "r.h5"]
    for opt, values in (("--size", BAD_INTS + ["15", "5000"]), ("--batch-size", BAD_INTS), ("--threads", BAD_INTS),
                        ("--backend", ["bogus"]), ("--device", ["tpu", "cuda:7", "cuda"]),
                        ("--template", ["vgg"]), ("--align-by", ["eyes"])):
        for v in values:
            if opt == "--device" and v.startswith("cuda") and torch.cuda.is_available():
                continue
            add(f"render {opt} {v}", morph, *render, opt, v)
    for name, p in {**inputs["bad_ids"], "text": d / "text.h5", "truncated": d / "truncated.h5",
                    "missing": d / "missing.h5", "folder": d / "folder", "an image set": s / "synthetic.h5"}.items():
        add(f"render identities {name}", morph, *_set(render, 1, p))

    align = ["align", TESTDATA / "real", "-o", o / "a.h5"]
    for opt, values in (("--size", BAD_INTS), ("--batch-size", BAD_INTS), ("--min-face-size", BAD_FLOATS + ["0"]),
                        ("--device", ["tpu"]), ("--template", ["vgg"]), ("--landmarks", ["99"])):
        for v in values:
            add(f"align {opt} {v}", morph, *align, opt, v)
    add("align thresholds", morph, *align, "--thresholds", "2", "nan", "x")
    for name, p in (("missing", d / "nowhere"), ("a file", d / "text.h5"), ("empty", d / "folder"),
                    ("no faces", TESTDATA / "nonface")):
        add(f"align photos {name}", morph, *_set(align, 1, p))
    latin1 = d / "latin1"  # a Latin-1 file name beside a good one (archives made on other systems)
    latin1.mkdir(exist_ok=True)
    shutil.copy(TESTDATA / "real" / "takeo.ppm", latin1 / "ok.ppm")
    shutil.copy(TESTDATA / "real" / "takeo.ppm", os.fsdecode(os.fsencode(latin1) + b"/caf\xe9.ppm"))
    add("align photos with a name that is not UTF-8", morph, *_set(align, 1, latin1))
    fit = ["fit", TESTDATA / "real", "-o", o / "f.h5"]
    for name, p in (("missing", d / "nowhere"), ("a file", d / "text.h5"), ("no faces", TESTDATA / "nonface")):
        add(f"fit photos {name}", morph, *_set(fit, 1, p))
    for bad in ("missing.mat", d / "text.h5", d / "broken.yaml"):
        add(f"fit model {bad}", morph, *fit, "--model", bad)
    for name, pr in inputs["bad_priors"].items():
        add(f"fit priors {name}", morph, *fit, "--priors", pr)

    for name, p in (("missing", d / "nowhere"), ("empty", d / "folder"), ("a file", d / "text.h5")):
        add(f"render-pairs {name}", morph, "render-pairs", p, "-o", o / "p.h5", "--model", "default")
    add("render-pairs size", morph, "render-pairs", s / "ann", "-o", o / "p.h5", "--model", "default", "--size", "0")
    add("render-pairs error", morph, "render-pairs", s / "ann", "-o", o / "p.h5", "--model", "default",
        "--max-landmark-error", "-1")
    add("mesh image", morph, "mesh", s / "ids.h5", "--image", "1000000000", "-o", o / "m.ply")
    add("mesh type", morph, "mesh", s / "ids.h5", "-o", o / "m.txt")
    add("mesh nan", morph, "mesh", inputs["bad_ids"]["nan_alpha"], "-o", o / "m.ply")
    add("preview type", morph, "preview", s / "synthetic.h5", "-o", o / "p.txt")
    add("preview rows", morph, "preview", s / "synthetic.h5", "-o", o / "p.png", "--identities", "0")
    add("preview text", morph, "preview", d / "text.h5", "-o", o / "p.png")
    add("fit-priors empty", morph, "fit-priors", d / "folder", "-o", o / "f.yaml")
    add("fit-priors missing", morph, "fit-priors", d / "nowhere", "-o", o / "f.yaml")

    train = ["train", "--synthetic", s / "synthetic.h5", "--real", s / "real.h5", "--variant", "no_pairs",
             "--out", o / "run", "--steps", 2, "--batch-size", 2, "--config", s / "small.yaml"]
    for opt, values in (("--steps", BAD_INTS), ("--batch-size", BAD_INTS), ("--lr", BAD_FLOATS + ["0"]),
                        ("--seed", BAD_INTS[:1] + [str(2 ** 40)]), ("--device", ["tpu", "cuda:7"]),
                        ("--variant", ["best"]), ("--threads", BAD_INTS)):
        for v in values:
            add(f"train {opt} {v}", refine, *_set(train, opt, v))
    for name, p in inputs["bad_configs"].items():
        add(f"train config {name}", refine, *_set(train, "--config", p))
    for name, p in {**inputs["bad_sets"], "text": d / "text.h5", "truncated": d / "truncated.h5"}.items():
        add(f"train synthetic {name}", refine, *_set(train, "--synthetic", p))
        if name != "one_identity":
            add(f"train real {name}", refine, *_set(train, "--real", p))

    export = ["export-dataset", "--checkpoint", trained_checkpoint(inputs), "--n-identities", 2,
              "--images-per-identity", 2, "--seed", 9, "--out", o / "export"]
    for opt, values in (("--n-identities", BAD_INTS + [str(10 ** 12)]), ("--images-per-identity", BAD_INTS),
                        ("--seed", BAD_INTS), ("--first-identity", ["-1", str(2 ** 63)]),
                        ("--quality", ["0", "101", "x"]), ("--batch-size", BAD_INTS), ("--format", ["tiff"]),
                        ("--device", ["tpu"]), ("--max-dr-error", BAD_FLOATS), ("--max-retries", ["-1", "x"]),
                        ("--leak-threshold", BAD_FLOATS + ["3"])):
        for v in values:
            add(f"export {opt} {v}", refine, *_set(export, opt, v))
    for name, p in {**bad_checkpoints(inputs), "missing": d / "nowhere.pt", "text": d / "text.h5"}.items():
        add(f"export checkpoint {name}", refine, *_set(export, "--checkpoint", p))
    add("export priors", refine, *export, "--priors", inputs["bad_priors"]["camera_negative"])
    for name, p in {**inputs["bad_sets"], "text": d / "text.h5", "missing": d / "nowhere.h5"}.items():
        if name not in ("one_identity", "float_labels"):  # (valid references: labels are optional, any values)
            add(f"export reference {name}", refine, *export, "--reference", p)
    add("export into a file", refine, *_set(export, "--out", d / "text.h5"))

    evaluate = ["evaluate", s / "synthetic.h5", "-o", o / "report"]
    for opt, values in (("--pairs", BAD_INTS), ("--seed", BAD_INTS[:1]), ("--max-images", ["1", "x"]),
                        ("--min-face-size", BAD_FLOATS + ["0"]), ("--batch-size", BAD_INTS), ("--device", ["tpu"]),
                        ("--kind", ["fake"])):
        for v in values:
            add(f"evaluate {opt} {v}", refine, *evaluate, opt, v)
    for name, p in {**inputs["bad_sets"], "text": d / "text.h5", "missing": d / "nowhere.h5"}.items():
        add(f"evaluate set {name}", refine, *_set(evaluate, 1, p))
        add(f"evaluate against {name}", refine, *evaluate, "--against", p)
    add("evaluate into a missing folder", refine, *_set(evaluate, "-o", d / "nowhere" / "r"))
    verify = ["verify", "--set", s / "synthetic.h5", "--pairs", 10, "--folds", 2, "-o", o / "v"]
    for opt, values in (("--folds", ["1", "x", "101", "nan"]), ("--pairs", BAD_INTS[:5]), ("--batch-size", BAD_INTS),
                        ("--device", ["tpu"]), ("--template", ["vgg"]), ("--seed", BAD_INTS[:1])):
        for v in values:
            add(f"verify {opt} {v}", refine, *_set(verify, opt, v))
    for name, p in {**inputs["bad_sets"], "text": d / "text.h5", "missing": d / "nowhere.h5"}.items():
        add(f"verify set {name}", refine, *_set(verify, "--set", p))
    for name, p in (("text", d / "text.h5"), ("truncated", d / "truncated.h5"), ("missing", d / "nowhere.bin"),
                    ("folder", d / "folder")):
        add(f"verify bin {name}", refine, "verify", "--bin", p, "-o", o / "v")
        add(f"verify lfw pairs {name}", refine, "verify", "--lfw-pairs", p, "--images", d / "folder", "-o", o / "v")
    add("verify lfw without images", refine, "verify", "--lfw-pairs", d / "text.h5", "-o", o / "v")
    add("verify two sources", refine, *verify, "--bin", d / "text.h5")
    for name, text in (("missing", None), ("broken", "out: [x"), ("unknown key", "bogus: 1\n"),
                       ("not a mapping", "[1, 2]\n")):
        p = d / f"pipe_{name.replace(' ', '_')}.yaml"
        if text is not None:
            p.write_text(text)
        add(f"pipeline {name}", refine, "pipeline", "--config", p)
    return out


def _set(args: list, key, value) -> list:
    """``args`` with the value after option ``key`` (or at position ``key``) replaced; an option
    not yet given is appended."""
    args = list(args)
    if not isinstance(key, int) and key not in args:
        return [*args, key, value]
    i = key if isinstance(key, int) else args.index(key) + 1
    args[i] = value
    return args


def test_every_command_refuses_bad_input_in_one_line(inputs, capsys):
    failures, n = [], 0
    for name, group, args in cases(inputs):
        n += 1
        res = CliRunner().invoke(group, args)
        text = res.output
        if res.exit_code == 1 or (res.exception is not None and not isinstance(res.exception, SystemExit)):
            failures.append(f"{name}: uncaught {type(res.exception).__name__}: {res.exception}")
        elif "Traceback" in text:
            failures.append(f"{name}: traceback in the output")
        elif res.exit_code == 0:
            blank = _blank_output(args)
            if blank:
                failures.append(f"{name}: exit 0 with {blank}")
        else:
            lines = [ln for ln in text.splitlines() if ln.startswith("Error")]
            if len(lines) != 1:
                failures.append(f"{name}: exit {res.exit_code} without one error line: {text[-300:]!r}")
    with capsys.disabled():
        print(f"\nfuzzing: {n} generated bad-input cases over every command")
    assert n >= 200
    assert not failures, "\n".join(failures)


def _blank_output(args: list[str]) -> str | None:
    """What is wrong with the output an exit-0 run wrote (None: nothing)."""
    out = next((Path(args[i + 1]) for i, a in enumerate(args) if a in ("-o", "--out")), None)
    if out is None or not out.exists() or out.suffix != ".h5":
        return None
    with h5py.File(out, "r") as f:
        if "images" not in f:
            return None
        images = f["images"][()]
    if not len(images) or images.reshape(len(images), -1).std(1).min() == 0:
        return f"a blank image in {out}"
    return None
