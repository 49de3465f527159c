"""The `ganlab-train` command line, run for real in subprocesses."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import dataset_overrides, wait_for
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
from test_checkpoint import assert_same_training_state

from ganlab.config import check_command_line
from ganlab.errors import ConfigError
from ganlab.monitor import StopSignals
from ganlab.runfolder import CHECKPOINT

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


def test_default_run_lands_in_outputs_and_says_where_at_the_start(tmp_path, data_root):
    result = ganlab_train(*QUICK, *dataset_overrides("mnist", data_root), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    assert (run_dir / "metrics.json").exists() and (run_dir / ".hydra" / "config.yaml").exists()
    lines = result.stdout.splitlines()
    where = next(i for i, line in enumerate(lines) if f"tensorboard --logdir {run_dir}" in line)
    assert where < next(i for i, line in enumerate(lines) if "step 1/2" in line)  # before the first step's line


def test_help_names_the_command_the_user_typed(tmp_path):
    result = ganlab_train("--help", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("ganlab-train:"), result.stdout[:200]
    assert "train is powered by Hydra" not in result.stdout


@pytest.mark.parametrize("override", ["train.stepz=100", "+train.stepz=100", "++train.stepz=100"])
def test_an_unknown_key_is_refused_with_the_nearest_one_and_leaves_no_folder(tmp_path, override):
    result = ganlab_train(override, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "ganlab: error: train.stepz is not a key of ganlab's config, with or without +: did you mean train.steps?"
    )
    assert not (tmp_path / "outputs").exists()


def test_keys_of_a_users_own_option_and_any_option_of_a_group_are_known(tmp_path):
    own = tmp_path / "my_conf" / "model"
    own.mkdir(parents=True)
    (own / "mine.yaml").write_text("_target_: ganlab.models.mlp.MLP\nmy_width: 24\n")
    searchpath = f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]"
    for overrides in ([searchpath, "model=mine", "model.my_width=30"], ["model=dcgan", "model.g_width=8"]):
        result = ganlab_train(*overrides, "--cfg", "job", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    refused = ganlab_train("model=dcgan", "model.g_widht=8", "--cfg", "job", cwd=tmp_path)
    assert refused.returncode == 2 and "did you mean model.g_width?" in refused.stderr


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


def test_the_key_check_knows_nested_groups_global_options_and_leaves_alone_what_it_cannot_judge(tmp_path):
    own = tmp_path / "my_conf"
    (own / "model" / "big").mkdir(parents=True)
    (own / "model" / "glob.yaml").write_text("# a comment first\n# @package _global_\nmy_top_key: 1\n")
    (own / "model" / "big" / "x.yaml").write_text("_target_: ganlab.models.mlp.MLP\nwidth: 3\n")
    searchpath = f"hydra.searchpath=[file://{own}]"
    check_command_line([searchpath, "model/big=x", "model.big.width=4", "my_top_key=2"])
    with pytest.raises(ConfigError, match="model.big.widht is not a key .* did you mean model.big.width"):
        check_command_line([searchpath, "model.big.widht=4"])
    check_command_line(["-sc", "install=bash"])  # Hydra's shell completion: not an override
    (tmp_path / "primary").mkdir()
    (tmp_path / "primary" / "config.yaml").write_text("anything: 1\n")
    check_command_line(["--config-dir", str(tmp_path / "primary"), "anything=2"])  # the user's own primary config


def start(command: list[str], cwd: Path) -> subprocess.Popen:
    """`command` in its own process group, as a terminal runs it: Ctrl-C there signals the whole group.

    SIGINT starts at its default, as in a terminal: a suite run in the background (`nohup pytest &`) ignores it,
    and an ignored SIGINT is inherited by every process started from there, so no Ctrl-C would reach the command.
    """

    def default_sigint():
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=default_sigint)  # fmt: skip


def ctrl_c(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGINT)


# long enough to be interrupted after its first checkpoint (~800 steps/s here), short enough to finish after
CTRL_C_RUN = [*QUICK, "log.every=10", "train.steps=4000", "train.checkpoint_every=200", "eval.enabled=false",
              "train.ema_decay=0.9"]  # fmt: skip


def test_ctrl_c_checkpoints_where_it_stops_and_the_same_command_ends_bit_identical(tmp_path, data_root):
    overrides = [*CTRL_C_RUN, *dataset_overrides("mnist", data_root)]
    interrupted, uninterrupted = tmp_path / "interrupted", tmp_path / "uninterrupted"
    command = [sys.executable, "-m", "ganlab.train", *overrides, f"hydra.run.dir={interrupted}"]
    process = start(command, tmp_path)
    wait_for(lambda: (interrupted / CHECKPOINT).exists() or process.poll() is not None, "the first checkpoint")
    ctrl_c(process)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) <= 3, stderr
    assert "run the same command to continue it" in stderr
    summary = json.loads((interrupted / "metrics.json").read_text())
    assert summary["status"] == "stopped by SIGINT" and 200 <= summary["step"] < 4000
    assert torch.load(interrupted / CHECKPOINT, weights_only=True)["step"] == summary["step"]  # nothing lost

    resumed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {interrupted} from step {summary['step']}" in resumed.stdout
    straight = ganlab_train(*overrides, f"hydra.run.dir={uninterrupted}", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    assert_same_training_state(interrupted, uninterrupted)


def test_ctrl_c_during_start_up_is_one_line_and_exit_130(tmp_path, data_root):
    """Before the loop (here while torch is imported) there is no step to save: the command just ends, quietly."""
    # Ctrl-C once the entry point runs (a signal before Python has imported it is Python's own traceback)
    code = "import sys; from ganlab.entry import train; sys.argv[0] = 'ganlab-train'; print(flush=True); train()"
    process = start([sys.executable, "-c", code, *QUICK, *dataset_overrides("mnist", data_root)], tmp_path)
    process.stdout.readline()
    time.sleep(0.2)  # into train(): torch's import, which it then runs, takes seconds
    ctrl_c(process)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines() == [
        "ganlab: aborted by Ctrl-C: a run keeps its last checkpoint, and the same command continues it."
    ]


def test_a_second_ctrl_c_aborts_at_once():
    before = signal.getsignal(signal.SIGINT)
    with StopSignals(announce=False) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested == "SIGINT"  # the first: the loop checkpoints and returns
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs between bytecodes, before this sleep ends
    assert signal.getsignal(signal.SIGINT) is before  # put back as it was


@pytest.mark.parametrize("launcher", ["basic", "parallel"])
def test_ctrl_c_stops_a_sweep_and_the_same_command_continues_it(tmp_path, data_root, launcher):
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "ganlab.train", "-m", "seed=0,1,2", *CTRL_C_RUN, "train.steps=2000",
               *dataset_overrides("mnist", data_root), f"hydra.sweep.dir={sweep}"]  # fmt: skip
    if launcher == "parallel":  # jobs in worker processes, which the Ctrl-C reaches too
        command += ["hydra/launcher=parallel", "hydra.launcher.n_jobs=2"]
    process = start(command, tmp_path)
    wait_for(lambda: any(sweep.glob(f"*/{CHECKPOINT}")) or process.poll() is not None, "a job's first checkpoint")
    ctrl_c(process)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "run the same command to continue it" in stderr
    statuses = {job.name: json.loads((job / "metrics.json").read_text())["status"] for job in sweep.glob("*/")
                if (job / "metrics.json").exists()}  # fmt: skip
    assert "stopped by SIGINT" in statuses.values() and "seed=2" not in statuses  # no job started after it
    for job in sweep.glob(f"*/{CHECKPOINT}"):  # every job that ran kept its checkpoint at the step it stopped
        stopped = json.loads((job.parent / "metrics.json").read_text())["step"]
        assert torch.load(job, weights_only=True)["step"] == stopped

    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    for seed in range(3):
        summary = json.loads((sweep / f"seed={seed}" / "metrics.json").read_text())
        assert (summary["status"], summary["step"]) == ("completed", 2000)
