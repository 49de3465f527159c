"""Sweeps that survive: folders the same command finds again, auto-resume after SIGKILL, failed and diverged jobs
that do not stop a sweep, and the joblib, submitit and Optuna plugins run for real in subprocesses."""

import json
import math
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import compose_config, dataset_overrides, wait_for
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ganlab.checkpoint import CHECKPOINT, load_checkpoint
from ganlab.errors import CheckpointError
from ganlab.hparams import RunRecord, hparam_values
from ganlab.monitor import StopSignals
from ganlab.runfolder import write_json
from ganlab.sweep import folder_name, job_name, named_overrides, swept_overrides
from ganlab.train import objective, record_failure, train

REPO = Path(__file__).resolve().parents[1]
# a toy run: fast, no files, and long enough (a few seconds) to be killed part-way
TOY = ["dataset=ring8", "log.progress=false", "eval.enabled=false", "device=cpu", "device.threads=1", "log.every=50"]
SLOW_TOY = TOY + ["train.steps=3000", "train.checkpoint_every=25", "log.sample_every=0"]


def ganlab_train(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ganlab.train", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def start_train(*args: str, cwd: Path) -> subprocess.Popen:
    """`ganlab-train` in its own process group, so a SIGKILL takes a multirun and all its workers down at once."""
    return subprocess.Popen(
        [sys.executable, "-m", "ganlab.train", *args],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def checkpoint_step(run_dir: Path) -> int:
    """The step a resume would start from (the previous checkpoint if the newest is being replaced); 0 if none."""
    try:
        return load_checkpoint(run_dir)["step"]
    except Exception:  # nothing written yet
        return 0


def assert_same_weights(a: Path, b: Path) -> None:
    """Model, EMA, both optimisers, learning-rate schedules and the step of two runs' final checkpoints are
    bit-identical."""
    left, right = (torch.load(d / CHECKPOINT, weights_only=False) for d in (a, b))
    assert left["step"] == right["step"]
    assert left["schedulers"] == right["schedulers"]
    for key in ("model", "ema"):
        for name, tensor in (left[key] or {}).items():
            assert torch.equal(tensor, right[key][name]), name
    for key in ("g_opt", "d_opt"):
        assert [g["lr"] for g in left[key]["param_groups"]] == [g["lr"] for g in right[key]["param_groups"]]
    for key in ("g_opt", "d_opt"):
        for index, state in left[key]["state"].items():
            for name, value in state.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(right[key]["state"][index][name])), key


def status(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_folder_names_are_safe_and_deterministic():
    assert folder_name("") == "default"
    assert folder_name("dataset.test_root=/a/b,loss=lsgan") == "dataset.test_root=_a_b,loss=lsgan"
    long = ",".join(f"model.hidden{i}={i}" for i in range(40))
    assert len(folder_name(long)) <= 200 and folder_name(long) == folder_name(long)
    assert folder_name(long) != folder_name(long + "1")


def test_a_command_names_its_folder_by_its_overrides_in_any_order():
    command = ["seed=0,1", "loss=bce,lsgan", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "dataset.root=/data",
               "train.resume=true", "hydra/sweeper=search", "hydra.sweeper.n_trials=3"]  # fmt: skip
    assert named_overrides(command) == [
        "hydra.sweeper.n_trials=3", "hydra/sweeper=search", "loss=bce,lsgan", "seed=0,1",
    ]  # fmt: skip
    assert named_overrides(["loss=bce", "seed=1"]) == named_overrides(["seed=1", "loss=bce"])
    # an image folder's root is the dataset itself: two of them must not share a run folder
    assert named_overrides(["dataset=folder", "dataset.root=/faces"]) == ["dataset.root=/faces", "dataset=folder"]


def test_a_job_is_named_by_what_varies_between_the_jobs():
    argv = ["ganlab-train", "-m", "experiment=lsgan_mlp_mnist", "loss=lsgan,hinge", "seed=0,1", "train.steps=100"]
    job = ["experiment=lsgan_mlp_mnist", "loss=hinge", "seed=0", "train.steps=100"]
    assert job_name(job, argv) == "loss=hinge,seed=0"
    # a key by its last component where no other swept key ends the same
    argv = ["ganlab-train", "-m", "train.lr=1e-3,1e-2", "model.width=1,2", "dataset.width=range(3,5)"]
    job = ["train.lr=1e-3", "model.width=1", "dataset.width=3"]
    assert job_name(job, argv) == "dataset.width=3,lr=1e-3,model.width=1"
    # the sweeper's search space (the Optuna preset's) varies in every job, though the command line names none of it
    params = {"train.lr": "tag(log, interval(1e-5, 1e-2))", "train.batch_size": "choice(32, 64)"}
    argv = ["ganlab-train", "-m", "hydra/sweeper=fid_search", "loss=hinge"]
    assert job_name(["loss=hinge", "train.lr=0.001", "train.batch_size=32"], argv, params) == "batch_size=32,lr=0.001"


def test_a_long_job_name_is_cut_with_a_hash_so_no_two_jobs_share_one():
    rates = ["0.000362522370930973", "0.000362522370930974"]
    argv = ["ganlab-train", "-m", "model.activation=leaky_relu,relu", f"train.lr={','.join(rates)}"]
    first, second = (["model.activation=leaky_relu", f"train.lr={lr}"] for lr in rates)
    assert len(job_name(first, argv)) == len(job_name(second, argv)) == 40
    assert job_name(first, argv) != job_name(second, argv) and job_name(first, argv) == job_name(list(first), argv)
    assert job_name(first, argv).startswith("activation=leaky_relu,lr=0.000")


def test_rerunning_a_finished_run_skips_it_and_changes_nothing(tmp_path):
    cfg = compose_config(TOY + ["train.steps=40"])
    first = train(cfg, tmp_path / "run")

    def written() -> dict[str, int]:  # the run's files; .lock only names the process that last opened the folder
        return {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir() if p.name != ".lock"}

    before = written()
    assert train(cfg, tmp_path / "run") == first
    assert written() == before
    longer = train(compose_config(TOY + ["train.steps=60"]), tmp_path / "run")  # more steps: there is work left
    assert (longer["status"], longer["step"]) == ("completed", 60)


def test_the_same_command_continues_in_the_same_run_folder(tmp_path):
    first = ganlab_train(*TOY, "train.steps=30", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    assert run_dir.name == "dataset=ring8,device=cpu,eval.enabled=false,log.every=50,train.steps=30"  # no threads
    assert (run_dir / "metrics.json").exists()
    again = ganlab_train(*TOY, "train.steps=30", cwd=tmp_path)
    assert again.returncode == 0 and "already completed at step 30: skipped" in again.stdout


# a class-conditional run, with every piece of state it adds: conditional BatchNorm's running statistics, the
# projection embedding, spectral norm's power-iteration vectors and the learning-rate schedule
CONDITIONAL = [
    "model.conditional=true",
    "model.g_condition=cbn",
    "model.spectral_norm=true",
    "train.lr_schedule=linear",
]


@pytest.mark.parametrize(
    "trial,extra", [(0, []), (1, []), (2, []), (3, CONDITIONAL)], ids=["0", "1", "2", "conditional"]
)
def test_sigkill_at_a_random_step_then_resume_is_bit_identical(tmp_path, trial, extra):
    args = [*SLOW_TOY, "loss=lsgan", "train.ema_decay=0.9", f"seed={trial}", *extra]
    train(compose_config(args), tmp_path / "straight")

    run_dir = tmp_path / "killed"
    process = start_train(*args, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    kill_after = random.Random(trial).randint(100, 2500)  # a step after the first few checkpoints
    wait_for(lambda: checkpoint_step(run_dir) >= kill_after or process.poll() is not None, "a checkpoint")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = checkpoint_step(run_dir)
    assert 0 < killed_at < 3000, "the run finished before it was killed: make it longer"

    resumed = ganlab_train(*args, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"from step {killed_at}\n" in resumed.stdout
    assert status(run_dir)["step"] == 3000
    assert_same_weights(tmp_path / "straight", run_dir)


def test_a_killed_multirun_rerun_does_only_the_missing_work(tmp_path):
    args = ["-m", *SLOW_TOY, "loss=bce,lsgan,hinge"]
    process = start_train(*args, cwd=tmp_path)
    sweeps = tmp_path / "outputs" / "sweeps"
    wait_for(lambda: sweeps.exists() and any(sweeps.iterdir()), "the sweep folder")
    (sweep,) = sweeps.iterdir()

    def job(loss: str) -> Path:  # the job's folder: only the loss varies, so only the loss names it
        return sweep / f"loss={loss}"

    wait_for(lambda: (job("bce") / "metrics.json").exists() and checkpoint_step(job("lsgan")) >= 500, "job 2")
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    first, second = job("bce"), job("lsgan")
    assert not (second / "metrics.json").exists() and not (job("hinge") / "metrics.json").exists()
    finished = (first / "metrics.json").stat().st_mtime_ns

    rerun = ganlab_train(*args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    third = job("hinge")
    assert (first / "metrics.json").stat().st_mtime_ns == finished  # skipped, untouched
    assert "already completed at step 3000: skipped" in (first / "train.log").read_text()
    assert "resuming" in (second / "train.log").read_text()
    assert "resuming" not in (third / "train.log").read_text()
    assert all(status(job)["status"] == "completed" for job in (first, second, third))
    assert "3 jobs, 3 completed" in rerun.stderr + rerun.stdout

    train(compose_config([*SLOW_TOY, "loss=lsgan"]), tmp_path / "straight")
    assert_same_weights(tmp_path / "straight", second)


def test_failed_and_diverged_jobs_do_not_stop_the_sweep_and_are_listed(tmp_path):
    # batch_size=0 is a config error; lr=1e8 with the KL f-GAN overflows to inf within a few dozen steps
    result = ganlab_train(
        "-m",
        *TOY,
        "train.steps=200",
        "loss=fgan-kl",
        "model.output=tanh",
        "train.lr=1e-3,1e8",
        "train.batch_size=0,32",
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    jobs = {p.name: status(p) for p in (tmp_path / "sweep").iterdir() if p.is_dir()}
    statuses = sorted(job["status"] for job in jobs.values())
    assert statuses == ["completed", "diverged", "failed", "failed"]
    diverged = next(job for job in jobs.values() if job["status"] == "diverged")
    assert 0 < diverged["step"] < 200
    failed = next(job for job in jobs.values() if job["status"] == "failed")
    assert "train.batch_size" in failed["error"]
    output = result.stderr + result.stdout
    assert "4 jobs" in output and "diverged: " in output and output.count("failed: ") == 2


def submitit_signal() -> int:
    """The signal submitit has SLURM send before a job's time limit (USR2 unless SUBMITIT_PREEMPT_SIGNAL says so)."""
    from submitit import JobEnvironment

    return JobEnvironment._usr_sig()


@pytest.mark.parametrize("number", [signal.SIGUSR1, "submitit"])
def test_stop_signals_hand_the_signal_on_to_a_launchers_handler(number):
    number = submitit_signal() if number == "submitit" else number
    calls = []
    previous = signal.signal(number, lambda received, frame: calls.append(received))
    try:
        with StopSignals() as stop:
            os.kill(os.getpid(), number)
            wait_for(lambda: stop.requested == signal.Signals(number).name, "the signal")
            assert calls == []  # caught by ganlab first: the checkpoint comes before the launcher's requeue
        stop.forward()
        assert calls == [number]
    finally:
        signal.signal(number, previous)


def test_objective_is_the_final_metric_or_infinity():
    assert objective({"status": "completed", "metrics": {"fid": 12.5}}, "fid") == 12.5
    assert objective({"status": "diverged", "step": 3}, "fid") == math.inf
    assert objective({"status": "completed", "metrics": {"kid": 0.1}}, "fid") == math.inf


def test_hparams_hold_the_overridden_keys_with_integers_as_written():
    cfg = compose_config(TOY + ["train.ema_decay=0.5", "model.hidden=32"])
    record = RunRecord.from_config(cfg)
    record.overrides = ["train.ema_decay=0.5", "model.hidden=32", "dataset=ring8"]
    values = hparam_values(cfg, record)
    assert values["train.ema_decay"] == 0.5 and values["model.hidden"] == "32" and values["dataset"] == "Ring"
    assert values["seed"] == "0" and "dataset.image_size" not in values  # the toy's points have no image size


def test_a_swept_key_has_one_type_in_every_job():
    # `0,0.3` gives one job the integer 0: it is written as the float 0.0, like the other job's 0.3
    swept = swept_overrides(["ganlab-train", "-m", "model.d_dropout=0,0.3"])
    for value in ("0", "0.3"):
        record = RunRecord({"model": "mlp"}, [f"model.d_dropout={value}"], swept=swept)
        written = hparam_values(compose_config(TOY + [f"model.d_dropout={value}"]), record)["model.d_dropout"]
        assert isinstance(written, float) and written == float(value)


def test_joblib_runs_jobs_in_parallel_with_a_share_of_the_cores_each(tmp_path, data_root):
    # both data paths with a DataLoader worker: the in-memory decode and the streaming loader start worker processes
    # inside joblib's own worker processes
    args = [*TOY, *dataset_overrides("mnist", data_root), "train.steps=4", "train.batch_size=8", "model.hidden=8",
            "dataset.workers=1", "dataset.in_memory=true,false", "device.threads=null"]  # fmt: skip
    result = ganlab_train("-m", *args, "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # the workers name the sweep folder as the launching process does: from its command line, not theirs
    sweep = tmp_path / "outputs" / "sweeps" / folder_name(",".join(named_overrides(args)))
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [job.name for job in jobs] == ["in_memory=false", "in_memory=true"]
    # ... and record it as the command of each job, in the TEXT tab
    command = EventAccumulator(str(jobs[0]))
    command.Reload()
    assert "-m " + " ".join(args[:3]) in command.Tensors("command/text_summary")[0].tensor_proto.string_val[0].decode()
    assert [status(job)["status"] for job in jobs] == ["completed", "completed"], [status(job) for job in jobs]
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert all(yaml.safe_load((job / "config.yaml").read_text())["device"]["threads"] == threads for job in jobs)


def test_submitit_local_runs_each_job_in_its_own_process(tmp_path):
    result = ganlab_train(
        "-m",
        *TOY,
        "train.steps=40",
        "loss=bce,lsgan",
        "hydra/launcher=submitit_local",
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and not p.name.startswith("."))
    # named from the launching command, though each job resolves its name in a worker with its own command line
    assert [job.name for job in jobs] == ["loss=bce", "loss=lsgan"]
    assert [status(job)["status"] for job in jobs] == ["completed", "completed"]
    submitted = [p for p in (tmp_path / "sweep" / ".submitit").iterdir() if p.name.isdigit()]
    assert len(submitted) == 2  # one submitit job (own process id) each


def test_the_search_sweeper_minimises_the_objective_over_real_runs(tmp_path):
    result = ganlab_train(
        "-m",
        *TOY,
        "train.steps=40",
        "eval.enabled=true",
        "eval.num_samples=64",
        "eval.objective=high_quality",
        "hydra/sweeper=search",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.seed=0",
        "train.lr=tag(log,interval(1e-4,1e-2))",
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())["best_value"]
    jobs = [p for p in (tmp_path / "sweep").iterdir() if p.is_dir()]
    scores = [status(job)["metrics"]["high_quality"] for job in jobs]
    # high_quality is better high: the job returns it negated, so the sweeper minimises whatever the metric
    assert len(scores) == 3 and best == pytest.approx(-max(scores))
    assert all(job.name.startswith("lr=") and len(job.name) <= 40 for job in jobs)  # named by the searched key


def test_a_run_with_an_edited_config_is_neither_skipped_nor_continued(tmp_path):
    train(compose_config(TOY + ["train.steps=20"]), tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"different config \(model.hidden: 128 -> 64\)"):
        train(compose_config(TOY + ["train.steps=20", "model.hidden=64"]), tmp_path / "run")


def test_a_failure_never_replaces_a_finished_runs_summary(tmp_path):
    write_json(tmp_path / "metrics.json", {"status": "completed", "step": 5, "metrics": {"fid": 1.0}})
    record_failure(tmp_path, "a later attempt failed")
    assert status(tmp_path)["status"] == "completed"
    write_json(tmp_path / "metrics.json", {"status": "stopped by SIGTERM", "step": 5})
    record_failure(tmp_path, "a later attempt failed")
    assert status(tmp_path) == {"status": "failed", "error": "a later attempt failed"}


def test_a_run_killed_after_its_last_checkpoint_still_gets_its_scores(tmp_path):
    cfg = compose_config(TOY + ["train.steps=20", "eval.enabled=true", "eval.num_samples=64"])
    first = train(cfg, tmp_path / "run")
    (tmp_path / "run" / "metrics.json").unlink()  # killed between the last checkpoint and the summary
    again = train(cfg, tmp_path / "run")
    assert (again["status"], again["step"]) == ("completed", 20)
    assert again["metrics"] == first["metrics"]


def test_a_stop_signal_checkpoints_at_once_without_evaluating(tmp_path, monkeypatch):
    import ganlab.train as train_module

    evaluated = []
    monkeypatch.setattr(train_module, "log_scores", lambda *args: evaluated.append(args[-1]) or {})
    original = train_module.train_step

    def step_then_sigterm(gan, *args):
        stats = original(gan, *args)
        if train_module.train_step.calls == 7:
            os.kill(os.getpid(), signal.SIGTERM)
        train_module.train_step.calls += 1
        return stats

    step_then_sigterm.calls = 1
    monkeypatch.setattr(train_module, "train_step", step_then_sigterm)
    summary = train(compose_config(TOY + ["train.steps=50", "eval.enabled=true"]), tmp_path / "run")
    assert (summary["status"], summary["step"]) == ("stopped by SIGTERM", 7)
    assert checkpoint_step(tmp_path / "run") == 7 and 7 not in evaluated  # the scheduled ones before 7 may run
