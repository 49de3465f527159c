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
    train(compose_config(QUICK + dataset_overrides("mnist", data_root) + ["train.ema_decay=0.5"]), run_dir)
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
    out = tmp_path / "samples.npz"
    sample_command([str(run_dir), "n=40", f"out={out}", "weights=raw"])
    capsys.readouterr()
    eval_command([str(out)])
    from_file = json.loads(capsys.readouterr().out)
    assert from_file["fid"] == pytest.approx(scores["fid"], rel=1e-4)  # the same 40 latent vectors, seed 0


def test_eval_reports_bad_input_in_one_line(tmp_path):
    process = subprocess.run([sys.executable, "-c", "from ganlab.cli import eval_main; eval_main()",
                              str(tmp_path / "missing.npz")], capture_output=True, text=True)  # fmt: skip
    assert process.returncode == 2
    assert process.stderr.strip().startswith("ganlab: error:") and process.stderr.count("\n") == 1
    with pytest.raises(ConfigError, match="not an option"):
        eval_command([str(tmp_path), "bogus=1"])
    with pytest.raises(ConfigError, match="not a ganlab run dir"):
        sample_command([str(tmp_path)])
