"""`ganlab-report`: the tables and one figure of a sweep that `ganlab-train -m` wrote, finished or still running.

    ganlab-report <sweep_dir> [--metric fid] [--out DIR]

Writes into the sweep dir (or DIR): `report.md` (the job table and the table grouped over seeds, also printed),
`report_jobs.csv`, `report_groups.csv` and `report.png` (metric curves per group, and each group's latest sample
grid). A job with no metrics.json is "interrupted" if it wrote a checkpoint, else "not started". `--metric` sorts
the groups by that metric's mean, lowest first; it defaults to fid, or to the first metric name of the sweep.
"""

import argparse
import csv
import json
import logging
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ganlab.errors import ConfigError, DataError, GanlabError

USAGE = "ganlab-report <sweep_dir> [--metric NAME] [--out DIR]"
DONE = ("completed", "time_budget")  # the statuses of a job that ran as far as its config asked
PANELS_PER_ROW = 5  # figure panels side by side before wrapping to a new row

# TensorBoard's directory watcher logs "No path found after <event file>" at INFO for every job it reads, which
# the end-of-sweep summary (ganlab.sweep, running under Hydra's logging) would print once per job
logging.getLogger("tensorboard").setLevel(logging.WARNING)

Table = list[dict[str, object]]  # rows of one table; a (mean, std) tuple is one cell in Markdown, two in CSV


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises ConfigError, so a usage error is one sentence like every other ganlab error."""

    def error(self, message: str):
        raise ConfigError(f"{message}: usage: {USAGE}")


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

    @property
    def name(self) -> str:
        """The job's folder name, as Hydra's sweep subdir made it (ganlab.sweep's summary logs it)."""
        return self.folder.name


def read_curves(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """The Loss/D, Loss/G and Metrics/* scalars of a job's TensorBoard event files (empty if it has none)."""
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0 keeps every point
    try:
        accumulator.Reload()
    except Exception:  # an event file being written or cut off must not stop the report of the whole sweep
        return {}
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


def load_job(folder: Path, curves: bool = True) -> Job:
    """The job in `folder`: its overrides, and its summary from metrics.json or, if it has none, its event files.

    curves: read the TensorBoard curves too (the figure needs them; a status count does not).
    """
    job = Job(folder, read_overrides(folder), "not started", curves=read_curves(folder) if curves else {})
    if not (folder / "metrics.json").exists():
        # checkpoint.pt or checkpoint.prev.pt; ganlab.checkpoint.has_checkpoint would import torch just for this
        if any(folder.glob("checkpoint*.pt")):
            job.status = "interrupted"
            job.steps = max((step for step, _ in job.curves.get("Loss/D", [])), default=None)
        return job
    try:
        summary = json.loads((folder / "metrics.json").read_text())
        final = summary.get("final", {})  # a failed job writes only its status and error
        job.status, job.error = str(summary["status"]), str(summary.get("error", ""))
        job.steps, job.seconds = summary.get("step"), summary.get("seconds")
        job.metrics = {name: float(value) for name, value in summary.get("metrics", {}).items()}
        job.steps_per_second = final.get("Speed/steps_per_second")
        job.images_per_second = final.get("Speed/images_per_second")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        job.status, job.error = "unreadable", f"metrics.json is unreadable ({type(error).__name__})"
    return job


def load_jobs(sweep_dir: Path, curves: bool = True) -> list[Job]:
    """Every job folder directly under `sweep_dir` (one holding .hydra/overrides.yaml or config.yaml), by name."""
    if not sweep_dir.is_dir():
        raise ConfigError(f"sweep dir {sweep_dir} does not exist: pass the folder a `ganlab-train -m` run wrote.")
    folders = [p for p in sorted(sweep_dir.iterdir()) if (p / ".hydra" / "overrides.yaml").exists()
               or (p / "config.yaml").exists()]  # fmt: skip
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


def job_table(jobs: list[Job]) -> Table:
    """One row per job: its swept overrides, status, steps, seconds, metrics and throughput."""
    keys, names = swept_keys(jobs), metric_names(jobs)
    any_error = any(job.error for job in jobs)
    rows = []
    for job in jobs:
        row: dict[str, object] = {key: job.overrides.get(key) for key in keys}
        row |= {"status": job.status, "steps": job.steps, "seconds": job.seconds}
        row |= {name: job.metrics.get(name) for name in names}
        row |= {"steps/s": job.steps_per_second, "images/s": job.images_per_second}
        if any_error:
            row["error"] = job.error
        row["overrides"] = ",".join(f"{key}={value}" for key, value in job.overrides.items())
        rows.append(row)
    return rows


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1; 0 for one value) of the values that are not None."""
    present = [value for value in values if value is not None]
    if not present:
        return None, None
    return float(np.mean(present)), (float(np.std(present, ddof=1)) if len(present) > 1 else 0.0)


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


def group_table(jobs: list[Job], metric: str | None) -> Table:
    """One row per group (setting of the swept overrides but seed): job counts, and mean ± std over its seeds.

    Metrics and throughput are averaged over the finished jobs (completed or time_budget) only.

    Rows are sorted by the mean of `metric`, lowest first; groups without that metric come last.
    """
    keys, names = group_keys(jobs), metric_names(jobs)
    rows = []
    for name, members in group_jobs(jobs).items():
        row: dict[str, object] = {"group": name} | {key: members[0].overrides.get(key) for key in keys}
        row |= {"n": len(members), "completed": sum(job.status in DONE for job in members)}
        row["steps"] = mean_std([job.steps for job in members])  # how far each got, finished or not
        done = [job for job in members if job.status in DONE]  # a stopped run's partial scores would mix in
        row |= {name: mean_std([job.metrics.get(name) for job in done]) for name in names}
        row["steps/s"] = mean_std([job.steps_per_second for job in done])
        rows.append(row)
    return sorted(rows, key=lambda row: math.inf if metric is None or row[metric][0] is None else row[metric][0])


def write_csv(rows: Table, path: Path) -> None:
    """Write a table as CSV; a (mean, std) cell becomes two columns, `<name>_mean` and `<name>_std`."""
    flat = []
    for row in rows:
        cells: dict[str, object] = {}
        for name, value in row.items():
            if isinstance(value, tuple):
                cells[f"{name}_mean"], cells[f"{name}_std"] = value
            else:
                cells[name] = value
        flat.append(cells)
    columns = list(dict.fromkeys(name for cells in flat for name in cells))
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, columns)
        writer.writeheader()
        writer.writerows(flat)


def number(value: float, digits: int) -> str:
    """`digits` significant digits, but whole numbers past them rather than 3.163e+04."""
    return f"{value:.0f}" if abs(value) >= 10**digits else f"{value:.{digits}g}"


def cell(value: object) -> str:
    """A value as Markdown shows it: 4 significant digits, `mean ± std`, blank for missing."""
    if value is None or value == (None, None):
        return ""
    if isinstance(value, tuple):
        return f"{number(value[0], 4)} ± {number(value[1], 2)}"
    if isinstance(value, float):
        return number(value, 4)
    return str(value).replace("|", "\\|")  # a bare | would end the Markdown cell


def markdown_table(rows: Table, leave_out: tuple[str, ...] = ()) -> str:
    """A table in GitHub Markdown, without the columns in `leave_out`."""
    columns = [name for name in dict.fromkeys(name for row in rows for name in row) if name not in leave_out]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(name)) for name in columns) + " |" for row in rows]
    return "\n".join(lines)


def markdown(sweep_dir: Path, jobs: list[Job], metric: str | None) -> str:
    """The whole report.md: a header line with the counts per status, the job table and the group table."""
    counts = ", ".join(f"{n} {status}" for status, n in Counter(job.status for job in jobs).most_common())
    sort = f", sorted by {metric}" if metric else ""
    return (
        f"# Sweep {sweep_dir}: {len(jobs)} job{'s' * (len(jobs) > 1)} ({counts})\n\n## Jobs\n\n"
        + markdown_table(job_table(jobs), leave_out=("overrides",))  # the swept columns say it shorter
        + f"\n\n## Over seeds (mean ± std){sort}\n\n"
        + markdown_table(group_table(jobs, metric), leave_out=tuple(group_keys(jobs)))  # `group` names them
        + "\n"
    )


def latest_samples(job: Job) -> Path | None:
    """The job's newest fixed-noise grid of the raw generator, or None if it wrote none yet."""
    grids = sorted((job.folder / "samples").glob("step_*.png"))  # zero-padded step numbers sort in order
    return grids[-1] if grids else None


def panels(figure, count: int) -> list:
    """`count` axes in rows of at most PANELS_PER_ROW, the spare slots of the last row hidden."""
    columns = min(count, PANELS_PER_ROW)
    axes = figure.subplots(math.ceil(count / columns), columns, squeeze=False).ravel()
    for spare in axes[count:]:
        spare.set_visible(False)
    return list(axes[:count])


def figure(jobs: list[Job], path: Path) -> None:
    """Save a PNG: per scalar tag one panel with a line per group (each seed faint, their mean bold), then
    the latest sample grid of each group's first job that has one."""
    from matplotlib.figure import Figure  # imported here: reading a sweep (the end-of-sweep summary) needs no plots
    from matplotlib.image import imread

    groups = group_jobs(jobs)
    tags = sorted({tag for job in jobs for tag, points in job.curves.items() if len(points) >= 2},
                  key=lambda tag: (tag.startswith("Metrics/"), tag))  # fmt: skip
    grids = {name: next(filter(None, map(latest_samples, members)), None) for name, members in groups.items()}
    grids = {name: grid for name, grid in grids.items() if grid is not None}

    rows = [math.ceil(len(tags) / PANELS_PER_ROW), math.ceil(len(grids) / PANELS_PER_ROW)]
    width = 3.6 * max(2, min(PANELS_PER_ROW, max(len(tags), len(grids))))
    canvas = Figure(figsize=(width, 3.2 * max(1, sum(rows))), layout="constrained")
    if not tags and not grids:
        canvas.text(0.5, 0.5, "no curves or samples written yet", ha="center", va="center")
    top, bottom = canvas.subfigures(2, 1, height_ratios=rows) if tags and grids else (canvas, canvas)
    if tags:
        tag_axes = panels(top, len(tags))
        for axes, tag in zip(tag_axes, tags, strict=True):
            for colour, (name, members) in enumerate(groups.items()):
                plot_group(axes, [job.curves[tag] for job in members if tag in job.curves], f"C{colour}", name)
            axes.set(title=tag, xlabel="step")
        tag_axes[0].legend(fontsize="small")
    if grids:
        for axes, (name, grid) in zip(panels(bottom, len(grids)), grids.items(), strict=True):
            axes.imshow(imread(grid))
            axes.set_title(name, fontsize="small")
            axes.axis("off")
    canvas.savefig(path, dpi=100)


def plot_group(axes, curves: list[list[tuple[int, float]]], colour: str, name: str) -> None:
    """Each seed's curve faint and, where the seeds share steps, their mean bold (labelled with the group)."""
    for curve in curves:
        axes.plot(*zip(*curve, strict=True), color=colour, alpha=0.3, linewidth=0.8)
    common = sorted(set.intersection(*(set(step for step, _ in curve) for curve in curves))) if curves else []
    if common:
        values = [dict(curve) for curve in curves]
        axes.plot(common, [np.mean([v[step] for v in values]) for step in common], color=colour, label=name)


def report(argv: list[str]) -> None:
    """Read the sweep named in `argv`, write report.md, the two CSVs and report.png, and print them."""
    parser = ArgumentParser(prog="ganlab-report", usage=USAGE, description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="the folder a `ganlab-train -m` run wrote")
    parser.add_argument("--metric", help="sort the groups by this metric's mean, lowest first (default: fid)")
    parser.add_argument("--out", type=Path, help="write the report here instead of into the sweep dir")
    args = parser.parse_args(argv)

    jobs = load_jobs(args.sweep_dir)
    names = metric_names(jobs)
    metric = args.metric or ("fid" if "fid" in names else next(iter(names), None))
    if args.metric and args.metric not in names:
        raise ConfigError(f"--metric {args.metric} is not a metric of this sweep: use one of {names}.")
    out = args.out or args.sweep_dir
    text = markdown(args.sweep_dir, jobs, metric)
    paths = [out / name for name in ("report.md", "report_jobs.csv", "report_groups.csv", "report.png")]
    try:
        out.mkdir(parents=True, exist_ok=True)
        paths[0].write_text(text)
        write_csv(job_table(jobs), paths[1])
        write_csv(group_table(jobs, metric), paths[2])
        figure(jobs, paths[3])
    except OSError as error:
        raise ConfigError(
            f"cannot write the report to {out} ({error.strerror or error}): pass --out with a writable folder."
        ) from None
    print(text)
    print("\n".join(f"wrote {path}" for path in paths))


def main(argv: list[str] | None = None) -> None:
    """Entry point of `ganlab-report`: a user error is one sentence on stderr and a non-zero exit."""
    try:
        report(sys.argv[1:] if argv is None else argv)
    except GanlabError as error:
        print(f"ganlab: error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)


if __name__ == "__main__":
    main()
