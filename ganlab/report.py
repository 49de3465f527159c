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
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from ganlab.entry import run_command
from ganlab.errors import ConfigError
from ganlab.runfolder import RAN_TO_ITS_END, Status, higher_is_better, minimised, protocol_label
from ganlab.sweep_jobs import Job, group_jobs, group_keys, load_jobs, metric_names, swept_keys

USAGE = "ganlab-report <sweep_dir> [--metric NAME] [--out DIR]"
# what report.md shows after the ranking metric, of the same generator: fidelity, diversity, class balance and,
# for a class-conditional run, whether it draws the class asked for
COMPANIONS = ("precision", "recall", "coverage", "modes_covered", "high_quality", "accuracy")

Table = list[dict[str, object]]  # rows of one table; a (mean, std) tuple is one cell in Markdown, two in CSV


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises ConfigError, so a usage error is one sentence like every other ganlab error."""

    def error(self, message: str):
        raise ConfigError(f"{message}: usage: {USAGE}")


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


def by_protocol(jobs: list[Job]) -> dict[str, list[Job]]:
    """The jobs by the protocol their scores were measured with (`runfolder.protocol_label`), the most common first
    (ties in name order).

    Scores under different protocols (feature extractor, sample count, reference split) do not compare, so each
    group is ranked apart. A job without scores yet joins the first group.
    """
    scored = Counter(protocol_label(job.protocol) for job in jobs if job.metrics)
    labels = sorted(scored, key=lambda label: (-scored[label], label)) or [protocol_label(None)]
    groups: dict[str, list[Job]] = {label: [] for label in labels}
    for job in jobs:
        groups[protocol_label(job.protocol) if job.metrics else labels[0]].append(job)
    return groups


def rank(rows: Table, metric: str | None) -> Table:
    """`rows` best first by `metric` (a (mean, std) cell ranks by its mean); rows without it last, in their order."""

    def key(row: dict) -> tuple[bool, float]:
        value = row.get(metric)
        value = value[0] if isinstance(value, tuple) else value
        cut_short = row.get("status", Status.COMPLETED) not in RAN_TO_ITS_END  # pruned, stopped: after the others
        return cut_short, minimised(metric, value)

    return rows if metric is None else sorted(rows, key=key)


def sweep_cost(jobs: list[Job]) -> str | None:
    """A sentence on what pruning (and early stopping) saved: the training seconds the sweep spent, against an
    estimate of them had every job run to its end (its time budget, or its train.steps at the mean seconds per step
    of the jobs that completed); None if no job was cut short."""
    cut = [job for job in jobs if job.status in (Status.PRUNED, Status.EARLY_STOPPED)]
    finished = [job for job in jobs if job.status in (Status.COMPLETED, Status.TIME_BUDGET) and job.steps]
    if not cut or not finished:
        return None
    per_step = sum(job.seconds / job.steps for job in finished) / len(finished)
    spent = sum(job.seconds or 0.0 for job in jobs)
    unpruned = sum(job.seconds for job in finished) + sum(
        job.max_seconds or (job.planned_steps or 0) * per_step for job in cut
    )  # fmt: skip
    stops = ", ".join(f"{job.name} at step {job.steps}" for job in cut)
    return (
        f"{len(cut)} of {len(jobs)} jobs were cut short ({stops}): the sweep trained {spent:,.0f} s, "
        f"{spent / unpruned:.0%} of the {unpruned:,.0f} s estimated had every job run to its end."
    )


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
        row["protocol"] = protocol_label(job.protocol) if job.metrics else None
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
        row["protocol"] = protocol_label(done[0].protocol) if done and done[0].metrics else None
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
    partitions = by_protocol(jobs)
    if len(partitions) == 1:
        header += f" Scores: {next(iter(partitions))}."
    else:
        header += (
            f" Its jobs were scored under {len(partitions)} protocols, whose numbers do not compare: each is ranked "
            f"apart below."
        )
    header += " Every metric is in report_jobs.csv and report_groups.csv."
    cost = sweep_cost(jobs)
    if cost is not None:
        header += f" {cost} A cut job's scores are those of the evaluation that stopped it."
    text = f"# Sweep {sweep_dir}: {len(jobs)} job{'s' * (len(jobs) > 1)} ({counts})\n\n{header}\n"
    level = "##" if len(partitions) == 1 else "###"
    for label, members in partitions.items():
        if len(partitions) > 1:
            text += f"\n## Scored with {label}\n"
        text += (
            f"\n{level} Jobs\n\n"
            + markdown_table(job_table(members, metric, scale), leave_out=("overrides", "protocol", *hidden))
            + f"\n\n{level} Over seeds (mean ± std)\n\n"
            + markdown_table(group_table(members, metric, scale), leave_out=(*group_keys(jobs), "protocol", *hidden))
            + "\n"
        )  # the swept columns say the overrides, and `group` the keys of a group
    return text


def tables(jobs: list[Job], metric: str | None, scale: CalibrationScale) -> tuple[Table, Table]:
    """The job table and the group table of the CSVs: each protocol's rows ranked apart, the most common first."""
    partitions = by_protocol(jobs).values()
    return (
        [row for members in partitions for row in job_table(members, metric, scale)],
        [row for members in partitions for row in group_table(members, metric, scale)],
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
    protocols = list(by_protocol(jobs))
    if len(protocols) > 1:
        print(f"ganlab-report: warning: the jobs were scored under {len(protocols)} protocols "
              f"({'; '.join(protocols)}): each is ranked apart, never together.", file=sys.stderr)  # fmt: skip
    paths = [out / name for name in ("report.md", "report_jobs.csv", "report_groups.csv", "report.png")]
    try:
        out.mkdir(parents=True, exist_ok=True)
        paths[0].write_text(text)
        job_rows, group_rows = tables(jobs, metric, scale)
        write_csv(job_rows, paths[1])
        write_csv(group_rows, paths[2])
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
