"""Typed schema of the top-level config, registered in Hydra's ConfigStore, and the start-up checks on its values.

The swappable parts (`model`, `loss`, `regularizer`, each `penalty`, `augment`, `dataset`) are built with
`hydra.utils.instantiate` from their `_target_`, and their constructors check their own arguments. The fixed
sections below are typed here, so a wrong type fails at composition and a wrong range fails in `validate` before
anything is built or written.
"""

import difflib
import importlib.resources
import inspect
import itertools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import MISSING, DictConfig, OmegaConf

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
    patience: int = 0  # stop after this many evaluations without a better eval.objective (early_stopped); 0 = never
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
    features: str = "auto"  # inception (torch-fidelity), net (the dataset's small net); auto = inception on cifar10
    reference: str = "auto"  # the split samples are compared with: train, test; auto = train for inception, else test
    inception_weights: str | None = None  # torch-fidelity's InceptionV3 weights file; None = download once (torch.hub)
    stats_dir: str | None = None  # where Inception reference statistics are cached; None = <dataset.root>/fid_stats


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
    penalty: Any = field(default_factory=dict)  # penalties by name (r1, r2, lecam), each with its _target_
    augment: Any = MISSING
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
FEATURES = ("auto", "net", "inception")
REFERENCES = ("auto", "train", "test")
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
    ("train.patience", _non_negative_int, "an integer >= 0, 0 = off"),
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
    ("eval.features", lambda v: v in FEATURES, f"one of {list(FEATURES)}"),
    ("eval.reference", lambda v: v in REFERENCES, f"one of {list(REFERENCES)}"),
    ("device.type", lambda v: v in DEVICE_TYPES, f"one of {list(DEVICE_TYPES)}"),
    ("device.precision", lambda v: v in PRECISIONS, f"one of {list(PRECISIONS)}"),
    ("device.threads", lambda v: v is None or _positive_int(v), "null or an integer >= 1"),
]


def check_value(key: str, value) -> None:
    """Reject `value` of `key` (one of RULES') with one sentence naming the key, the value and what is allowed."""
    check, allowed = next((check, allowed) for rule, check, allowed in RULES if rule == key)
    if not check(value):
        raise ConfigError(f"{key}={value} is not allowed: it must be {allowed}.")


def validate(cfg: DictConfig) -> None:
    """Reject the first out-of-range value with one sentence naming the key, the value and what is allowed."""
    for key, _, _ in RULES:
        section, name = key.split(".")
        check_value(key, cfg[section][name])
    if cfg.train.patience and not (cfg.eval.enabled and (cfg.eval.every or cfg.eval.times)):
        raise ConfigError(
            f"train.patience={cfg.train.patience} counts evaluations, and this run makes none during training "
            f"(eval.enabled={cfg.eval.enabled}, eval.times={cfg.eval.times}): turn them on, or drop train.patience."
        )


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


PATH_KEYS = ("root", "test_root")  # dataset keys that name folders, saved absolute so a run is read from anywhere


def absolute_paths(cfg: DictConfig) -> None:
    """Make `dataset.root` and `dataset.test_root` absolute (and expand ~): relative to the folder the command runs in,
    which `ganlab-eval RUN` and `ganlab-sample RUN` need not share."""
    for key in PATH_KEYS:
        value = OmegaConf.select(cfg, f"dataset.{key}", throw_on_missing=False)
        if isinstance(value, str):
            cfg.dataset[key] = os.path.abspath(os.path.expanduser(value))


def _flat_keys(node, prefix: str = "") -> set[str]:
    """The dotted keys of a nested dict, a list's entries too: {"train.steps", "train.betas", "train.betas.0", ...}."""
    if isinstance(node, dict):
        return {key for name, value in node.items() for key in _flat_keys(value, f"{prefix}{name}.")}
    entries = enumerate(node) if isinstance(node, list) else []
    return {prefix[:-1]} | {key for index, value in entries for key in _flat_keys(value, f"{prefix}{index}.")}


def _constructor_keys(target: str) -> set[str]:
    """The keyword arguments a `_target_` class takes, through the `**options` it passes to its parents."""
    try:
        klass = get_class(target)
    except (ImportError, AttributeError, ValueError):
        return set()
    names = set()
    for parent in klass.__mro__:
        parameters = inspect.signature(parent.__init__).parameters.values()
        names |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return names


def known_keys(config_dirs: list[Path]) -> set[str]:
    """Every key ganlab's config can hold: the typed sections' fields, and for each group (model, loss, ...) the keys
    of its options' YAML files in `config_dirs` and the arguments of their `_target_` classes."""
    keys = _flat_keys(OmegaConf.to_container(OmegaConf.structured(Config), resolve=False))
    for folder in config_dirs:
        for path in folder.glob("*/**/*.yaml"):  # group options: model/mlp.yaml, and nested groups' too
            option = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
            option.pop("defaults", None)
            header = "".join(itertools.takewhile(lambda line: line.startswith("#"), path.read_text().splitlines()))
            group = path.parent.relative_to(folder).as_posix().replace("/", ".")
            prefix = "" if "@package _global_" in header else f"{group}."
            keys |= {prefix + key for key in _flat_keys(option)}
            if isinstance(option.get("_target_"), str):
                keys |= {prefix + key for key in _constructor_keys(option["_target_"])}
    return keys


def _config_dirs(overrides: list) -> list[Path]:
    """The folders whose groups the command composes: ganlab's conf/ and those `hydra.searchpath` adds."""
    folders = [CONF_DIR]
    for override in overrides:
        if override.key_or_group == "hydra.searchpath" and isinstance(override.value(), list):
            for entry in map(str, override.value()):
                if entry.startswith("file://"):
                    folders.append(Path(entry.removeprefix("file://")))
                elif entry.startswith("pkg://"):
                    folders.append(Path(str(importlib.resources.files(entry.removeprefix("pkg://")))))
    if not all(folder.is_dir() for folder in folders):  # e.g. a package spread over several folders
        raise LookupError("a config folder on the search path is not one folder")
    return folders


def check_command_line(arguments: list[str]) -> None:
    """Refuse an override of a key ganlab's config does not have, with or without `+`, naming the nearest key.

    Hydra would suggest `+train.stepz=100` for a typo, and then train a run that ignores the key. Group choices
    (`loss=foo`, whose options Hydra lists), Hydra's own keys, and commands with another primary config are left to
    Hydra, and so is an override it cannot parse.
    """
    flags = [argument.split("=")[0] for argument in arguments]
    if any(flag in ("-cp", "--config-path", "-cn", "--config-name", "-sc", "--shell-completion") for flag in flags):
        return
    items, extra_dirs = [], []
    for position, argument in enumerate(arguments):
        if flags[position] in ("-cd", "--config-dir"):
            extra_dirs.append(Path(argument.split("=", 1)[1] if "=" in argument else arguments[position + 1]))
        elif not argument.startswith("-") and ("=" in argument or argument.startswith("~")):
            items.append(argument)
    if any((folder / "config.yaml").exists() for folder in extra_dirs):  # the user's own primary config
        return
    try:
        overrides = OverridesParser.create().parse_overrides(items)
        config_dirs = _config_dirs(overrides) + extra_dirs
    except (HydraException, ModuleNotFoundError, TypeError, LookupError):
        return
    groups = {path.name for folder in config_dirs if folder.is_dir() for path in folder.iterdir() if path.is_dir()}
    keys = None
    for override in overrides:
        key = override.key_or_group
        hydra_own = key.split("/")[0].split(".")[0] == "hydra"
        if override.package is not None or hydra_own or "/" in key or key in groups:  # Hydra's, or a group choice
            continue
        keys = keys if keys is not None else known_keys(config_dirs)
        if key in keys:
            continue
        section = key.split(".")[0] + "."
        candidates = sorted(k for k in keys if k.startswith(section)) if "." in key else sorted(keys - groups)
        nearest = difflib.get_close_matches(key, candidates or sorted(keys - groups), n=1, cutoff=0.5)
        hint = f"did you mean {nearest[0]}?" if nearest else "`ganlab-train --help` lists every key."
        raise ConfigError(f"{key} is not a key of ganlab's config, with or without +: {hint}")
