"""DCGAN (Radford et al.): transposed convolutions up, strided convolutions down, N(0, 0.02) init.

BatchNorm sits everywhere but the generator's output and the discriminator's input. The discriminator's
normalisation is configurable so that WGAN-GP can use a critic without batch statistics.
"""

import math

from torch import nn

from ganlab.errors import ConfigError
from ganlab.models.base import GANModel, output_layer
from ganlab.models.conditional import ConditionalBatchNorm, Network

IMAGE_SIZES = (32, 64)


def _d_norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    return nn.Identity()


D_NORMS = ("batch", "instance", "layer", "none")


def dcgan_init(module: nn.Module) -> None:
    """DCGAN init: conv weights ~ N(0, 0.02); norm scales ~ N(1, 0.02) and shifts 0; conv biases 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)) and module.weight is not None:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class DCGAN(GANModel):
    """DCGAN for 32x32 or 64x64 images.

    g_width / d_width: channels of the widest-resolution layer (ngf / ndf, 64 in the paper); they double at each
    halving of resolution. d_norm: `batch` (the paper), `instance`, `layer` or `none` (for WGAN-GP critics).
    bias: give every convolution a bias (the WGAN-GP recipe does; the DCGAN recipe does not).
    A conditional DCGAN puts the seed's conditional BatchNorm in every BatchNorm position of G; num_classes,
    conditional, d_condition, class_weight and spectral_norm: see `GANModel`.
    """

    image_sizes = IMAGE_SIZES

    def __init__(
        self,
        channels: int,
        image_size: int,
        z_dim: int = 100,
        g_width: int = 64,
        d_width: int = 64,
        d_norm: str = "batch",
        bias: bool = False,
        output: str = "tanh",
        noise: str = "normal",
        **conditioning,
    ):
        super().__init__(z_dim, noise, output, channels, image_size, **conditioning)
        if d_norm not in D_NORMS:
            raise ConfigError(f"model.d_norm={d_norm!r} is not allowed: use one of {list(D_NORMS)}.")
        if g_width < 1 or d_width < 1:
            raise ConfigError(f"model.g_width={g_width} and model.d_width={d_width} must both be >= 1.")
        halvings = int(math.log2(image_size)) - 2  # 4x4 -> image_size
        classes = self.num_classes

        def g_norm(width: int) -> nn.Module:
            return ConditionalBatchNorm(width, classes) if classes else nn.BatchNorm2d(width)

        g_layers: list[nn.Module] = [nn.Unflatten(1, (z_dim, 1, 1))]
        width = g_width * 2 ** (halvings - 1)
        g_layers += [nn.ConvTranspose2d(z_dim, width, 4, 1, 0, bias=bias), g_norm(width), nn.ReLU(True)]
        for _ in range(halvings - 1):
            g_layers += [
                nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=bias),
                g_norm(width // 2),
                nn.ReLU(True),
            ]
            width //= 2
        g_layers += [nn.ConvTranspose2d(width, channels, 4, 2, 1, bias=bias), output_layer(output)]
        self.generator = Network(*g_layers)

        width = d_width
        d_layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1, bias=bias), nn.LeakyReLU(0.2, True)]
        for _ in range(halvings - 1):
            d_layers += [
                nn.Conv2d(width, width * 2, 4, 2, 1, bias=bias),
                _d_norm(d_norm, width * 2),
                nn.LeakyReLU(0.2, True),
            ]
            width *= 2
        head = [nn.Conv2d(width, 1, 4, 1, 0, bias=bias), nn.Flatten(0)]
        self.discriminator = self.make_discriminator(d_layers, head, width)
        self.apply(dcgan_init)
