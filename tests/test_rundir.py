"""One process per run folder, and no folder left behind by a run that could not start."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import compose_config, dataset_overrides

from ganlab.rundir import LOCK, RunDirBusy, RunLock
from ganlab.train import train

QUICK = ["train.batch_size=4", "log.num_samples=4", "model.hidden=16", "eval.enabled=false", "log.progress=false",
         "device.threads=1"]  # fmt: skip
# a child process that holds a folder's lock until its stdin closes
HOLDER = "import sys; from ganlab.rundir import RunLock; RunLock.acquire(sys.argv[1]); print('held', flush=True); " \
         "sys.stdin.read()"  # fmt: skip


def ganlab_train(cwd: Path, *overrides: str) -> subprocess.Popen:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "ganlab.train", *overrides]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_the_same_command_twice_at_once_trains_once(tmp_path, data_root):
    """Two identical commands 8 s apart: one trains to the end, the other exits non-zero with one line."""
    overrides = [*QUICK, f"dataset.root={data_root}", "train.steps=100000000", "train.max_seconds=25",
                 "hydra.run.dir=run"]  # fmt: skip
    started = time.monotonic()
    first = ganlab_train(tmp_path, *overrides)
    deadline = started + 60
    while not (tmp_path / "run" / LOCK).exists() or not (tmp_path / "run" / LOCK).read_text():
        assert time.monotonic() < deadline and first.poll() is None, first.communicate()
        time.sleep(0.2)
    time.sleep(max(0.0, started + 8 - time.monotonic()))
    second = ganlab_train(tmp_path, *overrides)
    _, second_err = second.communicate(timeout=120)
    _, first_err = first.communicate(timeout=120)
    assert first.returncode == 0, first_err
    assert second.returncode == 2
    (line,) = second_err.strip().splitlines()
    assert line.startswith("ganlab: error: run dir") and f"PID {first.pid}" in line and "in use" in line
    run_dir = tmp_path / "run"
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "time_budget"
    assert (run_dir / LOCK).read_text() == ""  # released cleanly at the end


def test_a_folder_held_by_another_process_is_refused_and_untouched(tmp_path, data_root):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        cfg = compose_config(QUICK + dataset_overrides("mnist", data_root) + ["train.steps=2"])
        with pytest.raises(RunDirBusy, match=rf"{run_dir} is in use by PID {holder.pid} on"):
            train(cfg, run_dir)
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK]
    finally:
        holder.communicate("")


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_warning(tmp_path, data_root, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / LOCK).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    cfg = compose_config(QUICK + dataset_overrides("mnist", data_root) + ["train.steps=2"])
    assert train(cfg, run_dir)["status"] == "completed"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "took over" in r.getMessage()]
    assert len(warnings) == 1 and dead.stdout.strip() in warnings[0]


def test_a_lock_left_on_another_host_is_taken_over_since_flock_decides(tmp_path, caplog):
    """A requeued SLURM job lands on another node: the released lock of its first run must not keep it out."""
    (tmp_path / LOCK).write_text(json.dumps({"pid": 1, "host": "some-other-host"}))
    with RunLock.acquire(tmp_path):
        assert json.loads((tmp_path / LOCK).read_text())["host"] == socket.gethostname()
    assert any("PID 1 on host some-other-host" in r.getMessage() for r in caplog.records)


def test_the_same_folder_spelt_with_dots_is_one_lock(tmp_path):
    (tmp_path / "a").mkdir()
    with RunLock.acquire(tmp_path / "run") as lock:
        assert RunLock.acquire(tmp_path / "a" / ".." / "run") is lock
        lock.release()


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    with RunLock.acquire(tmp_path) as outer:
        with RunLock.acquire(tmp_path) as inner:
            assert inner is outer
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    assert (tmp_path / LOCK).read_text() == ""


def test_a_run_that_cannot_start_leaves_no_folder(tmp_path, data_root):
    bad = ganlab_train(
        tmp_path, f"dataset.root={data_root}", "model=dcgan", "dataset.image_size=48", "hydra.run.dir=new"
    )
    _, err = bad.communicate(timeout=120)
    assert bad.returncode == 2 and "dataset.image_size=48" in err
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    bad = ganlab_train(tmp_path, *QUICK, f"dataset.root={data_root}", "train.batch_size=0", "hydra.run.dir=kept")
    bad.communicate(timeout=120)
    assert bad.returncode == 2 and (tmp_path / "kept" / "notes.txt").read_text() == "mine"
