"""The objective over a run (ganlab.watch): the best checkpoint, early stopping, and a sweep's pruner ending a run,
through real training runs on the fixture data and real TensorBoard curves read back."""

import json
import math

import pytest
import torch
from conftest import compose_config, dataset_overrides
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

from ganlab.cli import eval_command, sample_command
from ganlab.errors import ConfigError
from ganlab.runfolder import BEST, CHECKPOINT, Status, read_summary
from ganlab.train import train
from ganlab.watch import ObjectiveWatch

# an evaluation at every step, each on as many samples as the final one, so every point of the curve is comparable
EVERY_STEP = ["train.batch_size=8", "model.hidden=16", "log.progress=false", "log.every=1", "device=cpu",
              "device.threads=1", "eval.every=1", "eval.num_samples=32", "eval.during_samples=32",
              "train.checkpoint_every=0", "train.lr=5e-3"]  # fmt: skip


def run(tmp_path, data_root, overrides: list[str], trial=None) -> dict:
    cfg = compose_config(EVERY_STEP + dataset_overrides("mnist", data_root) + overrides)
    return train(cfg, tmp_path / "run", trial=trial)


def curve(run_dir, tag: str) -> dict[int, float]:
    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {event.step: event.value for event in accumulator.Scalars(tag)}


def test_the_best_checkpoint_is_at_the_lowest_point_of_the_curve_and_samples_as_g_did(tmp_path, data_root, capsys):
    summary = run(tmp_path, data_root, ["train.steps=8"])
    fid = curve(tmp_path / "run", "Metrics/fid")
    best_step = min(fid, key=fid.get)
    assert summary["best"] == {"metric": "fid", "value": pytest.approx(fid[best_step]), "step": best_step}
    assert torch.load(tmp_path / "run" / BEST, weights_only=True)["step"] == best_step
    assert torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)["step"] == 8  # resume: the last, never best

    eval_command([str(tmp_path / "run"), "which=best", "n=32"])  # the evaluation's own seed (0) and count
    scores = json.loads(capsys.readouterr().out)
    assert (scores["checkpoint"], scores["step"]) == ("best", best_step)
    assert scores["fid"] == pytest.approx(fid[best_step], rel=1e-5)  # the images G drew at that step
    eval_command([str(tmp_path / "run"), "which=last", "n=32"])
    last = json.loads(capsys.readouterr().out)
    assert (last["step"], last["fid"]) == (8, pytest.approx(fid[8], rel=1e-5))
    sample_command([str(tmp_path / "run"), "n=4", f"out={tmp_path / 's.npz'}"])
    assert json.loads(capsys.readouterr().out)["checkpoint"] == "best"  # what a user gets without asking


def test_higher_is_better_objectives_keep_their_highest_point(tmp_path, data_root):
    summary = run(tmp_path, data_root, ["train.steps=6", "eval.objective=precision"])
    precision = curve(tmp_path / "run", "Metrics/precision")
    best_step = max(precision, key=lambda step: (precision[step], -step))  # the first of equal values
    assert summary["best"] == {"metric": "precision", "value": pytest.approx(precision[best_step]), "step": best_step}


def test_which_best_without_a_best_checkpoint_is_one_sentence(tmp_path, data_root):
    run(tmp_path, data_root, ["train.steps=2", "eval.enabled=false"])
    with pytest.raises(ConfigError, match="which=best: the run .* has no best checkpoint"):
        sample_command([str(tmp_path / "run"), "which=best"])
    with pytest.raises(ConfigError, match="which=worst is not allowed"):
        sample_command([str(tmp_path / "run"), "which=worst"])


def test_patience_stops_a_run_whose_objective_does_not_improve(tmp_path, data_root):
    # an objective no evaluation has: no evaluation improves on it, so the watch runs out of patience after 3
    summary = run(tmp_path, data_root, ["train.steps=50", "train.patience=3", "eval.objective=nothing"])
    assert summary["status"] == Status.EARLY_STOPPED
    assert summary["step"] == 4  # decided at the 3rd evaluation (step 3), acted on at the next step by every rank
    assert read_summary(tmp_path / "run")["status"] == "early_stopped" and summary["best"] is None
    assert torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)["step"] == 4
    assert summary["metrics"]  # the final evaluation of a run that ran to its end


def test_patience_needs_evaluations(tmp_path, data_root):
    with pytest.raises(ConfigError, match=r"train.patience=3 counts evaluations, and this run makes none"):
        run(tmp_path, data_root, ["train.patience=3", "eval.enabled=false"])


class Pruner:
    """A sweep trial whose pruner stops the run at its `at`-th report (ganlab.pruning.TrialReport's interface)."""

    def __init__(self, at: int):
        self.at, self.reports = at, []

    def report(self, value: float, progress: float) -> bool:
        self.reports.append((value, progress))
        return len(self.reports) >= self.at


def test_a_pruned_run_ends_cleanly_with_its_checkpoint_and_the_scores_at_that_point(tmp_path, data_root):
    trial = Pruner(at=2)
    summary = run(tmp_path, data_root, ["train.steps=50"], trial)
    assert summary["status"] == Status.PRUNED and summary["step"] == 3
    fid = curve(tmp_path / "run", "Metrics/fid")
    assert sorted(fid) == [1, 2]  # no final evaluation: the scores are the pruning evaluation's
    assert summary["metrics"]["fid"] == pytest.approx(fid[2])
    assert [progress for _, progress in trial.reports] == [1 / 50, 2 / 50]  # the share of the budget at each
    assert trial.reports[1][0] == pytest.approx(fid[2])
    assert torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)["step"] == 3
    accumulator = EventAccumulator(str(tmp_path / "run"))
    accumulator.Reload()
    ended = accumulator.PluginTagToContent("hparams")["_hparams_/session_end_info"]  # HPARAMS shows its end
    end = plugin_data_pb2.HParamsPluginData.FromString(ended).session_end_info
    assert end.status == api_pb2.STATUS_FAILURE  # not among the runs that succeeded
    # the same command again: a pruned run is final, skipped
    assert run(tmp_path, data_root, ["train.steps=50"], Pruner(at=99))["step"] == 3


def test_the_watch_counts_stale_evaluations_and_negates_higher_is_better():
    watch = ObjectiveWatch("recall", patience=2)
    assert watch.see({"Metrics/recall": 0.5}, 10, 0.1) == (True, None)
    assert watch.see({"Metrics/recall": 0.4}, 20, 0.2) == (False, None)
    assert watch.see({"Metrics/recall": 0.6}, 30, 0.3) == (True, None)  # a better one starts the count again
    assert watch.see({"Metrics/recall": math.nan}, 40, 0.4) == (False, None)
    assert watch.see({}, 50, 0.5) == (False, Status.EARLY_STOPPED)
    assert watch.summary() == {"metric": "recall", "value": 0.6, "step": 30}
    again = ObjectiveWatch("recall", patience=2, state=watch.state())
    assert again.state() == watch.state() == {"best": -0.6, "best_step": 30, "stale": 2}
