"""What splitting one run over processes costs: N processes x 1 thread against 1 process x N threads, side by side.

    python scripts/bench_ddp.py --data-root ../shared/data [--processes 2] [--seconds 60] [--rounds 2] [overrides...]

Both train the same config (by default DCGAN at 32 px on MNIST, global batch 64, no evaluation) for `--seconds` of
training time, alternating, `--rounds` times each, in fresh run folders; the figure is steps per second from each
run's metrics.json. Extra arguments are ganlab overrides for both.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT = ["model=dcgan", "dataset.image_size=32", "train.batch_size=64", "eval.enabled=false", "log.progress=false",
           "log.sample_every=0", "train.checkpoint_every=0", "train.steps=1000000", "device=cpu"]  # fmt: skip


def steps_per_second(command: list[str], run_dir: Path, threads: int) -> float:
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    subprocess.run([*command, f"hydra.run.dir={run_dir}"], check=True, env=env, capture_output=True)
    summary = json.loads((run_dir / "metrics.json").read_text())
    return summary["step"] / summary["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    args, overrides = parser.parse_known_args()
    n = args.processes
    common = [*DEFAULT, f"dataset.root={args.data_root}", f"train.max_seconds={args.seconds}", *overrides]
    alone = [sys.executable, "-m", "ganlab.train", *common, f"device.threads={n}"]
    shared = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m",
              "ganlab.train", *common, "device.threads=1"]  # fmt: skip
    rates: dict[str, list[float]] = {"alone": [], "shared": []}
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(args.rounds):
            rates["alone"].append(steps_per_second(alone, Path(folder) / f"alone{round_}", n))
            rates["shared"].append(steps_per_second(shared, Path(folder) / f"shared{round_}", 1))
    mean = {name: sum(values) / len(values) for name, values in rates.items()}
    print(f"1 process x {n} threads: {mean['alone']:.2f} steps/s  {[round(r, 2) for r in rates['alone']]}")
    print(f"{n} processes x 1 thread: {mean['shared']:.2f} steps/s  {[round(r, 2) for r in rates['shared']]}")
    print(f"ratio (processes / threads): {mean['shared'] / mean['alone']:.2f}x")


if __name__ == "__main__":
    main()
