"""Every script in scripts/ runs for real, briefly: a subprocess on the tiny fixture data, with its output read back.

The scripts are found by globbing scripts/*.py; `BRIEF` says how each one runs in a few seconds and what it must
have printed or written. A new script without an entry fails `test_script_runs_briefly` until it gets one. Deeper
tests of some scripts live beside the code they exercise (train_feature_net.py's training and --calibrate in
test_metrics.py and test_calibration.py, plot_calibration.py's panels in test_calibration.py).
"""

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(path.name for path in (REPO / "scripts").glob("*.py"))
sys.path.insert(0, str(REPO / "scripts"))
from bench import number, read_table  # noqa: E402  (the scripts print their tables as bench.py does)


def check_bench(out: str, folder: Path) -> None:
    """Each MLP/DCGAN case has a ganlab row (with the ratio) and a reference row, and the batch supply its two."""
    rows = read_table(out)
    assert out.startswith("device: cpu")
    for case in ("lsgan", "fgan", "dcgan"):
        ganlab, reference = [row for row in rows if row["case"].startswith(f"{case} (")]
        assert (ganlab["loop"], reference["loop"]) == ("ganlab", "reference")
        assert number(ganlab["steps/s"]) > 0 and number(reference["steps/s"]) > 0 and number(ganlab["ratio"]) > 0
    variants = [row for row in rows if row["case"] == "dcgan_mnist dataset.image_size=32"]
    assert [row["loop"] for row in variants] == ["augment=none", "augment=diffaugment penalty=r1"]
    assert number(variants[0]["ratio"]) == 1.0 and number(variants[1]["steps/s"]) > 0
    supply = [row for row in rows if row["case"].startswith("batch supply")]
    assert [row["loop"] for row in supply] == ["ganlab", "reference"] and number(supply[0]["images/s"]) > 0


def check_bench_ddp(out: str, folder: Path) -> None:
    """Both set-ups trained (steps/s above 0) and their ratio is printed."""
    threads = re.search(r"^1 process x 2 threads: ([\d.]+) steps/s", out, re.M)
    processes = re.search(r"^2 processes x 1 thread: ([\d.]+) steps/s", out, re.M)
    ratio = re.search(r"^ratio \(processes / threads\): ([\d.]+)x$", out, re.M)
    assert threads and processes and ratio, out
    assert float(threads[1]) > 0 and float(processes[1]) > 0 and float(ratio[1]) > 0


def check_compare_mlp_recipes(out: str, folder: Path) -> None:
    """The seed's table has the three contenders, each trained and scored; the EMA column is the presets' alone."""
    rows = {row["run"]: row for row in read_table(out.split("mean ± std over seeds")[0])}
    assert list(rows) == ["LSGAN reference loop", "lsgan_mlp_mnist", "best_mlp_mnist"]
    assert all(int(row["steps"]) > 0 and math.isfinite(number(row["FID"])) for row in rows.values())
    assert rows["LSGAN reference loop"]["FID (EMA)"] == "-" and number(rows["best_mlp_mnist"]["FID (EMA)"]) >= 0
    assert re.search(r"^best_mlp_mnist / reference, mean FID: [\d.]+ \(target <= 0.333\)$", out, re.M)


def check_gpu_check(out: str, folder: Path) -> None:
    """The check passed: a line of stdout and an entry of the JSON it wrote (the rest: tests/test_gpu_check.py)."""
    report = json.loads((folder / "gpu_check.json").read_text())
    assert report["passed"] and report["device"] == "cpu"
    assert {name: check["status"] for name, check in report["checks"].items()} == {"preset/grid25_mlp/bf16": "ok"}
    assert out.splitlines()[-1].startswith("gpu_check: 1 ok in ")


def check_plot_calibration(out: str, folder: Path) -> None:
    """The figure is a real PNG where --out said, and the one line says so."""
    assert out == f"wrote {folder / 'precision_recall.png'}\n"
    with Image.open(folder / "precision_recall.png") as image:
        assert image.format == "PNG" and image.width > 300 and image.height > 300


def check_pruning_saving(out: str, folder: Path) -> None:
    """The unpruned study's row counts both trials' steps, and the study was written in --out."""
    (row,) = read_table(out)
    assert row["pruner"] == "none" and row["trials pruned"] == "0 of 2"
    assert row["steps"] == "8 (1.00x)"  # 2 trials of train.steps=4, none pruned
    assert math.isfinite(number(row["best fid (minimised)"]))
    study = folder / "pruning" / "default" / "none"  # in --out, not in the checkout's outputs/
    assert (study / "optuna.journal").is_file() and len([p for p in study.iterdir() if p.is_dir()]) == 2


def check_reference_loops(out: str, folder: Path) -> None:
    """One step of each loop moved both its networks (see DRIVE_REFERENCE_LOOPS)."""
    changed = json.loads(out)
    assert changed == {name: True for name in ("LSGANReference", "FGANReference", "DCGANReference")}


def check_tensorboard_screenshots(out: str, folder: Path) -> None:
    """The help names every option (see BRIEF for why the script is not run)."""
    assert out.startswith("usage: tensorboard_screenshots.py") and all(
        option in out for option in ("--data-root", "--seconds", "--eval-samples", "--out")
    )


def check_train_feature_net(out: str, folder: Path) -> None:
    """--floor prints the real-vs-real scores of the shipped net on the fixture's splits."""
    floor = json.loads(out)
    assert {"fid", "kid_mean", "precision", "recall", "coverage"} <= set(floor)
    assert floor["fid"] >= 0 and 0 <= floor["precision"] <= 1


# one step of each reference loop on the fixture MNIST: every network the loop trains has moved
DRIVE_REFERENCE_LOOPS = """
import json, sys
from pathlib import Path
import torch, torchvision
script, root = Path(sys.argv[1]), sys.argv[2]
sys.path.insert(0, str(script.parent))
import reference_loops as loops
images = torchvision.datasets.MNIST(root, train=True).data.numpy()
changed = {}
dcgan = loops.DCGANReference(root, torch.device("cpu"), 8)
for loop in (loops.LSGANReference(images), loops.FGANReference(images), dcgan):
    nets = [net for net in vars(loop).values() if isinstance(net, torch.nn.Module) and list(net.parameters())]
    before = [[p.detach().clone() for p in net.parameters()] for net in nets]
    loop.step()
    moved = [any(not torch.equal(a, p) for a, p in zip(old, net.parameters())) for old, net in zip(before, nets)]
    changed[type(loop).__name__] = len(nets) == 2 and all(moved)
print(json.dumps(changed))
"""


@dataclass(frozen=True)
class Brief:
    """How one script runs briefly: the arguments after `python` ({script}: its path, {data}: the fixture's data
    root, {tmp}: the test's folder, also the working directory), and `check`, which asserts on its stdout and
    that folder."""

    args: list[str]
    check: Callable[[str, Path], None]


BRIEF = {
    # every case but rss (a 300-step training run with evaluations, in a child process)
    "bench.py": Brief(["{script}", "--data-root", "{data}", "--device", "cpu", "--cases",
                       "lsgan,fgan,dcgan,data,variants", "--steps", "2", "--conv-steps", "1", "--rounds", "1",
                       "--warmup", "0", "--data-batches", "2", "--base", "dcgan_mnist", "dataset.image_size=32",
                       "--variant", "augment=none", "--variant", "augment=diffaugment penalty=r1"], check_bench),
    # the real torchrun with gloo: 2 processes of 1 thread against 1 process of 2 threads, 2 steps each of the MLP
    # (its DCGAN doubles the time)
    "bench_ddp.py": Brief(["{script}", "--data-root", "{data}", "--processes", "2", "--seconds", "10", "--rounds",
                           "1", "train.steps=2", "model=mlp"], check_bench_ddp),
    # 0.5 s of training per contender, and 200 samples scored per generator (the default 10,000 took most of the time)
    "compare_mlp_recipes.py": Brief(["{script}", "--data-root", "{data}", "--seconds", "0.5", "--seeds", "0",
                                     "--samples", "200"],
                                    check_compare_mlp_recipes),
    # --device cpu (the path without a GPU), two of its checks: the SyncBatchNorm driver and one preset's bf16 run; the
    # others (bench, torchrun, pytest -m cuda) and the failures and budget are in tests/test_gpu_check.py
    "gpu_check.py": Brief(["{script}", "--device", "cpu", "--data-root", "{data}", "--out", "{tmp}/gpu_check.json",
                           "--steps", "2", "--checks", "presets", "--presets", "grid25_mlp",
                           "--variants", "bf16", "--jobs", "2", "device.threads=1", "train.batch_size=8"],
                          check_gpu_check),
    "plot_calibration.py": Brief(["{script}", "--nets", "mnist", "--out", "{tmp}/precision_recall.png"],
                                 check_plot_calibration),
    # one study (its ratios to itself are 1.00x) of 2 trials of 4 steps, one job at a time: joblib then runs them in
    # this process, without starting 2 workers that each import torch (14 s instead of 6)
    "pruning_saving.py": Brief(["{script}", "--data-root", "{data}", "--out", "{tmp}/pruning", "--trials", "2",
                                "--pruners", "none", "train.steps=4", "eval.during_samples=2", "eval.num_samples=4",
                                "hydra.launcher.n_jobs=1", "hydra.sweeper.n_jobs=1"], check_pruning_saving),
    # a module of bench.py's, with no command line of its own: each loop takes one step
    "reference_loops.py": Brief(["-c", DRIVE_REFERENCE_LOOPS, "{script}", "{data}"], check_reference_loops),
    # --help only: its smallest real run (4 jobs of 1 s, 2 evaluation samples) took 33 s, mostly the sweep's
    # start-up and headless Chromium's four screenshots, and it trains its sweep in the checkout's outputs/sweeps/
    "tensorboard_screenshots.py": Brief(["{script}", "--help"], check_tensorboard_screenshots),
    # --floor: the shipped net's real-vs-real scores (training a net and --calibrate are tested in test_metrics.py
    # and test_calibration.py)
    "train_feature_net.py": Brief(["{script}", "--dataset", "mnist", "--data-root", "{data}", "--floor", "--threads",
                                   "1"], check_train_feature_net),
}  # fmt: skip


def fill(arg: str, places: dict[str, Path]) -> str:
    """`arg` with {script}, {data} and {tmp} replaced by `places` (the driver code has braces of its own)."""
    return re.sub(r"\{(script|data|tmp)\}", lambda match: str(places[match[1]]), arg)


def test_every_entry_names_a_script():
    """An entry outlives its script only by mistake (a new script without one fails `test_script_runs_briefly`)."""
    assert sorted(set(BRIEF) - set(SCRIPTS)) == [], "BRIEF has entries for scripts that scripts/ no longer holds"


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_runs_briefly(script, data_root, tmp_path):
    """The script exits 0 and printed (or wrote) what `BRIEF[script].check` expects."""
    if script not in BRIEF:
        pytest.fail(f"scripts/{script} has no entry in BRIEF (tests/test_scripts.py): say how it runs briefly")
    brief = BRIEF[script]
    places = {"script": REPO / "scripts" / script, "data": data_root, "tmp": tmp_path}
    command = [sys.executable, *(fill(arg, places) for arg in brief.args)]
    # one OpenMP thread per process (the machine is shared); this checkout's ganlab, whatever is installed; temporary
    # folders (run folders, torchrun's) inside the test's folder
    env = os.environ | {
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "TMPDIR": str(tmp_path),
    }
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    brief.check(result.stdout, tmp_path)
