"""scripts/gpu_check.py, run for real: without CUDA it says so in one line; with --device cpu it runs every kind of
check on the fixture data (gloo for NCCL), records each in its JSON, goes on after a failure, and keeps its budget.

The preset runs here take bf16 alone: compiling on 2 CPU cores takes a minute a preset, and the compiled variant
differs from the bf16 one only by its overrides (the spent-budget test checks that every preset is planned both
ways; tests/test_cuda.py compiles on a GPU).
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"
PRESETS = sorted(path.stem for path in (REPO / "conf" / "experiment").glob("*.yaml"))
# every training run: one thread (the machine is shared), a small batch (even, for 2 ranks)
TINY = ["device.threads=1", "train.batch_size=8"]
OTHER_CHECKS = ["bench_dcgan", "cuda_tests", "sync_batch_norm", "torchrun_1_rank", "torchrun_2_ranks", "inception"]


def gpu_check(*args, cwd: Path) -> subprocess.CompletedProcess:
    """`python scripts/gpu_check.py *args` in `cwd`, on one OpenMP thread, with its temporary folders in `cwd`."""
    env = os.environ | {
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "TMPDIR": str(cwd),
    }
    command = [sys.executable, str(SCRIPT), *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU, so gpu_check.py runs its checks")
@pytest.mark.parametrize("with_options", [False, True], ids=["alone", "with-options"])
def test_without_cuda_it_says_so_in_one_line_and_exits_2(tmp_path, with_options):
    options = ["--data-root", tmp_path, "--out", tmp_path / "check.json"] if with_options else []
    result = gpu_check(*options, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("gpu_check: no CUDA device here") and result.stderr.count("\n") == 1
    assert result.stdout == "" and not (tmp_path / "check.json").exists()


def test_the_cpu_path_runs_every_kind_of_check_and_records_each_ok(tmp_path, data_root):
    """grid25_mlp needs no files; sngan_dcgan_cifar10 reads --cifar10-folder (a subprocess cannot read the fixture's
    CIFAR-10 batches: see conftest.data_root)."""
    out = tmp_path / "check.json"
    start = time.monotonic()
    result = gpu_check("--device", "cpu", "--data-root", data_root, "--cifar10-folder", data_root / "folder",
                       "--out", out, "--steps", "2", "--presets", "grid25_mlp,sngan_dcgan_cifar10", "--variants",
                       "bf16", "--jobs", "2", "--bench-steps", "1", "--bench-rounds", "1", "--bench-warmup", "0",
                       "--inception-samples", "8", *TINY, cwd=tmp_path)  # fmt: skip
    seconds = time.monotonic() - start
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    report = json.loads(out.read_text())
    checks = report["checks"]
    presets = ["preset/grid25_mlp/bf16", "preset/sngan_dcgan_cifar10/bf16"]
    assert list(checks) == [*OTHER_CHECKS, *presets]
    assert {name: check["status"] for name, check in checks.items()} == dict.fromkeys(checks, "ok")
    assert report["passed"] and report["device"] == "cpu" and 0 < report["seconds"] <= seconds
    assert result.stdout.splitlines()[-1] == f"gpu_check: {len(checks)} ok in {report['seconds']:.0f} s; wrote {out}"

    bench = checks["bench_dcgan"]["figures"]
    assert bench["case"].startswith("dcgan (dcgan_mnist") and bench["matmul_peak_gflops"] > 0
    for loop in ("ganlab", "reference"):
        assert bench[loop]["steps_per_second"] > 0 and bench[loop]["share_of_peak"] > 0
    assert bench["ratio_to_reference"] > 0 and bench["bf16_over_fp32"] > 0
    # collected, and skipped without a GPU
    tests = checks["cuda_tests"]["figures"]
    assert tests["tests"] >= 4 and tests["skipped"] == tests["tests"] and tests["failures"] == tests["errors"] == 0
    sync = checks["sync_batch_norm"]["figures"]
    assert sync["layers"]["BatchNorm2d"] == 0 and sync["layers"]["SyncBatchNorm"] > 0
    assert sync["relative_difference"] == 0  # on the CPU, SyncBatchNorm alone is BatchNorm to the bit
    inception = checks["inception"]["figures"]
    assert inception["protocol"]["samples"] == 8 and inception["protocol"]["reference"] == "mnist test"
    assert inception["scores"]["fid"] > 0 and inception["eval_seconds"] > 0
    for name in ["torchrun_1_rank", "torchrun_2_ranks", "inception", *presets]:
        figures = checks[name]["figures"]
        assert set(figures["losses"]) >= {"Loss/D", "Loss/G"} and figures["steps_per_second"] > 0, name


def test_a_failed_check_is_one_line_in_the_json_and_the_others_still_run(tmp_path):
    """Without MNIST under --data-root, best_mlp_mnist fails with ganlab's one-line error; the toy preset, which
    needs no files, still trains, and the exit status is 1."""
    out = tmp_path / "check.json"
    result = gpu_check("--device", "cpu", "--data-root", tmp_path / "empty", "--out", out, "--steps", "2",
                       "--checks", "presets", "--presets", "best_mlp_mnist,grid25_mlp", "--variants", "bf16",
                       "--jobs", "2", *TINY, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    checks = json.loads(out.read_text())["checks"]
    failed, toy = checks["preset/best_mlp_mnist/bf16"], checks["preset/grid25_mlp/bf16"]
    assert failed["status"] == "failed" and toy["status"] == "ok"
    assert failed["error"].startswith("exit 2: ganlab: error:") and "MNIST" in failed["error"]
    assert "\n" not in failed["error"] and failed["tail"]
    assert result.stdout.splitlines()[-1].startswith("gpu_check: 1 failed, 1 ok in ")


def test_the_default_plan_trains_every_preset_both_ways_and_a_spent_budget_skips_it_all(tmp_path):
    out = tmp_path / "check.json"
    result = gpu_check("--device", "cpu", "--data-root", tmp_path, "--out", out, "--budget-s", "0", cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    report = json.loads(out.read_text())
    variants = ["bf16", "bf16_compile"]
    presets = [f"preset/{preset}/{variant}" for variant in variants for preset in PRESETS]
    assert list(report["checks"]) == [*OTHER_CHECKS, *presets]
    assert all(check == {"status": "skipped (budget)"} for check in report["checks"].values())
    assert not report["passed"] and report["steps"] == 200


def test_a_check_still_running_when_the_budget_ends_is_killed(tmp_path):
    """A run of ten million steps is cut at the budget's end: killed with its process group, recorded, exit 1."""
    out = tmp_path / "check.json"
    start = time.monotonic()
    result = gpu_check("--device", "cpu", "--data-root", tmp_path, "--out", out, "--budget-s", "6", "--steps",
                       "10000000", "--checks", "presets", "--presets", "grid25_mlp", "--variants", "bf16", *TINY,
                       cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    assert time.monotonic() - start < 20  # the budget, and the kill and clean-up after it
    (check,) = json.loads(out.read_text())["checks"].values()
    assert check["status"] == "timed out (budget)" and check["error"].startswith("still running when the budget")
