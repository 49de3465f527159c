"""One run across processes (issue 15): torchrun with gloo on the CPU, 2 ranks of 1 thread each, against 1 process.

Each test starts the real `python -m torch.distributed.run ... -m ganlab.train` and reads back what the run wrote.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import compose_config, dataset_overrides, wait_for

from ganlab.checkpoint import CHECKPOINT, load_checkpoint
from ganlab.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

QUICK = ["device=cpu", "device.threads=1", "log.progress=false", "eval.enabled=false", "log.every=5"]
RTOL = 1e-3  # summation order alone moves the weights by about 1e-4 after 30 steps


def torchrun(*overrides: str, cwd: Path, restarts: int = 0) -> subprocess.Popen:
    """Two ranks of `ganlab.train` under torchrun (standalone rendezvous, gloo), one thread each."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               f"--max-restarts={restarts}", "-m", "ganlab.train", *overrides]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def finish(process: subprocess.Popen, timeout: int = 300) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||: the whole tensor's relative change (elementwise, tiny weights would dominate)."""
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def assert_close_runs(a: Path, b: Path, exact: bool = False) -> None:
    """G, D, EMA and both optimisers' tensors of two runs' checkpoints agree within a relative RTOL (or bit for
    bit), at the same step."""
    left, right = (torch.load(d / CHECKPOINT, weights_only=True) for d in (a, b))
    assert left["step"] == right["step"]
    pairs = [
        (f"{key} {name}", t, right[key][name]) for key in ("model", "ema") for name, t in (left[key] or {}).items()
    ]
    for key in ("g_opt", "d_opt"):
        for index, state in left[key]["state"].items():
            pairs += [(f"{key} {index} {name}", v, right[key]["state"][index][name]) for name, v in state.items()]
    for name, x, y in pairs:
        if exact:
            assert torch.equal(torch.as_tensor(x), torch.as_tensor(y)), name
        elif torch.as_tensor(x).is_floating_point():
            assert relative_difference(x, y) <= RTOL, f"{name}: {relative_difference(x, y):.2e}"


@pytest.mark.parametrize(
    "case",
    [
        ["experiment=best_mlp_mnist"],
        ["model=mlp", "model.hidden=64", "loss=wgan-gp", "train.d_steps=2"],  # a double backward on each rank
        # conditional (without BatchNorm, whose statistics are per rank on the CPU), AC-GAN's term, spectral norm
        [
            "model.hidden=64",
            "model.conditional=true",
            "model.g_condition=concat",
            "model.d_condition=acgan",
            "model.spectral_norm=true",
            "loss=hinge",
        ],  # fmt: skip
        # R1 and R2 (double backwards), LeCam's averages of the global batch, the relativistic G step
        ["model.hidden=64", "loss=rpgan", "penalty=[r1,r2,lecam]", "penalty.r1.every=2", "train.d_steps=2"],
    ],
    ids=["best_mlp_mnist", "wgan-gp", "conditional", "penalties"],
)
def test_two_ranks_train_what_one_process_trains_with_the_same_global_batch(tmp_path, data_root, case):
    overrides = [*case, *dataset_overrides("mnist", data_root), *QUICK, "train.steps=30", "train.batch_size=32"]
    # rank 0 alone evaluates, twice during the run and at its end: the ranks' random streams must stay equal
    overrides += ["eval.enabled=true", "eval.times=3", "eval.num_samples=20", "eval.during_samples=20"]
    train(compose_config(overrides), tmp_path / "one")
    code, out, err = finish(torchrun(*overrides, f"hydra.run.dir={tmp_path / 'two'}", cwd=tmp_path))
    assert code == 0, err[-3000:]
    assert_close_runs(tmp_path / "one", tmp_path / "two")
    # a slicing or averaging mistake moves the weights by far more than RTOL: the comparison can fail
    wrong = [*overrides, "train.batch_size=16"]
    train(compose_config(wrong), tmp_path / "half")
    with pytest.raises(AssertionError):
        assert_close_runs(tmp_path / "half", tmp_path / "two")


def test_a_two_rank_run_writes_once_and_its_checkpoint_moves_between_one_and_two_processes(tmp_path, data_root):
    overrides = ["experiment=best_mlp_mnist", *dataset_overrides("mnist", data_root), *QUICK, "train.batch_size=32"]
    two = tmp_path / "two"
    code, out, err = finish(torchrun(*overrides, "train.steps=10", f"hydra.run.dir={two}", cwd=tmp_path))
    assert code == 0, err[-3000:]
    assert len(list(two.glob("events.out.tfevents.*"))) == 1
    assert len(list(two.rglob("metrics.json"))) == 1
    assert err.count("ganlab: error") == 0 and out.count("completed at step 10") == 1  # one console: rank 0's
    # the 2-rank checkpoint continues in one process, and that one's in 2 ranks
    summary = train(compose_config([*overrides, "train.steps=15"]), two)
    assert (summary["status"], summary["step"]) == ("completed", 15)
    code, out, err = finish(torchrun(*overrides, "train.steps=20", f"hydra.run.dir={two}", cwd=tmp_path))
    assert code == 0, err[-3000:]
    assert "resuming" in out and load_checkpoint(two)["step"] == 20


def test_a_global_batch_that_does_not_divide_is_one_sentence(tmp_path, data_root):
    overrides = [*dataset_overrides("mnist", data_root), *QUICK, "train.batch_size=33", "train.steps=2"]
    code, out, err = finish(torchrun(*overrides, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path))
    assert code != 0
    lines = [line for line in err.splitlines() if line.startswith("ganlab: error")]
    assert lines == [
        "ganlab: error: train.batch_size=33 does not divide by the 2 processes: use a multiple of 2, since every "
        "process trains on an equal slice of the global batch."
    ]


def rank_pid(parent: int, rank: int) -> int | None:
    """The PID of the worker with `RANK=rank` among the descendants of torchrun's process `parent`."""
    for pid in subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout.split():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    return None


def test_a_killed_rank_is_restarted_by_torchrun_and_the_run_ends_as_if_uninterrupted(tmp_path, data_root):
    overrides = ["experiment=best_mlp_mnist", *dataset_overrides("mnist", data_root), *QUICK, "train.batch_size=32",
                 "train.steps=400", "train.checkpoint_every=20", "log.sample_every=0"]  # fmt: skip
    code, _, err = finish(torchrun(*overrides, f"hydra.run.dir={tmp_path / 'straight'}", cwd=tmp_path))
    assert code == 0, err[-3000:]

    run_dir = tmp_path / "killed"
    process = torchrun(*overrides, f"hydra.run.dir={run_dir}", cwd=tmp_path, restarts=1)

    def checkpointed() -> bool:
        try:
            return load_checkpoint(run_dir)["step"] >= 60 or process.poll() is not None
        except Exception:  # nothing written yet
            return False

    wait_for(checkpointed, "a checkpoint at step 60")
    victim = rank_pid(process.pid, 1)
    assert victim is not None, "no rank 1 worker found"
    killed_at = load_checkpoint(run_dir)["step"]
    os.kill(victim, signal.SIGKILL)
    code, out, err = finish(process)
    assert code == 0, err[-3000:]
    assert killed_at < 400, "the run finished before it was killed: make it longer"
    assert "resuming" in out
    assert_close_runs(tmp_path / "straight", run_dir, exact=True)  # the same ranks, the same order


def test_sigterm_to_one_rank_stops_every_rank_with_one_checkpoint_and_the_run_resumes(tmp_path, data_root):
    run_dir = tmp_path / "run"
    overrides = ["experiment=best_mlp_mnist", *dataset_overrides("mnist", data_root), *QUICK, "train.batch_size=32",
                 "train.checkpoint_every=0", f"hydra.run.dir={run_dir}"]  # fmt: skip
    process = torchrun(*overrides, "train.steps=100000", cwd=tmp_path)
    wait_for(lambda: rank_pid(process.pid, 1) is not None, "rank 1")
    time.sleep(8)  # well into training
    os.kill(rank_pid(process.pid, 1), signal.SIGTERM)
    code, out, err = finish(process)
    assert code == 0, err[-3000:]
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["status"] == "stopped by SIGTERM" and summary["step"] > 0
    assert load_checkpoint(run_dir)["step"] == summary["step"]  # the stop's own checkpoint, written by rank 0
    code, out, err = finish(torchrun(*overrides, f"train.steps={summary['step'] + 5}", cwd=tmp_path))
    assert code == 0, err[-3000:]
    assert f"resuming {run_dir} from step {summary['step']}" in out


def test_a_submitit_job_of_two_tasks_trains_one_run_across_them(tmp_path, data_root):
    """hydra/launcher=submitit_local with 2 tasks: the job's tasks form one process group (submitit's
    TorchDistributedEnvironment), as `submitit_slurm` with `tasks_per_node` does on a cluster."""
    overrides = ["experiment=best_mlp_mnist", *dataset_overrides("mnist", data_root), *QUICK, "train.steps=30",
                 "train.batch_size=32"]  # fmt: skip
    train(compose_config(overrides), tmp_path / "one")
    sweep = tmp_path / "sweep"
    launcher = ["hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2", "hydra.launcher.cpus_per_task=1"]
    command = [sys.executable, "-m", "ganlab.train", "-m", *overrides, "seed=0", *launcher, f"hydra.sweep.dir={sweep}"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env=os.environ | {"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (job,) = [path.parent for path in sweep.rglob(CHECKPOINT)]
    assert len(list(job.glob("events.out.tfevents.*"))) == 1
    assert json.loads((job / "metrics.json").read_text())["status"] == "completed"
    assert_close_runs(tmp_path / "one", job)


def test_rank_0s_call_to_stop_early_stops_every_rank_at_the_same_step(tmp_path, data_root):
    """Rank 0 alone evaluates; its verdict (here train.patience's, a pruner's takes the same path) reaches every
    rank through the per-step agreement, so no rank waits for a collective the others have left."""
    run = tmp_path / "run"
    overrides = [*dataset_overrides("mnist", data_root), *QUICK, "model.hidden=16", "train.batch_size=8",
                 "train.steps=200", "eval.enabled=true", "eval.every=1", "eval.num_samples=16",
                 "eval.during_samples=16", "train.patience=2", "eval.objective=nothing"]  # fmt: skip
    code, out, err = finish(torchrun(*overrides, f"hydra.run.dir={run}", cwd=tmp_path))
    assert code == 0, err[-3000:]
    summary = json.loads((run / "metrics.json").read_text())
    assert (summary["status"], summary["step"]) == ("early_stopped", 3)  # judged at step 2, stopped at 3
    assert load_checkpoint(run)["step"] == 3
