"""Evaluation during training: sample the generators (raw and EMA) and score the samples with the dataset's metrics.

The dataset decides what its metrics are (`source.evaluator`): FID, KID and classifier metrics for images, mode
metrics for the 2-D mixtures. Samples come from a fixed seed in a forked RNG, so every evaluation scores the same
latent vectors (and labels) and training draws the same random numbers whether or not it evaluates. The evaluator is
called as `evaluator(samples, labels)`, with the labels the samples were asked for (None for an unconditional model).
"""

import torch
from torch import Tensor

from ganlab.models.base import GANModel


@torch.no_grad()
def generate(
    generator: torch.nn.Module,
    model: GANModel,
    n: int,
    seed: int,
    labels: Tensor | None = None,
    batch_size: int = 1000,
) -> tuple[Tensor, Tensor | None]:
    """n samples of `generator` in eval mode and the labels they were asked for, from latent vectors seeded by
    `seed`, without touching the training RNG.

    labels: the class of each sample; None = every class equally often (`GANModel.balanced_labels`), or None for
    an unconditional model.
    """
    device = next(generator.parameters()).device
    devices = [device] if device.type == "cuda" else []
    labels = model.balanced_labels(n, device) if labels is None else labels.to(device)
    was_training = generator.training
    generator.eval()
    samples = []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for chunk in torch.arange(n, device=device).split(batch_size):
            z, y = model.sample_latent(len(chunk), device, None if labels is None else labels[chunk])
            samples.append(generator(z, y))
    generator.train(was_training)
    return torch.cat(samples), labels


def evaluate(named_generators, model: GANModel, evaluator, num_samples: int, seed: int) -> dict[str, float]:
    """`<name><suffix>` scores for each (suffix, generator): "" for G, "_ema" for its EMA (see `step.generators`)."""
    scores: dict[str, float] = {}
    for suffix, generator in named_generators:
        for name, value in evaluator(*generate(generator, model, num_samples, seed)).items():
            scores[f"{name}{suffix}"] = float(value)
    return scores
