"""The SNGAN ResNet for 32x32 images (Miyato et al. 2018, appendix B.4; the networks of mimicry's sngan_32 and
cgan_pd_32 and of the CIFAR-10 tables that quote them).

G: z (128) -> linear to 4x4x256 -> three up-sampling residual blocks of 256 channels (BatchNorm, ReLU, nearest x2,
conv 3x3, BatchNorm, ReLU, conv 3x3; a 1x1 convolution on the skip) -> BatchNorm, ReLU, conv 3x3 -> tanh. A
conditional G puts conditional BatchNorm (de Vries et al. 2017) in its blocks; the last BatchNorm stays plain.
D: an optimised first block (conv, ReLU, conv, average pool; skip: pool, 1x1 conv), a down-sampling block and two
plain blocks of 128 channels (ReLU, conv 3x3, ReLU, conv 3x3), ReLU, sum over positions -> linear -> the logit. A
conditional D adds the projection <embed(y), phi(x)> (Miyato & Koyama 2018). Spectral norm on every D layer, as the
paper, is `model.spectral_norm` (true in conf/model/resnet.yaml).
Init as mimicry: Xavier-uniform, gain sqrt(2) in the residual paths and 1 elsewhere.
"""

import math

import torch.nn.functional as F
from torch import Tensor, nn

from ganlab.errors import ConfigError
from ganlab.models.base import GANModel, output_layer
from ganlab.models.conditional import ConditionalBatchNorm, Network, TakesLabel

IMAGE_SIZES = (32,)


def _xavier(layer: nn.Module, gain: float = 1.0) -> nn.Module:
    """`layer` with Xavier-uniform weights of `gain` and zero biases, as mimicry initialises its ResNets."""
    nn.init.xavier_uniform_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def _conv(in_channels: int, out_channels: int, kernel: int, gain: float) -> nn.Conv2d:
    return _xavier(nn.Conv2d(in_channels, out_channels, kernel, 1, kernel // 2), gain)


class GeneratorBlock(TakesLabel):
    """BN, ReLU, nearest x2, conv 3x3, BN, ReLU, conv 3x3, plus the up-sampled input through a 1x1 conv.

    num_classes: conditional BatchNorm over that many classes in both norms; 0 = plain BatchNorm.
    """

    def __init__(self, in_channels: int, out_channels: int, num_classes: int = 0):
        super().__init__()
        self.conditional = num_classes > 0

        def norm(width: int) -> nn.Module:
            return ConditionalBatchNorm(width, num_classes) if num_classes else nn.BatchNorm2d(width)

        self.b1, self.b2 = norm(in_channels), norm(out_channels)
        self.c1 = _conv(in_channels, out_channels, 3, math.sqrt(2))
        self.c2 = _conv(out_channels, out_channels, 3, math.sqrt(2))
        self.c_sc = _conv(in_channels, out_channels, 1, 1.0)

    def _norm(self, norm: nn.Module, x: Tensor, y: Tensor | None) -> Tensor:
        return norm(x, y) if self.conditional else norm(x)

    def forward(self, x: Tensor, y: Tensor | None) -> Tensor:
        h = F.interpolate(F.relu(self._norm(self.b1, x, y)), scale_factor=2)
        h = self.c2(F.relu(self._norm(self.b2, self.c1(h), y)))
        return h + self.c_sc(F.interpolate(x, scale_factor=2))


class DiscriminatorBlock(nn.Module):
    """ReLU, conv 3x3, ReLU, conv 3x3 (then average pool if `downsample`), plus the skip: the input itself, or
    through a 1x1 conv (and pool) when the width or size changes. first: the optimised first block, which takes the
    image without a ReLU before it and pools before its skip's conv."""

    def __init__(self, in_channels: int, out_channels: int, downsample: bool, first: bool = False):
        super().__init__()
        self.downsample, self.first = downsample, first
        self.c1 = _conv(in_channels, out_channels, 3, math.sqrt(2))
        self.c2 = _conv(out_channels, out_channels, 3, math.sqrt(2))
        self.learnable_skip = in_channels != out_channels or downsample
        self.c_sc = _conv(in_channels, out_channels, 1, 1.0) if self.learnable_skip else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.c2(F.relu(self.c1(x if self.first else F.relu(x))))
        if self.downsample:
            h = F.avg_pool2d(h, 2)
        skip = x
        if self.first:
            skip = self.c_sc(F.avg_pool2d(x, 2))
        elif self.learnable_skip:
            skip = self.c_sc(x)
            skip = F.avg_pool2d(skip, 2) if self.downsample else skip
        return h + skip


class SumPool(nn.Module):
    """phi(x): the feature maps summed over their positions, one vector per image (SNGAN's global sum pooling)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.sum(dim=(2, 3))


class ResNet(GANModel):
    """The SNGAN ResNet generator and discriminator for 32x32 images (see the module).

    g_width / d_width: channels of G's and D's blocks (256 and 128 in Miyato et al. 2018).
    num_classes, conditional, d_condition, class_weight and spectral_norm: see `GANModel`.
    """

    image_sizes = IMAGE_SIZES

    def __init__(
        self,
        channels: int,
        image_size: int,
        z_dim: int = 128,
        g_width: int = 256,
        d_width: int = 128,
        output: str = "tanh",
        noise: str = "normal",
        **conditioning,
    ):
        super().__init__(z_dim, noise, output, channels, image_size, **conditioning)
        if g_width < 1 or d_width < 1:
            raise ConfigError(f"model.g_width={g_width} and model.d_width={d_width} must both be >= 1.")
        linear = _xavier(nn.Linear(z_dim, 4 * 4 * g_width))
        blocks = [GeneratorBlock(g_width, g_width, self.num_classes) for _ in range(3)]
        self.generator = Network(
            linear, nn.Unflatten(1, (g_width, 4, 4)), *blocks, nn.BatchNorm2d(g_width), nn.ReLU(),
            _conv(g_width, channels, 3, 1.0), output_layer(output),
        )  # fmt: skip
        features = [
            DiscriminatorBlock(channels, d_width, downsample=True, first=True),
            DiscriminatorBlock(d_width, d_width, downsample=True),
            DiscriminatorBlock(d_width, d_width, downsample=False),
            DiscriminatorBlock(d_width, d_width, downsample=False),
            nn.ReLU(),
            SumPool(),
        ]
        head = _xavier(nn.Linear(d_width, 1))
        self.discriminator = self.make_discriminator(features, [head, nn.Flatten(0)], d_width)
