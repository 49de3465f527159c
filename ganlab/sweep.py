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
from collections.abc import Sequence
from pathlib import Path

import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("ganlab")

# overrides that do not change what a run computes, so they do not name its folder
UNNAMED_KEYS = ("dataset.root", "train.resume", "log.progress")
MAX_NAME = 200  # characters of a folder name (most file systems allow 255); a longer one ends in a hash


def folder_name(overrides: str) -> str:
    """A safe, deterministic folder name for a comma-joined override list ("default" when there is none)."""
    name = re.sub(r"[^\w.,=+\-\[\]:@%]", "_", overrides) or "default"
    if len(name) > MAX_NAME:
        name = f"{name[: MAX_NAME - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
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


def command_folder() -> str:
    """The folder name of the command this process was started with: its overrides (flags such as -m left out)."""
    return job_folder([argument for argument in sys.argv[1:] if not argument.startswith("-")])


def job_folder(overrides) -> str:
    """The folder name of one job of a sweep, from its overrides (`hydra.overrides.task`), or of a command line."""
    return folder_name(",".join(named_overrides(list(overrides))))


def register_resolvers() -> None:
    """`${ganlab_command:}` and `${ganlab_job:<overrides>}`, used by conf/config.yaml to name run folders.

    `ganlab_command` is cached: each job of a sweep re-resolves `hydra.sweep.dir`, and Hydra copies the sweep's
    resolver cache into every job's config, so the jobs (in joblib or submitit workers too) see the sweep's name.
    """
    if not OmegaConf.has_resolver("ganlab_command"):
        OmegaConf.register_new_resolver("ganlab_command", command_folder, use_cache=True)
    if not OmegaConf.has_resolver("ganlab_job"):
        OmegaConf.register_new_resolver("ganlab_job", job_folder)


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
        from ganlab.report import DONE, load_jobs  # the report's reading of a sweep dir, partial sweeps included

        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = load_jobs(sweep_dir, curves=False)
        counts = Counter(job.status for job in jobs)
        log.info("sweep %s: %d jobs, %s", sweep_dir, len(jobs), ", ".join(f"{n} {s}" for s, n in counts.items()))
        for job in jobs:
            if job.status == "diverged":
                log.warning("diverged: %s (at step %s)", job.name, job.steps)
            elif job.status not in DONE:
                log.warning("%s: %s%s", job.status, job.name, f" ({job.error})" if job.error else "")
        log.info("table and figure: ganlab-report %s", sweep_dir)
