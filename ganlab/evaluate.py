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
    generator: torch.nn.Module, model: GANModel, n: int, seed: int, batch_size: int = 1000
) -> tuple[Tensor, Tensor | None]:
    """n samples of `generator` in eval mode and the labels they were asked for (None if unconditional), from latent
    vectors seeded by `seed`, without touching the training RNG."""
    device = next(generator.parameters()).device
    devices = [device] if device.type == "cuda" else []
    was_training = generator.training
    generator.eval()
    samples, labels = [], []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for chunk in torch.arange(n).split(batch_size):
            z, y = model.sample_latent(len(chunk), device)
            samples.append(generator(z, y))
            labels.append(y)
    generator.train(was_training)
    return torch.cat(samples), (None if labels[0] is None else torch.cat(labels))


def evaluate(named_generators, model: GANModel, evaluator, num_samples: int, seed: int) -> dict[str, float]:
    """`<name><suffix>` scores for each (suffix, generator): "" for G, "_ema" for its EMA (see `step.generators`)."""
    scores: dict[str, float] = {}
    for suffix, generator in named_generators:
        for name, value in evaluator(*generate(generator, model, num_samples, seed)).items():
            scores[f"{name}{suffix}"] = float(value)
    return scores
