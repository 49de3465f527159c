"""Check ganlab on a CUDA GPU in at most 8 minutes (issue 22): presets, benchmark, torchrun, SyncBatchNorm and the
tests marked `cuda`, each recorded in one JSON file.

    python scripts/gpu_check.py --data-root shared/data --out gpu_check.json [--steps 200] [--budget-s 480]
    python scripts/gpu_check.py --device cpu --data-root ../shared/data --out check.json   # the path, without a GPU

The checks, each a subprocess in a temporary folder:

- `bench_dcgan`: scripts/bench.py's DCGAN case, ganlab's step against the PyTorch tutorial's loop: steps/s, the
  share of the matmul peak bench.py measures, their ratio; and ganlab's step in bf16 against fp32 (its variants).
  It runs first and alone, since its timings need an otherwise idle GPU; the others then run `--jobs` at a time.
- `cuda_tests`: `pytest -m cuda` (tests/test_cuda.py and every other test marked `cuda`).
- `sync_batch_norm`: the DCGAN preset's networks with every BatchNorm made SyncBatchNorm, as ganlab makes them under
  torchrun on CUDA, trained `--steps` steps in a NCCL group of one rank: their losses are finite, and the first
  steps' are plain BatchNorm's (one rank has no statistics to share). Across 2 GPUs, `torchrun_2_ranks` trains the
  same preset with real SyncBatchNorm.
- `torchrun_1_rank`, `torchrun_2_ranks`: the DCGAN preset under torchrun; 2 ranks (NCCL) need 2 GPUs. ganlab sets up
  no process group for 1 rank, so NCCL itself runs only across 2.
- `inception`: the DCGAN preset trained `--steps` steps, then scored with `eval.features=inception` (FID, KID, IS
  and PRDC of `--inception-samples` samples against MNIST's test split) on the device, with seeded random weights
  that this script writes (the machine may not reach the download): every score finite, the protocol recorded.
- `preset/<name>/bf16`, `preset/<name>/bf16_compile`: every preset (conf/experiment/*.yaml) trains `--steps` steps
  with bf16 autocast, then also compiled (all presets' bf16 runs come first).

Every training run has no evaluation (its Inception weights would need a download) and must end `completed` at its
last step with finite losses (its metrics.json). A check records its status (`ok`, `failed`, `timed out (budget)`,
`skipped (budget)`, or `skipped (...)` where it cannot run here), seconds, figures, and for a failure the error's last
line and the output's tail. The JSON is rewritten as each check ends, so a killed check leaves the others' results.
The CIFAR-10 presets train on `--cifar10-folder` (class subfolders of PNGs, as dataset=folder) where --data-root has
no cifar-10-batches-py/, since the shared data holds a PNG subset only.

`--device cpu` runs the same path on the CPU, to test this script without a GPU: gloo instead of NCCL, and the
SyncBatchNorm networks without a process group (SyncBatchNorm refuses CPU tensors in one). Arguments after the
options are ganlab overrides for every training run (e.g. device.threads=1).

Exit status: 0 when every check passed (or cannot run here), 1 when one failed or the budget cut it, 2 without CUDA.
"""

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
sys.path.insert(0, str(REPO))  # this checkout's ganlab, whatever is installed (the children get it on PYTHONPATH)
sys.path.insert(0, str(SCRIPTS))  # bench.py
PRESETS = sorted(path.stem for path in (REPO / "conf" / "experiment").glob("*.yaml"))
CHECK_KINDS = ("bench", "cuda_tests", "sync_batch_norm", "torchrun", "inception", "presets")

# each preset trains once per variant: the device options it adds
VARIANTS = {
    "bf16": ["device.precision=bf16"],
    "bf16_compile": ["device.precision=bf16", "device.compile=true"],
}
# every training run: no evaluation (eval.features=inception needs downloaded weights), no progress bar
QUIET = ["eval.enabled=false", "log.progress=false"]
DCGAN_PRESET = "dcgan_mnist"  # BatchNorm in G and D: what SyncBatchNorm and torchrun's checks train
# SyncBatchNorm's losses must be BatchNorm's, within RTOL, for the first COMPARED_STEPS steps (later, a GAN's chaos
# amplifies the differences of the GPU's non-deterministic kernels)
COMPARED_STEPS = 3
RTOL = 1e-3
NORM_LAYERS = (torch.nn.BatchNorm2d, torch.nn.SyncBatchNorm)  # counted in G and D before and after the conversion
TAIL_LINES = 30  # of a failed check's output, kept in the JSON (on a remote GPU the JSON may be all that returns)

# runs compare_sync_batch_norm in a fresh process: argv[1] holds its keyword arguments as JSON
SYNC_BATCH_NORM_DRIVER = f"""
import json, sys
sys.path.insert(0, {str(SCRIPTS)!r})
import gpu_check
gpu_check.compare_sync_batch_norm(**json.loads(sys.argv[1]))
"""


class CheckFailed(Exception):
    """A check that ran and failed: `str(error)` is its one line for the JSON, `tail` the end of its output."""

    def __init__(self, line: str, output: str = ""):
        super().__init__(line)
        self.tail = output.splitlines()[-TAIL_LINES:]


class OutOfBudget(Exception):
    """A check still running when the time budget ran out (it was killed)."""


@dataclass
class Check:
    """One check: its name, and `run`, which takes the seconds left and returns its figures or raises CheckFailed.

    skip: why it cannot run on this machine (then its status), or None.
    """

    name: str
    run: Callable[[float], dict]
    skip: str | None = None


class Processes:
    """The subprocesses running now, each in its own process group, so that a timeout or Ctrl-C ends torchrun's
    workers with it (a group is killed whole)."""

    def __init__(self):
        self.running: set[subprocess.Popen] = set()
        self.stopping = False  # set by kill_all: a check that starts a command after it gets none
        self.lock = threading.Lock()

    def run(self, command: list[str], timeout: float) -> tuple[str, str]:
        """Run `command` in the repository; its (stdout, stderr). CheckFailed on a non-zero exit, OutOfBudget when
        it is still running after `timeout` seconds."""
        env = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
        with self.lock:
            if self.stopping:
                raise OutOfBudget("not started: gpu_check is stopping")
            process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, start_new_session=True)  # fmt: skip
            self.running.add(process)
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(process)
            process.communicate()
            raise OutOfBudget(f"still running when the budget ran out, after {timeout:.0f} s: killed") from None
        except BaseException:  # Ctrl-C while waiting: the command's group must not outlive this script
            kill_group(process)
            raise
        finally:
            with self.lock:
                self.running.discard(process)
        if process.returncode != 0:
            raise CheckFailed(f"exit {process.returncode}: {error_line(err + out)}", out + err)
        return out, err

    def kill_all(self) -> None:
        """SIGKILL every running command's group, and start no other."""
        with self.lock:
            self.stopping = True
            for process in self.running:
                kill_group(process)


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the process group `process` leads (torchrun and its ranks, pytest and its children)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:  # it ended meanwhile
        pass


def error_line(output: str) -> str:
    """The line of `output` that says what went wrong: the last `ganlab: error:` line, else the last exception
    line other than torchrun's ChildFailedError (its box of its own follows the worker's error), else the last
    non-blank line."""
    ganlab = re.findall(r"^.*ganlab: error: .*$", output, re.M)
    raised = [line for line in re.findall(r"^(?:\[rank\d+\]:)?\s*[\w.]*(?:Error|Exception)\b.*$", output, re.M)
              if "ChildFailedError" not in line]  # fmt: skip
    lines = ganlab or raised or [line for line in output.splitlines() if line.strip()] or ["(no output)"]
    return lines[-1].strip()


def finished_run(run_dir: Path, steps: int) -> dict:
    """The figures of a run that ended `completed` at step `steps` with finite losses, read from its metrics.json;
    CheckFailed for any other ending."""
    summary = json.loads((run_dir / "metrics.json").read_text())
    if summary["status"] != "completed" or summary["step"] != steps:
        raise CheckFailed(f"the run ended {summary['status']} at step {summary['step']} of {steps}")
    losses = {name: value for name, value in summary["final"].items() if name.startswith("Loss/")}
    if not losses or not all(math.isfinite(value) for value in losses.values()):
        raise CheckFailed(f"the run's final losses are not all finite: {losses}")
    return {"losses": losses, "steps_per_second": summary["final"]["Speed/steps_per_second"],
            "training_seconds": summary["seconds"]}  # fmt: skip


def dataset_options() -> dict[str, tuple[str, bool]]:
    """Each preset's dataset option (e.g. cifar10) and whether it reads files (has a `root`), as composed."""
    from hydra import compose, initialize_config_dir

    import ganlab.train  # noqa: F401  (registers the config schema)

    options = {}
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        for preset in PRESETS:
            cfg = compose("config", overrides=[f"experiment={preset}"], return_hydra_config=True)
            options[preset] = (cfg.hydra.runtime.choices.dataset, "root" in cfg.dataset)
    return options


def compare_sync_batch_norm(data_root: str, device: str, steps: int, overrides: list[str], store: str, out: str):
    """Train the DCGAN preset `steps` steps twice from one seed, with BatchNorm and with SyncBatchNorm, and write
    both runs' losses and layer counts to `out` (JSON). Runs in its own process (SYNC_BATCH_NORM_DRIVER).

    On CUDA inside a NCCL group of one rank (a file store at `store`), as ganlab trains under torchrun; on the CPU
    without a group, since SyncBatchNorm refuses CPU tensors inside one.
    """
    import torch.distributed as dist
    from bench import compose_preset

    from ganlab.config import build
    from ganlab.data import make_batches
    from ganlab.device import resolve_device, seed_everything
    from ganlab.step import build_gan, train_step

    cfg = compose_preset(DCGAN_PRESET, data_root, device, overrides)
    target = resolve_device(cfg.device)
    if target.type == "cuda":
        dist.init_process_group("nccl", init_method=f"file://{store}", rank=0, world_size=1)
    result = {"process_group": dist.get_backend() if dist.is_initialized() else None}
    for kind in ("batch_norm", "sync_batch_norm"):
        seed_everything(cfg.seed)
        source = build(cfg.dataset, "dataset")
        gan = build_gan(cfg, target, source.num_classes, source=source)
        if kind == "sync_batch_norm":  # what GANModel.prepare does under 2+ CUDA ranks; the optimisers keep the
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(gan.model)  # same parameters
        batches = make_batches(source, target, gan.model.output_range, cfg.train.batch_size, cfg.seed)
        losses = []
        for _ in range(steps):
            stats = train_step(gan, batches, cfg.train.batch_size, cfg.train.d_steps)
            losses.append([float(stats["Loss/D"]), float(stats["Loss/G"])])
        layers = {layer.__name__: sum(type(m) is layer for m in gan.model.modules()) for layer in NORM_LAYERS}
        result[kind] = {"losses": losses, "layers": layers}
    if dist.is_initialized():
        dist.destroy_process_group()
    Path(out).write_text(json.dumps(result))


class GPUCheck:
    """The checks of one invocation, their shared settings, and the JSON they are written to."""

    def __init__(self, args, overrides: list[str], work: Path, started: float):
        """args: the parsed options; overrides: ganlab overrides for every training run; work: a folder for the
        runs; started: the script's start (time.monotonic()), which the budget counts from."""
        self.args, self.overrides, self.work, self.started = args, overrides, work, started
        self.data_root = Path(args.data_root).absolute()  # the children run in the repository
        self.deadline = started + args.budget_s
        self.processes = Processes()
        self.results: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.cifar10_folder = self.find_cifar10_folder()

    # --- what runs -----------------------------------------------------------------------------------------------

    def find_cifar10_folder(self) -> Path | None:
        """Where the CIFAR-10 presets train as dataset=folder: --cifar10-folder, else --data-root's
        cifar10-subset/train/ when it has no cifar-10-batches-py/; None: dataset=cifar10 under --data-root."""
        if self.args.cifar10_folder:
            return Path(self.args.cifar10_folder).absolute()
        subset = self.data_root / "cifar10-subset" / "train"
        if not (self.data_root / "cifar-10-batches-py").is_dir() and subset.is_dir():
            return subset
        return None

    def training_overrides(self, dataset: str, reads_files: bool, run_dir: Path) -> list[str]:
        """What every training run gets: its data, the device, --steps, no evaluation, its folder, the user's."""
        if dataset == "cifar10" and self.cifar10_folder:
            data = ["dataset=folder", f"dataset.root={self.cifar10_folder}"]
        else:
            data = [f"dataset.root={self.data_root}"] if reads_files else []
        return [*data, f"device={self.args.device}", f"train.steps={self.args.steps}", *QUIET,
                f"hydra.run.dir={run_dir}", *self.overrides]  # fmt: skip

    def plan(self) -> list[Check]:
        """The checks --checks asks for, in the order they start (see the module docstring)."""
        kinds, checks = self.args.checks, []
        if "bench" in kinds:
            checks.append(Check("bench_dcgan", self.bench))
        if "cuda_tests" in kinds:
            checks.append(Check("cuda_tests", self.cuda_tests))
        if "sync_batch_norm" in kinds:
            checks.append(Check("sync_batch_norm", self.sync_batch_norm))
        if "torchrun" in kinds:
            gpus = torch.cuda.device_count() if self.args.device == "cuda" else None
            for ranks in (1, 2):
                skip = f"skipped (needs {ranks} GPUs, {gpus} here)" if gpus is not None and gpus < ranks else None
                name = f"torchrun_{ranks}_rank" + ("s" if ranks > 1 else "")
                checks.append(Check(name, lambda left, ranks=ranks: self.torchrun(ranks, left), skip))
        if "inception" in kinds:
            checks.append(Check("inception", self.inception))
        if "presets" in kinds:
            datasets = dataset_options()
            for variant in self.args.variants:
                for preset in self.args.presets:
                    run = lambda left, p=preset, v=variant: self.preset(p, v, datasets[p], left)  # noqa: E731
                    checks.append(Check(f"preset/{preset}/{variant}", run))
        return checks

    def bench(self, left: float) -> dict:
        """bench.py's DCGAN case and ganlab's step in fp32 and bf16: steps/s, share of the matmul peak, ratios."""
        command = [sys.executable, str(SCRIPTS / "bench.py"), "--data-root", str(self.data_root), "--device",
                   self.args.device, "--cases", "dcgan,variants", "--conv-steps", str(self.args.bench_steps),
                   "--rounds", str(self.args.bench_rounds), "--warmup", str(self.args.bench_warmup),
                   "--base", DCGAN_PRESET, "--variant", "device.precision=fp32",
                   "--variant", "device.precision=bf16"]  # fmt: skip
        from bench import number, read_table  # bench.py's own reader of its tables (it loads torch and hydra)

        out, _ = self.processes.run(command, left)
        peak = re.search(r"^matmul peak \(fp32 2048x2048\): ([\d,.]+) GFLOP/s$", out, re.M)
        rows = read_table(out)
        loops = {row["loop"]: row for row in rows if row["case"].startswith("dcgan (")}
        variants = {row["loop"]: row for row in rows if row["case"] == DCGAN_PRESET}
        if not peak or set(loops) != {"ganlab", "reference"} or len(variants) != 2:
            raise CheckFailed("bench.py's output lacks the matmul peak, the dcgan rows or the variants", out)
        figures = {"case": loops["ganlab"]["case"], "matmul_peak_gflops": number(peak[1])}
        for loop, row in loops.items():
            figures[loop] = {"steps_per_second": number(row["steps/s"]), "gflops": number(row["GFLOP/s"]),
                             "share_of_peak": number(row["of peak"]), "peak_mb": number(row["peak MB"])}  # fmt: skip
        figures["ratio_to_reference"] = number(loops["ganlab"]["ratio"])
        figures["bf16_over_fp32"] = number(variants["device.precision=bf16"]["ratio"])
        if not all(figures[loop]["steps_per_second"] > 0 for loop in loops):
            raise CheckFailed(f"a loop made no progress: {figures}", out)
        return figures

    def cuda_tests(self, left: float) -> dict:
        """`pytest -m cuda` on the test files that mark a test so; its counts from the JUnit report. On CUDA at least
        one must pass. Only those files are collected: collecting the whole suite takes longer than their tests."""
        report = self.work / "cuda_tests.xml"
        marked = [str(path) for path in sorted((REPO / "tests").glob("test_*.py")) if "mark.cuda" in path.read_text()]
        command = [sys.executable, "-m", "pytest", "-m", "cuda", "-n", "0", "-p", "no:cacheprovider", "-q",
                   f"--basetemp={self.work / 'pytest'}", f"--junitxml={report}", *marked]  # fmt: skip
        try:
            out, _ = self.processes.run(command, left)
        except CheckFailed as failure:
            if not report.exists():
                raise
            out = "\n".join(failure.tail)
        suite = ElementTree.parse(report).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {key: int(suite.get(key)) for key in ("tests", "failures", "errors", "skipped")}
        counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        failed = [case.get("name") for case in suite.iter("testcase")
                  if case.find("failure") is not None or case.find("error") is not None]  # fmt: skip
        if failed:
            raise CheckFailed(f"{len(failed)} failed: {', '.join(failed)}", out)
        if counts["tests"] == 0:
            raise CheckFailed("no test is marked cuda", out)
        if self.args.device == "cuda" and counts["passed"] == 0:
            raise CheckFailed(f"every test marked cuda skipped on a CUDA machine: {counts}", out)
        return counts

    def sync_batch_norm(self, left: float) -> dict:
        """compare_sync_batch_norm in a fresh process, judged here: SyncBatchNorm everywhere, finite losses, the
        first COMPARED_STEPS steps BatchNorm's."""
        out = self.work / "sync_batch_norm.json"
        arguments = {"data_root": str(self.data_root), "device": self.args.device, "steps": self.args.steps,
                     "overrides": self.overrides, "store": str(self.work / "store"), "out": str(out)}  # fmt: skip
        self.processes.run([sys.executable, "-c", SYNC_BATCH_NORM_DRIVER, json.dumps(arguments)], left)
        result = json.loads(out.read_text())
        plain, synced = result["batch_norm"], result["sync_batch_norm"]
        figures = {"process_group": result["process_group"], "layers": synced["layers"],
                   "final_losses": synced["losses"][-1]}  # fmt: skip
        expected = {"BatchNorm2d": 0, "SyncBatchNorm": plain["layers"]["BatchNorm2d"]}
        if synced["layers"] != expected or expected["SyncBatchNorm"] == 0:
            raise CheckFailed(f"not every BatchNorm became a SyncBatchNorm: {plain['layers']} -> {synced['layers']}")
        if not all(math.isfinite(value) for step in synced["losses"] for value in step):
            raise CheckFailed(f"SyncBatchNorm's losses are not all finite: {synced['losses']}")
        pairs = zip(plain["losses"][:COMPARED_STEPS], synced["losses"][:COMPARED_STEPS], strict=True)
        difference = max(abs(a - b) / max(abs(a), 1e-6) for left_step, right_step in pairs
                         for a, b in zip(left_step, right_step, strict=True))  # fmt: skip
        figures["relative_difference"] = difference
        if difference > RTOL:
            raise CheckFailed(f"SyncBatchNorm's first losses differ from BatchNorm's by {difference:.1e} (> {RTOL})")
        return figures

    def torchrun(self, ranks: int, left: float) -> dict:
        """The DCGAN preset under torchrun with `ranks` processes on this machine. ganlab sets up no process group
        for one rank; for more, NCCL on CUDA (with SyncBatchNorm), gloo on the CPU (ganlab.distributed.start)."""
        run_dir = self.work / f"torchrun_{ranks}"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", "-m",
                   "ganlab.train", f"experiment={DCGAN_PRESET}",
                   *self.training_overrides("mnist", True, run_dir)]  # fmt: skip
        self.processes.run(command, left)
        return {"ranks": ranks, **finished_run(run_dir, self.args.steps)}

    def inception(self, left: float) -> dict:
        """The DCGAN preset's final evaluation with eval.features=inception on the device: finite scores, their
        protocol, and the evaluation's seconds (the reference statistics of MNIST's test split included)."""
        from ganlab.inception import write_random_weights

        weights, run_dir = self.work / "inception.pth", self.work / "inception"
        write_random_weights(weights)
        scoring = ["eval.enabled=true", "eval.features=inception", f"eval.inception_weights={weights}",
                   "eval.reference=test", f"eval.num_samples={self.args.inception_samples}", "eval.times=0",
                   f"eval.stats_dir={self.work / 'fid_stats'}"]  # fmt: skip
        overrides = [o for o in self.training_overrides("mnist", True, run_dir) if o != "eval.enabled=false"]
        command = [sys.executable, "-m", "ganlab.train", f"experiment={DCGAN_PRESET}", *overrides, *scoring]
        self.processes.run(command, left)
        figures = finished_run(run_dir, self.args.steps)
        summary = json.loads((run_dir / "metrics.json").read_text())
        scores = {name: summary["metrics"].get(name) for name in ("fid", "kid_mean", "is_mean", "precision")}
        if not all(isinstance(value, float) and math.isfinite(value) for value in scores.values()):
            raise CheckFailed(f"the Inception scores are not all finite numbers: {scores}")
        if not summary["protocol"]["features"].startswith("inception-v3-compat/"):
            raise CheckFailed(f"the run was not scored with Inception: {summary['protocol']}")
        return figures | {"scores": scores, "protocol": summary["protocol"], "eval_seconds": summary["eval_seconds"]}

    def preset(self, preset: str, variant: str, dataset: tuple[str, bool], left: float) -> dict:
        """One preset trained `--steps` steps with the variant's device options."""
        run_dir = self.work / "presets" / preset / variant
        command = [sys.executable, "-m", "ganlab.train", f"experiment={preset}", *VARIANTS[variant],
                   *self.training_overrides(*dataset, run_dir)]  # fmt: skip
        self.processes.run(command, left)
        return finished_run(run_dir, self.args.steps)

    # --- how it runs ---------------------------------------------------------------------------------------------

    def attempt(self, check: Check) -> dict:
        """Run `check` if it can run here and the budget has time left; its result, never an exception."""
        if check.skip:
            return {"status": check.skip}
        left = self.deadline - time.monotonic()
        if left <= 0:
            return {"status": "skipped (budget)"}
        start = time.monotonic()
        try:
            result = {"status": "ok", "figures": check.run(left)}
        except OutOfBudget as cut:
            result = {"status": "timed out (budget)", "error": str(cut)}
        except CheckFailed as failure:
            result = {"status": "failed", "error": str(failure), "tail": failure.tail}
        except Exception as error:  # a mistake in the check itself: recorded like a failure, and the rest go on
            result = {"status": "failed", "error": f"{type(error).__name__}: {error}",
                      "tail": traceback.format_exc().splitlines()[-TAIL_LINES:]}  # fmt: skip
        return result | {"seconds": round(time.monotonic() - start, 1)}

    def record(self, name: str, result: dict) -> None:
        """Keep `result`, print its line, and rewrite the JSON."""
        with self.lock:
            self.results[name] = result
            detail = result.get("error", "")
            print(f"{result['status']:<20} {name}  {result.get('seconds', 0):.1f} s  {detail}".rstrip(), flush=True)
            self.write()

    def seconds(self) -> float:
        """Seconds since the script started, as the JSON and the last line of stdout give them."""
        return round(time.monotonic() - self.started, 1)

    def write(self) -> None:
        """The JSON as it stands, written atomically (a reader never sees half a file)."""
        statuses = [result["status"] for result in self.results.values()]
        report = {
            "command": [sys.executable, *sys.argv],
            "device": describe_device(self.args.device),
            "gpus": torch.cuda.device_count(),
            "torch": torch.__version__,
            "steps": self.args.steps,
            "budget_s": self.args.budget_s,
            "seconds": self.seconds(),
            "passed": passed(statuses),
            "checks": self.results,
        }
        out = Path(self.args.out)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        tmp.replace(out)

    def run(self) -> bool:
        """Run every planned check, the benchmark first and alone (its timings need an otherwise idle device), then
        the others --jobs at a time; whether all passed."""
        checks = self.plan()
        for check in checks:
            self.results[check.name] = {"status": "pending"}
        self.write()
        alone = [check for check in checks if check.name == "bench_dcgan"]
        together = [check for check in checks if check.name != "bench_dcgan"]
        pool = ThreadPoolExecutor(max_workers=self.args.jobs)
        try:
            for check in alone:
                self.record(check.name, self.attempt(check))
            futures = {pool.submit(self.attempt, check): check.name for check in together}
            for future in as_completed(futures):
                self.record(futures[future], future.result())
        finally:  # Ctrl-C, or a crash here: no command outlives the script, and no queued check starts
            self.processes.kill_all()
            pool.shutdown(cancel_futures=True)
        return passed([result["status"] for result in self.results.values()])


def passed(statuses: list[str]) -> bool:
    """Whether every check passed or was skipped as impossible here (the budget's skips and cuts do not pass)."""
    return all(status == "ok" or (status.startswith("skipped (") and "budget" not in status) for status in statuses)


def describe_device(device: str) -> str:
    """`cuda: <the GPU's name>`, or `cpu`."""
    return f"cuda: {torch.cuda.get_device_name()}" if device == "cuda" else "cpu"


def comma_list(allowed: list[str] | tuple[str, ...], what: str) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated list of names from `allowed`."""

    def parse(text: str) -> list[str]:
        names = [name for name in text.split(",") if name]
        unknown = [name for name in names if name not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"{', '.join(unknown) or 'nothing'} is not one of the {what}: "
                                             f"{', '.join(allowed)}")  # fmt: skip
        return names

    return parse


def main() -> None:
    """Parse the options, refuse to start without CUDA (unless --device cpu), run the checks, write the JSON."""
    started = time.monotonic()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # --data-root and --out are required, but checked after CUDA: `gpu_check.py` alone says what it needs first
    parser.add_argument("--data-root", help="folder holding MNIST/raw/ and FashionMNIST/raw/ (required)")
    parser.add_argument("--out", help="the JSON file to write (required)")
    parser.add_argument("--steps", type=int, default=200, help="training steps of each run")
    parser.add_argument("--budget-s", type=float, default=480,
                        help="seconds for it all: a check running then is killed, later ones skip")  # fmt: skip
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: test this script's path without a GPU (gloo, no NCCL)")  # fmt: skip
    parser.add_argument("--inception-samples", type=int, default=2000,
                        help="inception: samples its evaluation scores")  # fmt: skip
    parser.add_argument("--checks", type=comma_list(CHECK_KINDS, "check kinds"), default=list(CHECK_KINDS),
                        help=f"comma-separated subset of {','.join(CHECK_KINDS)}")  # fmt: skip
    parser.add_argument("--presets", type=comma_list(PRESETS, "presets in conf/experiment/"), default=PRESETS,
                        help="comma-separated presets to train (default: all)")  # fmt: skip
    parser.add_argument("--variants", type=comma_list(list(VARIANTS), "variants"), default=list(VARIANTS),
                        help=f"comma-separated subset of {','.join(VARIANTS)}")  # fmt: skip
    parser.add_argument("--cifar10-folder", help="class subfolders for the CIFAR-10 presets, read as dataset=folder "
                        "(default: DATA_ROOT/cifar10-subset/train if there is no cifar-10-batches-py/)")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=4, help="checks run at once after the benchmark")
    parser.add_argument("--bench-steps", type=int, default=50, help="bench.py --conv-steps: steps per timed round")
    parser.add_argument("--bench-rounds", type=int, default=3, help="bench.py --rounds")
    parser.add_argument("--bench-warmup", type=int, default=10, help="bench.py --warmup")
    args, overrides = parser.parse_known_args()
    options = [arg for arg in overrides if arg.startswith("-")]
    if options:
        parser.error(f"unrecognized arguments: {' '.join(options)} (ganlab overrides have no leading dash)")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False): run it on a machine with a GPU, "
              "or pass --device cpu to test the script's path.", file=sys.stderr)  # fmt: skip
        sys.exit(2)
    missing = [option for option, value in (("--data-root", args.data_root), ("--out", args.out)) if value is None]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    with tempfile.TemporaryDirectory(prefix="gpu_check_", ignore_cleanup_errors=True) as work:
        check = GPUCheck(args, overrides, Path(work), started)
        all_passed = check.run()
        check.write()  # the JSON's seconds are the ones the last line prints
    statuses = [result["status"] for result in check.results.values()]
    counts = ", ".join(f"{statuses.count(status)} {status}" for status in dict.fromkeys(statuses))
    print(f"gpu_check: {counts} in {json.loads(Path(args.out).read_text())['seconds']:.0f} s; wrote {args.out}")
    sys.exit(0 if all_passed else 1)


if __name__ == "__main__":
    main()
