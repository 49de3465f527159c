"""What every architecture shares: the latent noise, the output range, and the shape checks where modules meet.

Every generator is called as `G(z, y)` and every discriminator as `D(x, y)`, where `y` is the batch's class labels
(a long tensor) or None. The training loop always passes `y` along; an unconditional model ignores it, so the loop
never asks whether a model is conditional.
"""

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from ganlab.errors import ConfigError
from ganlab.models.conditional import D_CONDITIONS, Discriminator, SequentialDiscriminator

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
    `generator` and `discriminator` take the labels as a second argument, `G(z, y)` and `D(x, y)` (see the module).
    num_classes: the dataset's classes (0 = it has no labels), given by the builder beside channels and image_size.
    conditional: condition G and D on the class (needs num_classes >= 2); false = both ignore y.
    d_condition: how a conditional D takes the class, `projection` or `acgan` (ganlab.models.conditional).
    class_weight: AC-GAN's weight of the class cross-entropy in both players' losses.
    spectral_norm: spectrally normalise every layer of D (`prepare` applies it, after the model's own init).
    `prepare` applies the options that depend on where the model runs: spectral norm, the device and channels_last
    memory for convolutional models, SyncBatchNorm under torchrun on CUDA. Then the shapes are checked.
    """

    image_sizes: tuple[int, ...] | None = None  # the image sizes the architecture can build; None = any

    def __init__(
        self,
        z_dim: int,
        noise: str,
        output: str,
        channels: int,
        image_size: int,
        num_classes: int = 0,
        conditional: bool = False,
        d_condition: str = "projection",
        class_weight: float = 1.0,
        spectral_norm: bool = False,
    ):
        super().__init__()
        if conditional and num_classes < 2:
            raise ConfigError(
                f"model.conditional=true needs a dataset with class labels, but this one has "
                f"{num_classes or 'none'}: use a labelled dataset (mnist, fashion_mnist, cifar10, a folder of "
                f"class subfolders) or set model.conditional=false."
            )
        if d_condition not in D_CONDITIONS:
            raise ConfigError(f"model.d_condition={d_condition!r} is not allowed: use one of {list(D_CONDITIONS)}.")
        if class_weight < 0:
            raise ConfigError(f"model.class_weight={class_weight} is negative: use a weight >= 0 (AC-GAN uses 1).")
        # classes the networks are conditioned on; 0 = unconditional (they ignore y)
        self.num_classes = num_classes if conditional else 0
        self.d_condition, self.class_weight, self.spectral_norm = d_condition, class_weight, spectral_norm
        if z_dim < 1:
            raise ConfigError(f"model.z_dim={z_dim} must be >= 1.")
        if self.image_sizes is not None and image_size not in self.image_sizes:
            raise ConfigError(
                f"model={type(self).__name__.lower()} cannot produce {image_size}x{image_size} images "
                f"(dataset.image_size={image_size}): set dataset.image_size to one of {list(self.image_sizes)}."
            )
        if noise not in NOISE_KINDS:
            raise ConfigError(f"model.noise={noise!r} is not allowed: use one of {list(NOISE_KINDS)}.")
        if output not in OUTPUT_RANGES:
            raise ConfigError(f"model.output={output!r} is not allowed: use one of {sorted(OUTPUT_RANGES)}.")
        self.z_dim = z_dim
        self.noise = noise
        self.output = output
        self.image_shape = (channels, image_size, image_size)
        self.generator: nn.Module
        self.discriminator: Discriminator

    def make_discriminator(self, features: list[nn.Module], head: list[nn.Module], width: int) -> Discriminator:
        """D from its feature layers phi (ending in `width` channels or units) and its logit head psi: one plain
        sequence if unconditional, else phi and psi joined by the label as `d_condition` says."""
        if self.num_classes == 0:
            return SequentialDiscriminator(*features, *head)
        return D_CONDITIONS[self.d_condition](
            SequentialDiscriminator(*features), SequentialDiscriminator(*head), self.num_classes, width,
            class_weight=self.class_weight,
        )  # fmt: skip

    @property
    def channels_last(self) -> bool:
        """Whether the model runs in channels_last memory format: convolutional models do (faster kernels)."""
        return any(isinstance(m, nn.Conv2d) for m in self.modules())

    def prepare(self, device: torch.device, sync_batch_norm: bool = False) -> "GANModel":
        """Apply the model's options, move it to `device` and check its shapes; returns the model itself.

        sync_batch_norm: make BatchNorm layers SyncBatchNorm (one run across CUDA processes). Called once, after
        construction (spectral norm must follow the model's own weight init) and before a state dict is loaded.
        """
        if self.spectral_norm:
            spectral_norm_layers(self.discriminator)
        self.to(device, memory_format=torch.channels_last) if self.channels_last else self.to(device)
        if sync_batch_norm:  # replaces the BatchNorm layers inside the model, which stays this object
            nn.SyncBatchNorm.convert_sync_batchnorm(self)
        self.check_shapes()
        return self

    def balanced_labels(self, n: int, device: torch.device | str) -> Tensor | None:
        """0, 1, ..., K-1, 0, 1, ...: n labels with every class equally often (to within one); None if unconditional."""
        return torch.arange(n, device=device) % self.num_classes if self.num_classes else None

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

    def grid_latent(self, n: int, device: torch.device | str) -> tuple[Tensor, Tensor | None]:
        """The fixed noise of the sample grids, `(z, y)`: n latent vectors; for a conditional model one row per class
        of n // classes columns (at least 1), with the same latent vector down each column, so a column shows what
        the class alone changes."""
        if self.num_classes == 0:
            return self.sample_latent(n, device)
        columns = max(1, n // self.num_classes)
        z = self.sample_noise(columns, device).repeat(self.num_classes, 1)
        return z, torch.arange(self.num_classes, device=device).repeat_interleave(columns)

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
            logits, _ = self.discriminator.split_outputs(self.discriminator(images, y), y)
            if logits.numel() != 2:
                raise ConfigError(f"model's discriminator gives {logits.numel() // 2} outputs per image, not 1.")
        self.train(was_training)


def spectral_norm_layers(module: nn.Module) -> None:
    """Spectral normalisation (Miyato et al. 2018) of every linear, convolution and embedding layer of `module`.

    torch's parametrization: the weight is divided by its largest singular value, estimated by one power iteration
    per training forward pass (15 when applied), so each layer is 1-Lipschitz. Norm layers are left as they are.
    """
    for layer in list(module.modules()):
        if isinstance(layer, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.Embedding)):
            spectral_norm(layer)
