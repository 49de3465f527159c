"""One training step, and the parts it touches, built once from the config.

`train_step` is shared by the training loop and `scripts/bench.py`, so the benchmark measures exactly the step that
training runs: `d_steps` discriminator updates, then one generator update on the last fake batch.

Labels travel with every batch: real images come with theirs (`batches.next` gives `(x, y)`), fake ones with the
labels the latent sampler drew (`model.sample_latent` gives `(z, y)`), and every call is `G(z, y)` or `D(x, y)`.
A label is None where the data has none or the model is unconditional; the step never asks which.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel

from ganlab.augment import Augment
from ganlab.config import build
from ganlab.device import autocast
from ganlab.distributed import Runtime, synchronise_batch_statistics
from ganlab.losses import GANLoss
from ganlab.models.base import GANModel
from ganlab.models.conditional import Discriminator
from ganlab.regularizers import DiscriminatorStep, GradientPenalty, Regularizer

log = logging.getLogger(__name__)


@dataclass
class GAN:
    """Everything a training step touches.

    `generator` and `discriminator` are the model's own networks, compiled in place when `device.compile` asks
    (`nn.Module.compile`): one handle per network, called as `generator(z, y)` and `discriminator(x, y)`.
    """

    model: GANModel  # owns the parameters and the state dict
    loss: GANLoss
    regularizers: list[Regularizer]  # the regularizer, then each penalty: their terms add up in D's loss
    augment: Augment  # what D sees of every image (augment=none: the image itself)
    g_opt: torch.optim.Optimizer
    d_opt: torch.optim.Optimizer
    precision: str  # fp32, or bf16 autocast
    joint: bool  # one D forward over real and fake together (only without batch-statistics layers)
    ema: AveragedModel | None = None  # exponential moving average of the generator; None when train.ema_decay=0
    schedulers: list = field(default_factory=list)  # learning-rate schedules stepped after each G update; [] = constant
    runtime: Runtime = field(default_factory=lambda: Runtime(torch.device("cpu")))  # this process's share of the run
    d_updates: int = 0  # discriminator updates so far in the run (lazy penalties count them), kept in the checkpoint

    @property
    def generator(self) -> torch.nn.Module:
        return self.model.generator

    @property
    def discriminator(self) -> Discriminator:
        return self.model.discriminator

    def judge(self, images: Tensor, labels: Tensor | None, eager: bool = False) -> Tensor:
        """D's raw outputs on `images` as D sees them (augmented). eager: the uncompiled forward, which penalties
        differentiate twice (compiled modules do not support a double backward)."""
        forward = self.discriminator.forward if eager else self.discriminator
        return forward(self.augment(images), labels)

    def logits_of(self, images: Tensor, labels: Tensor | None) -> Tensor:
        """D's adversarial logits on `images`, as D sees them, differentiable twice: what penalties take."""
        return self.discriminator.split_outputs(self.judge(images, labels, eager=True), labels)[0]


def make_adam(parameters, lr: float, betas) -> torch.optim.Adam:
    """Adam with the fused kernel where this torch has one for the device, else the multi-tensor (foreach) one."""
    parameters = list(parameters)
    try:
        return torch.optim.Adam(parameters, lr=lr, betas=tuple(betas), fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(parameters, lr=lr, betas=tuple(betas), foreach=True)


def build_model(cfg: DictConfig, num_classes: int = 0, runtime: Runtime | None = None) -> GANModel:
    """The model of `cfg` for its dataset's shape and `num_classes` classes (0 = no labels), prepared on the runtime's
    device (`GANModel.prepare`: spectral norm, channels_last, SyncBatchNorm); None = the CPU, alone."""
    runtime = runtime or Runtime(torch.device("cpu"))
    model = build(
        cfg.model, "model", channels=cfg.dataset.channels, image_size=cfg.dataset.image_size, num_classes=num_classes
    )
    return model.prepare(runtime.device, sync_batch_norm=synchronise_batch_statistics(model, runtime))


def linear_decay(steps: int) -> Callable[[int], float]:
    """The learning-rate factor after `done` generator updates: 1 at the start, falling linearly to 0 at `steps`."""
    return lambda done: max(0.0, 1.0 - done / steps)


def build_regularizers(cfg: DictConfig) -> list[Regularizer]:
    """The regularizer of `cfg`, then its penalties by name (`penalty=[r1,lecam]`), in the order given."""
    penalties = [build(node, f"penalty.{name}") for name, node in cfg.penalty.items()]
    return [build(cfg.regularizer, "regularizer"), *penalties]


def build_gan(cfg: DictConfig, device: torch.device, num_classes: int = 0, runtime: Runtime | None = None,
              source=None) -> GAN:  # fmt: skip
    """The model, loss, regularisers, augmentation and optimisers of `cfg`, on `device`, shape-checked.

    num_classes: the dataset's classes, which a conditional model is conditioned on (0 = the data has no labels).
    runtime: this process's rank among the processes training the run (`ganlab.distributed`); None = alone.
    source: the dataset, which the augmentation checks its operations against (None: a 2-D point is no image).
    """
    runtime = runtime or Runtime(device)
    model = build_model(cfg, num_classes, runtime)
    regularizers = build_regularizers(cfg)
    if any(isinstance(r, GradientPenalty) for r in regularizers) and model.discriminator.has_batch_statistics:
        log.warning("the gradient penalty assumes per-sample critic outputs; set model.d_norm=instance or none")
    augment = build(cfg.augment, "augment")
    if source is not None:
        augment.prepare(model.image_shape, model.output_range, source.flip_keeps_class, source.is_image)
    if augment.kind != "none" and not model.channels_last:
        log.warning("augment=%s is for convolutional discriminators: it made an MLP's samples worse in "
                    "docs/results.md", augment.kind)  # fmt: skip
    ema = None
    if cfg.train.ema_decay > 0:  # AveragedModel copies G; use_buffers averages BatchNorm statistics too
        average = ema_average(cfg.train.ema_decay, cfg.train.ema_rampup)
        ema = AveragedModel(model.generator, multi_avg_fn=average, use_buffers=True)
    if cfg.device.compile:  # after the EMA's copy: a copy of a compiled module would run the original's weights
        model.generator.compile()
        model.discriminator.compile()
    g_opt = make_adam(model.generator.parameters(), cfg.train.g_lr, cfg.train.g_betas)
    d_opt = make_adam(model.discriminator.parameters(), cfg.train.d_lr, cfg.train.d_betas)
    schedulers = []
    if cfg.train.lr_schedule == "linear":  # SNGAN's decay to 0 over train.steps, one step per generator update
        schedulers = [LambdaLR(optimizer, linear_decay(cfg.train.steps)) for optimizer in (g_opt, d_opt)]
    joint = not model.discriminator.has_batch_statistics
    return GAN(model=model, loss=build(cfg.loss, "loss"), regularizers=regularizers, augment=augment, g_opt=g_opt,
               d_opt=d_opt, precision=cfg.device.precision, joint=joint, ema=ema, schedulers=schedulers,
               runtime=runtime)  # fmt: skip


def ema_average(decay: float, rampup: float) -> Callable:
    """AveragedModel's update: averaged <- d * averaged + (1 - d) * current, with d = `decay`.

    With `rampup` > 0 the EMA spans at most that share of the updates so far: d = min(decay, 1 - 1 / (rampup * t))
    after t updates (StyleGAN's ema_rampup, in decay form; TensorFlow's num_updates warm-up is about rampup 0.11).
    Without it, a decay of 0.9995 still holds 61% of the initial generator after 1,000 steps, so the early samples
    of a short run show mostly noise. d is computed on the device, so the update needs no sync, and applied in one
    pass over the weights like the constant one.
    """

    @torch.no_grad()
    def update(averaged: list[Tensor], current: list[Tensor], updates: Tensor) -> None:
        if not torch.is_floating_point(averaged[0]):  # integer buffers (BatchNorm's batch counter) are not averaged
            torch._foreach_copy_(averaged, current)
        elif rampup > 0:
            weight = 1 - (1 - 1 / (rampup * updates)).clamp(0.0, decay)
            # the device weight once per tensor: a lone tensor would be read back to the host (a sync per step), and
            # sub, mul and add instead (three passes and a temporary the size of G) cost best_mlp_mnist 10% of its
            # steps/s on a 2-core CPU
            torch._foreach_lerp_(averaged, current, [weight] * len(averaged))
        else:
            torch._foreach_lerp_(averaged, current, 1 - decay)

    return update


def joint_labels(real_labels: Tensor | None, fake_labels: Tensor | None) -> Tensor | None:
    """The labels of real and fake batches concatenated, for one joint D forward; None unless both have labels."""
    if real_labels is None or fake_labels is None:
        return None
    return torch.cat([real_labels, fake_labels])


def discriminator_step(
    gan: GAN,
    real: Tensor,
    real_labels: Tensor | None,
    z: Tensor,
    fake_labels: Tensor | None,
    keep_graph: bool,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One discriminator update on (`real`, `real_labels`) and (G(z, `fake_labels`), `fake_labels`).

    Returns the fake batch (with G's graph if `keep_graph`) and the step's statistics.
    """
    if gan.model.channels_last:
        real = real.contiguous(memory_format=torch.channels_last)
    discriminator = gan.discriminator
    with autocast(real.device, gan.precision):
        with torch.set_grad_enabled(keep_graph):
            fake = gan.generator(z, fake_labels)
        if gan.joint:
            both = gan.judge(torch.cat([real, fake.detach()]), joint_labels(real_labels, fake_labels))
            real_outputs, fake_outputs = both.split(real.shape[0])
        else:
            real_outputs = gan.judge(real, real_labels)
            fake_outputs = gan.judge(fake.detach(), fake_labels)
        real_logits, real_terms = discriminator.split_outputs(real_outputs, real_labels)
        fake_logits, fake_terms = discriminator.split_outputs(fake_outputs, fake_labels)
        d_loss = gan.loss.d_loss(real_logits.float(), fake_logits.float())
        # the model's own terms (AC-GAN's class loss, on real and fake): none for most models
        terms = {name: real_terms[name] + fake_terms[name] for name in real_terms}
        step = DiscriminatorStep(real, fake.detach(), real_labels, fake_labels, real_logits, fake_logits,
                                 gan.logits_of, gan.d_updates, gan.runtime)  # fmt: skip
        penalties = {name: value for r in gan.regularizers for name, value in r.penalty(step).items()}
    gan.d_opt.zero_grad(set_to_none=True)
    (d_loss + sum(terms.values()) + sum(penalties.values())).backward()
    gan.runtime.average_gradients(discriminator)  # across processes; nothing when training alone
    gan.d_opt.step()
    for regularizer in gan.regularizers:
        regularizer.after_step(discriminator)
    gan.d_updates += 1
    # named to sort after Loss/ and Metrics/, so TensorBoard shows the losses and scores first
    stats = {"Loss/D": d_loss, "Output/D_real": real_logits.mean(), "Output/D_fake": fake_logits.mean()}
    stats.update({f"Loss/D_{name}": value for name, value in terms.items()})
    stats.update({f"Regularizer/{name}": value for name, value in penalties.items()})
    stats.update(gan.augment.observe(real_logits, gan.runtime))  # ADA's p and r_t; nothing for the others
    return fake, stats


def generator_step(gan: GAN, fake: Tensor, fake_labels: Tensor | None, real: Tensor,
                   real_labels: Tensor | None) -> dict[str, Tensor]:  # fmt: skip
    """One generator update on the last discriminator step's fake batch and its labels, as the DCGAN reference does.

    D's parameters are frozen for the backward pass: G's update needs gradients through D, not of D's weights.
    A relativistic loss also gets D's logits on the last real batch, without a graph.
    """
    discriminator = gan.discriminator
    discriminator.requires_grad_(False)
    with autocast(fake.device, gan.precision):
        logits, terms = discriminator.split_outputs(gan.judge(fake, fake_labels), fake_labels)
        real_logits = None
        if gan.loss.relativistic:
            with torch.no_grad():
                real_logits = discriminator.split_outputs(gan.judge(real, real_labels), real_labels)[0].float()
        g_loss = gan.loss.g_loss(logits.float(), real_logits)
    gan.g_opt.zero_grad(set_to_none=True)
    (g_loss + sum(terms.values())).backward()
    discriminator.requires_grad_(True)
    gan.runtime.average_gradients(gan.generator)  # D has no gradients here: it is not all-reduced
    gan.g_opt.step()
    return {"Loss/G": g_loss} | {f"Loss/G_{name}": value for name, value in terms.items()}


def train_step(gan: GAN, batches, batch_size: int, d_steps: int) -> dict[str, Tensor]:
    """`d_steps` discriminator updates, each on a fresh real and noise batch, then one generator update.

    Returns the step's statistics as device tensors: reading them is left to the caller, so no step syncs.
    batch_size: the global batch; a process that shares the run with others draws it whole and keeps its slice.
    """
    for d_step in range(d_steps):
        real, real_labels = gan.runtime.shard(*batches.next(batch_size))  # already on the training device
        z, fake_labels = gan.runtime.shard(*gan.model.sample_latent(batch_size, real.device))
        fake, d_stats = discriminator_step(gan, real, real_labels, z, fake_labels, keep_graph=d_step == d_steps - 1)
    g_stats = generator_step(gan, fake, fake_labels, real, real_labels)
    for scheduler in gan.schedulers:
        scheduler.step()
    if gan.ema is not None:
        gan.ema.update_parameters(gan.model.generator)
    return d_stats | g_stats


@torch.no_grad()
def sample_images(generator: torch.nn.Module, noise: Tensor, labels: Tensor | None = None) -> Tensor:
    """Generator output for `noise` and `labels` in eval mode (running BatchNorm statistics), changing no state."""
    was_training = generator.training
    generator.eval()
    images = generator(noise, labels)
    generator.train(was_training)
    return images


def generators(gan: GAN) -> list[tuple[str, torch.nn.Module]]:
    """The generators to sample and evaluate, with the suffix of their tags: G (""), and its EMA ("_ema")."""
    return [("", gan.model.generator)] + ([("_ema", gan.ema.module)] if gan.ema is not None else [])
