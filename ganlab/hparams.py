"""TensorBoard's HPARAMS view of a run or a sweep: what each run records about how it was started, its hparam values,
and the experiment summary that says which columns the view shows, in which order.

TensorBoard takes the columns from one experiment summary (the first it finds) and ticks only the first 5 hparams
and the first 5 metrics (tensorboard#4770). So a sweep writes its summary once (the first job to finish, which
knows the metric names), with the swept keys first and marked as differing (TensorBoard sorts the differing keys
first, then by name) and the sweep's objective as the first metric; each job writes its own values (session start)
and status (session end). A single run writes its own summary. The metric columns show the last point of the
runs' own `Metrics/*` and `Loss/*` series, so nothing is written twice.
"""

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from omegaconf import DictConfig, OmegaConf
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from tensorboard.plugins.hparams.summary_v2 import hparams_pb

from ganlab.config import RESUMABLE_KEYS
from ganlab.runfolder import Status
from ganlab.sweep import command_argv, swept_overrides

GROUPS = ("experiment", "model", "loss", "regularizer", "dataset")  # config groups, named by the option chosen
# keys every run lists, so the HPARAMS columns of runs started by different commands still line up
FIXED_KEYS = ("seed", "train.batch_size", "train.d_steps", "train.g_lr", "train.d_lr", "model.z_dim",
              "dataset.image_size")  # fmt: skip
# overrides that say how a run is executed, logged or scored, not what it trains: a constant one is in the TEXT tab's
# command, not an HPARAMS column, where it would push the keys that matter out of the 5 ticked ones (swept, it is one)
HOW_IT_RUNS = tuple(key for key in RESUMABLE_KEYS if key not in ("train.steps", "train.max_seconds"))
SWEEP_SUMMARY = ".hparams-columns"  # in a sweep folder: names the job whose event file holds the summary

# TensorBoard's hparams have no integer type (only a float64 "number", tensorboard#1998), and the HPARAMS table
# prints every number with 5 significant digits: seed 0 reads "0.0000", 100000000 steps "1.0000e+8". The integers
# of a GAN config (seeds, batch sizes, steps, widths) are categories in a sweep, so they are written as strings:
# they read as typed, and a discrete domain gives each value a filter checkbox. Floats (learning rates, decays)
# stay numbers, for the interval filter and the numeric axis of the parallel-coordinates view.
TYPES = {bool: api_pb2.DATA_TYPE_BOOL, int: api_pb2.DATA_TYPE_STRING, float: api_pb2.DATA_TYPE_FLOAT64,
         str: api_pb2.DATA_TYPE_STRING}  # fmt: skip


@dataclass
class RunRecord:
    """How a run was started: what its TEXT tab says, and which of its keys a sweep varies."""

    choices: dict[str, str | None]  # the config-group options (Hydra's runtime.choices): experiment, model, ...
    overrides: list[str] = field(default_factory=list)  # the run's own `key=value` overrides (hydra.overrides.task)
    argv: list[str] | None = None  # the command line that started the run or its sweep; None: called from Python
    sweep_dir: Path | None = None  # the sweep folder of a multirun job; None for a single run
    swept: dict[str, Override] = field(default_factory=dict)  # the keys the sweep varies, with their values

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "RunRecord":
        """A run started from Python: its groups named by their classes (`LSGAN`), no command, no sweep."""
        return cls({group: cfg[group]["_target_"].rsplit(".", 1)[-1] for group in GROUPS if group in cfg})

    @classmethod
    def from_hydra(cls, cfg: DictConfig, hydra_cfg: DictConfig, multirun: bool) -> "RunRecord":
        """A run or sweep job started by `ganlab-train`, from Hydra's config of it."""
        argv = command_argv(cfg)
        sweeper_params = OmegaConf.select(hydra_cfg, "sweeper.params", default=None)
        return cls(
            choices=dict(hydra_cfg.runtime.choices),
            overrides=[str(override) for override in hydra_cfg.overrides.task],
            argv=argv,
            sweep_dir=Path(hydra_cfg.sweep.dir) if multirun else None,
            swept=swept_overrides(argv, sweeper_params) if multirun else {},
        )


def sweep_values(override: Override) -> list | None:
    """The values a sweep override gives its key (`seed=0,1` or `choice(32,64)`), or None for an interval or glob."""
    value = override.value()
    if isinstance(value, (ChoiceSweep, RangeSweep)):
        return list(override.sweep_iterator())
    return None


def kind(values: list) -> type:
    """The one hparam type for these values: bool, int or float if all are, str otherwise."""
    if values and all(isinstance(v, bool) for v in values):
        return bool
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return int
    if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return float
    return str


def as_hparam(value, value_kind: type) -> bool | float | str:
    """`value` as TensorBoard stores it for a key of `value_kind` (see TYPES): an integer becomes its digits."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if value_kind is bool and isinstance(value, bool):
        return value
    if value_kind is int and number and float(value).is_integer():
        return str(int(value))
    if value_kind is float and number:
        return float(value)
    return "null" if value is None else str(value)


def column_kind(key: str, value, record: RunRecord) -> type:
    """The type of a key's column: a group's option is a name; a swept key takes the type of all its sweep values,
    so every job writes it alike (`0,0.3` makes 0 a float); any other key the type of its value."""
    if key in record.choices:
        return str
    if key in record.swept:
        values = sweep_values(record.swept[key])
        return float if values is None and isinstance(record.swept[key].value(), IntervalSweep) else kind(values or [])
    return kind([value])


def meaningful(key: str, value) -> bool:
    """Whether a fixed key says something about this run: not null, and not the image size of 2-D points."""
    if value is None:
        return False
    return key != "dataset.image_size" or value > 1  # the toy datasets store a point as a 1x1 "image"


def hparam_values(cfg: DictConfig, record: RunRecord) -> dict[str, bool | float | str]:
    """The run's hparams: the swept keys first, then the config groups, the fixed keys and the other overrides
    (but for those that only say how the run is executed, logged or scored).

    Every job of a grid or Optuna sweep overrides the same keys, so its HPARAMS rows hold the same keys.
    """
    overridden = [str(override).split("=", 1)[0].lstrip("+~") for override in record.overrides if "=" in str(override)]
    keys = list(record.swept) + list(GROUPS) + list(FIXED_KEYS)
    keys += [key for key in overridden if not key.startswith(HOW_IT_RUNS)]
    values: dict[str, bool | float | str] = {}
    for key in dict.fromkeys(keys):  # in order, once each
        if key.startswith("hydra"):
            continue
        if key in record.choices:
            value = record.choices[key]
        elif key in GROUPS:  # a group this run has no option of (experiment, in a run started from Python)
            continue
        else:
            value = OmegaConf.select(cfg, key, default=None)
            if key in FIXED_KEYS and key not in record.swept and not meaningful(key, value):
                continue
        values[key] = as_hparam(value, column_kind(key, value, record))
    return values


def metric_tags(tags, objective: str) -> list[str]:
    """The HPARAMS metric columns: the sweep's objective first, then the losses, the objective's twin (`fid_ema` for
    `fid`, `fid` for `fid_ema`), then the other metrics in order."""
    twin = objective.removesuffix("_ema") if objective.endswith("_ema") else f"{objective}_ema"
    first = [f"Metrics/{objective}", "Loss/D", "Loss/G", f"Metrics/{twin}"]
    tags = list(tags)
    ordered = [tag for tag in first if tag in tags]
    return ordered + [tag for tag in tags if tag.startswith(("Metrics/", "Loss/")) and tag not in ordered]


def hparam_info(key: str, value, record: RunRecord) -> api_pb2.HParamInfo:
    """The column of `key`: its type and, for a swept key, its values (discrete) or range (interval)."""
    value_kind = column_kind(key, value, record)
    info = api_pb2.HParamInfo(name=key, type=TYPES[value_kind])
    override = record.swept.get(key)
    if override is None:  # the rest: their values may follow a swept key (train.g_lr follows train.lr), so no domain
        return info
    values = sweep_values(override)
    if values is not None:
        info.domain_discrete.extend(list(dict.fromkeys(as_hparam(v, value_kind) for v in values)))
        info.differs = len(set(values)) > 1
    elif isinstance(override.value(), IntervalSweep):
        info.domain_interval.min_value = float(override.value().start)
        info.domain_interval.max_value = float(override.value().end)
        info.differs = True
    else:  # a glob of config-group options
        info.differs = True
    return info


def summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Summary:
    """An hparams plugin record, as the plugin's own summary functions write it."""
    value = Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data), tensor=metadata.NULL_TENSOR)
    return Summary(value=[value])


def experiment_summary(cfg: DictConfig, record: RunRecord, values: dict, metrics: list[str]) -> Summary:
    """The experiment summary: the hparam columns (swept first) and the metric columns (objective first)."""
    experiment = api_pb2.Experiment(
        hparam_infos=[hparam_info(key, value, record) for key, value in values.items()],
        metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag)) for tag in metrics],
        time_created_secs=time.time(),
    )
    return summary(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment))


def session_start(values: dict, run_name: str) -> Summary:
    """A run's hparam values (its HPARAMS row), written when it starts, so a running job shows in the table.

    The run's name is its trial ID (TensorBoard's first column), which would otherwise be a hash of the values.
    """
    return hparams_pb(values, trial_id=run_name)


def session_end(status: str) -> Summary:
    """A run's final status in its HPARAMS row: success when it ran as far as asked (or stopped early for want of
    progress), failure when it diverged or a sweep's pruner stopped it, so a filter on success shows the finished."""
    status_code = api_pb2.STATUS_FAILURE if status in (Status.DIVERGED, Status.PRUNED) else api_pb2.STATUS_SUCCESS
    info = plugin_data_pb2.SessionEndInfo(status=status_code, end_time_secs=time.time())
    return summary(metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=info))


def claim_sweep_summary(sweep_dir: Path, run_dir: Path) -> bool:
    """Whether the job in `run_dir` writes the sweep's experiment summary: the first job to finish does, once.

    It is a job's own event file that holds it (a file of the sweep folder's own would list the folder as an empty
    run). The claim is a file in the sweep folder naming that job, which appears whole and only once even when
    parallel jobs finish together: written aside, then hard-linked into place, which fails if it exists. If the
    named job no longer holds the summary (its folder was deleted to run it again), this job takes over.
    """
    sweep_dir = Path(sweep_dir)
    claim = sweep_dir / SWEEP_SUMMARY
    descriptor, name = tempfile.mkstemp(dir=sweep_dir, prefix=f"{SWEEP_SUMMARY}-")
    os.close(descriptor)
    scratch = Path(name)
    try:
        scratch.write_text(Path(run_dir).name)
        os.link(scratch, claim)
        return True
    except FileExistsError:
        if holds_experiment(sweep_dir / claim.read_text()):
            return False
        scratch.replace(claim)
        return True
    except OSError:  # no hard links on this file system: every job writes the summary rather than none
        return True
    finally:
        scratch.unlink(missing_ok=True)


def holds_experiment(run_dir: Path) -> bool:
    """Whether a run's event files hold an experiment summary (its tag is stored as plain bytes)."""
    tag = metadata.EXPERIMENT_TAG.encode()
    return any(tag in path.read_bytes() for path in Path(run_dir).glob("events.out.tfevents.*"))
