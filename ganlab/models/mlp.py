"""The classic fully connected GAN of the LSGAN and f-GAN recipes: z -> hidden -> image, image -> hidden -> logit."""

import math

from torch import nn

from ganlab.errors import ConfigError
from ganlab.models.base import GANModel, Unconditional, output_layer

INITS = ("default", "xavier")
ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.2)}


def _mlp(sizes: list[int], activation: str, dropout: float = 0.0) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-2], sizes[1:-1], strict=True):
        layers += [nn.Linear(fan_in, fan_out), ACTIVATIONS[activation]()]
        layers += [nn.Dropout(dropout)] if dropout > 0 else []
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return layers


def xavier_init(module: nn.Module) -> None:
    """The recipes' `xavier_init`: weights ~ N(0, 1 / sqrt(fan_in / 2)), biases zero."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0.0, 1.0 / math.sqrt(module.in_features / 2.0))
        nn.init.zeros_(module.bias)


class MLP(GANModel):
    """Fully connected generator and discriminator with `depth` hidden layers of `hidden` units each.

    d_hidden: the discriminator's hidden units, when they differ from the generator's (None = `hidden`).
    d_dropout: dropout after each of the discriminator's hidden layers (0 = none).
    init: `default` (PyTorch's Linear init, as the f-GAN recipe) or `xavier` (the LSGAN recipe's xavier_init).
    activation: the hidden layers' `relu` (the recipes) or `leaky_relu` (slope 0.2).
    """

    def __init__(
        self,
        channels: int,
        image_size: int,
        z_dim: int = 64,
        hidden: int = 128,
        depth: int = 1,
        output: str = "sigmoid",
        noise: str = "normal",
        init: str = "default",
        activation: str = "relu",
        d_hidden: int | None = None,
        d_dropout: float = 0.0,
    ):
        super().__init__(z_dim, noise, output, channels, image_size)
        d_hidden = hidden if d_hidden is None else d_hidden
        if min(hidden, d_hidden, depth) < 1:
            raise ConfigError(
                f"model.hidden={hidden}, model.d_hidden={d_hidden} and model.depth={depth} must all be >= 1."
            )
        if not 0.0 <= d_dropout < 1.0:
            raise ConfigError(f"model.d_dropout={d_dropout} must be in [0, 1).")
        if activation not in ACTIVATIONS:
            raise ConfigError(f"model.activation={activation!r} is not allowed: use one of {sorted(ACTIVATIONS)}.")
        if init not in INITS:
            raise ConfigError(f"model.init={init!r} is not allowed: use one of {list(INITS)}.")
        pixels = channels * image_size * image_size
        self.generator = Unconditional(
            *_mlp([z_dim] + [hidden] * depth + [pixels], activation),
            output_layer(output),
            nn.Unflatten(1, self.image_shape),
        )
        self.discriminator = Unconditional(
            nn.Flatten(), *_mlp([pixels] + [d_hidden] * depth + [1], activation, d_dropout)
        )
        if init == "xavier":
            self.apply(xavier_init)
