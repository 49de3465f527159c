"""What makes a sweep survive, read well and scale: folder names that the same command finds again, job names that
say what varies, and sharing the machine.

Run and sweep folders are named by the command's overrides, not by the time, so re-running a command lands in the
folder it used before, and `train.resume` (on by default) continues each interrupted job there and skips finished
ones. Inside a sweep, each job's folder (and so its TensorBoard run name) holds only the overrides that vary between
the jobs (`loss=hinge,seed=0`): what is constant already names the sweep folder. A joblib launcher's parallel jobs
split the CPU threads between them and take the visible GPUs in turn.
"""

import hashlib
import logging
import os
import re
import shlex
import signal
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ganlab.config import EXECUTION_KEYS
from ganlab.entry import INTERRUPTED
from ganlab.runfolder import RAN_TO_ITS_END, Status

log = logging.getLogger("ganlab")

# overrides that do not change what a run computes, so they do not name its folder
UNNAMED_KEYS = EXECUTION_KEYS
MAX_NAME = 200  # characters of a folder name (most file systems allow 255); a longer one ends in a hash
# characters of a job's name: TensorBoard cuts run names to about 25-40 characters in its run list, legends and cards
MAX_JOB_NAME = 40


def folder_name(overrides: str, limit: int = MAX_NAME) -> str:
    """A safe, deterministic folder name for a comma-joined override list ("default" when there is none).

    A name longer than `limit` keeps its start and ends in a hash of the whole, so two names never meet.
    """
    name = re.sub(r"[^\w.,=+\-\[\]:@%]", "_", overrides) or "default"
    if len(name) > limit:
        name = f"{name[: limit - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


def named_overrides(overrides: Sequence[str]) -> list[str]:
    """The overrides that name a run or sweep folder, sorted, so their order on the command line does not matter.

    Hydra's own settings (`hydra.*`, `hydra/launcher=...`) and the keys of UNNAMED_KEYS are left out, so the same
    sweep continues in the same folder whichever launcher runs it; the sweeper and its parameters stay in. For
    `dataset=folder`, `dataset.root` is the dataset itself, so it names the folder too.
    """
    items = [str(override) for override in overrides if "=" in str(override)]
    key = {item: item.split("=", 1)[0].lstrip("+~") for item in items}
    folder_dataset = any(key[item] == "dataset" and "folder" in item.split("=", 1)[1].split(",") for item in items)

    def names_folder(item: str) -> bool:
        if key[item].startswith("hydra"):  # where and how a sweep runs does not change what it computes
            return key[item].startswith(("hydra/sweeper", "hydra.sweeper"))
        return key[item] not in UNNAMED_KEYS or (key[item] == "dataset.root" and folder_dataset)

    return sorted(item for item in items if names_folder(item))


def command_overrides(argv: Sequence[str]) -> list[str]:
    """The overrides of a command line (`sys.argv`): its arguments without the program and flags such as -m."""
    return [str(argument) for argument in list(argv)[1:] if not str(argument).startswith("-")]


def command_folder(argv: Sequence[str]) -> str:
    """The folder name of a run or sweep started with the command line `argv`: its named overrides."""
    return folder_name(",".join(named_overrides(command_overrides(argv))))


def swept_overrides(argv: Sequence[str], sweeper_params: DictConfig | dict | None = None) -> dict[str, Override]:
    """The keys a sweep varies, each with the override that gives its values (`loss=lsgan,hinge`), in command order.

    Hydra's own parser tells a sweep (`a,b`, `range()`, `choice()`, `interval()`, `glob()`) from a single value.
    The sweeper's search space (`hydra.sweeper.params`, e.g. the Optuna preset's) counts too: every job of such a
    sweeper varies in every one of those keys; the command line's sweep of a key wins over the preset's.
    """
    parser = OverridesParser.create()
    params = [f"{key}={value}" for key, value in (sweeper_params or {}).items()]
    swept = {override.key_or_group: override for override in parser.parse_overrides(params)}
    for override in parser.parse_overrides([item for item in command_overrides(argv) if "=" in item]):
        if override.is_sweep_override():
            swept[override.key_or_group] = override
    return swept


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Each key by its last component (`train.lr` -> `lr`) where no other key ends the same, else in full."""
    last = {key: re.split(r"[./]", key)[-1] for key in keys}
    counts = Counter(last.values())
    return {key: last[key] if counts[last[key]] == 1 else key for key in keys}


def job_name(task_overrides: Sequence[str], argv: Sequence[str], sweeper_params=None) -> str:
    """A sweep job's folder and TensorBoard run name: its values of the swept keys, `loss=hinge,seed=0`.

    Deterministic, so a re-run of the sweep finds each job again; at most MAX_JOB_NAME characters, a longer name
    cut with a hash of the whole, so two jobs never share one.
    """
    swept = swept_overrides(argv, sweeper_params)
    short = short_keys(list(swept))
    parsed = OverridesParser.create().parse_overrides([str(item) for item in task_overrides if "=" in str(item)])
    parts = sorted(f"{short[o.key_or_group]}={value_text(o)}" for o in parsed if o.key_or_group in swept)
    return folder_name(",".join(parts), MAX_JOB_NAME)


def value_text(override: Override) -> str:
    """An override's value as the command line wrote it; a boolean as YAML writes it (Hydra's sweepers write False)."""
    value = override.value()
    return str(value).lower() if isinstance(value, bool) else override.input_line.split("=", 1)[1]


def _job_resolver(task_overrides, argv, _root_: DictConfig) -> str:
    return job_name(list(task_overrides), list(argv), OmegaConf.select(_root_, "hydra.sweeper.params", default=None))


def register_resolvers() -> None:
    """`${ganlab_argv:}`, `${ganlab_folder:<argv>}` and `${ganlab_job:<overrides>,<argv>}`, which name run folders.

    `ganlab_argv` is the command line, cached: Hydra copies the sweep's resolver cache into every job's config, so
    the jobs (in joblib or submitit workers too, whose own `sys.argv` is another program's) see the command that
    started the sweep, name their folders from it, and record it (ganlab.hparams.RunRecord).
    """
    if not OmegaConf.has_resolver("ganlab_argv"):
        OmegaConf.register_new_resolver("ganlab_argv", lambda: list(sys.argv), use_cache=True)
    if not OmegaConf.has_resolver("ganlab_folder"):
        OmegaConf.register_new_resolver("ganlab_folder", lambda argv: command_folder(list(argv)))
    if not OmegaConf.has_resolver("ganlab_job"):
        OmegaConf.register_new_resolver("ganlab_job", _job_resolver)


def command_argv(cfg: DictConfig) -> list[str]:
    """The command line that started this run or sweep, as `${ganlab_argv:}` cached it in `cfg` (Hydra's config)."""
    probe = OmegaConf.create({"argv": "${ganlab_argv:}"})
    OmegaConf.copy_cache(from_config=cfg, to_config=probe)  # a job's own sys.argv may be a launcher worker's
    return [str(argument) for argument in probe.argv]


def parallel_jobs(hydra_cfg: DictConfig) -> int:
    """How many jobs of this sweep the launcher runs at once on this machine: joblib's n_jobs, else 1."""
    launcher = OmegaConf.to_container(hydra_cfg.launcher, resolve=True) if "launcher" in hydra_cfg else {}
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return 1
    import joblib  # installed with the joblib launcher, which is the one running this job

    return joblib.effective_n_jobs(launcher.get("n_jobs", -1))


def share_machine(device_cfg: DictConfig, jobs: int, job_num: int) -> None:
    """Give this job its share when `jobs` run at once: cores / jobs CPU threads, and GPU `job_num` mod the count.

    Without this, two jobs each start a thread per core and spin-wait on each other's cores, which on a small
    machine makes each job 10-50x slower than running them one after the other.
    """
    if jobs <= 1:
        return
    if device_cfg.threads is None:
        device_cfg.threads = max(1, (os.cpu_count() or 1) // jobs)
    if device_cfg.type in ("auto", "cuda") and torch.cuda.device_count() > 1:
        torch.cuda.set_device(job_num % torch.cuda.device_count())


def remember_command(config: DictConfig) -> None:
    """Resolve `${ganlab_argv:}` into `config`'s resolver cache, from which Hydra copies it into every job's config.

    Hydra resolves `hydra.sweep.dir` (which uses it) in the launching process, but not when the command sets that
    key itself; then a joblib or submitit worker would resolve the job's name from its own command line.
    """
    probe = OmegaConf.create({"argv": "${ganlab_argv:}"})
    OmegaConf.copy_cache(from_config=config, to_config=probe)
    _ = probe.argv  # resolved once here, from sys.argv unless the cache already had it
    OmegaConf.copy_cache(from_config=probe, to_config=config)


STOPPED = ".stopped"  # in a sweep folder while a Ctrl-C stops the sweep: no job starts, and the sweep exits 130


def sweep_stopped(sweep_dir: Path) -> bool:
    """Whether a Ctrl-C stopped the sweep in `sweep_dir`: its jobs then start no training."""
    return (Path(sweep_dir) / STOPPED).exists()


def stop_sweep(sweep_dir: Path) -> None:
    """Mark the sweep in `sweep_dir` stopped (by a Ctrl-C in the launching process or in a job's)."""
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    (Path(sweep_dir) / STOPPED).touch()


class SweepInterrupt:
    """The Ctrl-C handler of a sweep's process outside a training loop (between jobs, or while one starts): the
    first marks the sweep stopped, so a job in training stops with a checkpoint and no new job starts; the second
    aborts at once. In the loop, `ganlab.monitor.StopSignals` handles it."""

    def __init__(self, sweep_dir: Path):
        self.sweep_dir, self.heard = Path(sweep_dir), False

    def __call__(self, signum, frame) -> None:
        if self.heard:
            raise KeyboardInterrupt
        self.heard = True
        stop_sweep(self.sweep_dir)
        os.write(2, b"ganlab: Ctrl-C: the sweep stops; its running jobs checkpoint (Ctrl-C again aborts)\n")

    def install(self):
        """Handle SIGINT in this process; returns the handler it replaces (None if this is not the main thread)."""
        try:
            return signal.signal(signal.SIGINT, self)
        except ValueError:
            return None


class SweepSummary(Callback):
    """Hydra callback: before a multirun, remember its command for the jobs and say where it writes; after it, log
    how many jobs completed and list the ones that diverged or failed.

    A Ctrl-C stops a sweep on this machine as it stops a run: the running jobs (in this process, or joblib's workers)
    checkpoint and return, no new job starts, and the sweep exits 130 at the end. A second Ctrl-C aborts at once.
    """

    def __init__(self):
        self._previous_handler = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        remember_command(config)
        sweep_dir = Path(config.hydra.sweep.dir)
        (sweep_dir / STOPPED).unlink(missing_ok=True)  # the same command continues a stopped sweep
        log.info("sweeping in %s; watch it with: tensorboard --logdir %s", sweep_dir, shlex.quote(str(sweep_dir)))

        # joblib's workers get the Ctrl-C too: their jobs mark the sweep stopped and stop themselves, while this
        # process ignores it, so it waits for them instead of killing them, and a worker it starts ignores it until
        # its job listens (`hydra_main`). Jobs elsewhere (SLURM) never get it: a Ctrl-C ends only this process.
        launcher = str(OmegaConf.select(config, "hydra.launcher._target_"))
        if "BasicLauncher" in launcher:
            self._previous_handler = SweepInterrupt(sweep_dir).install()
        elif "joblib" in launcher.lower():
            self._previous_handler = signal.signal(signal.SIGINT, signal.SIG_IGN)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from ganlab.sweep_jobs import load_jobs  # reads a sweep dir, partial sweeps included

        sweep_dir = Path(config.hydra.sweep.dir)
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
        if sweep_stopped(sweep_dir):
            (sweep_dir / STOPPED).unlink()
            print(f"ganlab: sweep {sweep_dir} stopped by Ctrl-C with its jobs' checkpoints: run the same command to "
                  f"continue it.", file=sys.stderr)  # fmt: skip
            sys.exit(INTERRUPTED)
        jobs = load_jobs(sweep_dir, curves=False)
        counts = Counter(job.status for job in jobs)
        log.info("sweep %s: %d jobs, %s", sweep_dir, len(jobs), ", ".join(f"{n} {s}" for s, n in counts.items()))
        for job in jobs:
            if job.status == Status.DIVERGED:
                log.warning("diverged: %s (at step %s)", job.name, job.steps)
            elif job.status not in RAN_TO_ITS_END:
                log.warning("%s: %s%s", job.status, job.name, f" ({job.error})" if job.error else "")
        log.info("table and figure: ganlab-report %s", sweep_dir)
