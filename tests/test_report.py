"""`ganlab-report` on a real small sweep that `ganlab-train -m` wrote, run as subprocesses like a user would."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from ganlab.features import read_manifest
from ganlab.runfolder import protocol
from ganlab.sweep_jobs import load_jobs

ROOT = Path(__file__).resolve().parents[1]
STEPS = 200
REPORT_FILES = ("report.md", "report_jobs.csv", "report_groups.csv", "report.png")


def run_report(*arguments) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ganlab.report", *map(str, arguments)], cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def job_folders(sweep: Path) -> dict[tuple[str, str], Path]:
    """The sweep's job folders by (loss, seed), read from their overrides as the report does."""
    folders = {}
    for path in sweep.glob("*/.hydra/overrides.yaml"):
        overrides = dict(override.split("=", 1) for override in yaml.safe_load(path.read_text()))
        folders[overrides["loss"], overrides["seed"]] = path.parent.parent
    return folders


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """Four toy jobs: loss bce and lsgan, each with seeds 0 and 1, evaluated twice."""
    sweep = tmp_path_factory.mktemp("sweep") / "multirun"
    command = [sys.executable, "-m", "ganlab.train", "-m", "dataset=ring8", "model=mlp", "loss=bce,lsgan",
               "seed=0,1", f"train.steps={STEPS}", "log.progress=false", "log.every=50", "eval.every=100",
               "eval.num_samples=16", "device.threads=1", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    process = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert process.returncode == 0, process.stderr
    assert len(job_folders(sweep)) == 4
    return sweep


@pytest.fixture(scope="module")
def report(sweep) -> subprocess.CompletedProcess:
    return run_report(sweep)


def test_report_writes_its_files_and_prints_the_markdown(sweep, report):
    assert report.returncode == 0, report.stderr
    for name in REPORT_FILES:
        assert (sweep / name).is_file(), name
        assert str(sweep / name) in report.stdout
    markdown = (sweep / "report.md").read_text()
    assert markdown.startswith(f"# Sweep {sweep}: 4 jobs (4 completed)")
    assert markdown in report.stdout
    assert "| loss=bce | 2 | 2 | 200 ± 0 |" in markdown


def test_job_table_has_the_swept_columns_and_each_jobs_summary(sweep, report):
    rows = read_csv(sweep / "report_jobs.csv")
    assert {(row["loss"], row["seed"]) for row in rows} == {(loss, seed) for loss in ("bce", "lsgan") for seed in "01"}
    for row in rows:
        assert row["status"] == "completed" and int(row["steps"]) == STEPS
        summary = json.loads((job_folders(sweep)[row["loss"], row["seed"]] / "metrics.json").read_text())
        assert float(row["modes_covered"]) == summary["metrics"]["modes_covered"]
        assert float(row["steps/s"]) == summary["final"]["Speed/steps_per_second"]
        assert f"loss={row['loss']}" in row["overrides"].split(",")
    assert "model" not in rows[0] and "dataset" not in rows[0]  # the same in every job, so not a column


def test_group_table_is_mean_and_sample_std_over_seeds(sweep, report):
    jobs, groups = read_csv(sweep / "report_jobs.csv"), read_csv(sweep / "report_groups.csv")
    assert sorted(group["loss"] for group in groups) == ["bce", "lsgan"]
    for group in groups:
        assert group["n"] == "2" and group["completed"] == "2"
        members = [job for job in jobs if job["loss"] == group["loss"]]
        for name in ("steps", "modes_covered", "high_quality", "steps/s"):
            values = [float(job[name]) for job in members]
            assert float(group[f"{name}_mean"]) == pytest.approx(np.mean(values), rel=1e-12)
            assert float(group[f"{name}_std"]) == pytest.approx(np.std(values, ddof=1), rel=1e-12, abs=1e-15)


def test_figure_is_a_wide_png(sweep, report):
    with Image.open(sweep / "report.png") as image:
        assert image.format == "PNG"
        width, height = image.size
    assert width > height > 0


def test_metric_option_sorts_groups_and_out_redirects(sweep, tmp_path):
    out = tmp_path / "elsewhere"
    process = run_report(sweep, "--metric", "steps/s", "--out", out)
    assert process.returncode == 2 and "is not a metric of this sweep" in process.stderr
    process = run_report(sweep, "--metric", "high_quality", "--out", out)
    assert process.returncode == 0, process.stderr
    assert all((out / name).is_file() for name in REPORT_FILES)
    means = [float(group["high_quality_mean"]) for group in read_csv(out / "report_groups.csv")]
    assert means == sorted(means, reverse=True)  # a share of good samples: highest first
    assert "Ranked by high_quality (--metric), highest first." in process.stdout


def test_partial_sweep_reports_each_jobs_state(sweep, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(sweep, partial, ignore=shutil.ignore_patterns("report*"))
    folders = job_folders(partial)
    (folders["bce", "0"] / "metrics.json").unlink()  # killed mid-run: a checkpoint but no summary
    (folders["bce", "1"] / "metrics.json").unlink()  # queued: nothing yet
    for checkpoint in folders["bce", "1"].glob("checkpoint*.pt"):
        checkpoint.unlink()
    shutil.rmtree(folders["bce", "1"] / "samples")
    (folders["lsgan", "0"] / "metrics.json").write_text('{"status": "compl')  # cut off mid-write
    failed = partial / "loss=wgan,seed=0"
    (failed / ".hydra").mkdir(parents=True)
    (failed / ".hydra" / "overrides.yaml").write_text("- dataset=ring8\n- loss=wgan\n- seed=0\n")
    (failed / "metrics.json").write_text('{"status": "failed", "error": "x"}')

    process = run_report(partial)
    assert process.returncode == 0, process.stderr
    statuses = {(row["loss"], row["seed"]): row["status"] for row in read_csv(partial / "report_jobs.csv")}
    assert statuses == {("bce", "0"): "interrupted", ("bce", "1"): "not started", ("lsgan", "0"): "unreadable",
                        ("lsgan", "1"): "completed", ("wgan", "0"): "failed"}  # fmt: skip
    groups = {group["loss"]: group for group in read_csv(partial / "report_groups.csv")}
    assert {loss: (group["n"], group["completed"]) for loss, group in groups.items()} == {
        "bce": ("2", "0"), "lsgan": ("2", "1"), "wgan": ("1", "0")}  # fmt: skip
    assert float(groups["bce"]["steps_mean"]) == STEPS  # the interrupted job's last logged step, from its events
    assert groups["wgan"]["modes_covered_mean"] == ""
    assert "| failed |" in process.stdout and "| x |" in process.stdout
    with Image.open(partial / "report.png") as image:
        assert image.format == "PNG"


def test_load_jobs_reads_every_job_folder(sweep):
    jobs = load_jobs(sweep)
    assert sorted(job.name for job in jobs) == sorted(folder.name for folder in job_folders(sweep).values())
    for job in jobs:
        assert job.status == "completed" and job.steps == STEPS
        assert set(job.metrics) == {"modes_covered", "high_quality"}
        assert [step for step, _ in job.curves["Loss/D"]] == [50, 100, 150, 200]  # log.every=50
        assert [step for step, _ in job.curves["Metrics/modes_covered"]] == [100, 200]  # eval.every=100


@pytest.mark.parametrize("case", ["missing", "empty", "unwritable"])
def test_errors_are_one_sentence(case, sweep, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    arguments = {
        "missing": [tmp_path / "no_such_sweep"],
        "empty": [tmp_path],  # holds a file but no job folder
        "unwritable": [sweep, "--out", a_file / "report"],  # a folder cannot be made inside a file
    }[case]
    process = run_report(*arguments)
    assert process.returncode == 2
    assert process.stderr.startswith("ganlab: error:") and process.stderr.count("\n") == 1
    assert "Traceback" not in process.stderr
    if case == "empty":
        assert "holds no job folders" in process.stderr


def image_sweep(sweep: Path, folder: Path, objective: str) -> dict[tuple[str, str], dict[str, float]]:
    """A copy of the toy sweep whose jobs look like MNIST runs: image metrics in metrics.json (G and EMA), and
    `objective` and the mnist feature net in config.yaml. Returns each job's metrics by (loss, seed)."""
    shutil.copytree(sweep, folder, ignore=shutil.ignore_patterns("report*"))
    written = {}
    for number, ((loss, seed), job) in enumerate(sorted(job_folders(folder).items())):
        metrics = {"fid": 40.0 + number, "kid_mean": 1.0 + number, "precision": 0.5, "recall": 0.4, "coverage": 10}
        metrics |= {"fid_ema": 1.0 + 10 * number, "precision_ema": 0.8 - 0.1 * number, "recall_ema": 0.3 + 0.1 * number,
                    "coverage_ema": 9 + number % 2, "kid_mean_ema": 0.1 * number}  # fmt: skip
        summary = json.loads((job / "metrics.json").read_text())
        scored = protocol("net:mnist/c4abb046", 2000, "mnist test", 10_000)  # what an MNIST run records
        (job / "metrics.json").write_text(json.dumps(summary | {"metrics": metrics, "protocol": scored}))
        config = yaml.safe_load((job / "config.yaml").read_text())
        config["eval"]["objective"], config["dataset"]["feature_net"] = objective, "mnist"
        (job / "config.yaml").write_text(yaml.safe_dump(config))
        written[loss, seed] = metrics
    return written


def test_tables_rank_by_the_sweeps_objective_and_show_its_generators_companions(sweep, tmp_path):
    """eval.objective=recall_ema: jobs and groups highest recall_ema first; report.md shows it, then precision, recall
    and class coverage of the EMA generator and where its FID falls on the calibration table; the CSV has the rest."""
    written = image_sweep(sweep, tmp_path / "images", "recall_ema")
    process = run_report(tmp_path / "images")
    assert process.returncode == 0, process.stderr
    assert "Ranked by recall_ema (the sweep's eval.objective), highest first." in process.stdout
    assert "Scores: net:mnist/c4abb046, 2000 samples vs mnist test (10000)." in process.stdout  # one protocol
    jobs = read_csv(tmp_path / "images" / "report_jobs.csv")
    recalls = [float(job["recall_ema"]) for job in jobs]
    assert recalls == sorted((m["recall_ema"] for m in written.values()), reverse=True)
    assert {"fid", "kid_mean", "kid_mean_ema", "fid_ema", "calibration"} <= set(jobs[0])
    groups = [float(group["recall_ema_mean"]) for group in read_csv(tmp_path / "images" / "report_groups.csv")]
    assert groups == sorted(groups, reverse=True)
    header = (tmp_path / "images" / "report.md").read_text().split("## Jobs")[1].splitlines()[2]
    assert header == ("| loss | seed | status | steps | seconds | recall_ema | precision_ema | coverage_ema | "
                      "calibration | steps/s |")  # fmt: skip


def test_calibration_column_places_each_fid_among_the_damaged_sets(sweep, tmp_path):
    """fid_ema (the objective): each job's between the two calibration sets of the shipped MNIST table around it."""
    written = image_sweep(sweep, tmp_path / "images", "fid_ema")
    process = run_report(tmp_path / "images")
    assert process.returncode == 0, process.stderr
    table = sorted(read_manifest()["mnist"]["calibration"]["sets"], key=lambda row: row["fid"])
    jobs = read_csv(tmp_path / "images" / "report_jobs.csv")
    assert [float(job["fid_ema"]) for job in jobs] == sorted(m["fid_ema"] for m in written.values())  # lowest first
    for job in jobs:
        fid = float(job["fid_ema"])
        below = [row["set"] for row in table if row["fid"] <= fid][-1]
        above = [row["set"] for row in table if row["fid"] > fid][0]
        assert job["calibration"].startswith(f"between {below} (") and f") and {above} (" in job["calibration"]
    assert "| calibration |" in process.stdout and "| between real train (floor) (" in process.stdout  # fid_ema 1


def test_runs_scored_under_different_protocols_are_ranked_apart(sweep, tmp_path):
    """Two jobs scored on 500 samples, the rest on 2000: one warning line, and each protocol ranked on its own."""
    written = image_sweep(sweep, tmp_path / "images", "fid")
    few = sorted(job_folders(tmp_path / "images").items())[:2]
    for _, job in few:
        summary = json.loads((job / "metrics.json").read_text())
        summary["protocol"]["samples"] = 500
        (job / "metrics.json").write_text(json.dumps(summary))
    process = run_report(tmp_path / "images")
    assert process.returncode == 0, process.stderr
    warning = "ganlab-report: warning: the jobs were scored under 2 protocols (net:mnist/c4abb046, 2000 samples vs"
    assert process.stderr.startswith(warning) and process.stderr.count("\n") == 1
    text = (tmp_path / "images" / "report.md").read_text()
    assert "scored under 2 protocols, whose numbers do not compare: each is ranked apart below." in text
    sections = text.split("## Scored with ")[1:]
    assert [section.splitlines()[0] for section in sections] == [
        "net:mnist/c4abb046, 2000 samples vs mnist test (10000)",
        "net:mnist/c4abb046, 500 samples vs mnist test (10000)",
    ]
    jobs = read_csv(tmp_path / "images" / "report_jobs.csv")
    for samples, count in (("2000", len(written) - 2), ("500", 2)):
        rows = [job for job in jobs if f", {samples} samples vs" in job["protocol"]]
        assert len(rows) == count
        assert [float(job["fid"]) for job in rows] == sorted(float(job["fid"]) for job in rows)  # ranked within


def test_figure_gains_the_precision_recall_plane(sweep, report, tmp_path):
    """The same curves, plus one panel with the runs (and the calibration sets) on the precision-recall plane."""
    image_sweep(sweep, tmp_path / "images", "fid_ema")
    assert run_report(tmp_path / "images").returncode == 0
    with Image.open(sweep / "report.png") as without, Image.open(tmp_path / "images" / "report.png") as with_plane:
        assert with_plane.size[0] > without.size[0]  # 4 curve panels (2 losses, 2 toy metrics), then 5


def test_a_pruned_job_ranks_after_the_finished_ones_and_the_saving_is_estimated(sweep, tmp_path):
    """A job cut short at step 100 of 200 (as the pruner's run writes it): the report names it and the step, and
    sets the seconds the sweep trained against those had it run to its end."""
    pruned = tmp_path / "multirun"
    shutil.copytree(sweep, pruned)
    folder = job_folders(pruned)["bce", "0"]
    summary = json.loads((folder / "metrics.json").read_text())
    others = [
        json.loads((job / "metrics.json").read_text())
        for key, job in job_folders(pruned).items()
        if key != ("bce", "0")
    ]
    summary |= {"status": "pruned", "step": 100, "seconds": 1.0, "metrics": {"high_quality": 1.0, "modes_covered": 8}}
    (folder / "metrics.json").write_text(json.dumps(summary))
    assert run_report(pruned).returncode == 0
    text = (pruned / "report.md").read_text()
    per_step = sum(job["seconds"] / job["step"] for job in others) / 3
    spent, unpruned = (
        1.0 + sum(job["seconds"] for job in others),
        sum(job["seconds"] for job in others) + 200 * per_step,
    )
    assert f"1 of 4 jobs were cut short ({folder.name} at step 100): the sweep trained {spent:,.0f} s" in text
    assert f"{spent / unpruned:.0%} of the {unpruned:,.0f} s estimated" in text
    rows = read_csv(pruned / "report_jobs.csv")
    assert rows[-1]["status"] == "pruned" and rows[-1]["steps"] == "100"  # its perfect score does not rank it first
