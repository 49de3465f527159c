"""Checkpoints: everything needed to continue a run exactly, written atomically with the previous one kept."""

import logging
import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from ganlab.device import rng_state, set_rng_state
from ganlab.errors import CheckpointError
from ganlab.step import GAN

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"


def save_checkpoint(run_dir: Path, state: dict) -> Path:
    """Write `state` to a temporary file, keep the current checkpoint as the previous one, then rename into place."""
    path, previous, tmp = run_dir / CHECKPOINT, run_dir / PREVIOUS, run_dir / (CHECKPOINT + ".tmp")
    torch.save(state, tmp)
    if path.exists():
        os.replace(path, previous)
    os.replace(tmp, path)
    return path


def _read(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many kinds for a damaged file
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(error).__name__}).") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"checkpoint {path} is not a ganlab checkpoint.")
    return state


def has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / CHECKPOINT).exists() or (run_dir / PREVIOUS).exists()


def load_checkpoint(run_dir: Path) -> dict:
    """The newest readable checkpoint in `run_dir`; a corrupt one falls back to the previous with a warning."""
    path, previous = run_dir / CHECKPOINT, run_dir / PREVIOUS
    try:
        return _read(path) if path.exists() else _read(previous)
    except CheckpointError as error:
        if not (path.exists() and previous.exists()):
            raise CheckpointError(
                f"{error.args[0][:-1]} and there is no previous one: delete it to start over, "
                f"or set hydra.run.dir to another folder."
            ) from None
        log.warning("%s Falling back to %s.", error.args[0][:-1] + ";", previous.name)
        try:
            return _read(previous)
        except CheckpointError:
            raise CheckpointError(
                f"both {path} and {previous} are unreadable: delete them to start over, "
                f"or set hydra.run.dir to another folder."
            ) from None


def training_state(step: int, seconds: float, gan: GAN, fixed_noise: torch.Tensor, cfg: DictConfig) -> dict:
    """Everything `restore` needs to continue bit for bit: weights, optimisers, EMA, RNG states, config."""
    return {
        "step": step,
        "seconds": seconds,
        "model": gan.model.state_dict(),
        "g_opt": gan.g_opt.state_dict(),
        "d_opt": gan.d_opt.state_dict(),
        "ema": gan.ema.state_dict() if gan.ema is not None else None,
        "fixed_noise": fixed_noise.cpu(),
        "rng": rng_state(),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def restore(state: dict, gan: GAN, run_dir: Path) -> tuple[int, float, torch.Tensor]:
    """Load `state` into `gan` and the RNGs; returns the step, the training seconds so far and the fixed noise."""
    try:
        gan.model.load_state_dict(state["model"])
        gan.g_opt.load_state_dict(state["g_opt"])
        gan.d_opt.load_state_dict(state["d_opt"])
        if gan.ema is not None:
            gan.ema.load_state_dict(state["ema"])
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError):
        raise CheckpointError(
            f"the checkpoint in {run_dir} was written by a different model or optimiser config: resume "
            f"with the run's own config ({run_dir / 'config.yaml'}) or set hydra.run.dir to a new folder."
        ) from None
    set_rng_state(state["rng"])
    return state["step"], state["seconds"], state["fixed_noise"]
