"""`ganlab-report`: the tables and one figure of a sweep that `ganlab-train -m` wrote, finished or still running.

    ganlab-report <sweep_dir> [--metric NAME] [--out DIR]

Writes into the sweep dir (or DIR): `report.md` (the job table and the table grouped over seeds, also printed),
`report_jobs.csv`, `report_groups.csv` and `report.png` (metric curves per group, the runs on the precision-recall
plane, and each group's latest sample grid). A job with no metrics.json is "interrupted" if it wrote a checkpoint,
else "not started".

Both tables are ranked by the sweep's own `eval.objective` (read from each job's config.yaml), best first: lowest
first for distances such as fid, highest first for precision, recall or coverage. `--metric` ranks by another.
report.md shows that metric, then precision, recall and class coverage of the same generator (raw or EMA) and where
its FID falls on the feature net's calibration table (`ganlab.calibration`); the CSVs hold every metric.
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

from ganlab.entry import run_command
from ganlab.errors import ConfigError, DataError
from ganlab.runfolder import CONFIG, RAN_TO_ITS_END, SUMMARY, Status, has_checkpoint, higher_is_better

USAGE = "ganlab-report <sweep_dir> [--metric NAME] [--out DIR]"
# what report.md shows after the ranking metric, of the same generator: fidelity, diversity, class balance and,
# for a class-conditional run, whether it draws the class asked for
COMPANIONS = ("precision", "recall", "coverage", "modes_covered", "high_quality", "accuracy")

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
    objective: str | None = None  # the job's eval.objective, from its config.yaml
    feature_net: str | None = None  # the job's dataset.feature_net (whose calibration table places its FID)

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


def read_config(folder: Path) -> tuple[str | None, str | None]:
    """The job's eval.objective and dataset.feature_net from its config.yaml; None for what it does not have."""
    try:
        config = OmegaConf.load(folder / CONFIG)
        return OmegaConf.select(config, "eval.objective"), OmegaConf.select(config, "dataset.feature_net")
    except Exception:  # missing (not started) or damaged: the job is reported without them
        return None, None


def load_job(folder: Path, curves: bool = True) -> Job:
    """The job in `folder`: its overrides, and its summary from metrics.json or, if it has none, its event files.

    curves: read the TensorBoard curves too (the figure needs them; a status count does not).
    """
    job = Job(folder, read_overrides(folder), Status.NOT_STARTED, curves=read_curves(folder) if curves else {})
    job.objective, job.feature_net = read_config(folder)
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


def sweep_objective(jobs: list[Job]) -> str | None:
    """The sweep's eval.objective: the one most of its jobs' config.yaml name (None if no job wrote one)."""
    objectives = Counter(job.objective for job in jobs if job.objective)
    return objectives.most_common(1)[0][0] if objectives else None


def shown_metrics(metric: str | None, names: list[str]) -> list[str]:
    """The metrics report.md shows: `metric`, then the COMPANIONS of its generator (raw, or `_ema`) that exist."""
    if metric is None:
        return []
    suffix = "_ema" if metric.endswith("_ema") else ""
    return list(dict.fromkeys([metric] + [f"{name}{suffix}" for name in COMPANIONS if f"{name}{suffix}" in names]))


def rank(rows: Table, metric: str | None) -> Table:
    """`rows` best first by `metric` (a (mean, std) cell ranks by its mean); rows without it last, in their order."""

    def key(row: dict) -> float:
        value = row.get(metric)
        value = value[0] if isinstance(value, tuple) else value
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return math.inf
        return -value if higher_is_better(metric) else value

    return rows if metric is None else sorted(rows, key=key)


class CalibrationScale:
    """Where an FID falls among real images under controlled damage: the feature net's calibration table.

    The tables live in the feature nets' manifest (`ganlab/feature_nets/manifest.json`, `calibration`), measured on
    `images_per_set` images; FID grows as a set shrinks, so a run scored with fewer images sits a little higher.
    """

    def __init__(self):
        from ganlab.features import read_manifest  # torch loads only when a report is written

        self.manifest = read_manifest()

    def images_per_set(self, feature_net: str | None) -> int | None:
        """How many images each set of `feature_net`'s table holds (fewer where the data has fewer)."""
        return self.manifest.get(feature_net, {}).get("calibration", {}).get("images_per_set") if feature_net else None

    def sets(self, feature_net: str | None) -> list[dict]:
        """The calibration rows of `feature_net`, or [] where it has none."""
        return self.manifest.get(feature_net, {}).get("calibration", {}).get("sets", []) if feature_net else []

    def place(self, fid: float | None, feature_net: str | None, metric: str = "fid") -> str | None:
        """A few words placing `fid`, e.g. "between blur σ1 (3x3) (29.6) and noise σ0.2 (61)"; None without a table."""
        ordered = sorted(self.sets(feature_net), key=lambda row: row[metric])
        if fid is None or not ordered or math.isnan(fid):
            return None
        below = [row for row in ordered if row[metric] <= fid]
        above = [row for row in ordered if row[metric] > fid]
        if not below:
            return f"better than {_named(ordered[0], metric)}"
        if not above:
            return f"worse than {_named(ordered[-1], metric)}"
        return f"between {_named(below[-1], metric)} and {_named(above[0], metric)}"


def _named(row: dict, metric: str) -> str:
    return f"{row['set']} ({number(row[metric], 3)})"


def fid_to_place(metric: str | None, names: list[str]) -> str | None:
    """The FID that the calibration column places: that of the ranking metric's generator (raw or EMA)."""
    suffix = "_ema" if metric and metric.endswith("_ema") else ""
    return next((name for name in (f"fid{suffix}", "fid") if name in names), None)


def job_table(jobs: list[Job], metric: str | None = None, scale: CalibrationScale | None = None) -> Table:
    """One row per job, best first by `metric`: its swept overrides, status, steps, seconds, metrics (the shown ones
    first), where its FID falls on the calibration `scale`, and throughput."""
    keys, names = swept_keys(jobs), metric_names(jobs)
    shown = shown_metrics(metric, names)
    fid = fid_to_place(metric, names)
    any_error = any(job.error for job in jobs)
    rows = []
    for job in jobs:
        row: dict[str, object] = {key: job.overrides.get(key) for key in keys}
        row |= {"status": job.status, "steps": job.steps, "seconds": job.seconds}
        row |= {name: job.metrics.get(name) for name in dict.fromkeys(shown + names)}
        if scale is not None and fid is not None:
            row["calibration"] = scale.place(job.metrics.get(fid), job.feature_net)
        row |= {"steps/s": job.steps_per_second, "images/s": job.images_per_second}
        if any_error:
            row["error"] = job.error
        row["overrides"] = ",".join(f"{key}={value}" for key, value in job.overrides.items())
        rows.append(row)
    return rank(rows, metric)


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


def group_table(jobs: list[Job], metric: str | None, scale: CalibrationScale | None = None) -> Table:
    """One row per group (setting of the swept overrides but seed): job counts, and mean ± std over its seeds.

    Metrics and throughput are averaged over the finished jobs (completed or time_budget) only; the shown metrics
    come first, and the calibration column places the mean FID. Rows are ranked best first by the mean of
    `metric`; groups without it come last.
    """
    keys, names = group_keys(jobs), metric_names(jobs)
    shown = shown_metrics(metric, names)
    fid = fid_to_place(metric, names)
    rows = []
    for name, members in group_jobs(jobs).items():
        row: dict[str, object] = {"group": name} | {key: members[0].overrides.get(key) for key in keys}
        row |= {"n": len(members), "completed": sum(job.status in RAN_TO_ITS_END for job in members)}
        row["steps"] = mean_std([job.steps for job in members])  # how far each got, finished or not
        done = [job for job in members if job.status in RAN_TO_ITS_END]  # a stopped run's partial scores would mix in
        row |= {name: mean_std([job.metrics.get(name) for job in done]) for name in dict.fromkeys(shown + names)}
        if scale is not None and fid is not None:
            row["calibration"] = scale.place(row[fid][0], members[0].feature_net)
        row["steps/s"] = mean_std([job.steps_per_second for job in done])
        rows.append(row)
    return rank(rows, metric)


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


def markdown(sweep_dir: Path, jobs: list[Job], metric: str | None, why: str, scale: CalibrationScale | None) -> str:
    """The whole report.md: a header with the counts per status and the ranking, the job table and the group table.

    why: a few words on where `metric` came from (eval.objective or --metric). The tables show the ranking metric
    and its companions (`shown_metrics`); the other metrics are in the CSVs.
    """
    counts = ", ".join(f"{n} {status}" for status, n in Counter(job.status for job in jobs).most_common())
    names = metric_names(jobs)
    hidden = tuple(name for name in names if name not in shown_metrics(metric, names)) + ("images/s",)
    order = f"{'highest' if metric and higher_is_better(metric) else 'lowest'} first"
    header = f"Ranked by {metric} ({why}), {order}." if metric else "No metrics yet."
    fid = fid_to_place(metric, names)
    nets = {job.feature_net for job in jobs if scale is not None and scale.images_per_set(job.feature_net)}
    if fid is not None and nets:
        per_set = " or ".join(sorted({f"{scale.images_per_set(net):,}" for net in nets}))
        header += (
            f" The calibration column places the {fid} among real images under controlled damage, the feature net's "
            f"calibration table (`ganlab-eval calibrate`, {per_set} images per set: a run scored with fewer images "
            f"sits a little higher on it)."
        )
    header += " Every metric is in report_jobs.csv and report_groups.csv."
    return (
        f"# Sweep {sweep_dir}: {len(jobs)} job{'s' * (len(jobs) > 1)} ({counts})\n\n{header}\n\n## Jobs\n\n"
        + markdown_table(job_table(jobs, metric, scale), leave_out=("overrides", *hidden))  # swept columns say it
        + "\n\n## Over seeds (mean ± std)\n\n"
        + markdown_table(group_table(jobs, metric, scale), leave_out=(*group_keys(jobs), *hidden))  # `group` does
        + "\n"
    )


def ranking_metric(option: str | None, objective: str | None, names: list[str]) -> tuple[str | None, str]:
    """The metric the tables are ranked by, and why: --metric, else eval.objective, else fid or the first metric."""
    if option is not None:
        if option not in names:
            raise ConfigError(f"--metric {option} is not a metric of this sweep: use one of {names}.")
        return option, "--metric"
    if objective in names:
        return objective, "the sweep's eval.objective"
    fallback = "fid" if "fid" in names else next(iter(names), None)
    return fallback, f"eval.objective={objective} is not a metric of this sweep" if objective else "no eval.objective"


def report(argv: list[str]) -> None:
    """Read the sweep named in `argv`, write report.md, the two CSVs and report.png, and print them."""
    parser = ArgumentParser(prog="ganlab-report", usage=USAGE, description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="the folder a `ganlab-train -m` run wrote")
    parser.add_argument("--metric", help="rank by this metric instead of the sweep's eval.objective")
    parser.add_argument("--out", type=Path, help="write the report here instead of into the sweep dir")
    args = parser.parse_args(argv)

    from ganlab.report_figure import figure  # matplotlib loads only when a report is written

    jobs = load_jobs(args.sweep_dir)
    names = metric_names(jobs)
    metric, why = ranking_metric(args.metric, sweep_objective(jobs), names)
    scale = CalibrationScale()
    out = args.out or args.sweep_dir
    text = markdown(args.sweep_dir, jobs, metric, why, scale)
    paths = [out / name for name in ("report.md", "report_jobs.csv", "report_groups.csv", "report.png")]
    try:
        out.mkdir(parents=True, exist_ok=True)
        paths[0].write_text(text)
        write_csv(job_table(jobs, metric, scale), paths[1])
        write_csv(group_table(jobs, metric, scale), paths[2])
        suffix = "_ema" if metric and metric.endswith("_ema") else ""
        feature_net = next((job.feature_net for job in jobs if job.feature_net), None)
        figure(jobs, paths[3], suffix, scale.sets(feature_net))
    except OSError as error:
        raise ConfigError(
            f"cannot write the report to {out} ({error.strerror or error}): pass --out with a writable folder."
        ) from None
    print(text)
    print("\n".join(f"wrote {path}" for path in paths))


def main(argv: list[str] | None = None) -> None:
    """`ganlab-report`: a user error is one sentence on stderr and a non-zero exit (ganlab.entry.run_command)."""
    run_command(report, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
