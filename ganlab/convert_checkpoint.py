"""Rewrite checkpoints of an older ganlab (format 1) in the current format, which loads without running code.

    python -m ganlab.convert_checkpoint RUN_DIR_OR_FILE

A run dir converts its checkpoint.pt and checkpoint.prev.pt. Format-1 checkpoints pickled numpy's RNG state, so
reading one takes `torch.load(weights_only=False)`, which runs whatever the file asks for: convert only checkpoints
you trust (your own runs). The script says so before it loads each file, and first refuses any file that asks for
more than the numpy types format 1 holds. Each file is replaced atomically; the original stays beside it as
`<name>.v1.bak`. The converted run resumes bit for bit, except on the streaming data path, whose format-1
checkpoints kept no position in the data: that stream starts again from its beginning.
"""

import os
import shutil
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ganlab.checkpoint import (
    CHECKPOINT,
    FORMAT_1_GLOBALS,
    FORMAT_VERSION,
    PREVIOUS,
    OlderCheckpoint,
    read_checkpoint,
    unsafe_globals,
)
from ganlab.device import plain_rng_state
from ganlab.errors import CheckpointError, GanlabError

USAGE = "usage: python -m ganlab.convert_checkpoint RUN_DIR_OR_FILE"


def checkpoint_files(target: Path) -> list[Path]:
    """The checkpoint files `target` names: itself, or a run dir's checkpoint.pt and checkpoint.prev.pt."""
    if target.is_file():
        return [target]
    files = [target / name for name in (CHECKPOINT, PREVIOUS) if (target / name).is_file()]
    if not files:
        raise CheckpointError(f"{target} holds no {CHECKPOINT} or {PREVIOUS}: pass a run dir or a checkpoint file.")
    return files


def converted(old: dict) -> dict:
    """The format-1 state `old` in the current format: plain RNG states, the config as YAML, an empty data state."""
    rng = old["rng"]
    return old | {
        "format_version": FORMAT_VERSION,
        "rng": plain_rng_state(rng["python"], rng["numpy"], rng["torch"], rng.get("cuda")),  # cuda: only if it had one
        "config": OmegaConf.to_yaml(OmegaConf.create(old["config"])),
        "batches": {},  # format 1 kept no position in the data stream: the in-memory and toy paths need none
    }


def convert(path: Path) -> None:
    """Convert the checkpoint file `path` in place if it is in format 1, keeping the original as `<name>.v1.bak`."""
    try:
        read_checkpoint(path)
        print(f"{path}: already in format {FORMAT_VERSION}, left as it is")
        return
    except OlderCheckpoint:
        pass  # any other refusal (code besides numpy's types, a damaged file) propagates as its own sentence
    names = unsafe_globals(path)
    if names is None or not set(names) <= FORMAT_1_GLOBALS:  # a torch < 2.5 cannot list them: be safe
        raise CheckpointError(
            f"{path} was not converted: it could not be inspected without loading it (that takes torch >= 2.5), "
            f"so it might hold code; update torch and run this again."
        )
    print(f"{path}: trusting this file, loading it with weights_only=False (format 1 needs it)", file=sys.stderr)
    state = converted(torch.load(path, map_location="cpu", weights_only=False))
    tmp, backup = path.with_name(path.name + ".convert.tmp"), path.with_name(path.name + ".v1.bak")
    torch.save(state, tmp)
    read_checkpoint(tmp)  # the new file loads with weights_only=True, or it does not replace the old one
    shutil.copy2(path, backup)
    os.replace(tmp, path)
    print(f"{path}: converted to format {FORMAT_VERSION}; the original is {backup}")


def main(arguments: list[str]) -> int:
    if len(arguments) != 1 or arguments[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr)
        return 2
    try:
        for path in checkpoint_files(Path(arguments[0])):
            convert(path)
    except GanlabError as error:
        print(f"convert_checkpoint: error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
