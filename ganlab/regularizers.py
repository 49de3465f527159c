"""Discriminator regularisers, kept apart from the losses so that any loss can take any of them, and several at once.

A run has one `regularizer` (none, WGAN-GP's gradient penalty, or weight clipping) and any list of `penalty`
options (R1, R2, LeCam). Each is a `Regularizer`, with the same hooks, which the training step calls for every
discriminator update:

    penalty(step) -> dict of named scalar tensors, added to the discriminator loss
    after_step(discriminator) -> None, run after the optimiser step (for example weight clipping)
    state_dict() / load_state_dict(state): what the checkpoint keeps of it (LeCam's averages), {} for most

`step` is a `DiscriminatorStep`: the update's real and fake batches, their labels and logits, and `logits_of`, D's
adversarial logits for (x, y) as D sees them (augmented, where `augment` is on), differentiable twice. Gradients are
taken with respect to the images alone, with the labels held fixed. Under torchrun each process penalises its slice
and the gradients are averaged with the rest; random draws are made for the global batch and sliced
(`runtime.shard`), so N processes penalise what one process would.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ganlab.distributed import Runtime
from ganlab.errors import ConfigError


@dataclass
class DiscriminatorStep:
    """What a penalty may read of one discriminator update."""

    real: Tensor
    fake: Tensor  # detached from G's graph
    real_labels: Tensor | None  # None for unlabelled data or an unconditional model
    fake_labels: Tensor | None
    real_logits: Tensor  # D's adversarial logits on the batches, shape (N,)
    fake_logits: Tensor
    logits_of: Callable[[Tensor, Tensor | None], Tensor]  # D's logits for (x, y), as D sees x, differentiable twice
    index: int  # the update's number in the run, from 0: lazy penalties apply on every `every`-th one
    runtime: Runtime


class Regularizer:
    """No regularisation: the base class, and the `regularizer=none` option."""

    def penalty(self, step: DiscriminatorStep) -> dict[str, Tensor]:
        return {}

    @torch.no_grad()
    def after_step(self, discriminator: nn.Module) -> None:
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None


def _weight(key: str, value: float) -> None:
    if value < 0:
        raise ConfigError(f"{key}={value} is negative: use a weight >= 0 (0 computes the term but adds nothing).")


class GradientPenalty(Regularizer):
    """WGAN-GP: weight * E[(||grad_x D(x_hat, y)||_2 - target)^2] at random interpolates of real and fake batches.

    The labels `y` held fixed are those of the real batch, as StudioGAN's conditional WGAN-GP does.
    """

    def __init__(self, weight: float = 10.0, target: float = 1.0):
        _weight("regularizer.weight", weight)
        self.weight = weight
        self.target = target

    def penalty(self, step):
        real, runtime = step.real, step.runtime
        shape = (real.shape[0] * runtime.world_size,) + (1,) * (real.dim() - 1)  # the global batch's draw, sliced
        (alpha,) = runtime.shard(torch.rand(shape, device=real.device, dtype=real.dtype))
        interpolates = (alpha * real.detach() + (1 - alpha) * step.fake.detach()).requires_grad_(True)
        (gradients,) = torch.autograd.grad(step.logits_of(interpolates, step.real_labels).sum(), interpolates,
                                           create_graph=True)  # fmt: skip
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


class R1(Regularizer):
    """R1 (Mescheder et al. 2018): gamma / 2 * E||grad_x D(x, y)||^2 on real images, a zero-centred penalty.

    every: lazy regularisation (StyleGAN2, Karras et al. 2020): the penalty is computed on every `every`-th
    discriminator update and multiplied by `every`, so its expected gradient is the eager one's at 1/every the cost.
    """

    on = "real"  # the batch the penalty is taken on

    def __init__(self, gamma: float = 1.0, every: int = 1):
        _weight(f"penalty.{self.name}.gamma", gamma)
        if not isinstance(every, int) or every < 1:
            raise ConfigError(f"penalty.{self.name}.every={every} must be an integer >= 1 (1 = every update).")
        self.gamma, self.every = gamma, every

    @property
    def name(self) -> str:
        return type(self).__name__.lower()

    def penalty(self, step):
        if step.index % self.every:
            return {}
        images, labels = (step.real, step.real_labels) if self.on == "real" else (step.fake, step.fake_labels)
        images = images.detach().requires_grad_(True)
        (gradients,) = torch.autograd.grad(step.logits_of(images, labels).sum(), images, create_graph=True)
        squared_norms = gradients.flatten(1).float().pow(2).sum(1)
        return {self.name: self.every * self.gamma / 2 * squared_norms.mean()}


class R2(R1):
    """R2 (Mescheder et al. 2018; R3GAN, Huang et al. 2024 pairs it with R1): the same penalty on fake images."""

    on = "fake"


class LeCam(Regularizer):
    """LeCam regularisation (Tseng et al. 2021): weight * (E[relu(D(x) - a_F)^2] + E[relu(a_R - D(G(z)))^2]).

    a_R and a_F are exponential moving averages (`decay`) of D's mean logit on real and on fake images, started at
    the first update's means. They are device tensors (no sync per step), averaged over the processes under
    torchrun, and kept in the checkpoint.
    """

    def __init__(self, weight: float = 0.1, decay: float = 0.99):
        _weight("penalty.lecam.weight", weight)
        if not 0 <= decay < 1:
            raise ConfigError(f"penalty.lecam.decay={decay} must be in [0, 1).")
        self.weight, self.decay = weight, decay
        self.averages: Tensor | None = None  # [a_R, a_F]

    def penalty(self, step):
        means = step.runtime.average(torch.stack([step.real_logits.mean(), step.fake_logits.mean()]).detach().float())
        if self.averages is None:
            self.averages = means
        else:
            self.averages = self.averages.to(means.device).lerp(means, 1 - self.decay)
        anchor_real, anchor_fake = self.averages
        term = F.relu(step.real_logits.float() - anchor_fake).pow(2).mean()
        term = term + F.relu(anchor_real - step.fake_logits.float()).pow(2).mean()
        return {"lecam": self.weight * term}

    def state_dict(self):
        return {"averages": None if self.averages is None else self.averages.cpu()}

    def load_state_dict(self, state):
        self.averages = state["averages"]
