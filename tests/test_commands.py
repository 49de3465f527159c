"""`ganlab-sample` and `ganlab-eval` on real (tiny) runs, through their command functions and one real subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import compose_config, dataset_overrides
from omegaconf import OmegaConf
from PIL import Image

from ganlab.cli import eval_command, sample_command
from ganlab.config import CONF_DIR
from ganlab.errors import CheckpointError, ConfigError
from ganlab.sweep import command_folder, job_name
from ganlab.train import train

QUICK = ["train.steps=3", "train.batch_size=8", "log.progress=false", "device=cpu", "device.threads=1",
         "eval.num_samples=32", "model.hidden=16"]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_root):
    run_dir = tmp_path_factory.mktemp("runs") / "mnist"
    # no EMA ramp-up: over 3 steps it keeps the EMA so close to G that their uint8 samples can be equal
    ema = ["train.ema_decay=0.5", "train.ema_rampup=0"]
    train(compose_config(QUICK + dataset_overrides("mnist", data_root) + ema), run_dir)
    return run_dir


def test_sample_writes_uint8_images_and_a_grid(run_dir, tmp_path, capsys):
    out = tmp_path / "samples.npz"
    sample_command([str(run_dir), "n=50", f"out={out}"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["weights"] == "ema" and printed["shape"] == [50, 1, 28, 28]
    with np.load(out) as data:
        assert data["images"].dtype == np.uint8 and data["images"].shape == (50, 1, 28, 28)
        assert str(data["weights"]) == "ema"
    assert (tmp_path / "samples.png").exists()


def test_npz_and_png_samples_are_what_other_evaluators_read_and_score_alike(run_dir, tmp_path, capsys, data_root):
    """format=npz adds arr_0 (uint8 NHWC) and arr_1 (labels); format=png writes one PNG per sample; a foreign
    arr_0/arr_1 file (guided-diffusion's layout) is read too; ganlab-eval gives all three the same FID."""
    npz, pngs, foreign = tmp_path / "samples.npz", tmp_path / "pngs", tmp_path / "foreign.npz"
    sample_command([str(run_dir), "n=24", f"out={npz}", "weights=raw"])
    sample_command([str(run_dir), "n=24", "format=png", f"out={pngs}", "weights=raw"])
    printed = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert printed["shape"] == [24, 1, 28, 28] and printed["grid"] == str(tmp_path / "pngs.png")
    with np.load(npz) as data:
        assert data["arr_0"].dtype == np.uint8 and data["arr_0"].shape == (24, 28, 28, 1)
        assert np.array_equal(data["arr_0"], data["images"].transpose(0, 2, 3, 1))
        assert np.array_equal(data["arr_1"], np.full(24, -1))  # unconditional: no class asked
        np.savez(foreign, data["arr_0"], data["arr_1"])  # numpy's own names: arr_0, arr_1
    files = sorted(pngs.iterdir())
    assert [file.name for file in files] == [f"{i:06d}.png" for i in range(24)]
    with np.load(npz) as data, Image.open(files[5]) as image:
        assert np.array_equal(np.asarray(image), data["images"][5, 0])
    scores = {}
    for path in (npz, pngs, foreign):
        eval_command([str(path), "dataset=mnist", f"dataset.root={data_root}"])
        scores[path.name] = json.loads(capsys.readouterr().out)
        assert scores[path.name].pop("protocol")["samples"] == 24
    assert scores["pngs"]["fid"] == pytest.approx(scores["samples.npz"]["fid"], rel=1e-6)
    assert scores["foreign.npz"] == pytest.approx(scores["samples.npz"], rel=1e-5)
    with pytest.raises(ConfigError, match=r"out=.*pngs already exists and is not an empty folder: pass a new folder"):
        sample_command([str(run_dir), "n=4", "format=png", f"out={pngs}"])
    with pytest.raises(ConfigError, match=r"format=gif is not allowed: use one of \['npz', 'png'\]"):
        sample_command([str(run_dir), "format=gif"])


def test_raw_and_ema_samples_differ(run_dir, tmp_path, capsys):
    sample_command([str(run_dir), "n=20", f"out={tmp_path / 'raw.npz'}", "weights=raw"])
    sample_command([str(run_dir), "n=20", f"out={tmp_path / 'ema.npz'}", "weights=ema"])
    with np.load(tmp_path / "raw.npz") as raw, np.load(tmp_path / "ema.npz") as ema:
        assert not np.array_equal(raw["images"], ema["images"])


def test_eval_scores_a_run_and_a_sample_file(run_dir, tmp_path, capsys):
    eval_command([str(run_dir), "n=40"])
    scores = json.loads(capsys.readouterr().out)
    assert {"fid", "kid_mean", "coverage", "kl_uniform", "confidence", "fid_ema", "coverage_ema"} <= set(scores)
    assert {"precision", "recall", "density", "prdc_coverage", "precision_ema", "recall_ema"} <= set(scores)
    out = tmp_path / "samples.npz"
    sample_command([str(run_dir), "n=40", f"out={out}", "weights=raw"])
    capsys.readouterr()
    eval_command([str(out)])
    from_file = json.loads(capsys.readouterr().out)
    assert scores.pop("checkpoint") == "best" and scores.pop("step") in (1, 2, 3)  # the run's best evaluation
    assert from_file.pop("protocol") == scores.pop("protocol")  # the same net, count and reference split
    raw = {name: value for name, value in scores.items() if not name.endswith("_ema")}
    assert from_file == pytest.approx(raw, rel=1e-4)  # the same 40 latent vectors, seed 0: every metric agrees


def test_sample_file_of_a_toy_run_is_scored_on_its_own_dataset(tmp_path, capsys):
    """A `ganlab-sample` file of 2-D points needs no dataset=: its config names the mixture, scored by mode metrics."""
    run = tmp_path / "ring8"
    train(compose_config(["dataset=ring8", "model=mlp", *QUICK[:-2], "eval.enabled=false"]), run)
    sample_command([str(run), "n=64", f"out={tmp_path / 'points.npz'}"])
    capsys.readouterr()
    eval_command([str(tmp_path / "points.npz")])
    from_file = json.loads(capsys.readouterr().out)
    eval_command([str(run), "n=64"])
    from_run = json.loads(capsys.readouterr().out)
    assert (from_run.pop("checkpoint"), from_run.pop("step")) == ("last", 3)  # no evaluation: no best checkpoint
    assert from_file == from_run  # the same 64 latent vectors (seed 0) as the run's
    assert from_file.pop("protocol") == {"features": "modes", "samples": 64, "reference": "ring8 modes",
                                         "reference_size": 8}  # fmt: skip
    assert set(from_file) == {"modes_covered", "high_quality"}


def test_eval_reports_bad_input_in_one_line(run_dir, tmp_path):
    process = subprocess.run([sys.executable, "-c", "from ganlab.entry import evaluate; evaluate()",
                              str(tmp_path / "missing.npz")], capture_output=True, text=True)  # fmt: skip
    assert process.returncode == 2
    assert process.stderr.strip().startswith("ganlab: error:") and process.stderr.count("\n") == 1
    with pytest.raises(ConfigError, match="not an option"):
        eval_command([str(tmp_path), "bogus=1"])
    with pytest.raises(ConfigError, match="not a ganlab run dir"):
        sample_command([str(tmp_path)])
    for not_a_run in (CONF_DIR, tmp_path / "missing"):  # conf/ holds a config.yaml, but no run ever trained there
        with pytest.raises(ConfigError, match=f"^{not_a_run} (is not a ganlab run dir|does not exist)"):
            sample_command([str(not_a_run)])
    with pytest.raises(ConfigError, match="is not a ganlab run dir"):
        eval_command([str(CONF_DIR)])
    with pytest.raises(ConfigError, match="dataset=mnist does not apply to the run"):
        eval_command([str(run_dir), "dataset=mnist"])


def command(entry: str, *arguments, cwd: Path) -> subprocess.CompletedProcess:
    """A console script (`ganlab.entry`'s `train`, `sample`, `evaluate`) run for real, in the folder `cwd`."""
    code = f"import sys; from ganlab.entry import {entry}; sys.argv[0] = 'ganlab'; {entry}()"
    return subprocess.run([sys.executable, "-c", code, *map(str, arguments)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def test_the_tour_samples_and_scores_the_run_folder_the_command_line_named(tmp_path, data_root):
    """The README's tour: a folder named by its overrides (with `=` and `,`), sampled and scored from another folder,
    with the dataset's root given relative to the folder the run was started in."""
    started, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    started.mkdir(), elsewhere.mkdir()
    overrides = ["experiment=best_mlp_mnist", "train.steps=3", "model.hidden=16", "model.d_hidden=16",
                 "eval.num_samples=32", "log.num_samples=4", "device=cpu", "device.threads=1"]  # fmt: skip
    root = os.path.relpath(data_root, started)
    trained = command("train", *overrides, f"dataset.root={root}", cwd=started)
    assert trained.returncode == 0, trained.stderr
    run_dir = started / "outputs" / "runs" / command_folder(["ganlab-train", *overrides, f"dataset.root={root}"])
    assert "=" in run_dir.name and "," in run_dir.name and run_dir.is_dir()
    assert Path(OmegaConf.load(run_dir / "config.yaml").dataset.root) == data_root  # saved absolute

    sampled = command("sample", run_dir, "n=64", "out=digits.npz", cwd=elsewhere)
    assert sampled.returncode == 0, sampled.stderr
    with np.load(elsewhere / "digits.npz") as data:
        assert data["images"].shape == (64, 1, 28, 28)
    assert (elsewhere / "digits.png").exists()
    scored = command("evaluate", run_dir, "n=16", cwd=elsewhere)
    assert scored.returncode == 0, scored.stderr
    assert {"fid", "fid_ema"} <= set(json.loads(scored.stdout))
    # fewer samples than the run's final evaluation: one line says the FID is biased
    assert scored.stderr.count("\n") == 1 and "warning: scoring 16 samples, fewer than the 32" in scored.stderr


def test_a_sweep_jobs_folder_is_sampled_and_scored(tmp_path, data_root):
    argv = ["ganlab-train", "-m", "loss=bce,hinge", "seed=0,1"]
    job = tmp_path / job_name(["loss=hinge", "seed=1"], argv)
    assert job.name == "loss=hinge,seed=1"
    train(compose_config(QUICK + dataset_overrides("mnist", data_root) + ["loss=hinge", "seed=1"]), job)
    sample_command([str(job), "n=16", f"out={tmp_path / 'job.npz'}"])
    assert np.load(tmp_path / "job.npz")["images"].shape == (16, 1, 28, 28)
    eval_command([str(job), "n=16"])


def test_an_argument_is_an_option_only_when_it_is_no_path_and_its_key_is_the_commands(run_dir, tmp_path, capsys):
    named = tmp_path / "n=5"  # a folder whose whole name reads like an option
    named.mkdir()
    with pytest.raises(ConfigError, match=f"^{named} is not a ganlab run dir"):
        sample_command([str(named), "n=5"])
    with pytest.raises(ConfigError, match="'bogus=1' is not an option of this command"):
        sample_command([str(run_dir), "bogus=1"])
    with pytest.raises(ConfigError, match="no run folder or file was given"):
        sample_command(["n=5"])
    with pytest.raises(ConfigError, match="usage: ganlab-sample"):
        sample_command(["--help"])
    sample_command(["n=4", str(run_dir), f"out={tmp_path / 'first.npz'}"])  # the order does not matter
    assert np.load(tmp_path / "first.npz")["images"].shape[0] == 4


def test_a_run_without_a_checkpoint_yet_says_so(run_dir, tmp_path):
    early = tmp_path / "early"
    early.mkdir()
    (early / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    (early / "metrics.json").write_text('{"status": "failed", "error": "stopped before its first checkpoint"}')
    with pytest.raises(CheckpointError, match="has no checkpoint yet"):
        sample_command([str(early)])


def grid_shape(png: Path) -> tuple[int, int]:
    """Rows and columns of a grid of 28-px images (torchvision's make_grid: 2 px of padding around each)."""
    with Image.open(png) as picture:
        width, height = picture.size
    return (height - 2) // 30, (width - 2) // 30


def test_the_png_shows_every_sample_asked_for_up_to_a_readable_grid(run_dir, tmp_path, capsys):
    for n, shape in ((50, (7, 8)), (64, (8, 8)), (1000, (16, 16))):
        sample_command([str(run_dir), f"n={n}", f"out={tmp_path / f'{n}.npz'}"])
        assert grid_shape(tmp_path / f"{n}.png") == shape


def test_a_conditional_runs_png_has_one_row_per_class(tmp_path, data_root, capsys):
    run = tmp_path / "conditional"
    train(compose_config(QUICK + dataset_overrides("mnist", data_root) + ["model.conditional=true"]), run)
    sample_command([str(run), "n=35", f"out={tmp_path / 'balanced.npz'}"])
    assert grid_shape(tmp_path / "balanced.png") == (10, 3)  # 35 balanced samples: at least 3 of each class
    sample_command([str(run), "n=1000", f"out={tmp_path / 'many.npz'}"])
    assert grid_shape(tmp_path / "many.png") == (10, 25)  # 256 at most: 25 of each class
    sample_command([str(run), "n=20", "class=3", f"out={tmp_path / 'threes.npz'}"])
    assert grid_shape(tmp_path / "threes.png") == (4, 5)  # one class: a square grid
