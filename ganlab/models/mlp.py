"""The classic fully connected GAN of the LSGAN and f-GAN recipes: z -> hidden -> image, image -> hidden -> logit."""

import math
from collections.abc import Callable

from torch import nn

from ganlab.errors import ConfigError
from ganlab.models.base import GANModel, output_layer
from ganlab.models.conditional import ConditionalBatchNorm, LabelEmbedding, Network

INITS = ("default", "xavier")
G_CONDITIONS = ("concat", "cbn")
ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.2)}


def _mlp(
    sizes: list[int], activation: str, dropout: float = 0.0, norm: Callable[[int], nn.Module] | None = None
) -> list[nn.Module]:
    """Linear layers of `sizes`, each hidden one followed by `norm` (if given), the activation and dropout."""
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-2], sizes[1:-1], strict=True):
        layers += [nn.Linear(fan_in, fan_out)] + ([norm(fan_out)] if norm else []) + [ACTIVATIONS[activation]()]
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
    g_condition: how a conditional G takes the class: `cbn` (conditional BatchNorm after each hidden layer; it beat
    `concat` in docs/results.md's trials) or `concat` (an embedding of z_dim numbers beside z).
    num_classes, conditional, d_condition, class_weight and spectral_norm: see `GANModel`.
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
        g_condition: str = "cbn",
        **conditioning,
    ):
        super().__init__(z_dim, noise, output, channels, image_size, **conditioning)
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
        if g_condition not in G_CONDITIONS:
            raise ConfigError(f"model.g_condition={g_condition!r} is not allowed: use one of {list(G_CONDITIONS)}.")
        pixels = channels * image_size * image_size
        classes = self.num_classes
        if classes and g_condition == "concat":
            g_layers = [LabelEmbedding(classes, z_dim), *_mlp([2 * z_dim] + [hidden] * depth + [pixels], activation)]
        else:
            norm = (lambda width: ConditionalBatchNorm(width, classes, dims=1)) if classes else None
            g_layers = _mlp([z_dim] + [hidden] * depth + [pixels], activation, norm=norm)
        self.generator = Network(*g_layers, output_layer(output), nn.Unflatten(1, self.image_shape))
        d_layers = [nn.Flatten(), *_mlp([pixels] + [d_hidden] * depth + [1], activation, d_dropout)]
        self.discriminator = self.make_discriminator(d_layers[:-1], d_layers[-1:], d_hidden)
        if init == "xavier":
            self.apply(xavier_init)
