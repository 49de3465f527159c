"""Draw the feature nets' calibration sets on the precision-recall plane: the README's picture of what they mean.

    python scripts/plot_calibration.py                     # writes docs/images/precision_recall.png
    python scripts/plot_calibration.py --nets mnist --out pr.png

Reads the calibration tables stored in `ganlab/feature_nets/manifest.json` (`ganlab-eval calibrate`, or
`scripts/train_feature_net.py --calibrate`, computes them); nothing is recomputed. One panel per feature net.
"""

import argparse
import sys
from pathlib import Path

from matplotlib.figure import Figure

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ganlab.features import read_manifest  # noqa: E402
from ganlab.report_figure import draw_calibration  # noqa: E402

COLOURS = {"noise": "C0", "blur": "C1", "only": "C2"}  # fidelity lost to noise, to blur; diversity lost to classes


def main(argv: list[str] | None = None) -> int:
    """Write the figure; returns the exit code (2, with one line, for a net without a calibration table)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", nargs="+", default=["mnist", "fashion_mnist", "cifar10"], help="feature nets")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "precision_recall.png")
    args = parser.parse_args(argv)
    manifest = read_manifest()
    missing = [name for name in args.nets if "calibration" not in manifest.get(name, {})]
    if missing:
        print(f"plot_calibration: error: no calibration table for {', '.join(missing)} in the manifest: compute it "
              f"with scripts/train_feature_net.py --calibrate.", file=sys.stderr)  # fmt: skip
        return 2
    canvas = Figure(figsize=(4.2 * len(args.nets), 4.2), layout="constrained")
    for axes, name in zip(canvas.subplots(1, len(args.nets), squeeze=False)[0], args.nets, strict=True):
        entry = manifest[name]
        draw_calibration(axes, entry["calibration"]["sets"], COLOURS)
        trained = f"{entry['train_set']} train set, {entry['test_accuracy']:.0%} test accuracy"
        axes.set_title(f"{name} ({trained})", fontsize="medium")
        axes.set(xlabel="recall (diversity)", ylabel="precision (fidelity)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
