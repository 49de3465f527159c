"""Tests of ganlab.losses, each loss built from its real conf/loss/*.yaml by Hydra's compose API.

Every option of the loss group (found by globbing conf/loss/) must keep the one interface the training loop
relies on, stay finite for huge logits, and compute what its docstring says: the f-GAN losses are checked
against divergences of two known 1-D Gaussians computed by quadrature, the others against hand-derived values.
"""

import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import Tensor
from torch.testing import assert_close

from ganlab.config import register_configs
from ganlab.errors import ConfigError
from ganlab.losses import FDivergence, GANLoss

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
LOSS_NAMES = sorted(path.stem for path in (CONF_DIR / "loss").glob("*.yaml"))


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run each test on one torch thread, as tests/test_train.py does with device.threads=1.

    These are tiny tensors: on 2 shared cores OpenMP's hand-offs made the discriminator training 50x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def loss_config(name: str, *overrides: str):
    """The `loss` node of the real conf/config.yaml composed with `loss=name` and `overrides`."""
    register_configs()  # conf/config.yaml's defaults start with `schema`, which this puts in the ConfigStore
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[f"loss={name}", *overrides]).loss


def build_loss(name: str, *overrides: str) -> GANLoss:
    """The loss object the training loop gets for `loss=name`."""
    return instantiate(loss_config(name, *overrides))


# ------------------------------------------------------------------------------------------------------------
# The two known distributions of the f-GAN checks. P is the data ("real"), Q the model ("fake"). Q has the
# heavier tails, so every divergence below is finite (Pearson chi^2 = integral of (p - q)^2 / q included), and
# the means differ enough that the smallest one (JS, about 0.096) is not tiny.
P_MEAN, P_STD = 0.0, 1.0
Q_MEAN, Q_STD = 1.0, 1.3

GRID = torch.linspace(-20.0, 20.0, 40_001, dtype=torch.float64)  # trapezoid grid of the reference divergences
QUANTILE_POINTS = 2**16  # points per distribution in the quadrature of E_P[T] and E_Q[f*(T)]


def log_density(x: Tensor, mean: float, std: float) -> Tensor:
    """log N(x; mean, std^2)."""
    return -0.5 * ((x - mean) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)


def log_ratio(x: Tensor) -> Tensor:
    """r(x) = log p(x) / q(x)."""
    return log_density(x, P_MEAN, P_STD) - log_density(x, Q_MEAN, Q_STD)


def quantile_points(mean: float, std: float, dtype: torch.dtype) -> Tensor:
    """The (i + 1/2)/n quantiles of N(mean, std^2), shape (n, 1).

    The mean of any h over them is the midpoint-rule quadrature of E[h(x)] (in probability space), so a loss's
    d_loss, a plain mean over its logits, gives on them the expectation it estimates, without sampling noise.
    """
    u = (torch.arange(QUANTILE_POINTS, dtype=torch.float64) + 0.5) / QUANTILE_POINTS
    return (mean + std * torch.special.ndtri(u)).to(dtype).unsqueeze(1)


def _js_integrand(log_p: Tensor, log_q: Tensor) -> Tensor:
    log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
    return 0.5 * (log_p.exp() * (log_p - log_m) + log_q.exp() * (log_q - log_m))


class Divergence(NamedTuple):
    """A reference f-divergence D_f(P || Q) and the discriminator that attains the f-GAN bound of it."""

    integrand: Callable[[Tensor, Tensor], Tensor]  # (log p, log q) on the grid -> integrand of D_f(P || Q)
    optimal_logit: Callable[[Tensor], Tensor]  # V*(x) = g_f^-1(f'(p/q)) as a function of r = log p/q


DIVERGENCES = {
    # KL(P || Q) = integral of p log(p/q); f'(u) = 1 + log u, g_f(v) = v
    "fgan-kl": Divergence(lambda lp, lq: lp.exp() * (lp - lq), lambda r: 1 + r),
    # KL(Q || P) = integral of q log(q/p); f'(u) = -1/u, g_f(v) = -exp(-v)
    "fgan-reverse-kl": Divergence(lambda lp, lq: lq.exp() * (lq - lp), lambda r: r),
    # integral of (p - q)^2 / q = q (p/q - 1)^2; f'(u) = 2 (u - 1), g_f(v) = v
    "fgan-pearson": Divergence(
        lambda lp, lq: lq.exp() * torch.expm1(lp - lq) ** 2,
        lambda r: 2 * torch.expm1(r),
    ),
    # integral of (sqrt p - sqrt q)^2; f'(u) = 1 - 1/sqrt(u), g_f(v) = 1 - exp(-v)
    "fgan-hellinger": Divergence(lambda lp, lq: ((lp / 2).exp() - (lq / 2).exp()) ** 2, lambda r: r / 2),
    # 1/2 integral of |p - q|; f'(u) = sign(u - 1) / 2, g_f(v) = tanh(v) / 2: V* = +-inf (50 saturates)
    "fgan-tv": Divergence(lambda lp, lq: 0.5 * (lp.exp() - lq.exp()).abs(), lambda r: 50 * torch.sign(r)),
    # KL(P || M)/2 + KL(Q || M)/2, M = (P + Q)/2; the paper's f'(u) = log(2u / (u + 1)),
    # g_f(v) = log 2 - softplus(-v)
    "fgan-js": Divergence(_js_integrand, lambda r: r),
}
FGAN_NAMES = sorted(DIVERGENCES)


@functools.cache
def reference_divergence(name: str) -> float:
    """D_f(P || Q) by the trapezoid rule on GRID, in float64."""
    log_p, log_q = log_density(GRID, P_MEAN, P_STD), log_density(GRID, Q_MEAN, Q_STD)
    return torch.trapezoid(DIVERGENCES[name].integrand(log_p, log_q), GRID).item()


def bound(loss: GANLoss, discriminator: Callable[[Tensor], Tensor], dtype: torch.dtype) -> float:
    """-d_loss, the f-GAN lower bound E_P[T] - E_Q[f*(T)], by quadrature over the quantiles of P and Q."""
    real = quantile_points(P_MEAN, P_STD, dtype)
    fake = quantile_points(Q_MEAN, Q_STD, dtype)
    with torch.no_grad():
        return -loss.d_loss(discriminator(real), discriminator(fake)).item()


def mlp(seed: int) -> torch.nn.Module:
    """A 1 -> 64 -> 64 -> 1 ReLU discriminator: piecewise linear, so it can approach TV's step-like T too."""
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(1, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU()]
    return torch.nn.Sequential(*layers, torch.nn.Linear(64, 1))


def train_discriminator(loss: GANLoss, steps: int = 300, batch_size: int = 512) -> torch.nn.Module:
    """An MLP discriminator fitted by minimising loss.d_loss with Adam on fresh samples of P and Q."""
    discriminator = mlp(seed=0)
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)  # small final steps settle T
    for _ in range(steps):
        real = P_MEAN + P_STD * torch.randn(batch_size, 1)
        fake = Q_MEAN + Q_STD * torch.randn(batch_size, 1)
        d_loss = loss.d_loss(discriminator(real), discriminator(fake))
        optimizer.zero_grad()
        d_loss.backward()
        optimizer.step()
        schedule.step()
    return discriminator


# ------------------------------------------------------------------------------------------------------------
# 1. The interface, for every option of the loss group


def test_loss_group_is_discovered():
    """The glob finds the options, and every option this file holds reference values for is one of them."""
    assert set(DIVERGENCES) | set(KNOWN_VALUES) <= set(LOSS_NAMES), f"conf/loss/ holds {LOSS_NAMES}"


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("shape", [(16,), (16, 1)], ids=["N", "Nx1"])
def test_loss_interface(name, shape):
    loss = build_loss(name)
    generator = torch.Generator().manual_seed(0)
    real = torch.randn(shape, generator=generator).requires_grad_()
    fake = torch.randn(shape, generator=generator).requires_grad_()

    d_loss = loss.d_loss(real, fake)
    g_loss = loss.g_loss(fake, real.detach())  # the real logits only a relativistic loss reads
    for value in (d_loss, g_loss):
        assert value.dim() == 0 and torch.isfinite(value)

    d_real_grad, d_fake_grad = torch.autograd.grad(d_loss, (real, fake))
    (g_fake_grad,) = torch.autograd.grad(g_loss, fake)
    for grad in (d_real_grad, d_fake_grad, g_fake_grad):
        assert grad.shape == shape and torch.isfinite(grad).all() and grad.abs().sum() > 0

    # (N, 1) logits give the same losses as (N,): no broadcasting of (N, 1) against (N,) into an (N, N) matrix
    flat_real, flat_fake = real.detach().reshape(-1), fake.detach().reshape(-1)
    assert_close(d_loss.detach(), loss.d_loss(flat_real, flat_fake))
    assert_close(g_loss.detach(), loss.g_loss(flat_fake, flat_real))


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_loss_option_has_value_checks(name):
    """A new conf/loss/*.yaml fails here until a reference divergence or known values are added for it."""
    loss = build_loss(name)
    table_name = "DIVERGENCES" if isinstance(loss, FDivergence) else "KNOWN_VALUES"
    assert name in globals()[table_name], f"loss={name} ({type(loss).__name__}) has no entry in {table_name}"


# ------------------------------------------------------------------------------------------------------------
# 2. Numerical stability


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("magnitude", [1e2, 1e3, 1e4])
def test_huge_logits_give_finite_losses_and_gradients(name, magnitude):
    loss = build_loss(name)
    for real_sign in (1.0, -1.0):
        for fake_sign in (1.0, -1.0):
            real = torch.full((8,), real_sign * magnitude, requires_grad=True)
            fake = torch.full((8,), fake_sign * magnitude, requires_grad=True)
            d_loss = loss.d_loss(real, fake)
            g_loss = loss.g_loss(fake, real.detach())
            grads = torch.autograd.grad(d_loss, (real, fake)) + torch.autograd.grad(g_loss, fake)
            case = f"loss={name}, real={real_sign * magnitude:g}, fake={fake_sign * magnitude:g}"
            assert torch.isfinite(d_loss), f"{case}: d_loss={d_loss}"
            assert torch.isfinite(g_loss), f"{case}: g_loss={g_loss}"
            assert all(torch.isfinite(grad).all() for grad in grads), f"{case}: gradients {grads}"


# ------------------------------------------------------------------------------------------------------------
# 3. The f-GAN bound: -d_loss is the variational lower bound of D_f(P_data || Q_model)


def test_reference_quadrature_matches_closed_form_kl():
    """The reference integrals themselves: the quadrature KL of two Gaussians equals its closed form."""
    closed_form = math.log(Q_STD / P_STD) + (P_STD**2 + (P_MEAN - Q_MEAN) ** 2) / (2 * Q_STD**2) - 0.5
    assert reference_divergence("fgan-kl") == pytest.approx(closed_form, rel=1e-6)


@pytest.mark.parametrize("name", FGAN_NAMES)
def test_optimal_discriminator_attains_the_divergence(name):
    """With the analytic optimum V* = g_f^-1(f'(p/q)) the bound is tight: -d_loss equals D_f(P || Q)."""
    loss = build_loss(name)
    optimal_logit = DIVERGENCES[name].optimal_logit
    value = bound(loss, lambda x: optimal_logit(log_ratio(x)), torch.float64)
    assert value == pytest.approx(reference_divergence(name), rel=0.01)


@pytest.mark.parametrize("name", FGAN_NAMES)
def test_trained_discriminator_bound_matches_divergence(name):
    """An MLP trained by minimising d_loss on samples of P and Q lifts -d_loss to D_f(P || Q), within 10%."""
    loss = build_loss(name)
    torch.manual_seed(1)
    value = bound(loss, train_discriminator(loss), torch.float32)
    true = reference_divergence(name)
    relative_error = (value - true) / true
    print(f"{name}: -d_loss = {value:.4f}, D_f(P||Q) = {true:.4f}, relative error {relative_error:+.2%}")
    assert abs(relative_error) <= 0.10, f"{name}: -d_loss={value:.4f} but D_f(P||Q)={true:.4f}"


@pytest.mark.parametrize("name", FGAN_NAMES)
def test_weak_discriminator_bound_stays_below_divergence(name):
    """Any discriminator gives a lower bound: zero, untrained MLPs, their outputs scaled, V* negated."""
    loss = build_loss(name)
    true = reference_divergence(name)
    optimal_logit = DIVERGENCES[name].optimal_logit
    discriminators = {
        "zero": lambda x: torch.zeros_like(x),
        "negated optimum": lambda x: -optimal_logit(log_ratio(x)),
    }
    for seed in range(3):
        untrained = mlp(seed).double()
        for scale in (1.0, 5.0):
            discriminators[f"untrained seed {seed} x{scale:g}"] = lambda x, D=untrained, s=scale: s * D(x)
    for label, discriminator in discriminators.items():
        value = bound(loss, discriminator, torch.float64)
        assert value <= true + 1e-3, f"{name}, {label}: -d_loss={value:.4f} > D_f(P||Q)={true:.4f}"


# ------------------------------------------------------------------------------------------------------------
# 4. Known values of the other losses


def _check_bce(loss):
    large = torch.full((8,), 40.0)
    assert_close(loss.d_loss(large, -large), torch.tensor(0.0), atol=1e-6, rtol=0)  # D sure and right
    assert_close(loss.d_loss(torch.zeros(8), torch.zeros(8)), torch.tensor(2 * math.log(2.0)))
    fake = torch.linspace(-5, 3, 9)  # asymmetric: log D, log(1 - D) have equal means on symmetric logits
    assert_close(loss.g_loss(fake), -torch.log(torch.sigmoid(fake)).mean())  # non-saturating: -log D(G(z))


def _check_minimax(loss):
    large = torch.full((8,), 40.0)
    assert_close(loss.d_loss(large, -large), torch.tensor(0.0), atol=1e-6, rtol=0)
    assert_close(loss.d_loss(torch.zeros(8), torch.zeros(8)), torch.tensor(2 * math.log(2.0)))
    fake = torch.linspace(-5, 3, 9)  # asymmetric: log D, log(1 - D) have equal means on symmetric logits
    assert_close(loss.g_loss(fake), torch.log1p(-torch.sigmoid(fake)).mean())  # log(1 - D(G(z)))


def _check_lsgan(loss):
    ones, zeros = torch.ones(8), torch.zeros(8)
    assert_close(loss.d_loss(ones, zeros), torch.tensor(0.0))
    assert_close(loss.g_loss(ones), torch.tensor(0.0))
    assert_close(loss.d_loss(zeros, ones), torch.tensor(1.0))  # 0.5 * (1 + 1)
    assert_close(loss.g_loss(zeros), torch.tensor(0.5))


def _check_wasserstein(loss):
    real, fake = torch.linspace(-3, 5, 9), torch.linspace(-7, 2, 9)
    assert_close(loss.d_loss(real, fake), fake.mean() - real.mean())
    assert_close(loss.g_loss(fake), -fake.mean())


def _check_hinge(loss):
    margin = torch.linspace(0, 3, 8)
    assert_close(loss.d_loss(1 + margin, -1 - margin), torch.tensor(0.0))  # real >= 1 and fake <= -1
    assert_close(loss.d_loss(torch.zeros(8), torch.zeros(8)), torch.tensor(2.0))
    assert_close(loss.d_loss(torch.full((8,), 0.5), torch.full((8,), -0.5)), torch.tensor(1.0))
    fake = torch.linspace(-7, 2, 9)
    assert_close(loss.g_loss(fake), -fake.mean())


def _check_rpgan(loss):
    """RpGAN pairs the batches: softplus(fake - real) per pair, so a real logit lifted by 2 buys exactly what a fake
    one lowered by 2 does, and G's loss is D's with the pair reversed."""
    real, fake = torch.tensor([3.0, -1.0, 0.5]), torch.tensor([1.0, 2.0, 0.5])
    assert_close(loss.d_loss(real, fake), F.softplus(fake - real).mean())
    assert_close(loss.d_loss(real + 2, fake), loss.d_loss(real, fake - 2))
    assert_close(loss.g_loss(fake, real), loss.d_loss(fake, real))
    assert_close(loss.d_loss(torch.zeros(4), torch.zeros(4)), torch.tensor(math.log(2.0)))
    assert not torch.equal(loss.d_loss(real, fake), loss.d_loss(real, fake.flip(0)))  # paired, not averaged apart
    with pytest.raises(ValueError, match="real_logits"):
        loss.g_loss(fake)


KNOWN_VALUES = {
    "bce": _check_bce,
    "rpgan": _check_rpgan,
    "minimax": _check_minimax,
    "lsgan": _check_lsgan,
    "wgan": _check_wasserstein,
    "wgan-gp": _check_wasserstein,
    "hinge": _check_hinge,
}


@pytest.mark.parametrize("name", sorted(KNOWN_VALUES))
def test_known_values(name):
    KNOWN_VALUES[name](build_loss(name))


# ------------------------------------------------------------------------------------------------------------
# 5. The f-GAN generator_loss option

SAME_GENERATOR_LOSSES = {"fgan-tv"}  # f*(t) = t, so minimax -E_Q[f*(T)] and alternative -E_Q[T] coincide


@pytest.mark.parametrize("name", FGAN_NAMES)
def test_fgan_generator_losses(name):
    alternative = build_loss(name)
    minimax = build_loss(name, "loss.generator_loss=minimax")
    assert (alternative.generator_loss, minimax.generator_loss) == ("alternative", "minimax")
    real = torch.linspace(-3, 3, 13)
    # logits whose T = g_f(V) lies where f* increases: Pearson's f*(t) = t^2/4 + t does only for t > -2, the
    # range of its optimal T* = 2 (p/q - 1)
    fake = torch.linspace(-1.5, 2, 13).requires_grad_()

    # both make G raise D's output on its samples, i.e. make them look more like data
    for loss in (alternative, minimax):
        (grad,) = torch.autograd.grad(loss.g_loss(fake), fake)
        assert (grad < 0).all(), f"{name}, generator_loss={loss.generator_loss}: dg_loss/dlogit={grad}"

    # minimax is the zero-sum game: G minimises the same bound that D maximises, so d_loss + g_loss has no
    # gradient with respect to the fake logits
    (grad,) = torch.autograd.grad(minimax.d_loss(real, fake) + minimax.g_loss(fake), fake)
    assert_close(grad, torch.zeros_like(grad))

    same = torch.allclose(alternative.g_loss(fake), minimax.g_loss(fake))
    assert same == (name in SAME_GENERATOR_LOSSES)


@pytest.mark.parametrize("name", FGAN_NAMES)
def test_fgan_bad_generator_loss_is_a_config_error(name):
    with pytest.raises(InstantiationException) as caught:
        build_loss(name, "loss.generator_loss=saturating")
    error = caught.value.__cause__
    assert isinstance(error, ConfigError)
    assert "loss.generator_loss='saturating'" in str(error) and "'alternative'" in str(error)
