"""Discriminator regularisers, kept apart from the losses so that any loss can take any of them.

Each regulariser has the same two hooks, which the training loop calls for every discriminator step:

    penalty(discriminator, real, fake, y, runtime) -> dict of named scalar tensors, added to the discriminator loss
    after_step(discriminator) -> None, run after the optimiser step (for example weight clipping)

`discriminator` is called as D(x, y); `y` is the real batch's labels (None for unlabelled data or an unconditional
model, which ignores them). `discriminator.split_outputs(outputs, y)` gives its adversarial logits (an AC-GAN's
outputs also hold class logits). `runtime` is the process's share of a distributed run (`ganlab.distributed`):
random draws are made for the global batch and sliced, so N processes penalise what one process would.
"""

import torch
from torch import Tensor, nn

from ganlab.distributed import Runtime
from ganlab.errors import ConfigError


class Regularizer:
    """No regularisation: the base class, and the `regularizer=none` option."""

    def penalty(
        self,
        discriminator: nn.Module,
        real: Tensor,
        fake: Tensor,
        y: Tensor | None = None,
        runtime: Runtime | None = None,
    ) -> dict[str, Tensor]:
        return {}

    @torch.no_grad()
    def after_step(self, discriminator: nn.Module) -> None:
        return None


class GradientPenalty(Regularizer):
    """WGAN-GP: weight * E[(||grad_x D(x_hat, y)||_2 - target)^2] at random interpolates of real and fake batches.

    The gradient is taken with respect to the images only, with the labels `y` held fixed: those of the real batch,
    as StudioGAN's conditional WGAN-GP does.
    """

    def __init__(self, weight: float = 10.0, target: float = 1.0):
        if weight < 0:
            raise ConfigError(f"regularizer.weight={weight} is negative: use a weight >= 0.")
        self.weight = weight
        self.target = target

    def penalty(self, discriminator, real, fake, y=None, runtime=None):
        runtime = runtime or Runtime(real.device)
        shape = (real.shape[0] * runtime.world_size,) + (1,) * (real.dim() - 1)  # the global batch's draw, sliced
        (alpha,) = runtime.shard(torch.rand(shape, device=real.device, dtype=real.dtype))
        interpolates = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
        scores, _ = discriminator.split_outputs(discriminator(interpolates, y), y)  # the adversarial logits alone
        (gradients,) = torch.autograd.grad(scores.sum(), interpolates, create_graph=True)
        norms = gradients.flatten(1).norm(2, dim=1)
        return {"gradient_penalty": self.weight * (norms - self.target).pow(2).mean()}


class WeightClipping(Regularizer):
    """The original WGAN: clamp every discriminator parameter to [-clip, clip] after each step."""

    def __init__(self, clip: float = 0.01):
        if clip <= 0:
            raise ConfigError(f"regularizer.clip={clip} must be > 0: the original WGAN uses 0.01.")
        self.clip = clip

    @torch.no_grad()
    def after_step(self, discriminator):
        for parameter in discriminator.parameters():
            parameter.clamp_(-self.clip, self.clip)
