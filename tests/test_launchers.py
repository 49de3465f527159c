"""The launcher and sweeper presets of conf/hydra/, run for real in subprocesses rather than read back as YAML.

`hydra/sweeper=fid_search` runs whole Optuna trials on the fixture MNIST and is scored by their FID.
`hydra/launcher=slurm` needs a SLURM cluster, so its requeue path runs through submitit's local executor instead:
the same submitit job environment, signal handler, checkpoint pickle and requeue (exit code 144, restarted by the
local controller), with the preset's own `max_num_timeout`.
"""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from conftest import CONF_DIR, compose_config, dataset_overrides, ganlab_train, wait_for
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep

from ganlab.checkpoint import CHECKPOINT
from ganlab.train import train

# a tiny MNIST trial: a few steps of a small MLP, scored on 16 samples, one thread
TINY_MNIST = ["train.steps=2", "model.hidden=8", "log.every=1", "log.num_samples=4", "log.progress=false",
              "eval.num_samples=16", "device=cpu", "device.threads=1"]  # fmt: skip
# a toy run long enough (a few seconds) to be signalled part-way; checkpoints only when asked to stop and at the end
TOY = ["dataset=ring8", "log.progress=false", "eval.enabled=false", "device=cpu", "device.threads=1", "log.every=50",
       "log.sample_every=0", "train.steps=1000", "train.checkpoint_every=0"]  # fmt: skip


def hydra_settings(overrides: list[str]):
    """The `hydra` node of the real config composed with `overrides` (composing launches nothing)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True).hydra


# ---------------------------------------------------------------------------------------------------------------------
# Optuna: conf/hydra/sweeper/fid_search.yaml


def in_search_space(space, value) -> bool:
    """Whether Optuna may draw `value` from a Hydra sweep expression: choice(...) or [tag(log,)] interval(...)."""
    if isinstance(space, ChoiceSweep):
        return value in space.list
    if isinstance(space, IntervalSweep):
        return space.start <= value <= space.end
    raise TypeError(f"the fid_search preset uses a sweep this test does not know: {space}")


def trials(sweep: Path, searched: set[str]) -> list[dict]:
    """Each trial job of a finished sweep, in the order Optuna ran them: its drawn params, summary and objective."""
    jobs, parser = [], OverridesParser.create()
    for saved in sweep.glob("*/.hydra/hydra.yaml"):
        folder = saved.parent.parent
        hydra = yaml.safe_load(saved.read_text())["hydra"]
        overrides = {o.key_or_group: o.value() for o in parser.parse_overrides(hydra["overrides"]["task"])}
        config = yaml.safe_load((folder / "config.yaml").read_text())  # what ganlab trained with, resolved
        summary = json.loads((folder / "metrics.json").read_text())
        jobs.append(
            {
                "num": hydra["job"]["num"],
                "folder": folder.name,
                "params": {key: overrides[key] for key in searched},
                "summary": summary,
                "objective": summary["metrics"].get(config["eval"]["objective"]),
                "objective_name": config["eval"]["objective"],
            }
        )
    return sorted(jobs, key=lambda job: job["num"])


def test_the_fid_search_preset_runs_seeded_search_trials_scored_by_fid(tmp_path, data_root):
    preset = hydra_settings(["hydra/sweeper=fid_search"]).sweeper
    assert preset._target_.endswith("SearchSweeper") and preset.direction == "minimize"  # FID: lower is better
    parser = OverridesParser.create()
    space = {key: parser.parse_override(f"{key}={value}").value() for key, value in preset.params.items()}

    def sweep(folder: str) -> Path:
        result = ganlab_train("-m", "hydra/sweeper=fid_search", "hydra.sweeper.n_trials=2",
                              *dataset_overrides("mnist", data_root), *TINY_MNIST, f"hydra.sweep.dir={folder}",
                              cwd=tmp_path)  # fmt: skip
        assert result.returncode == 0, result.stderr
        return tmp_path / folder

    first = sweep("first")
    jobs = trials(first, set(space))
    assert len(jobs) == 2
    for job in jobs:
        assert job["summary"]["status"] == "completed", job["summary"]
        assert job["objective_name"] == "fid" and math.isfinite(job["objective"] or math.nan), job["summary"]
        assert all(in_search_space(space[key], value) for key, value in job["params"].items()), job["params"]
    assert jobs[0]["params"] != jobs[1]["params"]  # two trials, two proposals (the learning rate is continuous)

    results = yaml.safe_load((first / "optimization_results.yaml").read_text())
    best = min(jobs, key=lambda job: job["objective"])
    assert results["best_value"] == min(job["objective"] for job in jobs)
    assert results["best_params"] == best["params"]

    # a new study (another sweep folder) with the preset's seeded sampler proposes the same trials: reproducible
    again = trials(sweep("second"), set(space))
    assert [job["params"] for job in again] == [job["params"] for job in jobs]
    assert [job["folder"] for job in again] == [job["folder"] for job in jobs]


# ---------------------------------------------------------------------------------------------------------------------
# SLURM: conf/hydra/launcher/slurm.yaml, its requeue path run by submitit's local executor


def submitit_signal() -> signal.Signals:
    """The signal submitit has SLURM send before a job's time limit (USR2 unless SUBMITIT_PREEMPT_SIGNAL says so)."""
    from submitit import JobEnvironment

    return signal.Signals(JobEnvironment._usr_sig())


def parent_pid(pid: int) -> int | None:
    """The parent of a live (not zombie) process, or None once it has ended."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid = stat.rsplit(")", 1)[1].split()[:2]  # fields after "(comm)": state, ppid, ...
    return None if state in ("Z", "X") else int(ppid)


def job_task(controller: int) -> int | None:
    """The pid of the task submitit's local controller `controller` runs (`python -m submitit.core._submit`)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and parent_pid(int(entry.name)) == controller:
            try:
                if b"submitit.core._submit" in (entry / "cmdline").read_bytes():
                    return int(entry.name)
            except OSError:
                continue
    return None


def test_a_timed_out_submitit_job_checkpoints_is_requeued_and_resumes(tmp_path):
    slurm = hydra_settings(["hydra/launcher=slurm"]).launcher
    assert slurm._target_.endswith("SlurmLauncher")
    # without requeues (the plugin's default, 0) a timed-out job ends there; the preset allows some
    assert slurm.max_num_timeout >= 1
    assert 0 < slurm.signal_delay_s < 60 * slurm.timeout_min  # the signal comes before the time limit
    usr_signal = submitit_signal()

    # the local launcher takes the preset's max_num_timeout. It cannot take signal_delay_s (submitit's AutoExecutor
    # refuses local_signal_delay_s), so the test sends the signal itself, as SLURM would signal_delay_s before the
    # limit. With timeout_min=1, submitit's handler counts any signal as a time-out (it ran past min(0.8 x limit,
    # limit - 10 min)), so each one spends one of max_num_timeout, as a time-out on SLURM does.
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "ganlab.train", "-m", *TOY, "hydra/launcher=submitit_local",
               f"+hydra.launcher.max_num_timeout={slurm.max_num_timeout}", "hydra.launcher.timeout_min=1",
               f"hydra.sweep.dir={sweep}"]  # fmt: skip
    with (tmp_path / "stdout").open("w") as stdout:
        process = subprocess.Popen(
            command,
            cwd=tmp_path,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the launcher, submitit's controller and its task: one group to clean up
            env=os.environ | {"OMP_NUM_THREADS": "1"},
        )
    try:
        submitted = sweep / ".submitit"

        def training() -> bool:
            assert process.poll() is None, (tmp_path / "stdout").read_text()  # ended before it was signalled
            return any("step 50/1000 " in log.read_text() for log in sweep.glob("*/train.log"))

        wait_for(training, "the job to train")
        (job_folder,) = (p for p in submitted.iterdir() if p.name.isdigit())
        controller = int(job_folder.name)  # the local job id is its controller's pid
        (run_log,) = sweep.glob("*/train.log")
        run_dir = run_log.parent
        task = job_task(controller)
        assert task is not None, "no task under submitit's local controller"

        os.kill(task, usr_signal)  # what SLURM sends signal_delay_s before the time limit
        signalled = time.monotonic()
        wait_for(lambda: parent_pid(task) is None, "the signalled task to exit")
        # it checkpointed and handed back within the grace the preset gives (else SLURM would have killed it)
        assert time.monotonic() - signalled < slurm.signal_delay_s
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    output = (tmp_path / "stdout").read_text()
    assert process.returncode == 0, output

    summary = json.loads((run_dir / "metrics.json").read_text())
    assert (summary["status"], summary["step"]) == ("completed", 1000), summary
    log = run_log.read_text()
    stops = [int(step) for step in re.findall(rf"stopped by {usr_signal.name} at step (\d+)", log)]
    resumes = [int(step) for step in re.findall(r"resuming .* from step (\d+)", log)]
    assert stops and resumes == stops, log  # each requeued attempt continued where the signalled one checkpointed
    assert all(50 <= step < 1000 for step in stops)
    assert log.count("step 50/1000 ") == 1  # never restarted from step 0

    # submitit's side: its handler called the launcher's checkpoint, dumped the job again with one time-out spent,
    # requeued it (exit 144, restarted by the controller), and the restarted attempt's result is the job's result
    from submitit import LocalJob
    from submitit.core.utils import DelayedSubmission

    job_log = "".join((job_folder / f"{controller}_0_log.{kind}").read_text() for kind in ("out", "err"))
    assert f"Caught signal {usr_signal.name}" in job_log and "this job is timed-out" in job_log
    remaining = re.findall(rf"submitit INFO \(.*\) - Requeued job {controller} \((\d+) remaining timeouts\)", job_log)
    assert [int(n) for n in remaining] == [slurm.max_num_timeout - k for k in range(1, len(stops) + 1)], job_log
    requeued = DelayedSubmission.load(job_folder / f"{controller}_submitted.pkl")
    assert requeued._timeout_countdown == slurm.max_num_timeout - len(stops)
    (job_return,) = LocalJob(submitted / "%j", str(controller)).results()
    assert job_return.status.name == "COMPLETED" and Path(job_return.hydra_cfg.hydra.runtime.output_dir) == run_dir

    # and the run is the one an uninterrupted run trains: the same weights, bit for bit
    train(compose_config(TOY), tmp_path / "straight")
    straight = torch.load(tmp_path / "straight" / CHECKPOINT, weights_only=False)
    requeued_run = torch.load(run_dir / CHECKPOINT, weights_only=False)
    assert straight["step"] == requeued_run["step"] == 1000
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, requeued_run["model"][name]), name
    for key in ("g_opt", "d_opt"):
        for index, state in straight[key]["state"].items():
            for name, value in state.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(requeued_run[key]["state"][index][name]))
