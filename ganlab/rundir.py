"""A run folder's rules: one process at a time, what a folder already holds, and whether to train, continue or skip.

Folders are named by the command line (ganlab/sweep.py), so running a command again finds its folder: `open_run`
decides from the folder alone whether the run is new, to be continued, or finished (and so skipped), and refuses a
folder that holds a run of another config. `RunLock` keeps a second process off a folder while a run trains.
"""

import atexit
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ganlab.config import RESUMABLE_KEYS, absolute_paths
from ganlab.distributed import is_writer_process
from ganlab.errors import CheckpointError, ConfigError, GanlabError
from ganlab.runfolder import CONFIG, FINAL, LOCK, Status, holds_run, read_summary, write_summary

log = logging.getLogger("ganlab")

HYDRA_FILES = (".hydra", "train.log", LOCK)  # what a folder holds before its run has started


class RunDirBusy(GanlabError):
    """Another live process holds the run folder."""


class RunLock:
    """An exclusive `flock` on `<run_dir>/.lock`, which names the PID and host that hold it.

    The kernel drops the lock when its process dies, even by SIGKILL, so a lock left behind is simply taken over
    (with a warning naming the dead PID). `acquire` is re-entrant within a process: the Hydra callback locks the
    folder before Hydra writes in it, and `train` locks it again, also when called directly.
    """

    _held: dict[Path, "RunLock"] = {}

    def __init__(self, run_dir: Path, fd: int, created_dir: bool):
        self.run_dir, self.fd, self.created_dir, self.depth = run_dir, fd, created_dir, 1

    @classmethod
    def acquire(cls, run_dir: Path) -> "RunLock":
        """Lock `run_dir` (creating it) for this process, or raise RunDirBusy naming the PID that holds it."""
        run_dir = _key(run_dir)
        if run_dir in cls._held:
            cls._held[run_dir].depth += 1
            return cls._held[run_dir]
        created_dir = not run_dir.exists()
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise ConfigError(
                f"cannot write to the run dir {run_dir} ({error.strerror}): set hydra.run.dir to a writable folder."
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = _read_holder(fd)
            os.close(fd)
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise ConfigError(
                    f"cannot lock the run dir {run_dir} ({error.strerror}): use a local folder."
                ) from None
            raise RunDirBusy(
                f"run dir {run_dir} is in use by PID {holder.get('pid', '?')} on {holder.get('host', '?')}: wait "
                f"for that run to end, or set hydra.run.dir to another folder."
            ) from None
        previous = _read_holder(fd)
        if previous:
            _take_over(run_dir, previous)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode(), 0)
        lock = cls._held[run_dir] = cls(run_dir, fd, created_dir)
        return lock

    def release(self) -> None:
        """Let go once every `acquire` of this process has released; an emptied lock file means a clean end."""
        self.depth -= 1
        if self.depth > 0 or self._held.get(self.run_dir) is not self:
            return
        del self._held[self.run_dir]
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass  # the folder was removed (discard) or became unwritable: the lock goes with the descriptor
        os.close(self.fd)

    def discard_if_unused(self) -> None:
        """Remove the run folder if this process created it and no run started in it (a start-up error)."""
        unused = all(path.name in HYDRA_FILES for path in self.run_dir.iterdir()) if self.run_dir.exists() else False
        if self.created_dir and unused:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}


def _key(run_dir: Path | str) -> Path:
    """The absolute, normalised path (no `..`), as Hydra's runtime.output_dir has it: one key per folder."""
    return Path(os.path.abspath(run_dir))


def _take_over(run_dir: Path, previous: dict) -> None:
    """Say whose lock this process takes over: the kernel released it, so its holder has ended.

    flock is the authority (the kernel drops it with the process, even on SIGKILL), so no PID or host is second-
    guessed: a requeued SLURM job on another node must be able to continue its own folder.
    """
    pid, host = previous.get("pid"), previous.get("host")
    where = "" if host == socket.gethostname() else f" on host {host}"
    log.warning("run dir %s: took over the lock left by PID %s%s, which is no longer running", run_dir, pid, where)


@atexit.register
def _release_all() -> None:
    """A process that exits early (sys.exit on a user error) still leaves its folders' locks released cleanly."""
    for lock in list(RunLock._held.values()):
        lock.depth = 1
        lock.release()


class RunDirLock(Callback):
    """Hydra callback: lock a single run's folder before Hydra writes its .hydra/ and train.log there.

    A second process with the same command then exits at once with one sentence and touches nothing.
    """

    def __init__(self):
        self.lock: RunLock | None = None

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        if not is_writer_process():  # under torchrun, rank 0 holds the folder for every rank
            return
        try:
            self.lock = RunLock.acquire(Path(OmegaConf.select(config, "hydra.run.dir")))
        except GanlabError as error:
            print(f"ganlab: error: {error}", file=sys.stderr)
            raise SystemExit(error.exit_code) from None

    def on_run_end(self, config: DictConfig, **kwargs) -> None:
        if self.lock is not None:
            self.lock.release()


def held_lock(run_dir: Path) -> RunLock | None:
    """This process's lock on `run_dir`, if it holds one."""
    return RunLock._held.get(_key(run_dir))


def finished_summary(run_dir: Path, cfg: DictConfig) -> dict | None:
    """The metrics.json summary of a run that has nothing left to do in `run_dir`, else None.

    Done means diverged, pruned, early-stopped, completed all `train.steps`, or used all of `train.max_seconds`; a
    stopped, failed or interrupted run (no metrics.json) still has work, and so does a finished one whose steps or
    budget were raised.
    """
    summary = read_summary(run_dir)
    if summary is None:
        return None
    status, budget = summary.get("status"), cfg.train.max_seconds
    if (
        status in (Status.DIVERGED, Status.PRUNED, Status.EARLY_STOPPED)
        or (status == Status.COMPLETED and summary.get("step", 0) >= cfg.train.steps)
        or (status == Status.TIME_BUDGET and budget is not None and summary.get("seconds", 0) >= budget)
    ):
        return summary
    return None


def flatten(node, prefix: str = "") -> dict:
    """A nested config as {"train.lr": 0.001, ...}."""
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def check_same_run(run_dir: Path, cfg: DictConfig) -> None:
    """Refuse to continue or skip a run whose saved config differs from `cfg` in what it trains.

    Folders are named by the command line, so an edited preset or config file would otherwise find the old run. A key
    the saved config lacks was added by a later ganlab, so a run written before it is continued as it was.
    """
    try:
        saved_cfg = OmegaConf.load(run_dir / CONFIG)
        absolute_paths(saved_cfg)  # older runs saved paths as typed, relative to the folder the command ran in
        saved = flatten(OmegaConf.to_container(saved_cfg))
    except (OSError, ValueError, TypeError):
        return  # no readable config: the checkpoint's own check (restore) still guards the weights
    current = flatten(OmegaConf.to_container(cfg, resolve=True))
    changed = [
        f"{key}: {saved.get(key)} -> {current.get(key)}"
        for key in sorted(saved)
        if not key.startswith(RESUMABLE_KEYS) and saved[key] != current.get(key)
    ]
    if changed:
        raise CheckpointError(
            f"run dir {run_dir} holds a run with a different config ({'; '.join(changed[:3])}): set hydra.run.dir "
            f"(hydra.sweep.dir for a sweep) to a new folder, or delete that one to start over."
        )


def open_run(run_dir: Path, cfg: DictConfig) -> dict | None:
    """Check what `run_dir` holds before training in it: the summary of a finished run (to skip), else None.

    A folder with a run in it is continued only with `train.resume` and the same config; a finished run is skipped.
    """
    if not holds_run(run_dir):
        return None
    if not cfg.train.resume:
        raise CheckpointError(
            f"run dir {run_dir} already holds a run: drop train.resume=false to continue it, "
            f"or set hydra.run.dir to a new folder."
        )
    check_same_run(run_dir, cfg)
    return finished_summary(run_dir, cfg)


def record_failure(run_dir: Path, error: str) -> None:
    """Mark a sweep job `failed` in its metrics.json (if its folder can be written), for the summary and report.

    A finished run's summary is never replaced: the error (e.g. a changed config) is about this attempt, not it.
    """
    if (read_summary(run_dir) or {}).get("status") in FINAL:
        return
    try:
        write_summary(run_dir, {"status": Status.FAILED, "error": error})
    except OSError:
        log.warning("could not record the failure in %s", run_dir)
