"""Checkpoints: everything needed to continue a run exactly, written atomically with the previous one kept.

A checkpoint holds only tensors, numbers, strings and plain containers (the config as YAML text, the RNG states as
tensors), so it is read with `torch.load(weights_only=True)`: a run folder from someone else cannot run code when it
is resumed, sampled or evaluated. Checkpoints of older ganlab versions pickled numpy arrays, which that loader
refuses; ganlab/convert_checkpoint.py rewrites them once, for files the user trusts.
"""

import logging
import os
import pickle
import re
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ganlab.device import rng_state, set_rng_state
from ganlab.errors import CheckpointError
from ganlab.runfolder import BEST, CHECKPOINT, PREVIOUS
from ganlab.step import GAN

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 1: before safe checkpoints (no "format_version" key, pickled numpy RNG state, config as a dict)
CONVERTER = "python -m ganlab.convert_checkpoint"

# what a format-1 checkpoint refers to beyond torch's own safe types: numpy's RNG state array (numpy 1 and 2 names)
FORMAT_1_GLOBALS = {
    "numpy.ndarray",
    "numpy.dtype",
    "numpy.dtypes.UInt32DType",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
}


class DamagedCheckpoint(CheckpointError):
    """A file that is not a readable checkpoint (truncated, overwritten): the one kind that falls back to the previous.

    A file refused as unsafe or written by an older ganlab is a CheckpointError but not this: using the previous
    checkpoint instead would hide that someone put code in the run folder (and the previous file is no more
    trustworthy), or would only meet the same old format again.
    """


class OlderCheckpoint(CheckpointError):
    """A checkpoint in format 1, which ganlab/convert_checkpoint.py rewrites; like an unsafe one, it does not fall
    back to the previous checkpoint (which is as old)."""


def save_checkpoint(run_dir: Path, state: dict) -> Path:
    """Write `state` to a temporary file, keep the current checkpoint as the previous one, then rename into place."""
    path, previous, tmp = run_dir / CHECKPOINT, run_dir / PREVIOUS, run_dir / (CHECKPOINT + ".tmp")
    torch.save(state, tmp)
    if path.exists():
        os.replace(path, previous)
    os.replace(tmp, path)
    return path


def save_best(run_dir: Path, state: dict) -> Path:
    """Write `state` as the run's best checkpoint (checkpoint.best.pt), atomically: aside, then renamed into place."""
    path, tmp = run_dir / BEST, run_dir / (BEST + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def unsafe_globals(path: Path) -> list[str] | None:
    """The functions and classes the pickle in `path` would call that `weights_only` does not allow, found by reading
    its opcodes without running them; None when `path` is not a torch zip file at all."""
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip written by torch.save, a damaged one (torch raises several kinds), or torch < 2.5
        return None


def _older(path: Path) -> OlderCheckpoint:
    return OlderCheckpoint(
        f"checkpoint {path} was written by an older ganlab, in a format that can run code when loaded: if you "
        f"trust it, convert it once with `{CONVERTER} {path.parent}` and run again."
    )


def _refusal(path: Path, error: Exception) -> CheckpointError:
    """Why `weights_only` refused `path`: written by an older ganlab, holding code, or damaged."""
    names = unsafe_globals(path)
    if names is None:  # not a zip: only a legacy torch.save file can still name a global, in the refusal's text
        names = re.findall(r"GLOBAL ([\w.]+)", str(error))
    if names and set(names) <= FORMAT_1_GLOBALS:
        return _older(path)
    if names:
        return CheckpointError(
            f"checkpoint {path} was refused and nothing in it was run: besides tensors it holds code "
            f"({', '.join(names[:3])}), which a ganlab checkpoint never does; delete it, or set hydra.run.dir to "
            f"another folder."
        )
    return DamagedCheckpoint(f"checkpoint {path} is unreadable ({type(error).__name__}).")


def read_checkpoint(path: Path) -> dict:
    """The checkpoint in the file `path`, loaded with `weights_only=True`, so that nothing in it can run."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # weights_only refused something, or the bytes are not a pickle
        raise _refusal(path, error) from None
    except Exception as error:  # torch raises many kinds for a damaged file
        raise DamagedCheckpoint(f"checkpoint {path} is unreadable ({type(error).__name__}).") from None
    if not isinstance(state, dict) or "step" not in state:
        raise DamagedCheckpoint(f"checkpoint {path} is not a ganlab checkpoint.")
    version = state.get("format_version", 1)  # format 1 had no version key
    if version == 1:
        raise _older(path)
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format {version}, which this ganlab (format {FORMAT_VERSION}) cannot read: "
            f"update ganlab, or set hydra.run.dir to another folder."
        )
    return state


def load_checkpoint(run_dir: Path) -> dict:
    """The newest readable checkpoint in `run_dir`; a damaged one falls back to the previous with a warning.

    Only a damaged file falls back (see `DamagedCheckpoint`); one refused as unsafe or old raises at once.
    """
    path, previous = run_dir / CHECKPOINT, run_dir / PREVIOUS
    try:
        return read_checkpoint(path) if path.exists() else read_checkpoint(previous)
    except DamagedCheckpoint as error:
        if not (path.exists() and previous.exists()):
            raise CheckpointError(
                f"{error.args[0][:-1]} and there is no previous one: delete it to start over, "
                f"or set hydra.run.dir to another folder."
            ) from None
        log.warning("%s Falling back to %s.", error.args[0][:-1] + ";", previous.name)
        try:
            return read_checkpoint(previous)
        except DamagedCheckpoint:
            raise CheckpointError(
                f"both {path} and {previous} are unreadable: delete them to start over, "
                f"or set hydra.run.dir to another folder."
            ) from None


def training_state(
    step: int,
    seconds: float,
    gan: GAN,
    fixed_noise: torch.Tensor,
    fixed_labels: torch.Tensor | None,
    cfg: DictConfig,
    batches,
    watch: dict | None = None,
) -> dict:
    """Everything `restore` needs to continue bit for bit: weights, optimisers, EMA, RNG states, the fixed noise and
    its labels (None for an unconditional model), the data stream's position, the objective's best value so far
    (`watch`, ganlab.watch), and the config (as YAML text, for people: runs compare configs with their
    config.yaml)."""
    return {
        "format_version": FORMAT_VERSION,
        "step": step,
        "seconds": seconds,
        "model": gan.model.state_dict(),
        "num_classes": gan.model.num_classes,  # what a conditional model was built for (0 = unconditional)
        "g_opt": gan.g_opt.state_dict(),
        "d_opt": gan.d_opt.state_dict(),
        "ema": gan.ema.state_dict() if gan.ema is not None else None,
        "schedulers": [scheduler.state_dict() for scheduler in gan.schedulers],
        "regularizers": [regularizer.state_dict() for regularizer in gan.regularizers],  # LeCam's averages
        "augment": gan.augment.state_dict(),  # ADA's p
        "d_updates": gan.d_updates,  # lazy penalties count D updates
        "fixed_noise": fixed_noise.cpu(),
        "fixed_labels": fixed_labels.cpu() if fixed_labels is not None else None,
        "rng": rng_state(),
        "batches": batches.state_dict(),
        "config": OmegaConf.to_yaml(cfg, resolve=True),
        "watch": watch,
    }


def restore(state: dict, gan: GAN, run_dir: Path, batches) -> tuple[int, float, torch.Tensor, torch.Tensor | None]:
    """Load `state` into `gan`, the RNGs and `batches`; returns the step, the training seconds so far, the fixed
    noise and its labels."""
    try:
        gan.model.load_state_dict(state["model"])
        gan.g_opt.load_state_dict(state["g_opt"])
        gan.d_opt.load_state_dict(state["d_opt"])
        if gan.ema is not None:
            gan.ema.load_state_dict(state["ema"])
        schedules = state.get("schedulers", [])  # none before learning-rate schedules existed: all were constant
        if len(schedules) != len(gan.schedulers):
            raise ValueError("the learning-rate schedule differs")
        for scheduler, schedule in zip(gan.schedulers, schedules, strict=True):
            scheduler.load_state_dict(schedule)
        # none of these before penalties and augmentation existed: their states were all empty
        regularizers = state.get("regularizers", [{}] * len(gan.regularizers))
        if len(regularizers) != len(gan.regularizers):
            raise ValueError("the penalties differ")
        for regularizer, kept in zip(gan.regularizers, regularizers, strict=True):
            if kept:
                regularizer.load_state_dict(kept)
        if state.get("augment"):
            gan.augment.load_state_dict(state["augment"])
        gan.d_updates = state.get("d_updates", 0)
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError):
        raise CheckpointError(
            f"the checkpoint in {run_dir} was written by a different model or optimiser config: resume "
            f"with the run's own config ({run_dir / 'config.yaml'}) or set hydra.run.dir to a new folder."
        ) from None
    set_rng_state(state["rng"])
    batches.load_state_dict(state["batches"])
    # checkpoints written before labels existed have no "fixed_labels": their models were all unconditional
    return state["step"], state["seconds"], state["fixed_noise"], state.get("fixed_labels")
