"""Checkpoints: everything needed to continue a run exactly, written atomically with the previous one kept."""

import logging
import os
from pathlib import Path

import torch

from ganlab.errors import CheckpointError

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
