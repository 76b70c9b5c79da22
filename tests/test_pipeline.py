"""refine pipeline end to end on CPU: sample -> render -> align -> (fit) -> render-pairs -> train ->
export (both formats) -> evaluate from one YAML; a re-run skips every stage and changes nothing;
with ``pairs: {fit: true}`` the full method runs from a folder of photos alone."""
import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.refine import main as refine

TESTDATA = Path(__file__).resolve().parents[2] / "shared" / "testdata"


def run(*args):
    return CliRunner().invoke(refine, [str(a) for a in args])


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from test_pairs import write_default_sample

    from morph.formats.named import load_model

    d = tmp_path_factory.mktemp("pipeline")
    (d / "ann").mkdir()
    model = load_model("default")
    for i in range(4):
        write_default_sample(d / "ann", f"p{i}", model, seed=i, yaw_deg=-30 + 20 * i)
    (d / "pipeline.yaml").write_text(f"""
out: out                      # relative: resolved against this file's folder
model: default
sample: {{n_identities: 6, images_per_identity: 4, seed: 0}}
real: {{photos: {TESTDATA / "real"}, all_faces: true}}
pairs: {{annotated: ann, model: default}}
train: {{steps: 30, batch_size: 2, g_width: 8, d_hidden: 16, checkpoint_every: 10, grid_every: 100}}
export: {{n_identities: 5, images_per_identity: 4, seed: 7, format: [imagefolder, hdf5]}}
evaluate: {{pairs: 50, against: real}}
""")
    first = run("pipeline", "--config", d / "pipeline.yaml", "--quiet")
    assert first.exit_code == 0, first.output
    return d, first.output


def test_every_stage_runs_and_writes_its_output(pipeline):
    d, output = pipeline
    out = d / "out"
    for i, stage in enumerate(("sample", "render", "align", "fit", "render-pairs", "train", "export", "evaluate")):
        line = next(l for l in output.splitlines() if l.startswith(f"[{i + 1}/8] {stage}:"))
        assert "already complete" not in line and ("(skipped)" in line) == (stage == "fit"), line
    for name in ("identities.h5", "synthetic.h5", "real.h5", "pairs.h5", "report.json", "report.png"):
        assert (out / name).is_file(), name
    assert (out / "run" / "checkpoints" / "step_00000030.pt").is_file()
    assert (out / "export" / "hdf5" / "ganfaces.h5").is_file()


def test_export_loads_and_report_has_auc_eer(pipeline):
    from torchvision.datasets import ImageFolder

    out = pipeline[0] / "out"
    ds = ImageFolder(str(out / "export" / "imagefolder"))
    assert len(ds.classes) == 5 and len(ds) == 20
    with open(out / "export" / "imagefolder" / "scores.csv") as f:
        assert len(list(csv.DictReader(f))) == 20
    report = json.loads((out / "report.json").read_text())
    assert 0.0 <= report["auc"] <= 1.0 and 0.0 <= report["eer"] <= 1.0
    assert report["against"]  # compared with real.h5


def test_rerun_skips_every_stage_and_changes_nothing(pipeline):
    d, _ = pipeline
    out = d / "out"
    before = {p: p.stat().st_mtime_ns for p in sorted(out.rglob("*")) if p.is_file()}
    again = run("pipeline", "--config", d / "pipeline.yaml", "--quiet")
    assert again.exit_code == 0, again.output
    headers = [l for l in again.output.splitlines() if l.startswith("[")]
    assert len(headers) == 8
    assert all(l.endswith("(already complete)") or l.startswith("[4/8] fit:") for l in headers), again.output
    after = {p: p.stat().st_mtime_ns for p in sorted(out.rglob("*")) if p.is_file()}
    assert after == before


def test_unknown_key_is_one_clear_error(tmp_path):
    (tmp_path / "p.yaml").write_text("out: o\nsample: {n_identities: 1, images_per_identity: 1, sede: 3}\n")
    res = run("pipeline", "--config", tmp_path / "p.yaml")
    assert res.exit_code == 2
    assert "unknown key sede in 'sample'" in res.output and "allowed: n_identities" in res.output
    (tmp_path / "q.yaml").write_text("out: o\nsteps: 3\n")
    res = run("pipeline", "--config", tmp_path / "q.yaml")
    assert res.exit_code == 2 and "unknown key steps in 'the top level'" in res.output


def test_the_full_method_runs_from_a_folder_of_photos(tmp_path):
    """``pairs: {fit: true}``: the model is fitted to the photos (fits.h5), each aligned photo is
    paired with the render of its fit (pairs.h5), and variant ``ours`` trains on them. Mutants
    caught: the fit stage skipped (no fits.h5; train refuses the missing pairs), pairs rendered
    from something other than the fits (their photos differ from the fits' aligned faces)."""
    import h5py
    import numpy as np

    (tmp_path / "p.yaml").write_text(f"""
out: out
sample: {{n_identities: 4, images_per_identity: 4, seed: 0}}
real: {{photos: {TESTDATA / "real"}}}
pairs: {{fit: true}}
train: {{steps: 4, batch_size: 2, g_width: 4, d_hidden: 4, variant: ours, checkpoint_every: 4, grid_every: 100}}
export: {{n_identities: 2, images_per_identity: 2, seed: 7, format: hdf5}}
evaluate: false
""")
    res = run("pipeline", "--config", tmp_path / "p.yaml", "--quiet")
    assert res.exit_code == 0, res.output
    assert next(l for l in res.output.splitlines() if l.startswith("[4/8] fit:")).endswith("fits.h5")
    out = tmp_path / "out"
    with h5py.File(out / "fits.h5", "r") as f, h5py.File(out / "pairs.h5", "r") as g:
        assert len(g["real"]) == len(f["images"]) > 0
        np.testing.assert_array_equal(g["real"][()], f["images"][()])
    assert (out / "run" / "checkpoints" / "step_00000004.pt").is_file()
    (tmp_path / "q.yaml").write_text((tmp_path / "p.yaml").read_text().replace(
        f"real: {{photos: {TESTDATA / 'real'}}}", f"real: {{h5: {out / 'fits.h5'}}}"))
    res = run("pipeline", "--config", tmp_path / "q.yaml")
    assert res.exit_code == 2 and "give real: photos" in res.output
