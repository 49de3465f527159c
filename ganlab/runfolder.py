"""A run folder's vocabulary, owned here alone: how a run ended (`Status`), which endings are final, the folder's
file names, its `metrics.json`, and the objective a sweep minimises with its direction.

Torch-free, so the report command, the sweeper and the Hydra callbacks read a folder without loading torch.
"""

import json
import math
from enum import Enum
from pathlib import Path

CHECKPOINT = "checkpoint.pt"  # the latest training state: a run resumes from it
PREVIOUS = "checkpoint.prev.pt"  # the one before, the fallback when the latest is damaged
BEST = "checkpoint.best.pt"  # the training state at the best `eval.objective` so far, for sampling and scoring
SUMMARY = "metrics.json"  # how the run ended, its step, seconds and final scores
CONFIG = "config.yaml"  # the resolved config the run trains with
LOCK = ".lock"  # the PID and host of the process training in the folder


class Status(str, Enum):
    """How a run ended (metrics.json's `status`), or what a reader finds in a folder without a summary."""

    COMPLETED = "completed"  # every train.steps
    TIME_BUDGET = "time_budget"  # train.max_seconds of training
    EARLY_STOPPED = "early_stopped"  # no better eval.objective in train.patience evaluations
    PRUNED = "pruned"  # a sweep's pruner judged its curve behind the other trials'
    DIVERGED = "diverged"  # NaN or Inf losses or weights
    STOPPED_BY_SIGUSR1 = "stopped by SIGUSR1"  # a signal: the same command continues it
    STOPPED_BY_SIGUSR2 = "stopped by SIGUSR2"  # (submitit's notice before SLURM's time limit)
    STOPPED_BY_SIGINT = "stopped by SIGINT"  # Ctrl-C
    STOPPED_BY_SIGTERM = "stopped by SIGTERM"
    FAILED = "failed"  # a sweep job's user error or crash, with its `error`
    INTERRUPTED = "interrupted"  # found: a checkpoint and no summary (killed)
    NOT_STARTED = "not started"  # found: neither
    UNREADABLE = "unreadable"  # found: a damaged metrics.json

    __str__ = str.__str__  # "completed", not "Status.COMPLETED", in messages and f-strings
    __format__ = str.__format__

    @classmethod
    def stopped_by(cls, signal_name: str) -> "Status":
        """The status of a run stopped by the signal `signal_name` (SIGINT, SIGTERM, SIGUSR1 or SIGUSR2)."""
        return cls(f"stopped by {signal_name}")


# ran as far as its config asked: its final scores rank it among the others
RAN_TO_ITS_END = (Status.COMPLETED, Status.TIME_BUDGET, Status.EARLY_STOPPED)
# nothing is left to do: running the command again skips it (unless its steps or time budget were raised)
FINAL = RAN_TO_ITS_END + (Status.PRUNED, Status.DIVERGED)

# metrics where higher is better (with or without the `_ema` suffix); every other one (fid, kid_mean, kl_uniform)
# is a distance or a spread, lower is better
HIGHER_IS_BETTER = ("precision", "recall", "density", "prdc_coverage", "coverage", "confidence", "modes_covered",
                    "high_quality", "accuracy", "accuracy_min", "is_mean")  # fmt: skip


def higher_is_better(metric: str) -> bool:
    """Whether a larger `metric` (e.g. recall_ema) is the better one."""
    return metric.removesuffix("_ema") in HIGHER_IS_BETTER


def minimised(metric: str, value: float | None) -> float:
    """`value` of `metric` as a number to minimise: negated where higher is better; +inf if there is none (or NaN)."""
    if not isinstance(value, (int, float)) or math.isnan(value):
        return math.inf
    return -float(value) if higher_is_better(metric) else float(value)


def objective(summary: dict, name: str) -> float:
    """The number a sweeper minimises: the final metric `name` of a run that ran to its end (`minimised`), or +inf
    for one that did not finish or has no such metric."""
    if summary.get("status") not in RAN_TO_ITS_END:
        return math.inf
    return minimised(name, summary.get("metrics", {}).get(name))


def protocol(features: str, samples: int, reference: str, reference_size: int) -> dict:
    """What a score depends on besides the images (metrics.json's `protocol`): scores compare only under the same one.

    features: the extractor and its checksum (`inception-v3-compat/6726825d`, `net:mnist/1a2b3c4d`); samples: how
    many generated images were scored; reference: the real data they were compared with (`cifar10 train`) and its
    number of images.
    """
    return {"features": features, "samples": samples, "reference": reference, "reference_size": reference_size}


def protocol_label(protocol: dict | None) -> str:
    """One line for a protocol: `inception-v3-compat/6726825d, 10000 samples vs cifar10 train (50000)`."""
    if not protocol:
        return "unknown protocol (a run scored before ganlab recorded it)"
    return (f"{protocol['features']}, {protocol['samples']} samples vs {protocol['reference']} "
            f"({protocol['reference_size']})")  # fmt: skip


def write_json(path: Path, data: dict) -> None:
    """Write `data` as JSON atomically, so a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def read_summary(run_dir: Path) -> dict | None:
    """The run's metrics.json, or None if it has none (or only a damaged one)."""
    try:
        return json.loads((Path(run_dir) / SUMMARY).read_text())
    except (OSError, ValueError):
        return None


def write_summary(run_dir: Path, summary: dict) -> None:
    """Write the run's metrics.json atomically."""
    write_json(Path(run_dir) / SUMMARY, summary)


def has_checkpoint(run_dir: Path) -> bool:
    """Whether the folder holds a training state to continue from (the latest or the previous checkpoint)."""
    return (Path(run_dir) / CHECKPOINT).exists() or (Path(run_dir) / PREVIOUS).exists()


def holds_run(run_dir: Path) -> bool:
    """Whether a run has trained in the folder: it holds a checkpoint or a summary."""
    return has_checkpoint(run_dir) or (Path(run_dir) / SUMMARY).exists()
