"""Typed schema of the top-level config, registered in Hydra's ConfigStore, and the start-up checks on its values.

The swappable parts (`model`, `loss`, `regularizer`, `dataset`) are built with `hydra.utils.instantiate` from
their `_target_`, and their constructors check their own arguments. The fixed sections below are typed here, so a
wrong type fails at composition and a wrong range fails in `validate` before anything is built or written.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import MISSING, DictConfig

from ganlab.errors import ConfigError, GanlabError

log = logging.getLogger("ganlab")

# Keys that say how a run executes, not what it computes: they do not name its folder.
EXECUTION_KEYS = ("dataset.root", "dataset.download", "dataset.workers", "train.resume", "log.progress",
                  "device.threads")  # fmt: skip
# Key prefixes a continued run may change besides those: how long it trains, how it logs and scores, where it runs.
RESUMABLE_KEYS = EXECUTION_KEYS + ("train.steps", "train.max_seconds", "train.checkpoint_every", "log.", "eval.",
                                   "device", "dataset.in_memory", "dataset.memory_limit_mb")  # fmt: skip

_PACKAGE = Path(__file__).resolve().parent
# The config groups: shipped inside an installed package as ganlab/conf/ (pyproject maps the repository's top-level
# conf/ there); an editable install or a source checkout reads the repository's conf/ itself.
CONF_DIR = _PACKAGE / "conf" if (_PACKAGE / "conf").is_dir() else _PACKAGE.parent / "conf"


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
    lr_schedule: str = "constant"  # constant, or linear: both learning rates fall linearly to 0 at `steps`
    ema_decay: float = 0.0  # exponential moving average of G's weights, sampled beside G; 0 = off
    ema_rampup: float = 0.25  # the EMA spans at most this share of the updates so far; 0 = ema_decay from the start
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
    every: int = 0  # steps between evaluations during training; 0 = `times` evaluations spread over the run
    times: int = 10  # evaluations over the run (the last one final), by progress in steps or time; 0 = only the final
    num_samples: int = 10000  # samples of the final evaluation, per generator (raw and EMA)
    during_samples: int = 2000  # samples of the evaluations before the final one (at most num_samples)
    objective: str = "fid"  # final metric a job returns to a sweeper, minimised (higher-is-better ones negated)


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
LR_SCHEDULES = ("constant", "linear")
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
    ("train.lr_schedule", lambda v: v in LR_SCHEDULES, f"one of {list(LR_SCHEDULES)}"),
    ("train.ema_decay", lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "a number in [0, 1), 0 = off"),
    ("train.ema_rampup", lambda v: isinstance(v, (int, float)) and 0 <= v <= 1, "a number in [0, 1], 0 = off"),
    ("log.every", _positive_int, "an integer >= 1"),
    ("log.sample_every", _non_negative_int, "an integer >= 0"),
    ("log.num_samples", _positive_int, "an integer >= 1"),
    ("eval.every", _non_negative_int, "an integer >= 0"),
    ("eval.times", _non_negative_int, "an integer >= 0"),
    ("eval.num_samples", lambda v: isinstance(v, int) and v >= 2, "an integer >= 2"),
    ("eval.during_samples", lambda v: isinstance(v, int) and v >= 2, "an integer >= 2"),
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


def resolve_image_size(cfg: DictConfig) -> None:
    """Fill a null `dataset.image_size`: the dataset's native size, or the nearest size the model can build.

    So `model=dcgan dataset=mnist` trains at 32 px without the user knowing DCGAN's sizes; a size the user set is
    kept, and one the model cannot build stays the model's own one-sentence error.
    """
    if cfg.dataset.image_size is not None:
        return
    try:
        native = get_class(cfg.dataset._target_).native_size
        sizes = getattr(get_class(cfg.model._target_), "image_sizes", None)  # None: the model builds any size
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigError(
            f"dataset.image_size=null needs the dataset's native size ({type(error).__name__}: {error}): set "
            f"dataset.image_size, or check dataset._target_ and model._target_."
        ) from None
    size = native if sizes is None or native in sizes else min(sizes, key=lambda s: (abs(s - native), s))
    if size != native:
        log.info(
            "%s builds %s px images, not the dataset's %d: training at %d px (set dataset.image_size to choose)",
            cfg.model._target_.rsplit(".", 1)[-1], "/".join(map(str, sizes)), native, size,
        )  # fmt: skip
    cfg.dataset.image_size = size


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
