"""What every architecture shares: the latent noise, the output range, and the shape checks where modules meet."""

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


class GANModel(nn.Module):
    """A generator and a discriminator for images of shape (channels, image_size, image_size).

    z_dim: length of the latent vector. noise: `normal` (N(0, 1)) or `uniform` (U[-1, 1]).
    output: the generator's output activation, which also sets the data range.
    """

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

    def check_shapes(self) -> None:
        """Run one tiny batch through both networks, so a mismatch fails at start-up with a clear message."""
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        with torch.no_grad():
            images = self.generator(self.sample_noise(2, device))
            if tuple(images.shape[1:]) != self.image_shape:
                raise ConfigError(
                    f"model produces images of shape {tuple(images.shape[1:])}, but the dataset has "
                    f"{self.image_shape}: check dataset.image_size and dataset.channels."
                )
            logits = self.discriminator(images)
            if logits.numel() != 2:
                raise ConfigError(f"model's discriminator gives {logits.numel() // 2} outputs per image, not 1.")
        self.train(was_training)


def has_batch_statistics(module: nn.Module) -> bool:
    """True if a layer normalises across the batch, so real and fake must not share one forward pass."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())
