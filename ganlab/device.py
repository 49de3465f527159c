"""The training device, its precision and thread count, and seeding."""

import contextlib
import random

import numpy as np
import torch
from omegaconf import DictConfig

from ganlab.errors import ConfigError


def _mps_available() -> bool:
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def resolve_device(cfg: DictConfig) -> torch.device:
    """The torch device for `device.type`: auto picks cuda, then mps, then cpu; an unavailable one is an error."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if cfg.type == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    if cfg.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda was asked for, but torch sees no CUDA GPU here: use device=cpu or device=auto.")
    if cfg.type == "mps" and not _mps_available():
        raise ConfigError("device.type=mps was asked for, but MPS is not available here: use device=cpu.")
    return torch.device(cfg.type)


def autocast(device: torch.device, precision: str):
    """A context that runs the forward passes in bf16 when `precision` is bf16, and does nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) so a run is repeatable."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """Every random state the training loop draws from, for checkpoints."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` saved."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
