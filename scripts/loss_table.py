"""Every loss on the same CPU budget, several seeds each: FID and class coverage as mean +- std.

    python scripts/loss_table.py --data-root ../shared/data --seconds 30 --seeds 0 1 2
    python scripts/loss_table.py --data-root ../shared/data --seconds 12 --set model.hidden=512 train.ema_decay=0.999

Each run is `experiment=<preset> loss=<loss> seed=<seed>` trained for `--seconds` of wall-clock time through
ganlab's own `train`, then scored on `--eval-samples` samples against the MNIST test split. The loss
options are read from conf/loss/, so a new loss joins the table by itself. Prints a Markdown table.
"""

import argparse
import statistics
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir

import ganlab.train

REPO = Path(__file__).resolve().parents[1]


def mean_std(values: list[float], digits: int) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--preset", default="best_mlp_mnist", help="experiment whose loss is swapped")
    parser.add_argument("--seconds", type=float, default=30.0, help="training budget of each run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--losses", nargs="*", help="subset of conf/loss options (default: all)")
    parser.add_argument("--eval-samples", type=int, default=10000, help="samples scored per run and generator")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more overrides for every run")
    args = parser.parse_args()
    losses = args.losses or sorted(p.stem for p in (REPO / "conf" / "loss").glob("*.yaml"))

    print("| loss | FID | classes covered | FID (EMA) | classes covered (EMA) | steps |")
    print("| --- | --- | --- | --- | --- | --- |")
    for loss in losses:
        runs = []
        for seed in args.seeds:
            overrides = [f"experiment={args.preset}", f"loss={loss}", f"seed={seed}", f"dataset.root={args.data_root}",
                         f"train.max_seconds={args.seconds}", "train.steps=10000000", "log.progress=false",
                         f"eval.num_samples={args.eval_samples}", *args.set]  # fmt: skip
            with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
                cfg = compose("config", overrides=overrides)
            summary = ganlab.train.train(cfg, tempfile.mkdtemp(prefix=f"{loss}-{seed}-"))
            if summary["status"].startswith("stopped"):  # train() turned SIGTERM into a clean stop: stop the table too
                raise SystemExit(f"{summary['status']}: table not finished")
            runs.append(summary["metrics"] | {"steps": summary["step"], "status": summary["status"]})
        finished = [r for r in runs if "fid" in r]
        if not finished:
            print(f"| {loss} | diverged | | | | |", flush=True)
            continue
        cells = [mean_std([r["fid"] for r in finished], 1), mean_std([r["coverage"] for r in finished], 1)]
        if "fid_ema" in finished[0]:
            cells += [mean_std([r["fid_ema"] for r in finished], 1), mean_std([r["coverage_ema"] for r in finished], 1)]
        else:
            cells += ["-", "-"]
        diverged = len(runs) - len(finished)
        steps = f"{statistics.mean(r['steps'] for r in runs):.0f}" + (f" ({diverged} diverged)" if diverged else "")
        print(f"| {loss} | " + " | ".join(cells) + f" | {steps} |", flush=True)


if __name__ == "__main__":
    main()
