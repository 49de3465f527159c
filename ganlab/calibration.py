"""What a score means: every metric measured on a dataset's real images under controlled damage.

"FID 30" says nothing by itself. `calibrate` scores sets of real train images, each damaged in one known way,
against the test split, as a generator's samples are scored:

- the clean train split: the floor, what a perfect generator scores;
- Gaussian noise of standard deviation 0.05, 0.1, 0.2 and 0.3 (pixel values in [0, 1]): fidelity lost in texture;
- Gaussian blur of σ 1 (3x3 kernel) and σ 2 (5x5 kernel): fidelity lost in sharpness;
- only 5 of the classes, and only 1 (the first ones by label): diversity lost, each image perfect (mode collapse).

The noise and blur sets damage the floor's images themselves, so a row differs from the floor by its damage alone.
`ganlab-eval calibrate dataset=NAME` prints the table; `scripts/train_feature_net.py` stores it in the feature net's
manifest entry (`calibration`), and `ganlab-report` places each run's FID on it.
"""

import torch
from torch import Tensor
from torchvision.transforms import functional as TF

from ganlab.data import to_uint8
from ganlab.metrics import SampleQuality

CALIBRATION_IMAGES = 5000  # images per damaged set (fewer where the train split or a class subset has fewer)
NOISE_STDS = (0.05, 0.1, 0.2, 0.3)  # Gaussian noise, in units of the [0, 1] pixel range
BLURS = ((1, 3), (2, 5))  # Gaussian blur: (sigma, kernel size) in pixels of the dataset's native size
KEPT_CLASSES = (5, 1)  # the class subsets: the first 5 classes, and the first one
FLOOR = "real train (floor)"  # the name of the clean set, the first row
# the columns of the printed table, in order (kid_std, KID's spread over subsets, is in the manifest only)
COLUMNS = ("fid", "kid_mean", "precision", "recall", "density", "prdc_coverage", "coverage", "kl_uniform", "confidence")


def damaged_sets(images: Tensor, labels: Tensor, n: int = CALIBRATION_IMAGES, seed: int = 0) -> dict[str, Tensor]:
    """The calibration sets of uint8 `images` (N, C, H, W) with class `labels` (N,), by name, the floor first.

    n: images per set (all of them where fewer). seed: the draws of images and noise, from a private generator.
    """
    generator = torch.Generator().manual_seed(seed)
    floor = images[torch.randperm(len(images), generator=generator)[:n]]
    sets = {FLOOR: floor}
    pixels = floor.float() / 255
    for std in NOISE_STDS:
        sets[f"noise σ{std:g}"] = to_uint8(pixels + std * torch.randn(pixels.shape, generator=generator), (0, 1))
    for sigma, size in BLURS:
        sets[f"blur σ{sigma:g} ({size}x{size})"] = to_uint8(TF.gaussian_blur(pixels, [size] * 2, [sigma] * 2), (0, 1))
    classes = labels.unique()
    for count in KEPT_CLASSES:
        kept = torch.isin(labels, classes[:count]).nonzero().squeeze(1)
        drawn = kept[torch.randperm(len(kept), generator=generator)[:n]]
        sets[f"only {count} class{'es' * (count > 1)}"] = images[drawn]
    return sets


def calibrate(
    quality: SampleQuality, images: Tensor, labels: Tensor, n: int = CALIBRATION_IMAGES, seed: int = 0
) -> list[dict]:
    """One row per damaged set of the train `images`: {"set": name, "images": count, <every metric>: value}.

    quality: the dataset's SampleQuality, built on its test split; labels: the class of each train image.
    """
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels.")
    return [
        {"set": name, "images": len(damaged)} | quality.compute(damaged)
        for name, damaged in damaged_sets(images, torch.as_tensor(labels), n, seed).items()
    ]


def markdown_table(rows: list[dict]) -> str:
    """The calibration rows as a GitHub Markdown table: 3 significant digits, class coverage as a count."""
    lines = ["| set | images | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [f"{row[name]:.3g}" if isinstance(row[name], float) else str(row[name]) for name in COLUMNS]
        lines.append(f"| {row['set']} | {row['images']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
