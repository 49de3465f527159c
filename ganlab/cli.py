"""`ganlab-sample` and `ganlab-eval`: draw samples from a finished (or running) run, and score runs or sample files.

    ganlab-sample <run_dir> n=10000 out=samples.npz weights=ema
    ganlab-eval <run_dir | samples.npz> [n=10000] [dataset.root=../shared/data]

Arguments after the first are `key=value`, as on the `ganlab-train` command line.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.optim.swa_utils import AveragedModel
from torchvision.utils import save_image

from ganlab.checkpoint import load_checkpoint
from ganlab.config import build
from ganlab.data import to_uint8
from ganlab.device import resolve_device
from ganlab.errors import CheckpointError, ConfigError, GanlabError
from ganlab.evaluate import evaluate, generate


def parse(arguments: list[str], defaults: dict[str, str], usage: str) -> tuple[str, dict[str, str]]:
    """The first argument and the `key=value` options after it, checked against `defaults`."""
    if not arguments or "=" in arguments[0] or arguments[0] in ("-h", "--help"):
        raise ConfigError(f"usage: {usage}")
    options = dict(defaults)
    for argument in arguments[1:]:
        key, _, value = argument.partition("=")
        if not _ or (key not in defaults and not key.startswith("dataset.")):
            raise ConfigError(f"{argument!r} is not an option: use key=value with a key from {sorted(defaults)}.")
        options[key] = value
    return arguments[0], options


def load_run(run_dir: Path, device_type: str):
    """The run's resolved config, its model with the checkpoint's weights, and its EMA generator (or None)."""
    if not (run_dir / "config.yaml").exists():
        raise ConfigError(f"{run_dir} is not a ganlab run dir: it has no config.yaml; pass the folder of a run.")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    device = resolve_device(OmegaConf.create({"type": device_type, "threads": None}))
    model = build(cfg.model, "model", channels=cfg.dataset.channels, image_size=cfg.dataset.image_size)
    state = load_checkpoint(run_dir)
    try:
        model.load_state_dict(state["model"])
        ema = None
        if state.get("ema") is not None:
            ema = AveragedModel(model.generator, use_buffers=True)
            ema.load_state_dict(state["ema"])
    except (RuntimeError, KeyError) as error:
        raise CheckpointError(f"the checkpoint in {run_dir} does not fit its config.yaml ({error}).") from None
    return cfg, model.to(device), (ema.module.to(device) if ema is not None else None)


def pick_generator(model, ema, weights: str) -> torch.nn.Module:
    if weights not in ("ema", "raw"):
        raise ConfigError(f"weights={weights!r} is not allowed: use ema or raw.")
    if weights == "ema" and ema is None:
        raise ConfigError("weights=ema, but this run has no EMA generator (train.ema_decay=0): use weights=raw.")
    return ema if weights == "ema" else model.generator


def sample_command(arguments: list[str]) -> None:
    usage = "ganlab-sample <run_dir> [n=10000] [out=samples.npz] [weights=ema|raw] [seed=0] [device=auto]"
    target, options = parse(arguments, {"n": "10000", "out": "samples.npz", "weights": "", "seed": "0",
                                        "device": "auto"}, usage)  # fmt: skip
    cfg, model, ema = load_run(Path(target), options["device"])
    weights = options["weights"] or ("ema" if ema is not None else "raw")
    samples = generate(pick_generator(model, ema, weights), model, int(options["n"]), int(options["seed"]))
    source = build(cfg.dataset, "dataset")
    out = Path(options["out"])
    arrays = {"config": np.array(json.dumps(OmegaConf.to_container(cfg))), "weights": np.array(weights)}
    if hasattr(source, "mode_metrics"):
        arrays["points"] = source.from_range(samples.cpu(), model.output_range).numpy()
    else:
        arrays["images"] = to_uint8(samples, model.output_range).cpu().numpy()
    np.savez_compressed(out, **arrays)
    save_image(source.picture(samples[:64], model.output_range), out.with_suffix(".png"))
    shape = arrays.get("images", arrays.get("points")).shape
    print(json.dumps({"out": str(out), "grid": str(out.with_suffix(".png")), "shape": list(shape), "weights": weights}))


def scores_of_file(path: Path, overrides: list[str], device: torch.device) -> dict[str, float]:
    """Metrics of a `ganlab-sample` file, against the dataset recorded in it (with `dataset.*` overrides)."""
    with np.load(path) as data:
        cfg = OmegaConf.merge(OmegaConf.create(json.loads(str(data["config"]))), OmegaConf.from_dotlist(overrides))
        model = build(cfg.model, "model", channels=cfg.dataset.channels, image_size=cfg.dataset.image_size)
        source = build(cfg.dataset, "dataset")
        evaluator = source.evaluator(device, model.output_range)
        if "points" in data:
            samples = source.to_range(torch.from_numpy(data["points"]), model.output_range)
        else:
            low, high = model.output_range
            samples = torch.from_numpy(data["images"]).float() / 255 * (high - low) + low
    return evaluator(samples.to(device)) if evaluator is not None else {}


def scores_of_run(run_dir: Path, options: dict[str, str], overrides: list[str]) -> dict[str, float]:
    """Metrics of a run's generators (raw, and EMA as `<name>_ema`)."""
    cfg, model, ema = load_run(run_dir, options["device"])
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    source = build(cfg.dataset, "dataset")
    device = next(model.parameters()).device
    evaluator = source.evaluator(device, model.output_range)
    if evaluator is None:
        return {}
    named_generators = [("", model.generator)] + ([("_ema", ema)] if ema is not None else [])
    return evaluate(named_generators, model, evaluator, int(options["n"]), int(options["seed"]))


def eval_command(arguments: list[str]) -> None:
    usage = "ganlab-eval <run_dir | samples.npz> [n=10000] [seed=0] [device=auto] [dataset.root=...]"
    target, options = parse(arguments, {"n": "10000", "seed": "0", "device": "auto"}, usage)
    overrides = [f"{key}={value}" for key, value in options.items() if key.startswith("dataset.")]
    path = Path(target)
    if path.is_dir():
        scores = scores_of_run(path, options, overrides)
    elif path.suffix == ".npz" and path.exists():
        device = resolve_device(OmegaConf.create({"type": options["device"], "threads": None}))
        scores = scores_of_file(path, overrides, device)
    else:
        raise ConfigError(f"{path} is neither a run dir nor a .npz file from ganlab-sample: pass one of those.")
    print(json.dumps(scores, sort_keys=True))


def _run(command) -> None:
    try:
        command(sys.argv[1:])
    except GanlabError as error:
        print(f"ganlab: error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)


def sample_main() -> None:
    """Entry point of `ganlab-sample`."""
    _run(sample_command)


def eval_main() -> None:
    """Entry point of `ganlab-eval`."""
    _run(eval_command)
