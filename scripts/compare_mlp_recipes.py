"""ganlab's recommended MLP recipe against the classic LSGAN reference loop, on the same CPU budget, side by side.

    python scripts/compare_mlp_recipes.py --data-root ../shared/data --seconds 120 --seeds 0 1 2

Runs, one after the other in this process, for each seed: the LSGAN reference loop from `scripts/reference_loops.py`
(the recipe as a user writes it), `experiment=lsgan_mlp_mnist` (the same recipe in ganlab, with an EMA generator
beside it), and `experiment=best_mlp_mnist`. Each trains for `--seconds` of wall-clock time on real MNIST, then
10,000 samples are scored with ganlab's MNIST feature net against the test split (FID, KID, class coverage). The
three contenders of a seed run back to back, so a slow spell of a shared machine hits them alike; the ratio is
reported per seed and for the means over seeds.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_loops  # noqa: E402

import ganlab.train  # noqa: E402
from ganlab.config import build  # noqa: E402
from ganlab.data import to_uint8  # noqa: E402
from ganlab.features import load_feature_net  # noqa: E402
from ganlab.metrics import SampleQuality  # noqa: E402
from ganlab.report import mean_std  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def compose_run(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides)


def reference_scores(args, seed: int, quality: SampleQuality, images) -> dict:
    """Train the reference LSGAN loop for the budget, then score `--samples` of its samples."""
    torch.manual_seed(seed)
    np.random.seed(seed)  # its noise comes from numpy's global RNG
    reference = reference_loops.LSGANReference(images)
    steps, start = 0, time.monotonic()
    while time.monotonic() - start < args.seconds:
        reference.step()
        steps += 1
    with torch.no_grad():
        samples = reference.G(reference.sample_z(args.samples, reference.z_dim)).reshape(-1, 1, 28, 28)
    return {"steps": steps} | quality.compute(to_uint8(samples, (0.0, 1.0)))


def ganlab_scores(args, seed: int, preset: str, extra: list[str]) -> dict:
    overrides = [
        f"experiment={preset}",
        f"dataset.root={args.data_root}",
        f"train.max_seconds={args.seconds}",
        f"seed={seed}",
        "train.steps=10000000",
        "log.progress=false",
        f"eval.num_samples={args.samples}",
        "eval.times=0",  # the final score alone: evaluations along the way would be computed and never read
        *extra,
    ]
    summary = ganlab.train.train(compose_run(overrides), tempfile.mkdtemp(prefix=f"{preset}-"))
    if summary["status"].startswith("stopped"):  # train() turned SIGTERM into a clean stop: stop the script too
        raise SystemExit(f"{summary['status']}: comparison not finished")
    return {"steps": summary["step"]} | summary["metrics"]


def best_fid(scores: dict) -> float:
    """The FID of what a user samples: the EMA generator where there is one."""
    return scores.get("fid_ema", scores["fid"])


def best_coverage(scores: dict) -> int:
    """The class coverage of what a user samples: the EMA generator where there is one."""
    return int(scores.get("coverage_ema", scores["coverage"]))


def print_table(rows: dict[str, dict]) -> None:
    print("| run | steps | FID | KID | classes covered | FID (EMA) | classes covered (EMA) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        ema = (f"{r['fid_ema']:.2f}", str(int(r["coverage_ema"]))) if "fid_ema" in r else ("-", "-")
        cells = [name, r["steps"], f"{r['fid']:.2f}", f"{r['kid_mean']:.4f}", int(r["coverage"]), *ema]
        print("| " + " | ".join(str(cell) for cell in cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--seconds", type=float, default=120.0, help="training budget of each contender")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one round of all three per seed")
    parser.add_argument("--samples", type=int, default=10000, help="samples scored per generator (FID needs 10,000)")
    args = parser.parse_args()
    cfg = compose_run(["dataset=mnist", f"dataset.root={args.data_root}"])
    source = build(cfg.dataset, "dataset")
    quality = SampleQuality(load_feature_net("mnist"), source.test_split().decode_uint8())
    train_images = source.decode_uint8().numpy()

    rounds = {}
    for seed in args.seeds:
        rounds[seed] = {
            "LSGAN reference loop": reference_scores(args, seed, quality, train_images),
            "lsgan_mlp_mnist": ganlab_scores(args, seed, "lsgan_mlp_mnist", ["train.ema_decay=0.999"]),
            "best_mlp_mnist": ganlab_scores(args, seed, "best_mlp_mnist", []),
        }
        ratio = best_fid(rounds[seed]["best_mlp_mnist"]) / rounds[seed]["LSGAN reference loop"]["fid"]
        print(f"\nseed {seed}: {args.seconds:.0f} s of training each on this CPU ({torch.get_num_threads()} threads), "
              f"{args.samples:,} samples vs the MNIST test split\n", flush=True)  # fmt: skip
        print_table(rounds[seed])
        print(f"\nseed {seed}: best_mlp_mnist / reference FID: {ratio:.3f} (target <= 0.333)", flush=True)

    print(f"\nmean ± std over seeds {args.seeds}\n")
    print("| run | steps | FID | FID (EMA) | fewest classes covered |")
    print("| --- | --- | --- | --- | --- |")
    means = {}
    for name in rounds[args.seeds[0]]:
        runs = [rounds[seed][name] for seed in args.seeds]
        means[name] = mean_std([best_fid(r) for r in runs])[0]
        ema = spread([r["fid_ema"] for r in runs]) if "fid_ema" in runs[0] else "-"
        steps = f"{mean_std([r['steps'] for r in runs])[0]:,.0f}"
        cells = [name, steps, spread([r["fid"] for r in runs]), ema, min(best_coverage(r) for r in runs)]
        print("| " + " | ".join(str(cell) for cell in cells) + " |")
    print(f"\nbest_mlp_mnist / reference, mean FID: {means['best_mlp_mnist'] / means['LSGAN reference loop']:.3f} "
          "(target <= 0.333)")  # fmt: skip


def spread(values: list[float]) -> str:
    """mean ± sample std, as ganlab-report computes them."""
    return "{:.2f} ± {:.2f}".format(*mean_std(values))


if __name__ == "__main__":
    main()
