"""A sweep job's side of the Optuna study of `hydra/sweeper=search`: report each evaluation to the job's trial, and
learn when the study's pruner judges the run behind the other trials.

The sweeper (ganlab.search) gives each job the number of its trial as `hydra.sweeper.trial`; the job opens the same
storage, `hydra.sweeper.storage` or by default the journal file `optuna.journal` in the sweep folder, which the
sweeper and its jobs (in joblib or submitit workers on this machine too) share safely. The job never ends its trial:
it writes its status in metrics.json, and the sweeper tells the study from that. Torch-free; Optuna loads only in a
job that has a trial.
"""

import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ganlab.errors import ConfigError

SWEEPER = "hydra_plugins.ganlab_search.search_sweeper.SearchSweeper"  # hydra.sweeper._target_ of hydra/sweeper=search
JOURNAL = "optuna.journal"  # the study's file in the sweep folder when hydra.sweeper.storage is null
STEPS = 1000  # a run's progress as an Optuna step: per-mille of its budget


def open_storage(url: str | None, sweep_dir: str | Path):
    """The Optuna storage at `url`, or the journal file in `sweep_dir` when `url` is None."""
    import optuna

    if url is None:
        path = Path(sweep_dir) / JOURNAL
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    try:
        return optuna.storages.get_storage(url)
    except Exception as error:  # SQLAlchemy's errors for a bad URL, a missing driver or an unreachable database
        raise ConfigError(
            f"hydra.sweeper.storage={url} cannot be opened ({_reason(error)}): give an Optuna storage URL this "
            f"machine can reach, e.g. sqlite:///study.db, or null for the journal file {JOURNAL} in the sweep folder."
        ) from None


def _reason(error: Exception) -> str:
    """The first line of a storage's error, without SQLAlchemy's `(sqlite3.OperationalError) ` prefix."""
    if isinstance(error, ImportError):
        return "the database's Python driver is not installed"
    text = (str(error).strip() or type(error).__name__).splitlines()[0]
    return re.sub(r"^\([\w.]+\)\s*", "", text).rstrip(".")


def trial_for_job(hydra_cfg: DictConfig) -> "TrialReport | None":
    """The trial this job reports to: None unless it runs under hydra/sweeper=search with hydra.sweeper.trial set.

    `hydra_cfg` is the job's Hydra config (`HydraConfig.get()`).
    """
    if OmegaConf.select(hydra_cfg, "sweeper._target_") != SWEEPER:
        return None
    settings = hydra_cfg.sweeper
    if settings.trial is None:
        return None
    import optuna

    from ganlab.config import build

    sweep_dir = Path(hydra_cfg.runtime.cwd) / hydra_cfg.sweep.dir  # where the sweep started, if the job moved
    storage = open_storage(settings.storage, sweep_dir)
    pruner = build(settings.pruner, "hydra.sweeper.pruner")
    try:
        # the study's sampler is the sweeper's business: a job only reports and asks the pruner
        study = optuna.load_study(
            study_name=settings.study_name, storage=storage, pruner=pruner, sampler=optuna.samplers.RandomSampler()
        )
        study_id = storage.get_study_id_from_name(settings.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, settings.trial)
    except KeyError:
        raise ConfigError(
            f"hydra.sweeper.trial={settings.trial} is not a trial of the study {settings.study_name} in "
            f"{settings.storage or sweep_dir / JOURNAL}: the sweeper sets that key, leave it unset."
        ) from None
    return TrialReport(study, trial_id)


class TrialReport:
    """The Optuna trial a sweep job reports its evaluations to, and whose pruner may stop it."""

    def __init__(self, study, trial_id: int):
        import optuna

        self.trial = optuna.trial.Trial(study, trial_id)
        self.number = self.trial.number
        # a resumed job evaluates again at points it reported before it was stopped: Optuna keeps the first value
        self._reported = set(self.trial.storage.get_trial(trial_id).intermediate_values)

    def report(self, value: float, progress: float) -> bool:
        """Record the objective `value` (to minimise; +inf/NaN for a diverged run) at `progress`, the evaluation's
        share in (0, 1] of the run's budget (steps or seconds, whichever stops it); True when the pruner says the run
        should stop.

        Optuna's steps are integers: the step is the per-mille of progress, round(1000 * progress), so runs on a
        step budget and runs on a time budget are compared at the same share of their runs.
        """
        step = round(STEPS * progress)
        if step not in self._reported:
            self.trial.report(float(value), step)
            self._reported.add(step)
        return bool(self.trial.should_prune())  # a pruner may answer numpy's bool
