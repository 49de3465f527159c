"""What pruning saves a sweep: the same seeded random search run with each pruner, side by side.

    python scripts/pruning_saving.py --space default --data-root ../shared/data
    python scripts/pruning_saving.py --space best_mlp_mnist --data-root ../shared/data --pruners none,median
    python scripts/pruning_saving.py --trials 2 --out /tmp/pruning train.steps=20 eval.num_samples=4  # a quick check

Each study is `ganlab-train -m hydra/sweeper=search` with the random sampler seeded the same, so every study
proposes the same trials (checked: the job folders match), on the joblib launcher. It prints, per pruner, the
steps and training seconds the sweep spent and its wall time, as ratios to the unpruned study (`none`), and the best
finished trial's objective against the unpruned best. The sweeps land in <out>/<space>/<pruner>/ (by default
outputs/pruning/); a study already there is continued, or read back when finished. Extra arguments are ganlab
overrides for every study, after the space's own (a later value of a key replaces an earlier one).
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ganlab.runfolder import RAN_TO_ITS_END, Status, minimised  # noqa: E402
from ganlab.sweep_jobs import load_jobs  # noqa: E402

# the search spaces the issue names: the default MLP over loss x lr x D steps, best_mlp_mnist over rates and EMA
SPACES = {
    "default": ["loss=bce,lsgan,hinge", "train.lr=tag(log, interval(1e-4, 1e-2))", "train.d_steps=1,2,3",
                "train.steps=2000"],
    "best_mlp_mnist": ["experiment=best_mlp_mnist", "train.lr=tag(log, interval(2e-4, 4e-3))",
                       "train.g_lr=tag(log, interval(5e-4, 8e-3))", "train.ema_decay=choice(0.999,0.9995,0.9997)",
                       "train.steps=1500"],
}  # fmt: skip
# every study: evaluations on (10 over the run, 1,000 samples; the final one 2,000), two jobs at a time
COMMON = ["eval.times=10", "eval.during_samples=1000", "eval.num_samples=2000", "log.progress=false",
          "hydra/sweeper=search", "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=0",
          "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2"]  # fmt: skip


def study(space: str, pruner: str, trials: int, data_root: str, out: Path, overrides: list[str]) -> dict:
    """Run one study in `out` (or continue it: a finished one is read back) and sum up its jobs."""
    sweep_dir = out / space / pruner
    command = [sys.executable, "-m", "ganlab.train", "-m", *SPACES[space], *COMMON,
               f"hydra.sweeper.n_trials={trials}", f"hydra/sweeper/pruner={pruner}", f"dataset.root={data_root}",
               f"hydra.sweep.dir={sweep_dir}", *overrides]  # fmt: skip
    began = time.monotonic()
    process = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.monotonic() - began
    if process.returncode != 0:
        raise SystemExit(f"the {pruner} study failed:\n{process.stderr[-3000:]}")
    jobs = load_jobs(sweep_dir, curves=False)
    objective = next(job.objective for job in jobs if job.objective)
    finished = [minimised(objective, job.metrics.get(objective)) for job in jobs if job.status in RAN_TO_ITS_END]
    return {
        "jobs": sorted(job.name for job in jobs),
        "pruned": sum(job.status in (Status.PRUNED, Status.DIVERGED) for job in jobs),
        "steps": sum(job.steps or 0 for job in jobs),
        "seconds": sum(job.seconds or 0.0 for job in jobs),
        "wall": wall,
        "objective": objective,
        "best": min(finished, default=float("inf")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", choices=sorted(SPACES), default="default")
    parser.add_argument("--pruners", default="none,median,hyperband", help="none first: the others are its ratios")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "pruning", help="folder of the studies")
    arguments, overrides = parser.parse_known_args()
    out = arguments.out.absolute()  # the studies run in the repository's root, not in this folder
    results = {pruner: study(arguments.space, pruner, arguments.trials, arguments.data_root, out, overrides)
               for pruner in arguments.pruners.split(",")}  # fmt: skip
    base = results["none"]
    print(f"| pruner | trials pruned | steps | training s | wall s | best {base['objective']} (minimised) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for pruner, result in results.items():
        same = "" if result["jobs"] == base["jobs"] else " (other trials!)"
        ratio = {name: result[name] / base[name] for name in ("steps", "seconds", "wall", "best")}
        print(
            f"| {pruner}{same} | {result['pruned']} of {len(result['jobs'])} | {result['steps']:,} "
            f"({ratio['steps']:.2f}x) | {result['seconds']:,.0f} ({ratio['seconds']:.2f}x) | {result['wall']:,.0f} "
            f"({ratio['wall']:.2f}x) | {result['best']:.3g} ({ratio['best']:.3f}x) |"
        )


if __name__ == "__main__":
    main()
