"""Typed schema of the top-level config, registered in Hydra's ConfigStore, and the start-up checks on its values.

The swappable parts (`model`, `loss`, `regularizer`, `dataset`) are built with `hydra.utils.instantiate` from
their `_target_`, and their constructors check their own arguments. The fixed sections below are typed here, so a
wrong type fails at composition and a wrong range fails in `validate` before anything is built or written.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import MISSING, DictConfig

from ganlab.errors import ConfigError, GanlabError


@dataclass
class TrainConfig:
    steps: int = 5000  # generator updates to run; each has `d_steps` discriminator updates before it
    max_seconds: float | None = None  # wall-clock budget in seconds, then save and stop cleanly; None = no limit
    batch_size: int = 64  # images per discriminator step (real and fake each)
    d_steps: int = 1  # discriminator updates per generator update
    lr: float = 2e-4  # learning rate of both optimisers, unless g_lr / d_lr say otherwise
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])  # Adam betas of both, unless overridden
    g_lr: float = "${train.lr}"  # type: ignore[assignment]  # generator Adam learning rate
    d_lr: float = "${train.lr}"  # type: ignore[assignment]  # discriminator Adam learning rate
    g_betas: list[float] = "${train.betas}"  # type: ignore[assignment]  # generator Adam betas
    d_betas: list[float] = "${train.betas}"  # type: ignore[assignment]  # discriminator Adam betas
    ema_decay: float = 0.0  # exponential moving average of G's weights, sampled beside G; 0 = off
    checkpoint_every: int = 1000  # steps between checkpoints; 0 = only at the end
    resume: bool = True  # continue the run dir's checkpoint, skip a finished run; false = error if it has one


@dataclass
class LogConfig:
    every: int = 100  # steps between scalar reads (each is one host-device sync) and progress updates
    sample_every: int = 500  # steps between fixed-noise sample grids; 0 = only at the end
    num_samples: int = 64  # images in each sample grid
    progress: bool = True  # show a progress bar on an interactive terminal


@dataclass
class EvalConfig:
    enabled: bool = True  # score samples (FID/KID/coverage, or mode metrics for toy data); false = skip
    every: int = 0  # steps between evaluations; 0 = only at the end
    num_samples: int = 10000  # samples per evaluation, per generator (raw and EMA)
    objective: str = "fid"  # final metric the job returns to a sweeper (optuna); diverged or failed jobs give +inf


@dataclass
class DeviceConfig:
    type: str = "auto"  # auto (cuda, then mps, then cpu), cpu, cuda or mps
    precision: str = "fp32"  # fp32, or bf16 autocast
    threads: int | None = None  # CPU threads for torch; None = torch's default
    compile: bool = False  # torch.compile G and D (slow first steps, faster after)


@dataclass
class Config:
    model: Any = MISSING
    loss: Any = MISSING
    regularizer: Any = MISSING
    dataset: Any = MISSING
    device: DeviceConfig = field(default_factory=DeviceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0  # seeds torch, numpy and python's random for the whole run


def register_configs() -> None:
    """Make the schema available to `conf/config.yaml` as `schema`."""
    ConfigStore.instance().store(name="schema", node=Config)


PRECISIONS = ("fp32", "bf16")
DEVICE_TYPES = ("auto", "cpu", "cuda", "mps")


def _positive_int(value) -> bool:
    return isinstance(value, int) and value >= 1


def _non_negative_int(value) -> bool:
    return isinstance(value, int) and value >= 0


def _positive_number(value) -> bool:
    return isinstance(value, (int, float)) and value > 0


def _betas(value) -> bool:
    return len(value) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in value)


# (key, check, what is allowed): the order is the order errors are reported in.
RULES = [
    ("train.steps", _positive_int, "an integer >= 1"),
    ("train.batch_size", _positive_int, "an integer >= 1"),
    ("train.d_steps", _positive_int, "an integer >= 1"),
    ("train.g_lr", _positive_number, "a number > 0"),
    ("train.d_lr", _positive_number, "a number > 0"),
    ("train.g_betas", _betas, "two numbers in [0, 1)"),
    ("train.d_betas", _betas, "two numbers in [0, 1)"),
    ("train.max_seconds", lambda v: v is None or _positive_number(v), "null or a number of seconds > 0"),
    ("train.checkpoint_every", _non_negative_int, "an integer >= 0"),
    ("train.ema_decay", lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "a number in [0, 1), 0 = off"),
    ("log.every", _positive_int, "an integer >= 1"),
    ("log.sample_every", _non_negative_int, "an integer >= 0"),
    ("log.num_samples", _positive_int, "an integer >= 1"),
    ("eval.every", _non_negative_int, "an integer >= 0"),
    ("eval.num_samples", lambda v: isinstance(v, int) and v >= 2, "an integer >= 2"),
    ("device.type", lambda v: v in DEVICE_TYPES, f"one of {list(DEVICE_TYPES)}"),
    ("device.precision", lambda v: v in PRECISIONS, f"one of {list(PRECISIONS)}"),
    ("device.threads", lambda v: v is None or _positive_int(v), "null or an integer >= 1"),
]


def validate(cfg: DictConfig) -> None:
    """Reject the first out-of-range value with one sentence naming the key, the value and what is allowed."""
    for key, check, allowed in RULES:
        section, name = key.split(".")
        value = cfg[section][name]
        if not check(value):
            raise ConfigError(f"{key}={value} is not allowed: it must be {allowed}.")


def build(node: DictConfig, key: str, **kwargs):
    """`instantiate(node)`: a constructor's own user error surfaces as itself, any other as one sentence on `key`."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, GanlabError):
            raise cause from None
        raise ConfigError(
            f"{key} could not be built from {node._target_} ({cause}): check the {key}.* values."
        ) from None
