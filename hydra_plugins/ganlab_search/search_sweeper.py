"""`hydra/sweeper=search`: its config keys, registered in Hydra's ConfigStore, and the Sweeper that Hydra builds.

Hydra imports this module on every command while it scans for plugins, so Optuna (ganlab.search) loads only when a
search starts.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import MISSING, DictConfig, OmegaConf

from ganlab.entry import exit_with
from ganlab.errors import GanlabError


@dataclass
class SearchSweeperConf:
    """`hydra.sweeper.*` of `hydra/sweeper=search`: what to search, how to sample and prune, where the study lives."""

    _target_: str = "hydra_plugins.ganlab_search.search_sweeper.SearchSweeper"
    _recursive_: bool = False  # the sweeper builds the sampler (grid's needs the search space) and the pruner itself
    # hyperband: the pruner that met the target (half the steps, the best within 10%) in docs/results.md
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "hyperband"}])
    sampler: Any = MISSING  # hydra/sweeper/sampler=tpe|random|grid|cmaes; e.g. hydra.sweeper.sampler.seed=0
    pruner: Any = MISSING  # hydra/sweeper/pruner=hyperband|median|none, judged by the jobs after each evaluation
    direction: str = "minimize"  # jobs return eval.objective as a number to minimise (higher-is-better ones negated)
    study_name: str = "ganlab"  # the study's name in its storage (name each sweep's study in a shared database)
    storage: str | None = None  # an Optuna storage URL (sqlite:///x.db); null = the journal file optuna.journal
    # in the sweep folder, which the jobs on this machine (joblib, submitit's local executor) open too
    n_trials: int = 20  # trials of the study in all, counting those of earlier runs of the same command
    n_jobs: int = 1  # trials launched at once, as one batch of the launcher's jobs
    params: dict[str, str] = field(default_factory=dict)  # search space by key, in the command line's sweep syntax
    trial: int | None = None  # set by the sweeper in each job: the number of the trial the job reports to


ConfigStore.instance().store(group="hydra/sweeper", name="search", node=SearchSweeperConf, provider="ganlab")


class SearchSweeper(Sweeper):
    """Runs an Optuna study (ganlab.search.search) in batches of the configured launcher's jobs."""

    def __init__(self, **settings: Any) -> None:
        self.settings = OmegaConf.create(settings)
        self.launcher = None
        self.sweep_dir = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Build the launcher that runs each batch of trials."""
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.sweep_dir = config.hydra.sweep.dir

    def sweep(self, arguments: list[str]) -> None:
        """Search the space of `arguments` (the command line's overrides) and `hydra.sweeper.params`."""
        from ganlab.search import search

        try:
            search(self.settings, list(arguments), self.launcher, self.sweep_dir)
        except GanlabError as error:  # Hydra would print it with a traceback hint: make it ganlab's one line
            exit_with(error)
