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
    """Every random state the training loop draws from, for checkpoints.

    Only tensors, numbers and strings, so a checkpoint loads with `torch.load(weights_only=True)`, which runs no code.
    """
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return plain_rng_state(random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda)


def plain_rng_state(python: tuple, numpy: tuple, cpu: torch.Tensor, cuda: list | None = None) -> dict:
    """`rng_state`'s form of the states that `random.getstate()`, `np.random.get_state()` and torch return.

    The converter of old checkpoints (ganlab/convert_checkpoint.py) uses it on the states those checkpoints pickled.
    """
    version, internal, gauss_next = python
    bit_generator, key, position, has_gauss, cached_gaussian = numpy
    state = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
        "numpy": {
            "bit_generator": str(bit_generator),
            "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),  # uint32 words; int64 holds them exactly
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": cpu,
    }
    if cuda is not None:
        state["cuda"] = list(cuda)
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` saved."""
    python, numpy = state["python"], state["numpy"]
    random.setstate((python["version"], tuple(python["internal"].tolist()), python["gauss_next"]))
    key = numpy["key"].numpy().astype(np.uint32)
    np.random.set_state((numpy["bit_generator"], key, numpy["position"], numpy["has_gauss"], numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
