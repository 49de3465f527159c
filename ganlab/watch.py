"""A run's `eval.objective` over its evaluations: the best value so far and its step, and the calls to stop early.

The best step is where `checkpoint.best.pt` is written. A run stops early when `train.patience` evaluations in a row
found no better value (status early_stopped), or when the sweep's pruner (ganlab.pruning) judges its curve behind
the other trials' (status pruned). Its state travels in the checkpoint, so a resumed run judges as one that never
stopped.
"""

import math

from ganlab.runfolder import Status, higher_is_better, minimised


class ObjectiveWatch:
    """The objective `name` across a run's evaluations.

    patience: evaluations without a better value before the run stops (0 = never); trial: the sweep trial the values
    are reported to (ganlab.pruning.TrialReport), or None outside a pruned sweep; state: `state()` of a checkpoint.
    """

    def __init__(self, name: str, patience: int = 0, trial=None, state: dict | None = None):
        self.name, self.patience, self.trial = name, patience, trial
        state = state or {}
        self.best = state.get("best", math.inf)  # minimised: negated where higher is better
        self.best_step = state.get("best_step")  # None: no evaluation has produced a value yet
        self.stale = state.get("stale", 0)  # evaluations since the best one

    def see(self, scores: dict[str, float], step: int, progress: float) -> tuple[bool, Status | None]:
        """Take the evaluation `scores` (Metrics/<name> keys) at `step` and `progress` (its share of the budget):
        whether it is the best so far, and the call to stop (pruned, early_stopped) or None."""
        value = minimised(self.name, scores.get(f"Metrics/{self.name}"))
        improved = value < self.best
        if improved:
            self.best, self.best_step, self.stale = value, step, 0
        else:
            self.stale += 1
        if self.trial is not None and self.trial.report(value, progress):
            return improved, Status.PRUNED
        if self.patience and self.stale >= self.patience:
            return improved, Status.EARLY_STOPPED
        return improved, None

    def state(self) -> dict:
        """What a checkpoint keeps of the watch (plain numbers)."""
        return {"best": self.best, "best_step": self.best_step, "stale": self.stale}

    def summary(self) -> dict | None:
        """metrics.json's `best`: the metric, its best value (as the metric reads, not negated) and the step."""
        if self.best_step is None:
            return None
        value = -self.best if higher_is_better(self.name) else self.best
        return {"metric": self.name, "value": value, "step": self.best_step}
