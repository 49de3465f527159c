"""The `ganlab-train` command line, run for real in subprocesses."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import dataset_overrides
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

QUICK = [
    "train.steps=2",
    "train.batch_size=4",
    "log.every=1",
    "log.num_samples=4",
    "model.hidden=8",
    "device=cpu",
    "device.threads=1",
    "eval.num_samples=16",
]


def ganlab_train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ganlab.train", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_multirun_gives_one_run_dir_per_job_named_by_what_varies(tmp_path, data_root):
    sweep = tmp_path / "sweep"
    result = ganlab_train(
        "-m",
        "loss=bce,lsgan",
        "seed=0,1",
        *QUICK,
        *dataset_overrides("mnist", data_root),
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    # only the swept keys name a job: the constant overrides (QUICK, dataset.root) are the same in every one
    jobs = sorted(path.name for path in sweep.iterdir() if path.is_dir())
    assert jobs == ["loss=bce,seed=0", "loss=bce,seed=1", "loss=lsgan,seed=0", "loss=lsgan,seed=1"]
    for job in jobs:
        assert json.loads((sweep / job / "metrics.json").read_text())["status"] == "completed"
    multiplexer = EventMultiplexer().AddRunsFromDirectory(str(sweep))
    multiplexer.Reload()
    assert sorted(multiplexer.Runs()) == jobs
    assert all("Loss/G" in multiplexer.GetAccumulator(job).Tags()["scalars"] for job in jobs)


def test_default_run_lands_in_outputs(tmp_path, data_root):
    result = ganlab_train(*QUICK, *dataset_overrides("mnist", data_root), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    assert (run_dir / "metrics.json").exists() and (run_dir / ".hydra" / "config.yaml").exists()


def test_unknown_option_lists_the_available_ones(tmp_path):
    result = ganlab_train("loss=foo", cwd=tmp_path)
    assert result.returncode != 0
    assert "Could not find 'loss/foo'" in result.stderr
    assert "wgan-gp" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["train.batch_size=0"], "train.batch_size=0 is not allowed"),
        (["train.lr=-1"], "train.g_lr=-1"),
        (["train.d_steps=-1"], "train.d_steps=-1"),
        (["model=dcgan", "dataset.image_size=48"], "dataset.image_size=48"),
    ],
)
def test_bad_input_is_one_sentence_and_a_non_zero_exit(tmp_path, data_root, overrides, expected):
    result = ganlab_train(
        *overrides, *dataset_overrides("mnist", data_root), f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("ganlab: error:")
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_dataset_offline_says_where_it_looked(tmp_path):
    result = ganlab_train("dataset.root=nowhere", *QUICK, f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert result.returncode == 2
    error = [line for line in result.stderr.splitlines() if line.startswith("ganlab: error:")]
    assert len(error) == 1
    assert str(tmp_path / "nowhere") in error[0] and "train-images-idx3-ubyte" in error[0]
    assert "dataset.root=" in error[0] and "Traceback" not in result.stderr


def test_sigterm_checkpoints_and_exits_cleanly_then_resumes(tmp_path, data_root):
    run_dir = tmp_path / "run"
    overrides = [*QUICK, *dataset_overrides("mnist", data_root), f"hydra.run.dir={run_dir}", "log.every=10"]
    command = [sys.executable, "-m", "ganlab.train", *overrides, "train.steps=1000000"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run_dir / "samples" / "real.png").exists():  # written just before the first step
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.1)
    time.sleep(1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "stopped by SIGTERM"
    stopped_at = metrics["step"]
    assert stopped_at >= 1

    result = ganlab_train(*overrides, f"train.steps={stopped_at + 3}", "train.resume=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["step"] == stopped_at + 3
