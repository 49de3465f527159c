"""What every architecture shares: the latent noise, the output range, and the shape checks where modules meet.

Every generator is called as `G(z, y)` and every discriminator as `D(x, y)`, where `y` is the batch's class labels
(a long tensor) or None. The training loop always passes `y` along; an unconditional model ignores it, so the loop
never asks whether a model is conditional.
"""

import torch
from torch import Tensor, nn

from ganlab.errors import ConfigError

# The generator's output activation fixes the range of the data it learns; the data pipeline reads it from here.
OUTPUT_RANGES = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}
NOISE_KINDS = ("normal", "uniform")


def output_layer(output: str) -> nn.Module:
    """The generator's last activation, `sigmoid` (data in [0, 1]) or `tanh` (data in [-1, 1])."""
    if output not in OUTPUT_RANGES:
        raise ConfigError(f"model.output={output!r} is not allowed: use one of {sorted(OUTPUT_RANGES)}.")
    return nn.Sigmoid() if output == "sigmoid" else nn.Tanh()


class Unconditional(nn.Sequential):
    """An `nn.Sequential` called as `G(z, y)` or `D(x, y)` that ignores the label `y`: the unconditional networks.

    A subclass, not a wrapper, so the state dict keeps the keys of the plain `nn.Sequential` it replaced.
    """

    def forward(self, input: Tensor, y: Tensor | None = None) -> Tensor:
        return super().forward(input)


class GANModel(nn.Module):
    """A generator and a discriminator for images of shape (channels, image_size, image_size).

    z_dim: length of the latent vector. noise: `normal` (N(0, 1)) or `uniform` (U[-1, 1]).
    output: the generator's output activation, which also sets the data range.
    `generator` and `discriminator` take the labels as a second argument, `G(z, y)` and `D(x, y)` (see the module).
    """

    num_classes = 0  # classes the networks are conditioned on; 0 = unconditional (they ignore y)

    image_sizes: tuple[int, ...] | None = None  # the image sizes the architecture can build; None = any

    def __init__(self, z_dim: int, noise: str, output: str, channels: int, image_size: int):
        super().__init__()
        if z_dim < 1:
            raise ConfigError(f"model.z_dim={z_dim} must be >= 1.")
        if noise not in NOISE_KINDS:
            raise ConfigError(f"model.noise={noise!r} is not allowed: use one of {list(NOISE_KINDS)}.")
        if output not in OUTPUT_RANGES:
            raise ConfigError(f"model.output={output!r} is not allowed: use one of {sorted(OUTPUT_RANGES)}.")
        self.z_dim = z_dim
        self.noise = noise
        self.output = output
        self.image_shape = (channels, image_size, image_size)
        self.generator: nn.Module
        self.discriminator: nn.Module

    @property
    def output_range(self) -> tuple[float, float]:
        """The (low, high) range of generated images, which the real data is scaled to."""
        return OUTPUT_RANGES[self.output]

    def sample_noise(self, n: int, device: torch.device | str) -> Tensor:
        """A batch of latent vectors, shape (n, z_dim)."""
        if self.noise == "uniform":
            return torch.rand(n, self.z_dim, device=device) * 2 - 1
        return torch.randn(n, self.z_dim, device=device)

    def sample_latent(
        self, n: int, device: torch.device | str, labels: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """A batch of latent vectors (n, z_dim) and the labels to generate: `(z, y)`.

        y: `labels` if given, else uniform classes drawn after z. An unconditional model (`num_classes` 0) gets None
        and draws nothing beyond z, so its random stream, and every result, is what it was before labels existed.
        """
        z = self.sample_noise(n, device)
        if self.num_classes == 0:
            return z, None
        if labels is None:
            labels = torch.randint(self.num_classes, (n,), device=device)
        return z, labels.to(device, torch.long)

    def check_shapes(self) -> None:
        """Run one tiny batch through both networks, so a mismatch fails at start-up with a clear message."""
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        with torch.no_grad():
            z, y = self.sample_latent(2, device)
            images = self.generator(z, y)
            if tuple(images.shape[1:]) != self.image_shape:
                raise ConfigError(
                    f"model produces images of shape {tuple(images.shape[1:])}, but the dataset has "
                    f"{self.image_shape}: check dataset.image_size and dataset.channels."
                )
            logits = self.discriminator(images, y)
            if logits.numel() != 2:
                raise ConfigError(f"model's discriminator gives {logits.numel() // 2} outputs per image, not 1.")
        self.train(was_training)


def has_batch_statistics(module: nn.Module) -> bool:
    """True if a layer normalises across the batch, so real and fake must not share one forward pass."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())
