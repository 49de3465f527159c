"""`ganlab-report`'s figure: metric curves per group, the runs on the precision-recall plane, and sample grids.

Imported only when a figure is drawn: reading a sweep (the end-of-sweep summary) needs no matplotlib.
"""

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.image import imread

from ganlab.sweep_jobs import Job, group_jobs

PANELS_PER_ROW = 5  # figure panels side by side before wrapping to a new row


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


def figure(jobs: list[Job], path: Path, suffix: str = "", calibration: list[dict] | None = None) -> None:
    """Save a PNG: per scalar tag one panel with a line per group (each seed faint, their mean bold), the runs on
    the precision-recall plane (when they have precision), then the latest sample grid of each group's first job.

    suffix: "" or "_ema", whose precision and recall to plot (the objective's generator). calibration: the rows of
    the feature net's calibration table, drawn on the plane for scale (`ganlab.calibration`), or None.
    """
    groups = group_jobs(jobs)
    tags = sorted({tag for job in jobs for tag, points in job.curves.items() if len(points) >= 2},
                  key=lambda tag: (tag.startswith("Metrics/"), tag))  # fmt: skip
    plane = any(f"precision{suffix}" in job.metrics and f"recall{suffix}" in job.metrics for job in jobs)
    grids = {name: next(filter(None, map(latest_samples, members)), None) for name, members in groups.items()}
    grids = {name: grid for name, grid in grids.items() if grid is not None}

    count = len(tags) + plane
    rows = [math.ceil(count / PANELS_PER_ROW), math.ceil(len(grids) / PANELS_PER_ROW)]
    width = 3.6 * max(2, min(PANELS_PER_ROW, max(count, len(grids))))
    canvas = Figure(figsize=(width, 3.2 * max(1, sum(rows))), layout="constrained")
    if not count and not grids:
        canvas.text(0.5, 0.5, "no curves or samples written yet", ha="center", va="center")
    top, bottom = canvas.subfigures(2, 1, height_ratios=rows) if count and grids else (canvas, canvas)
    if count:
        top_axes = panels(top, count)
        for axes, tag in zip(top_axes, tags, strict=False):
            for colour, (name, members) in enumerate(groups.items()):
                plot_group(axes, [job.curves[tag] for job in members if tag in job.curves], f"C{colour}", name)
            axes.set(title=tag, xlabel="step")
        if plane:
            precision_recall(top_axes[-1], groups, suffix, calibration)
        top_axes[0].legend(fontsize="small")
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


def precision_recall(axes, groups: dict[str, list[Job]], suffix: str, calibration: list[dict] | None) -> None:
    """Each job's final (recall, precision) as a dot in its group's colour, over the calibration sets in gray."""
    if calibration:
        draw_calibration(axes, calibration)
    for colour, members in enumerate(groups.values()):
        points = [(job.metrics[f"recall{suffix}"], job.metrics[f"precision{suffix}"]) for job in members
                  if f"recall{suffix}" in job.metrics and f"precision{suffix}" in job.metrics]  # fmt: skip
        if points:
            axes.scatter(*zip(*points, strict=True), color=f"C{colour}", zorder=3)
    axes.set(title=f"precision{suffix} vs recall{suffix}", xlabel="recall (diversity)", ylabel="precision (fidelity)")


def draw_calibration(axes, rows: list[dict], colours: dict[str, str] | None = None) -> None:
    """The calibration sets (real images under controlled damage) as labelled crosses on the precision-recall plane.

    Each kind of damage (noise, blur, fewer classes) is a line from the clean floor through its strengths, so the
    plane shows which way lost fidelity (down) and lost diversity (left) move a point. colours: a colour per kind
    (`noise`, `blur`, `only`); None draws everything in gray, under the runs of a report.
    """
    colours = colours or dict.fromkeys(DAMAGE_KINDS, "0.6")
    floor = rows[0]
    placed: list[tuple[float, float, float, float]] = []  # the boxes of the labels so far
    label(axes, placed, floor, "black", right=True)
    for kind in DAMAGE_KINDS:
        path = [floor] + [row for row in rows if row["set"].startswith(kind)]
        recall, precision = [row["recall"] for row in path], [row["precision"] for row in path]
        axes.plot(recall, precision, color=colours[kind], linewidth=1, alpha=0.7, marker="x", zorder=2)
        for row in path[1:]:
            label(axes, placed, row, colours[kind])
    axes.set(xlim=(-0.03, 1.03), ylim=(-0.03, 1.03))


DAMAGE_KINDS = ("noise", "blur", "only")  # how the calibration sets' names begin, one line each on the plane
CHARACTER_WIDTH, LINE_HEIGHT = 0.0125, 0.04  # a small label's size in axes units of a 4-inch panel, roughly


def label(axes, placed: list, row: dict, colour: str, right: bool = False) -> None:
    """Name a set beside its point (to the right, or left with `right`); moved up, with a leader line, past the
    labels already in `placed` that it would overlap, and added to them."""
    x, y = row["recall"], row["precision"]
    width = CHARACTER_WIDTH * len(row["set"])
    left = x - 0.015 - width if right else x + 0.015
    bottom = y + 0.005

    def overlaps(box: tuple[float, float, float, float]) -> bool:
        x0, x1, y0, y1 = box
        return left < x1 and x0 < left + width and bottom < y1 and y0 < bottom + LINE_HEIGHT

    while any(map(overlaps, placed)):
        bottom += LINE_HEIGHT
    placed.append((left, left + width, bottom, bottom + LINE_HEIGHT))
    line = {"arrowstyle": "-", "color": colour, "linewidth": 0.5} if bottom > y + 0.02 else None
    axes.annotate(row["set"], (x, y), (left + width if right else left, bottom), color=colour, fontsize="x-small",
                  ha="right" if right else "left", arrowprops=line)  # fmt: skip
