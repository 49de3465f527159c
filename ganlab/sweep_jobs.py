"""Reading a sweep folder: each job as far as it got (its overrides, status, scores, curves and config), and the
jobs grouped by what varies. `ganlab-report`, its figure and the end-of-sweep summary read sweeps through it.

A job with no metrics.json is "interrupted" if it wrote a checkpoint, else "not started".
"""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ganlab.errors import ConfigError, DataError
from ganlab.runfolder import CONFIG, SUMMARY, Status, has_checkpoint


@dataclass
class Job:
    """One job folder of a sweep, as far as it got."""

    folder: Path
    overrides: dict[str, str]  # the job's command-line overrides, key -> value, as .hydra/overrides.yaml lists them
    status: str  # metrics.json's status, or interrupted / not started / unreadable
    steps: int | None = None
    seconds: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # the last evaluation, e.g. {"fid": 31.2}
    steps_per_second: float | None = None
    images_per_second: float | None = None
    error: str = ""
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # TensorBoard tag -> (step, value)
    objective: str | None = None  # the job's eval.objective, from its config.yaml
    feature_net: str | None = None  # the job's dataset.feature_net (whose calibration table places its FID)
    planned_steps: int | None = None  # the job's train.steps, and train.max_seconds: how far it would have gone
    max_seconds: float | None = None
    protocol: dict | None = None  # what its metrics were measured with (runfolder.protocol); None before it had any

    @property
    def name(self) -> str:
        """The job's folder name, as Hydra's sweep subdir made it (ganlab.sweep's summary logs it)."""
        return self.folder.name


def read_curves(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """The Loss/D, Loss/G and Metrics/* scalars of a job's TensorBoard event files (empty if it has none)."""
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0 keeps every point
    # TensorBoard's directory watcher logs "No path found after <event file>" at INFO for every job it reads, which
    # the end-of-sweep summary (ganlab.sweep, running under Hydra's logging) would print once per job
    watcher = logging.getLogger("tensorboard")
    level, _ = watcher.level, watcher.setLevel(logging.WARNING)
    try:
        accumulator.Reload()
    except Exception:  # an event file being written or cut off must not stop the report of the whole sweep
        return {}
    finally:
        watcher.setLevel(level)
    tags = [tag for tag in accumulator.Tags()["scalars"] if tag in ("Loss/D", "Loss/G") or tag.startswith("Metrics/")]
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)] for tag in tags}


def read_overrides(folder: Path) -> dict[str, str]:
    """The job's overrides, e.g. `[loss=bce, seed=0]` in .hydra/overrides.yaml as {"loss": "bce", "seed": "0"}."""
    path = folder / ".hydra" / "overrides.yaml"
    if not path.exists():
        return {}
    try:
        overrides = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as error:  # OmegaConf raises several kinds for a damaged YAML file
        raise DataError(f"{path} is unreadable ({type(error).__name__}): repair it or move that job folder.") from None
    return {key: value for key, _, value in (str(override).partition("=") for override in overrides)}


CONFIG_FIELDS = {"objective": "eval.objective", "feature_net": "dataset.feature_net", "planned_steps": "train.steps",
                 "max_seconds": "train.max_seconds"}  # fmt: skip


def read_config(folder: Path) -> dict:
    """The Job fields of CONFIG_FIELDS from the job's config.yaml; None for what it does not have."""
    try:
        config = OmegaConf.load(folder / CONFIG)
        return {name: OmegaConf.select(config, key) for name, key in CONFIG_FIELDS.items()}
    except Exception:  # missing (not started) or damaged: the job is reported without them
        return {}


def load_job(folder: Path, curves: bool = True) -> Job:
    """The job in `folder`: its overrides, and its summary from metrics.json or, if it has none, its event files.

    curves: read the TensorBoard curves too (the figure needs them; a status count does not).
    """
    job = Job(folder, read_overrides(folder), Status.NOT_STARTED, curves=read_curves(folder) if curves else {})
    for name, value in read_config(folder).items():
        setattr(job, name, value)
    if not (folder / SUMMARY).exists():
        if has_checkpoint(folder):
            job.status = Status.INTERRUPTED
            job.steps = max((step for step, _ in job.curves.get("Loss/D", [])), default=None)
        return job
    try:
        summary = json.loads((folder / SUMMARY).read_text())
        final = summary.get("final", {})  # a failed job writes only its status and error
        job.status, job.error = str(summary["status"]), str(summary.get("error", ""))
        job.steps, job.seconds = summary.get("step"), summary.get("seconds")
        job.metrics = {name: float(value) for name, value in summary.get("metrics", {}).items()}
        job.protocol = summary.get("protocol")
        if job.protocol and not str(job.protocol["features"]).startswith("net:"):
            job.feature_net = None  # scored with Inception: the small net's calibration table does not place it
        job.steps_per_second = final.get("Speed/steps_per_second")
        job.images_per_second = final.get("Speed/images_per_second")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        job.status, job.error = Status.UNREADABLE, f"metrics.json is unreadable ({type(error).__name__})"
    return job


def load_jobs(sweep_dir: Path, curves: bool = True) -> list[Job]:
    """Every job folder directly under `sweep_dir` (one holding .hydra/overrides.yaml or config.yaml), by name."""
    if not sweep_dir.is_dir():
        raise ConfigError(f"sweep dir {sweep_dir} does not exist: pass the folder a `ganlab-train -m` run wrote.")
    folders = [p for p in sorted(sweep_dir.iterdir()) if (p / ".hydra" / "overrides.yaml").exists()
               or (p / CONFIG).exists()]  # fmt: skip
    if not folders:
        raise DataError(
            f"{sweep_dir} holds no job folders (.hydra/overrides.yaml): pass the folder a `ganlab-train -m` run wrote."
        )
    return [load_job(folder, curves) for folder in folders]


def swept_keys(jobs: list[Job]) -> list[str]:
    """The override keys whose value differs between jobs, in the order they first appear; all of them for one job."""
    keys = list(dict.fromkeys(key for job in jobs for key in job.overrides))
    if len(jobs) == 1:
        return keys
    return [key for key in keys if len({job.overrides.get(key) for job in jobs}) > 1]


def metric_names(jobs: list[Job]) -> list[str]:
    """The union of the jobs' metric names, sorted (datasets differ in which metrics they have)."""
    return sorted({name for job in jobs for name in job.metrics})


def group_keys(jobs: list[Job]) -> list[str]:
    """The swept override keys that tell groups apart: all but the seed, whose runs a group averages over."""
    return [key for key in swept_keys(jobs) if key != "seed"]


def group_jobs(jobs: list[Job]) -> dict[str, list[Job]]:
    """The jobs of each group, under the group's name (e.g. `loss=bce,model=mlp`; `all jobs` if only seeds differ)."""
    keys, groups = group_keys(jobs), {}
    for job in jobs:
        name = ",".join(f"{key}={job.overrides.get(key)}" for key in keys) or "all jobs"
        groups.setdefault(name, []).append(job)
    return groups
