"""`hydra/sweeper=search`: an Optuna study whose trials are the jobs of a sweep.

The search space is written as on the command line of any Hydra sweep: `loss=bce,lsgan` and `choice(...)` are
categorical, `range(...)` steps through integers, `interval(a, b)` is uniform and `tag(log, interval(a, b))`
log-uniform (`tag(int, ...)` for integers); `hydra.sweeper.params` adds keys, the command line's sweep of a key wins,
and a plain value is the same in every job. The sweeper asks the study for `n_jobs` trials at a time, launches them
as one batch of the launcher's jobs, and tells the study how each ended from the job's own metrics.json:

| the job's status                          | the trial  |
| ----------------------------------------- | ---------- |
| completed, time_budget, early_stopped     | COMPLETE with the job's objective (FAIL if it is +inf) |
| pruned, diverged                          | PRUNED     |
| failed                                    | FAIL       |
| stopped by a signal, or no metrics.json   | left RUNNING: the same command runs it again |

The study lives in the sweep folder (ganlab.pruning.open_storage), so the same command continues it: it first runs
each RUNNING trial again with its own parameters, in its own folder, where the job resumes from its checkpoint, and
then asks new trials until the study holds `n_trials`. Finished and pruned trials never run again.
"""

import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, RangeSweep, Transformer
from hydra.core.utils import JobReturn, JobStatus
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from ganlab.config import build
from ganlab.errors import ConfigError
from ganlab.pruning import open_storage
from ganlab.runfolder import RAN_TO_ITS_END, Status, read_summary

log = logging.getLogger("ganlab")

RESULTS = "optimization_results.yaml"  # the best trial's parameters and value, in the sweep folder
# the trials that count towards n_trials: all but those waiting in the queue (Optuna's study.enqueue_trial)
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
SIGNIFICANT_DIGITS = 3  # of a float a job trains with: its folder reads lr=0.00123, not lr=0.0012318769281234


class SearchSpace:
    """The keys a search draws (Optuna distributions by override key) and the overrides every job gets as they are."""

    def __init__(self, overrides: Sequence[str]):
        """Parse `overrides` in Hydra's syntax, in order: a later override of a key replaces an earlier one."""
        self.distributions: dict[str, BaseDistribution] = {}
        fixed: dict[str, str] = {}
        for override in OverridesParser.create().parse_overrides(list(overrides)):
            key = override.get_key_element()
            self.distributions.pop(key, None)
            fixed.pop(key, None)
            if override.is_sweep_override():
                self.distributions[key] = distribution(override)
            else:
                fixed[key] = override.input_line
        self.fixed = list(fixed.values())

    @staticmethod
    def drawn(trial) -> list[str]:
        """The overrides of the values `trial` (an Optuna Trial or FrozenTrial) drew, as its job gets them."""
        return [f"{key}={job_value(value, trial.distributions[key])}" for key, value in trial.params.items()]

    def job_overrides(self, trial) -> list[str]:
        """The overrides of the job that runs `trial`: its drawn values, the fixed ones, and its trial number."""
        return self.drawn(trial) + self.fixed + [f"hydra.sweeper.trial={trial.number}"]

    def grid(self) -> dict[str, list]:
        """Every value of each key, for Optuna's GridSampler; an interval has none, so it is a ConfigError."""
        grid = {}
        for key, space in self.distributions.items():
            if isinstance(space, CategoricalDistribution):
                grid[key] = list(space.choices)
            elif isinstance(space, IntDistribution) and not space.log:
                grid[key] = list(range(space.low, space.high + 1, space.step))
            elif isinstance(space, FloatDistribution) and space.step is not None:
                count = round((space.high - space.low) / space.step) + 1
                grid[key] = [space.low + i * space.step for i in range(count)]
            else:
                raise ConfigError(
                    f"hydra/sweeper/sampler=grid needs a list of values for {key}, which is an interval: give it as "
                    f"a comma list, choice(...) or range(...), or pick another sampler."
                )
        return grid


def distribution(override: Override) -> BaseDistribution:
    """The Optuna distribution of a sweep override: categorical for a list, int or float for a range or interval."""
    key = override.get_key_element()
    if override.is_choice_sweep():
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():
        sweep: RangeSweep = override.value()
        values = list(override.sweep_iterator(transformer=Transformer.encode))
        if sweep.shuffle or not values:
            return CategoricalDistribution(values)
        low, high, step = min(values), max(values), abs(sweep.step)
        if all(isinstance(value, int) for value in values):
            return IntDistribution(low, high, step=step)
        return FloatDistribution(low, high, step=step)
    if override.is_interval_sweep():
        sweep = override.value()
        log_scale = "log" in sweep.tags
        if "int" in sweep.tags:  # Hydra reads an interval's bounds as floats, whatever they look like
            return IntDistribution(int(sweep.start), int(sweep.end), log=log_scale)
        return FloatDistribution(sweep.start, sweep.end, log=log_scale)
    raise ConfigError(
        f"hydra/sweeper=search cannot search {override.input_line}: give {key} as a comma list, choice(...), "
        f"range(...) or [tag(log, ...)] interval(...)."
    )


def job_value(value, space: BaseDistribution) -> str:
    """`value` as the override text a job gets: a float drawn from an interval to SIGNIFICANT_DIGITS (more where
    fewer would leave the interval), so its folder name stays short; YAML's null, true and false."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(space, FloatDistribution):
        for digits in range(SIGNIFICANT_DIGITS, 18):
            text = f"{value:.{digits}g}"
            if space.low <= float(text) <= space.high:
                break
        return text + ".0" if re.fullmatch(r"-?\d+", text) else text  # 1.0, not the integer 1
    return str(value)


def build_sampler(settings: DictConfig, space: SearchSpace, trials_so_far: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler of `hydra.sweeper.sampler`; a GridSampler gets the grid of the search space.

    A seeded sampler of a study that already holds `trials_so_far` trials is seeded with `seed + trials_so_far`: with
    the seed alone, the run that continues a study would propose the first run's trials again, and the same history
    still gives the same proposals.
    """
    arguments = {}
    if OmegaConf.select(settings, "seed") is not None:
        arguments["seed"] = settings.seed + trials_so_far
    if issubclass(get_class(settings._target_), optuna.samplers.GridSampler):
        arguments["search_space"] = space.grid()
    return build(settings, "hydra.sweeper.sampler", **arguments)


def open_study(settings: DictConfig, space: SearchSpace, sweep_dir: Path) -> optuna.Study:
    """The study `hydra.sweeper.study_name` in its storage, created on the first run of the command, with the
    sampler of `hydra.sweeper.sampler` over `space`."""
    if settings.direction not in ("minimize", "maximize"):
        raise ConfigError(f"hydra.sweeper.direction={settings.direction} is not minimize or maximize.")
    for key in ("n_trials", "n_jobs"):
        if settings[key] < 1:
            raise ConfigError(f"hydra.sweeper.{key}={settings[key]} must be at least 1.")
    study = optuna.create_study(
        study_name=settings.study_name,
        storage=open_storage(settings.storage, sweep_dir),
        # the jobs prune; the pruner is built here too, so that a bad argument fails once, before any job starts
        pruner=build(settings.pruner, "hydra.sweeper.pruner"),
        direction=settings.direction,
        load_if_exists=True,
    )
    study.sampler = build_sampler(settings.sampler, space, len(study.get_trials(deepcopy=False)))
    return study


def outcome(job: JobReturn) -> tuple[TrialState, float | None] | None:
    """How the trial of a finished `job` ended, from its metrics.json: (state, value), or None to leave it RUNNING."""
    job_dir = Path(job.hydra_cfg.hydra.runtime.output_dir)
    summary = read_summary(job_dir)
    status = summary.get("status") if summary else None
    if status in RAN_TO_ITS_END:
        value = job.return_value if job.status == JobStatus.COMPLETED else None
        if isinstance(value, (int, float)) and math.isfinite(value):
            return TrialState.COMPLETE, float(value)
        log.warning("trial job %s %s without a finite eval.objective: the trial fails", job_dir.name, status)
        return TrialState.FAIL, None
    if status in (Status.PRUNED, Status.DIVERGED):
        return TrialState.PRUNED, None
    if status == Status.FAILED:
        return TrialState.FAIL, None
    return None  # stopped by a signal, or it never wrote a summary: the same command runs it again


def describe(ending: tuple[TrialState, float | None] | None) -> str:
    """A trial's ending for the log: its value, its state, or that it is left to the next run of the command."""
    if ending is None:
        return "unfinished: the same command runs it again"
    state, value = ending
    return f"{value + 0.0:.6g}" if value is not None else state.name.lower()  # + 0.0: 0, not -0


def tell(study: optuna.Study, number: int, ending: tuple[TrialState, float | None]) -> None:
    """Tell the study how trial `number` ended."""
    state, value = ending
    try:
        study.tell(number, value if state == TrialState.COMPLETE else None, state=state, skip_if_finished=True)
    except RuntimeError as error:
        # the GridSampler stops the study once its grid is done, which only study.optimize expects; the trial's
        # state is stored before that
        if "Study.stop" not in str(error):
            raise


def search(settings: DictConfig, arguments: list[str], launcher, sweep_dir: str | Path) -> None:
    """Run the study of `settings` (hydra.sweeper) over `arguments` (the command line's overrides) and
    `settings.params`, in batches of `settings.n_jobs` jobs of `launcher`, then write RESULTS in `sweep_dir`."""
    from ganlab.sweep import sweep_stopped  # the launching process has torch loaded already, for the jobs

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # ganlab logs each trial's ending itself
    sweep_dir = Path(sweep_dir)
    space = SearchSpace([f"{key}={value}" for key, value in settings.params.items()] + list(arguments))
    study = open_study(settings, space, sweep_dir)
    n_trials = settings.n_trials
    if isinstance(study.sampler, optuna.samplers.GridSampler):
        n_trials = min(n_trials, math.prod(len(values) for values in space.grid().values()))

    interrupted = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if interrupted:
        log.info("continuing the study in %s: running its %d unfinished trials again", sweep_dir, len(interrupted))
    job_index = 0
    while not sweep_stopped(sweep_dir):  # a Ctrl-C: SweepSummary ends the command once this batch has checkpointed
        batch = interrupted[: settings.n_jobs]
        interrupted = interrupted[settings.n_jobs :]
        while len(batch) < settings.n_jobs and len(study.get_trials(deepcopy=False, states=COUNTED)) < n_trials:
            batch.append(study.ask(space.distributions))  # a trial enqueued with study.enqueue_trial comes first
        if not batch:
            break
        jobs = launcher.launch([space.job_overrides(trial) for trial in batch], initial_job_idx=job_index)
        job_index += len(jobs)
        for trial, job in zip(batch, jobs, strict=True):
            ending = outcome(job)
            if ending is not None:
                tell(study, trial.number, ending)
            log.info("trial %d (%s): %s", trial.number, ",".join(space.drawn(trial)), describe(ending))
    write_results(study, sweep_dir)


def write_results(study: optuna.Study, sweep_dir: Path) -> None:
    """Write RESULTS: the best trial's parameters as its job trained with them, its value, and the trials' states."""
    trials = study.get_trials(deepcopy=False)
    states = dict(Counter(trial.state.name.lower() for trial in trials))
    if not any(trial.state == TrialState.COMPLETE for trial in trials):
        log.warning("no trial of the study completed (%s): no best parameters to write", states)
        return
    best = study.best_trial
    parser = OverridesParser.create()
    params = {key: parser.parse_override(f"{key}={job_value(value, best.distributions[key])}").value()
              for key, value in best.params.items()}  # fmt: skip
    results = {"name": "search", "best_trial": best.number, "best_params": params, "best_value": best.value,
               "trials": states}  # fmt: skip
    OmegaConf.save(OmegaConf.create(results), sweep_dir / RESULTS)
    log.info("best trial %d: %s = %.6g (%s)", best.number, params, best.value + 0.0, sweep_dir / RESULTS)
