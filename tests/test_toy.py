"""The 2-D Gaussian mixtures and their mode metrics."""

import math

import pytest
import torch
from conftest import TOY_KINDS, compose_config

from ganlab.config import build
from ganlab.errors import ConfigError


def mixture(kind: str, *overrides: str):
    return build(compose_config([f"dataset={kind}", *overrides]).dataset, "dataset")


@pytest.mark.parametrize("value_range", [(-1.0, 1.0), (0.0, 1.0)])
@pytest.mark.parametrize("kind", TOY_KINDS)
def test_real_samples_cover_every_mode(kind, value_range):
    source = mixture(kind)
    torch.manual_seed(0)
    samples = source.batches(torch.device("cpu"), value_range, 4096).next(4096)[0]
    assert samples.shape == (4096, 2, 1, 1)
    assert value_range[0] <= samples.min() and samples.max() <= value_range[1]
    metrics = source.mode_metrics(samples, value_range)
    assert metrics["modes_covered"] == len(source.centers)
    # a 2-D Gaussian puts 1 - exp(-9/2) = 98.9% of its mass within 3 standard deviations
    assert metrics["high_quality"] == pytest.approx(1 - math.exp(-4.5), abs=0.01)


@pytest.mark.parametrize("kind", TOY_KINDS)
def test_collapse_onto_one_mode_is_flagged(kind):
    source = mixture(kind)
    points = source.centers[3] + source.std * torch.randn(2000, 2)
    metrics = source.mode_metrics(source.to_range(points, (-1.0, 1.0)), (-1.0, 1.0))
    assert metrics["modes_covered"] == 1
    spread = torch.rand(2000, 2) * 2 - 1  # uniform noise over the square: almost nothing near a mode
    assert source.mode_metrics(spread.reshape(-1, 2, 1, 1), (-1.0, 1.0))["high_quality"] < 0.1


@pytest.mark.parametrize("kind", TOY_KINDS)
def test_picture_marks_modes_and_samples(kind):
    source = mixture(kind)
    picture = source.picture(source.to_range(source.sample(500), (-1.0, 1.0)), (-1.0, 1.0))
    assert picture.shape == (3, 256, 256)
    assert picture[0].sum() > picture[1].sum() > 0  # red modes plus white samples


def test_points_are_not_images():
    with pytest.raises(ConfigError, match=r"dataset\.image_size 1"):
        mixture("ring8", "dataset.image_size=32")
