"""2-D mixtures of Gaussians (`dataset=ring8`, `dataset=grid25`): mode collapse shows in seconds on a CPU.

Points are drawn fresh for every batch, so the data is unlimited. A point is a (2, 1, 1) "image", so the MLP
trains on it unchanged. The standard mode metrics (unrolled GAN, VEEGAN, PacGAN) are measured in the mixture's own
units: a sample is high quality when it lies within 3 standard deviations of its nearest mode; a mode is covered
when it holds at least a quarter of its fair share (1/(4K)) of the high-quality samples. A class-conditional
generator is asked for a mode per sample (its label); `accuracy` is then the share of samples that are high quality
at the mode asked for, averaged over the modes asked for, and `accuracy_min` the share of the worst of them.
"""

import math

import torch
from torch import Tensor

from ganlab.errors import ConfigError
from ganlab.runfolder import protocol


class Mixture:
    """A mixture of equal-weight isotropic Gaussians at `centers` (K, 2) with standard deviation `std`.

    The points are divided by `extent` so that they lie in [-1, 1] (tanh) or are then mapped to [0, 1] (sigmoid).
    """

    name = "mixture"
    is_image = False  # points: no augmentation applies
    flip_keeps_class = False

    def __init__(self, centers: Tensor, std: float, channels: int = 2, image_size: int = 1):
        if (channels, image_size) != (2, 1):
            raise ConfigError(
                f"dataset={self.name} is 2-D points: dataset.channels must be 2 and dataset.image_size 1, "
                f"not {channels} and {image_size}."
            )
        if std <= 0:
            raise ConfigError(f"dataset.std={std} must be > 0.")
        self.centers = centers.float()
        self.std = std
        self.channels, self.image_size = channels, image_size
        self.extent = 1.25 * float(self.centers.abs().max())

    @property
    def num_classes(self) -> int:
        """The modes: a point's label is the mode it was drawn from."""
        return len(self.centers)

    def sample(self, n: int, device: torch.device | str = "cpu") -> Tensor:
        """n points (n, 2) in the mixture's own units."""
        return self.sample_labelled(n, device)[0]

    def sample_labelled(self, n: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """n points (n, 2) in the mixture's own units, and the index of the mode each was drawn from (its class)."""
        centers = self.centers.to(device)
        index = torch.randint(len(centers), (n,), device=device)
        return centers[index] + self.std * torch.randn(n, 2, device=device), index

    def to_range(self, points: Tensor, value_range: tuple[float, float]) -> Tensor:
        """Points in the mixture's units -> the generator's range, shaped (n, 2, 1, 1)."""
        x = points / self.extent
        if tuple(value_range) == (0.0, 1.0):
            x = (x + 1) / 2
        return x.reshape(-1, 2, 1, 1)

    def from_range(self, samples: Tensor, value_range: tuple[float, float]) -> Tensor:
        """The inverse of `to_range`: generator output -> (n, 2) points in the mixture's units."""
        x = samples.reshape(-1, 2).float()
        if tuple(value_range) == (0.0, 1.0):
            x = x * 2 - 1
        return x * self.extent

    def batches(
        self, device: torch.device, value_range: tuple[float, float], batch_size: int, seed: int = 0
    ) -> "MixtureBatches":
        return MixtureBatches(self, device, value_range)

    def evaluator(self, device: torch.device, value_range: tuple[float, float], scoring=None) -> "ModeScores":
        """Scores samples with the mode metrics, and with the modes they were asked for (`labels`) when given.

        scoring: the run's `eval` config, which points do not need (the signature is the image datasets')."""
        return ModeScores(self, value_range)

    def picture(
        self, samples: Tensor, value_range: tuple[float, float], labels: Tensor | None = None, size: int = 256
    ) -> Tensor:
        """A (3, size, size) scatter of `samples` (white) over the mixture's modes (red), for TensorBoard.

        labels: the modes a conditional model was asked for, which a scatter does not show (the signature is the
        image sources' `picture`)."""
        points = self.from_range(samples.detach().cpu(), value_range)
        picture = torch.zeros(3, size, size)

        def pixels(xy: Tensor) -> tuple[Tensor, Tensor]:
            scaled = ((xy / self.extent + 1) / 2 * (size - 1)).round().long().clamp(0, size - 1)
            return size - 1 - scaled[:, 1], scaled[:, 0]  # row from y (up), column from x

        rows, cols = pixels(self.centers)
        for dr in (-2, -1, 0, 1, 2):
            for dc in (-2, -1, 0, 1, 2):
                picture[0, (rows + dr).clamp(0, size - 1), (cols + dc).clamp(0, size - 1)] = 1.0
        rows, cols = pixels(points)
        for dr in (0, 1):  # 2x2 dots, so single samples stay visible
            picture[:, (rows + dr).clamp(0, size - 1), cols] = 1.0
            picture[:, (rows + dr).clamp(0, size - 1), (cols + 1).clamp(0, size - 1)] = 1.0
        return picture

    def mode_metrics(
        self, samples: Tensor, value_range: tuple[float, float], labels: Tensor | None = None
    ) -> dict[str, float]:
        """`modes_covered` (modes holding at least 1/(4K) of the high-quality samples, and at least one) and
        `high_quality` (the share of samples within 3 std of their nearest mode).

        labels: the mode each sample was asked for (integers, one per sample; -1 = none asked), or None. When some
        mode was asked for, `accuracy` and `accuracy_min` are added (see the module docstring).
        """
        points = self.from_range(samples, value_range)
        distances = torch.cdist(points, self.centers.to(points.device))
        nearest_distance, nearest = distances.min(dim=1)
        good = nearest_distance <= 3 * self.std
        counts = torch.bincount(nearest[good], minlength=len(self.centers))
        threshold = max(1, math.ceil(int(good.sum()) / (4 * len(self.centers))))
        scores = {
            "modes_covered": int((counts >= threshold).sum()),
            "high_quality": float(good.float().mean()),
        }
        labels = self._checked_labels(labels, len(points))
        if labels is not None:
            labels = labels.to(nearest.device)
            hit = good & (nearest == labels)
            shares = [float(hit[labels == k].float().mean()) for k in labels[labels != -1].unique().tolist()]
            scores |= {"accuracy": sum(shares) / len(shares), "accuracy_min": min(shares)}
        return scores

    def _checked_labels(self, labels: Tensor | None, count: int) -> Tensor | None:
        """`labels` as a long tensor, or None when no sample was asked for a mode (None, or all -1)."""
        if labels is None:
            return None
        if labels.is_floating_point() or labels.is_complex() or tuple(labels.shape) != (count,):
            raise ValueError(
                f"labels must be one integer mode per sample ({count}), got {labels.dtype} values shaped "
                f"{tuple(labels.shape)}."
            )
        labels = labels.long()
        asked = labels[labels != -1]
        if len(asked) == 0:
            return None
        if asked.min() < 0 or asked.max() >= len(self.centers):
            raise ValueError(
                f"labels hold modes from {int(asked.min())} to {int(asked.max())}, but dataset {self.name} has the "
                f"modes 0 to {len(self.centers) - 1} (and -1 for a sample asked for no mode)."
            )
        return labels


class Ring(Mixture):
    """`modes` Gaussians evenly spaced on a circle of `radius` (the ring of 8 of the unrolled-GAN paper)."""

    name = "ring8"

    def __init__(self, modes: int = 8, radius: float = 2.0, std: float = 0.02, **shape):
        angles = torch.arange(modes) * 2 * math.pi / modes
        super().__init__(radius * torch.stack([angles.cos(), angles.sin()], dim=1), std, **shape)


class Grid(Mixture):
    """`side` x `side` Gaussians on a square grid `spacing` apart, centred on 0 (the 5x5 grid of VEEGAN/PacGAN)."""

    name = "grid25"

    def __init__(self, side: int = 5, spacing: float = 2.0, std: float = 0.05, **shape):
        axis = (torch.arange(side) - (side - 1) / 2) * spacing
        xs, ys = torch.meshgrid(axis, axis, indexing="xy")
        super().__init__(torch.stack([xs.flatten(), ys.flatten()], dim=1), std, **shape)


class MixtureBatches:
    """Fresh mixture samples on the training device for every batch, scaled to the generator's range.

    Each batch is `(points, labels)`: a point's label is the index of the mode it was drawn from.
    """

    def __init__(self, mixture: Mixture, device: torch.device, value_range: tuple[float, float]):
        self.mixture, self.device, self.value_range = mixture, device, value_range

    def next(self, batch_size: int) -> tuple[Tensor, Tensor]:
        points, labels = self.mixture.sample_labelled(batch_size, self.device)
        return self.mixture.to_range(points, self.value_range), labels

    def state_dict(self) -> dict:
        """Nothing: the points come from the global torch RNG, which the checkpoint saves with the others."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore (see `state_dict`)."""


class ModeScores:
    """The mode metrics of generator output in `value_range` (`Mixture.mode_metrics`), and their protocol."""

    def __init__(self, mixture: Mixture, value_range: tuple[float, float]):
        self.mixture, self.value_range = mixture, value_range

    def __call__(self, samples: Tensor, labels: Tensor | None = None) -> dict[str, float]:
        return self.mixture.mode_metrics(samples, self.value_range, labels)

    def protocol(self, samples: int) -> dict:
        """The mode metrics compare with the mixture's known modes: no feature extractor, no real sample."""
        return protocol("modes", samples, f"{self.mixture.name} modes", len(self.mixture.centers))
