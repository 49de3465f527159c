"""`ganlab-sample` and `ganlab-eval` on real (tiny) runs, through their command functions and one real subprocess."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import compose_config, dataset_overrides

from ganlab.cli import eval_command, sample_command
from ganlab.errors import ConfigError
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
    assert from_file == json.loads(capsys.readouterr().out)  # the same 64 latent vectors (seed 0) as the run's
    assert set(from_file) == {"modes_covered", "high_quality"}


def test_eval_reports_bad_input_in_one_line(run_dir, tmp_path):
    process = subprocess.run([sys.executable, "-c", "from ganlab.cli import eval_main; eval_main()",
                              str(tmp_path / "missing.npz")], capture_output=True, text=True)  # fmt: skip
    assert process.returncode == 2
    assert process.stderr.strip().startswith("ganlab: error:") and process.stderr.count("\n") == 1
    with pytest.raises(ConfigError, match="not an option"):
        eval_command([str(tmp_path), "bogus=1"])
    with pytest.raises(ConfigError, match="not a ganlab run dir"):
        sample_command([str(tmp_path)])
    with pytest.raises(ConfigError, match="dataset=mnist does not apply to the run"):
        eval_command([str(run_dir), "dataset=mnist"])
