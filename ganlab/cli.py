"""`ganlab-sample` and `ganlab-eval`: draw samples from a run, score runs or anyone's images, and calibrate the scores.

    ganlab-sample <run_dir> n=10000 [class=K] [format=npz|png] out=samples.npz weights=ema [which=best|last]
    ganlab-eval <run_dir> [n=10000] [which=best|last] [dataset.root=../shared/data] [eval.features=inception]
    ganlab-eval <samples.npz | .npy | .pt | image folder> [dataset=mnist] [dataset.root=...] [n=all] [eval.*=...]
    ganlab-eval calibrate dataset=mnist [dataset.root=...] [n=5000]

Options are `key=value`, as on the `ganlab-train` command line; the run folder or file is the argument that is
none (`parse`). A run is sampled and scored from its best checkpoint (checkpoint.best.pt, at its best
eval.objective) when it has one, else from its latest (`which=last` asks for that one). A file of images is scored
against the test split of the dataset named by `dataset=` (conf/dataset/<name>.yaml), or of the dataset recorded
in it by `ganlab-sample`; `ganlab.image_files` says which files, value ranges and layouts it reads.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch.optim.swa_utils import AveragedModel
from torchvision.utils import save_image

from ganlab.checkpoint import load_checkpoint, read_checkpoint
from ganlab.config import CONF_DIR, DEVICE_TYPES, EvalConfig, build, check_value
from ganlab.data import ImageSource, to_uint8
from ganlab.device import resolve_device
from ganlab.errors import CheckpointError, ConfigError, DataError
from ganlab.evaluate import evaluate, generate
from ganlab.image_files import open_samples, to_uint8_images
from ganlab.models.base import OUTPUT_RANGES
from ganlab.runfolder import BEST, CONFIG, has_checkpoint, holds_run
from ganlab.step import build_model

EVAL_SAMPLES = EvalConfig.num_samples  # what a run's final evaluation scores (10,000), and ganlab-eval's default
GRID_MOST = 256  # samples in ganlab-sample's PNG: a 16 x 16 grid stays readable


def parse(arguments: list[str], defaults: dict[str, str], usage: str) -> tuple[str, dict[str, str]]:
    """The target (a run folder, a file, `calibrate`) and the `key=value` options, checked against `defaults`.

    Run folders are named by their overrides (`experiment=best_mlp_mnist,seed=1`), so an `=` does not make an
    option: an argument is the target when it exists on disk or its key is none of the command's, and an option
    otherwise.
    """
    if not arguments or any(argument in ("-h", "--help") for argument in arguments):
        raise ConfigError(f"usage: {usage}")
    options, targets = dict(defaults), []
    for position, argument in enumerate(arguments):
        key, equals, value = argument.partition("=")
        if equals and (key in defaults or key.startswith(("dataset.", "eval."))) and not Path(argument).exists():
            options[key] = value
        elif targets and Path(argument).exists():
            raise ConfigError(f"{targets[0]} and {argument} are two runs or files: pass one (usage: {usage}).")
        elif targets or (position > 0 and equals and "/" not in argument):
            raise ConfigError(
                f"{argument!r} is not an option of this command, nor an existing path: use key=value with a key "
                f"from {sorted(defaults)} (usage: {usage})."
            )
        else:
            targets.append(argument)
    if not targets:
        raise ConfigError(f"no run folder or file was given: usage: {usage}")
    for key, minimum, what in (("n", 2, "images"), ("seed", 0, "the sampling seed")):
        value = options.get(key, "")
        if value and not (value.isdigit() and int(value) >= minimum):
            raise ConfigError(f"{key}={value} is not allowed: it must be a whole number >= {minimum} ({what}).")
    if options.get("device", "auto") not in DEVICE_TYPES:
        raise ConfigError(f"device={options['device']} is not allowed: use one of {list(DEVICE_TYPES)}.")
    return targets[0], options


def load_run(run_dir: Path, device_type: str, which: str = ""):
    """The run's resolved config, its model with the weights of the checkpoint `which` names, its EMA generator (or
    None), and which checkpoint that was, with its step: {"checkpoint": "best", "step": 4000}.

    which: best (checkpoint.best.pt, at the best eval.objective), last (the latest), or "" for best when the run has
    one, else last.
    """
    check_run_dir(run_dir)
    if which not in ("", "best", "last"):
        raise ConfigError(f"which={which} is not allowed: use best or last.")
    best = run_dir / BEST
    if which == "best" and not best.exists():
        raise ConfigError(
            f"which=best: the run {run_dir} has no best checkpoint (it has made no evaluation with a value of its "
            f"eval.objective yet): use which=last."
        )
    which = which or ("best" if best.exists() else "last")
    cfg = OmegaConf.load(run_dir / CONFIG)
    device = resolve_device(OmegaConf.create({"type": device_type, "threads": None}))
    state = read_checkpoint(best) if which == "best" else load_checkpoint(run_dir)
    model = build_model(cfg, state.get("num_classes", 0))  # older checkpoints: all unconditional
    try:
        model.load_state_dict(state["model"])
        ema = None
        if state.get("ema") is not None:
            ema = AveragedModel(model.generator, use_buffers=True)
            ema.load_state_dict(state["ema"])
    except (RuntimeError, KeyError) as error:
        raise CheckpointError(f"the checkpoint in {run_dir} does not fit its config.yaml ({error}).") from None
    chosen = {"checkpoint": which, "step": state["step"]}
    return cfg, model.to(device), (ema.module.to(device) if ema is not None else None), chosen


def check_run_dir(run_dir: Path) -> None:
    """Refuse, in one sentence, a folder that is not a run `ganlab-train` wrote, or a run without a checkpoint yet."""
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} does not exist: pass the folder of a run (outputs/runs/... or a sweep's job).")
    if not ((run_dir / CONFIG).exists() and holds_run(run_dir)):
        raise ConfigError(
            f"{run_dir} is not a ganlab run dir (it has no config.yaml beside a checkpoint or metrics.json): pass "
            f"the folder of a run, e.g. one under outputs/runs/ or a sweep's job folder."
        )
    if not has_checkpoint(run_dir):
        raise CheckpointError(
            f"the run {run_dir} has no checkpoint yet (it ended before its first, train.checkpoint_every): "
            f"continue it with the command that started it."
        )


def pick_generator(model, ema, weights: str) -> torch.nn.Module:
    if weights not in ("ema", "raw"):
        raise ConfigError(f"weights={weights!r} is not allowed: use ema or raw.")
    if weights == "ema" and ema is None:
        raise ConfigError("weights=ema, but this run has no EMA generator (train.ema_decay=0): use weights=raw.")
    return ema if weights == "ema" else model.generator


def asked_labels(option: str, model, n: int, run_dir: Path) -> torch.Tensor | None:
    """The class of each of n samples: `class=K` alone, or (None) every class equally often; None unconditional."""
    if not option:
        return None
    if model.num_classes == 0:
        raise ConfigError(
            f"class={option}: the run {run_dir} is unconditional (model.conditional=false), so its samples have no "
            f"class to ask for: drop class=."
        )
    if not (option.isdigit() and int(option) < model.num_classes):
        raise ConfigError(f"class={option} is not a class of the run {run_dir}: use 0 to {model.num_classes - 1}.")
    return torch.full((n,), int(option), dtype=torch.long)


def grid_order(labels: torch.Tensor | None, n: int, most: int = GRID_MOST) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The samples `ganlab-sample`'s PNG shows, in order, and their labels for one row per class (None: a plain grid).

    Samples of several classes: as many of each as every class has, at most `most` in all; else the first `most`.
    """
    if labels is None or labels.unique().numel() < 2:
        return torch.arange(min(n, most)), None
    labels = labels.cpu()
    classes = labels.unique()
    per_class = min(min(int((labels == k).sum()) for k in classes), max(1, most // len(classes)))
    shown = torch.cat([torch.nonzero(labels == k).flatten()[:per_class] for k in classes])
    return shown, labels[shown]


def sample_command(arguments: list[str]) -> None:
    usage = ("ganlab-sample <run_dir> [n=10000] [class=K] [format=npz|png] [out=samples.npz|samples] [weights=ema|raw] "
             "[which=best|last] [seed=0] [device=auto]")  # fmt: skip
    target, options = parse(arguments, {"n": "10000", "class": "", "format": "npz", "out": "", "weights": "",
                                        "which": "", "seed": "0", "device": "auto"}, usage)  # fmt: skip
    if options["format"] not in SAMPLE_FORMATS:
        raise ConfigError(f"format={options['format']} is not allowed: use one of {list(SAMPLE_FORMATS)}.")
    out = Path(options["out"] or SAMPLE_FORMATS[options["format"]])
    cfg, model, ema, chosen = load_run(Path(target), options["device"], options["which"])
    n = int(options["n"])
    labels = asked_labels(options["class"], model, n, Path(target))
    weights = options["weights"] or ("ema" if ema is not None else "raw")
    source = build(cfg.dataset, "dataset")
    if options["format"] == "png" and not isinstance(source, ImageSource):
        raise ConfigError(f"format=png writes images, and dataset {source.name} is 2-D points: use format=npz.")
    samples, labels = generate(pick_generator(model, ema, weights), model, n, int(options["seed"]), labels)
    labels = labels.cpu() if labels is not None else torch.full((n,), -1)  # -1: no class asked (unconditional)
    try:
        if options["format"] == "png":
            shape = write_png_folder(out, to_uint8(samples, model.output_range).cpu())
        else:
            shape = write_npz(out, cfg, weights, source, samples, model.output_range, labels)
        grid = out.with_suffix(".png")
        shown, shown_labels = grid_order(None if (labels == -1).all() else labels, n)
        save_image(source.picture(samples[shown], model.output_range, shown_labels), grid)
    except OSError as error:
        raise ConfigError(f"cannot write out={out} ({error.strerror or error}): pass a writable path.") from None
    printed = {"out": str(out), "grid": str(grid), "shape": list(shape), "weights": weights}
    print(json.dumps(printed | chosen))


# ganlab-sample's formats and the default `out` of each
SAMPLE_FORMATS = {"npz": "samples.npz", "png": "samples"}


def write_npz(out: Path, cfg, weights: str, source, samples: torch.Tensor, value_range, labels: torch.Tensor) -> tuple:
    """The .npz of samples: `images` (uint8 NCHW) or `points`, `labels`, `config`, `weights`; for images also
    `arr_0` (uint8 NHWC) and `arr_1` (the labels), the layout other evaluators read (guided-diffusion's). Its shape."""
    arrays = {"config": np.array(json.dumps(OmegaConf.to_container(cfg))), "weights": np.array(weights)}
    arrays["labels"] = labels.numpy()
    if isinstance(source, ImageSource):
        arrays["images"] = to_uint8(samples, value_range).cpu().numpy()
        arrays["arr_0"] = arrays["images"].transpose(0, 2, 3, 1)
        arrays["arr_1"] = arrays["labels"]
    else:
        arrays["points"] = source.from_range(samples.cpu(), value_range).numpy()
    np.savez_compressed(out, **arrays)
    return arrays.get("images", arrays.get("points")).shape


def write_png_folder(out: Path, images: torch.Tensor) -> tuple:
    """One PNG per uint8 image (N, C, H, W) in the new folder `out`, named 000000.png... in sample order. Its shape.

    A folder that already holds files is refused: scoring it would mix in images of another draw.
    """
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"out={out} already exists and is not an empty folder: pass a new folder for format=png.")
    out.mkdir(parents=True, exist_ok=True)
    digits = max(6, len(str(len(images) - 1)))
    for index, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).squeeze(2).numpy()).save(out / f"{index:0{digits}d}.png")
    return tuple(images.shape)


def dataset_config(name: str, overrides: list[str]) -> DictConfig:
    """The dataset group option `name` (conf/dataset/<name>.yaml) with the `dataset.*` overrides applied."""
    options = sorted(path.stem for path in (CONF_DIR / "dataset").glob("*.yaml"))
    if name not in options:
        raise ConfigError(f"dataset={name} is not a dataset of ganlab: use one of {options}.")
    return OmegaConf.merge(OmegaConf.load(CONF_DIR / "dataset" / f"{name}.yaml"), dotlist_without_prefix(overrides))


def dotlist_without_prefix(overrides: list[str]) -> DictConfig:
    """`dataset.root=x` overrides as the config {root: x} of the dataset itself."""
    return OmegaConf.from_dotlist([override.removeprefix("dataset.") for override in overrides])


SCORING_KEYS = ("features", "reference", "inception_weights", "stats_dir")  # the eval.* keys ganlab-eval takes


def scoring_config(base, overrides: list[str]) -> DictConfig:
    """The `eval` config that scores: `base` (a run's, or the defaults) with the `eval.*` overrides, checked."""
    scoring = OmegaConf.merge(OmegaConf.structured(EvalConfig), base or {})
    for override in overrides:
        key, _, value = override.removeprefix("eval.").partition("=")
        if key not in SCORING_KEYS:
            raise ConfigError(f"eval.{key} is not an option of ganlab-eval: use eval.{', eval.'.join(SCORING_KEYS)}.")
        scoring[key] = None if value in ("", "null") else value
    for key in ("features", "reference"):
        check_value(f"eval.{key}", scoring[key])
    return scoring


def image_scores(source, device: torch.device, scoring: DictConfig):
    """The scores (`ImageScores`: FID, precision, recall, ...) of an image dataset's images in [0, 1]."""
    if not isinstance(source, ImageSource):
        raise ConfigError(f"dataset {source.name} is a set of 2-D points, not images: name an image dataset.")
    evaluator = source.evaluator(device, (0.0, 1.0), scoring)
    if evaluator is None:
        raise ConfigError(
            f"dataset {source.name} names no feature net or {scoring.reference} split (dataset.feature_net, "
            f"dataset.test_root), so its images cannot be scored: set them, use eval.features=inception, or use "
            f"mnist, fashion_mnist or cifar10."
        )
    return evaluator


def scores_of_file(
    path: Path, options: dict[str, str], overrides: list[str], scoring: list[str], device: torch.device
) -> dict:
    """Metrics of a file or folder of images (or of a `ganlab-sample` file of points) against its dataset.

    A file with `labels` (the classes its images were asked for) is also scored on them: accuracy, accuracy_min
    and intra_fid (ganlab.metrics), or accuracy and accuracy_min for points.
    """
    samples = open_samples(path)
    if options["dataset"]:
        dataset = dataset_config(options["dataset"], overrides)
    elif samples.config is not None:
        dataset = OmegaConf.merge(OmegaConf.create(samples.config["dataset"]), dotlist_without_prefix(overrides))
    else:
        raise ConfigError(
            f"{path} does not say which dataset its images are of: add dataset=NAME (for example dataset=mnist)."
        )
    source = build(dataset, "dataset")
    count = int(options["n"]) if options["n"] else None
    if samples.key == "points":
        return scores_of_points(path, samples, source, count, device)
    images = to_uint8_images(samples.array, f"{path}{f' ({samples.key})' if samples.key else ''}")[:count]
    evaluator = image_scores(source, device, scoring_config(None, scoring))
    quality = evaluator.quality
    labels = file_labels(path, samples, count, quality.reference_classes, f"dataset {source.name}'s reference")
    warn_if_few(len(images))
    return quality.compute(images, labels) | {"protocol": evaluator.protocol(len(images))}


def file_labels(path: Path, samples, count: int | None, classes, whose: str) -> torch.Tensor | None:
    """The file's labels as a long tensor (its first `count`), checked against `classes`; None if it has none.

    -1 (no class asked) is always allowed. Without known classes (a test split without labels) nothing is checked:
    the class metrics are then left out.
    """
    if samples.labels is None:
        return None
    labels = torch.as_tensor(samples.labels, dtype=torch.long)[:count]
    unknown = sorted(set(labels.unique().tolist()) - set(classes) - {-1})
    if unknown and classes:
        raise DataError(
            f"{path} has the labels {_few(unknown)}, which are not classes of {whose} ({_few(sorted(classes))}): "
            f"use those, or -1 for an image asked for no class."
        )
    return labels


def _few(values: list[int], most: int = 10) -> str:
    return ", ".join(map(str, values[:most])) + (", ..." if len(values) > most else "")


def scores_of_points(path: Path, samples, source, count: int | None, device: torch.device) -> dict:
    """Mode metrics of the 2-D points a `ganlab-sample` file of a toy dataset holds (with `labels`: accuracy too)."""
    if samples.config is None or isinstance(source, ImageSource):
        raise DataError("a file of 2-D points is scored only against the toy dataset that `ganlab-sample` recorded.")
    value_range = OUTPUT_RANGES[OmegaConf.create(samples.config).model.output]  # the range the points were made in
    evaluator = source.evaluator(device, value_range)
    points = source.to_range(torch.as_tensor(samples.array)[:count], value_range)
    labels = file_labels(path, samples, count, range(source.num_classes), f"dataset {source.name}")
    warn_if_few(len(points))
    scores = evaluator(points.to(device), None if labels is None else labels.to(device))
    return scores | {"protocol": evaluator.protocol(len(points))}


def scores_of_run(run_dir: Path, options: dict[str, str], overrides: list[str], scoring: list[str]) -> dict:
    """Metrics of a run's generators (raw, and EMA as `<name>_ema`), and the checkpoint they come from (`load_run`)."""
    if options["dataset"]:
        raise ConfigError(
            f"dataset={options['dataset']} does not apply to the run {run_dir}, which is scored on its own dataset: "
            f"drop it (dataset.root=... says where that dataset is)."
        )
    cfg, model, ema, chosen = load_run(run_dir, options["device"], options["which"])
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    source = build(cfg.dataset, "dataset")
    device = next(model.parameters()).device
    evaluator = source.evaluator(device, model.output_range, scoring_config(cfg.eval, scoring))
    if evaluator is None:
        return chosen
    named_generators = [("", model.generator)] + ([("_ema", ema)] if ema is not None else [])
    count = int(options["n"] or EVAL_SAMPLES)
    warn_if_few(count, cfg.eval.num_samples)
    scores = evaluate(named_generators, model, evaluator, count, int(options["seed"]))
    return scores | chosen | {"protocol": evaluator.protocol(count)}


def warn_if_few(count: int, final: int = EVAL_SAMPLES) -> None:
    """One line on stderr when fewer samples are scored than a run's final evaluation scores (`final`, the run's
    eval.num_samples): FID and KID are then biased up (and precision, recall and coverage shift), so such a score
    compares only with others of its count."""
    if count < final:
        print(
            f"ganlab: warning: scoring {count} samples, fewer than the {final} of a run's final evaluation "
            f"(eval.num_samples): FID and KID are biased up, so compare only scores of the same count.",
            file=sys.stderr,
        )


def calibrate_command(options: dict[str, str], overrides: list[str], device: torch.device) -> str:
    """The calibration table (ganlab.calibration) of the dataset named in `options`, as Markdown."""
    from ganlab.calibration import CALIBRATION_IMAGES, calibrate, markdown_table

    if not options["dataset"]:
        raise ConfigError("ganlab-eval calibrate needs the dataset: add dataset=NAME (for example dataset=mnist).")
    source = build(dataset_config(options["dataset"], overrides), "dataset")
    quality = image_scores(source, device, scoring_config({"features": "net", "reference": "test"}, [])).quality
    images = source.decode_uint8()
    labels = getattr(source.checked_open(None), "targets", None)
    if labels is None:
        raise DataError(f"dataset {source.name} has no class labels, which calibration needs to drop classes.")
    count = int(options["n"] or CALIBRATION_IMAGES)
    rows = calibrate(quality, images, torch.as_tensor(labels), count, int(options["seed"]))
    return markdown_table(rows)


def eval_command(arguments: list[str]) -> None:
    usage = ("ganlab-eval <run_dir | .npz | .npy | .pt | image folder | calibrate> [dataset=NAME] [n=...] [seed=0] "
             "[which=best|last] [device=auto] [dataset.root=...] [eval.features=inception|net] "
             "[eval.reference=train|test] [eval.inception_weights=PATH] [eval.stats_dir=DIR]")  # fmt: skip
    target, options = parse(arguments, {"n": "", "seed": "0", "device": "auto", "dataset": "", "which": ""}, usage)
    overrides = [f"{key}={value}" for key, value in options.items() if key.startswith("dataset.")]
    scoring = [f"{key}={value}" for key, value in options.items() if key.startswith("eval.")]
    path = Path(target)
    if (path / CONFIG).exists():
        print(json.dumps(scores_of_run(path, options, overrides, scoring), sort_keys=True))
        return
    device = resolve_device(OmegaConf.create({"type": options["device"], "threads": None}))
    if target == "calibrate":
        print(calibrate_command(options, overrides, device))
    else:
        print(json.dumps(scores_of_file(path, options, overrides, scoring, device), sort_keys=True))
