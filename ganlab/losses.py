"""GAN losses: each maps raw discriminator outputs (logits) to a scalar discriminator loss and generator loss.

Every loss has the same two methods, so the training loop never knows which one it runs:

    d_loss(real_logits, fake_logits) -> scalar tensor               # minimised by the discriminator
    g_loss(fake_logits, real_logits=None) -> scalar tensor          # minimised by the generator

Logits have shape (N,) or (N, 1). A relativistic loss (`relativistic = True`) compares each fake logit with a real
one, so the generator step gives it D's logits on a real batch too (computed without a graph: G's gradient flows
through the fake logits alone); the others get None. Penalties such as the gradient penalty live in
`ganlab.regularizers` and combine with any loss.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ganlab.errors import ConfigError


def _flat(logits: Tensor) -> Tensor:
    return logits.reshape(logits.shape[0])


def safe_exp(x: Tensor, cap: float = 50.0) -> Tensor:
    """exp(x) below `cap`, continued linearly above it, so huge logits give finite values and non-zero gradients."""
    clipped = x.clamp(max=cap)
    return torch.exp(clipped) * (1.0 + (x - clipped))


class GANLoss:
    """Base class: subclasses implement `d_loss` and `g_loss`."""

    def d_loss(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        raise NotImplementedError

    relativistic = False  # g_loss reads D's logits on real images

    def g_loss(self, fake_logits: Tensor, real_logits: Tensor | None = None) -> Tensor:
        raise NotImplementedError


class NonSaturating(GANLoss):
    """The standard GAN (binary cross-entropy) with the non-saturating generator loss -log D(G(z))."""

    def d_loss(self, real_logits, fake_logits):
        return F.softplus(-_flat(real_logits)).mean() + F.softplus(_flat(fake_logits)).mean()

    def g_loss(self, fake_logits, real_logits=None):
        return F.softplus(-_flat(fake_logits)).mean()


class Minimax(NonSaturating):
    """The original saturating minimax GAN: the generator minimises log(1 - D(G(z)))."""

    def g_loss(self, fake_logits, real_logits=None):
        return -F.softplus(_flat(fake_logits)).mean()


class LeastSquares(GANLoss):
    """LSGAN with targets 0 (fake) and 1 (real) on the raw discriminator output, halved as in the recipe."""

    def d_loss(self, real_logits, fake_logits):
        return 0.5 * ((_flat(real_logits) - 1).pow(2).mean() + _flat(fake_logits).pow(2).mean())

    def g_loss(self, fake_logits, real_logits=None):
        return 0.5 * (_flat(fake_logits) - 1).pow(2).mean()


class Wasserstein(GANLoss):
    """WGAN critic loss E[D(fake)] - E[D(real)]; pair it with weight clipping or a gradient penalty."""

    def d_loss(self, real_logits, fake_logits):
        return _flat(fake_logits).mean() - _flat(real_logits).mean()

    def g_loss(self, fake_logits, real_logits=None):
        return -_flat(fake_logits).mean()


class Hinge(GANLoss):
    """Hinge loss (geometric GAN): D minimises relu(1 - D(real)) + relu(1 + D(fake)); G minimises -D(fake)."""

    def d_loss(self, real_logits, fake_logits):
        return F.relu(1 - _flat(real_logits)).mean() + F.relu(1 + _flat(fake_logits)).mean()

    def g_loss(self, fake_logits, real_logits=None):
        return -_flat(fake_logits).mean()


class FDivergence(GANLoss):
    """f-GAN (Nowozin et al. 2016): -d_loss is the variational lower bound E_P[T] - E_Q[f*(T)] of D_f(P_data || Q).

    T = g_f(V) is the output activation applied to the logit V, and f* the convex conjugate of f. Subclasses give
    `activation(V)` = g_f(V) and `conjugate(V)` = f*(g_f(V)), written together in numerically stable forms.
    `scale` multiplies the bound, for divergences whose standard definition is a multiple of the paper's f.

    generator_loss: "alternative" (default, the paper's recommendation) minimises -E_Q[g_f(V)]; "minimax" minimises
    the bound itself, -E_Q[f*(g_f(V))].
    """

    scale = 1.0

    def __init__(self, generator_loss: str = "alternative"):
        if generator_loss not in ("alternative", "minimax"):
            raise ConfigError(f"loss.generator_loss={generator_loss!r} is not allowed: use 'alternative' or 'minimax'.")
        self.generator_loss = generator_loss

    def activation(self, v: Tensor) -> Tensor:
        raise NotImplementedError

    def conjugate(self, v: Tensor) -> Tensor:
        raise NotImplementedError

    def d_loss(self, real_logits, fake_logits):
        bound = self.activation(_flat(real_logits)).mean() - self.conjugate(_flat(fake_logits)).mean()
        return -self.scale * bound

    def g_loss(self, fake_logits, real_logits=None):
        v = _flat(fake_logits)
        if self.generator_loss == "minimax":
            return -self.scale * self.conjugate(v).mean()
        return -self.scale * self.activation(v).mean()


class KL(FDivergence):
    """Forward KL(P || Q): g_f(v) = v, f*(t) = exp(t - 1)."""

    def activation(self, v):
        return v

    def conjugate(self, v):
        return safe_exp(v - 1)


class ReverseKL(FDivergence):
    """Reverse KL(Q || P): g_f(v) = -exp(-v), f*(t) = -1 - log(-t), so f*(g_f(v)) = v - 1."""

    def activation(self, v):
        return -safe_exp(-v)

    def conjugate(self, v):
        return v - 1


class Pearson(FDivergence):
    """Pearson chi^2 = integral of (p - q)^2 / q: g_f(v) = v, f*(t) = t^2 / 4 + t."""

    def activation(self, v):
        return v

    def conjugate(self, v):
        return 0.25 * v.pow(2) + v


class SquaredHellinger(FDivergence):
    """Squared Hellinger = integral of (sqrt p - sqrt q)^2: g_f(v) = 1 - exp(-v), f*(t) = t / (1 - t) = exp(v) - 1."""

    def activation(self, v):
        return 1 - safe_exp(-v)

    def conjugate(self, v):
        return safe_exp(v) - 1


class TotalVariation(FDivergence):
    """Total variation = 1/2 integral of |p - q|: g_f(v) = tanh(v) / 2, f*(t) = t."""

    def activation(self, v):
        return 0.5 * torch.tanh(v)

    def conjugate(self, v):
        return 0.5 * torch.tanh(v)


class JensenShannon(FDivergence):
    """Jensen-Shannon = KL(P||M)/2 + KL(Q||M)/2 with M = (P + Q)/2.

    The paper's f(u) = u log u - (u + 1) log((u + 1)/2), with g_f(v) = log 2 - log(1 + exp(-v)) and
    f*(t) = -log(2 - exp(t)), gives twice this divergence, so the bound is halved.
    """

    scale = 0.5

    def activation(self, v):
        return math.log(2.0) - F.softplus(-v)

    def conjugate(self, v):
        return F.softplus(v) - math.log(2.0)


class RelativisticPairing(GANLoss):
    """RpGAN (Jolicoeur-Martineau 2019; the loss of R3GAN, Huang et al. 2024): each fake logit is compared with the
    real logit beside it in the batch. D minimises softplus(D(fake) - D(real)); G minimises softplus(D(real) - D(fake)).

    Pair it with the zero-centred penalties `penalty=[r1,r2]`, as R3GAN does: alone it has no equilibrium guarantee.
    """

    relativistic = True

    def d_loss(self, real_logits, fake_logits):
        return F.softplus(_flat(fake_logits) - _flat(real_logits)).mean()

    def g_loss(self, fake_logits, real_logits=None):
        if real_logits is None:
            raise ValueError("the relativistic loss compares fake logits with real ones: pass real_logits")
        return F.softplus(_flat(real_logits) - _flat(fake_logits)).mean()
