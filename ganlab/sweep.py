"""What makes a sweep survive and scale: folder names that the same command finds again, and sharing the machine.

Run and sweep folders are named by the command's overrides, not by the time, so re-running a command lands in the
folder it used before, and `train.resume` (on by default) continues each interrupted job there and skips finished
ones. A joblib launcher's parallel jobs split the CPU threads between them and take the visible GPUs in turn.
"""

import hashlib
import logging
import os
import re
import sys
from collections import Counter
from pathlib import Path

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("ganlab")

# overrides that do not change what a run computes, so they do not name its folder (Hydra's exclude_keys match)
UNNAMED_KEYS = ("dataset.root", "train.resume", "log.progress")
MAX_NAME = 200  # characters of a folder name (most file systems allow 255); a longer one ends in a hash


def folder_name(overrides: str) -> str:
    """A safe, deterministic folder name for a comma-joined override list ("default" when there is none)."""
    name = re.sub(r"[^\w.,=+\-\[\]:@%]", "_", overrides) or "default"
    if len(name) > MAX_NAME:
        name = f"{name[: MAX_NAME - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


def command_overrides(argv: list[str]) -> list[str]:
    """The task overrides of a `ganlab-train` command line, sorted: what names its run or sweep folder.

    Hydra's own settings (`hydra.*`, `hydra/launcher=...`) and the keys of UNNAMED_KEYS are left out, so the same
    sweep continues in the same folder whichever launcher runs it; the sweeper and its parameters stay in.
    """
    overrides = []
    for argument in argv:
        if argument.startswith("-") or "=" not in argument:
            continue  # flags such as -m, and the values of --config-name and the like
        key = argument.split("=", 1)[0].lstrip("+~")
        if (key.startswith("hydra") and not key.startswith(("hydra/sweeper", "hydra.sweeper"))) or key in UNNAMED_KEYS:
            continue  # the sweeper and its search space define a sweep; where it runs and Hydra's output do not
        overrides.append(argument)
    return sorted(overrides)


def command_folder() -> str:
    """The folder name of the command this process was started with (see `command_overrides`)."""
    return folder_name(",".join(command_overrides(sys.argv[1:])))


def register_resolvers() -> None:
    """`${ganlab_command:}` and `${ganlab_folder:<overrides>}`, used by conf/config.yaml to name run folders.

    `ganlab_command` is cached: each job of a sweep re-resolves `hydra.sweep.dir`, and Hydra copies the sweep's
    resolver cache into every job's config, so the jobs (in joblib or submitit workers too) see the sweep's name.
    """
    if not OmegaConf.has_resolver("ganlab_command"):
        OmegaConf.register_new_resolver("ganlab_command", command_folder, use_cache=True)
    if not OmegaConf.has_resolver("ganlab_folder"):
        OmegaConf.register_new_resolver("ganlab_folder", folder_name)


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


class SweepSummary(Callback):
    """Hydra callback: when a multirun ends, log how many jobs completed and list the ones that diverged or failed."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from ganlab.report import load_jobs  # the report's reading of a sweep dir, partial sweeps included

        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = load_jobs(sweep_dir, curves=False)
        counts = Counter(job.status for job in jobs)
        log.info("sweep %s: %d jobs, %s", sweep_dir, len(jobs), ", ".join(f"{n} {s}" for s, n in counts.items()))
        for job in jobs:
            if job.status == "diverged":
                log.warning("diverged: %s (at step %s)", job.name, job.steps)
            elif job.status not in ("completed", "time_budget"):
                log.warning("%s: %s%s", job.status, job.name, f" ({job.error})" if job.error else "")
        log.info("table and figure: ganlab-report %s", sweep_dir)
