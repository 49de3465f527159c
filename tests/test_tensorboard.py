"""What TensorBoard shows of a real sweep and a real run: run names, the HPARAMS columns, the TEXT tab and the
layout, read back from the event files with TensorBoard's own readers and its hparams plugin's handlers."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import compose_config, dataset_overrides
from tensorboard import context
from tensorboard.backend.event_processing.data_provider import MultiplexerDataProvider
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment, list_session_groups, plugin_data_pb2
from torch.utils.tensorboard.writer import FileWriter

from ganlab.hparams import SWEEP_SUMMARY, RunRecord, claim_sweep_summary, experiment_summary
from ganlab.monitor import git_commit

# the sweep, shrunk: a preset, two swept keys, and constant overrides that must not name the jobs
SWEPT = ["loss=lsgan,hinge", "seed=0,1"]
CONSTANT = ["experiment=lsgan_mlp_mnist", "train.steps=4", "train.batch_size=4", "model.hidden=8", "log.every=2",
            "log.num_samples=4", "log.progress=false", "eval.num_samples=16", "device=cpu",
            "device.threads=1"]  # fmt: skip
JOBS = ["loss=hinge,seed=0", "loss=hinge,seed=1", "loss=lsgan,seed=0", "loss=lsgan,seed=1"]


def ganlab_train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "ganlab.train", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


def events(folder: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def plugin_data(accumulator: EventAccumulator, tag: str) -> plugin_data_pb2.HParamsPluginData:
    return plugin_data_pb2.HParamsPluginData.FromString(accumulator.PluginTagToContent("hparams")[tag])


def text(accumulator: EventAccumulator, tag: str) -> str:
    (event,) = accumulator.Tensors(f"{tag}/text_summary")
    return event.tensor_proto.string_val[0].decode()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, data_root) -> Path:
    """The 4-job sweep, run as a user runs it (no hydra.sweep.dir: the default folder names are under test)."""
    cwd = tmp_path_factory.mktemp("tensorboard")
    result = ganlab_train("-m", *SWEPT, *CONSTANT, *dataset_overrides("mnist", data_root), cwd=cwd)
    assert result.returncode == 0, result.stderr
    (sweep,) = (cwd / "outputs" / "sweeps").iterdir()
    return sweep


@pytest.fixture(scope="module")
def hparams_view(sweep):
    """What the HPARAMS tab asks the server for: the experiment (columns) and the session groups (rows)."""
    multiplexer = EventMultiplexer().AddRunsFromDirectory(str(sweep))
    multiplexer.Reload()
    provider = MultiplexerDataProvider(multiplexer, str(sweep))
    backend = backend_context.Context(base_plugin.TBContext(data_provider=provider, multiplexer=multiplexer))
    request = context.RequestContext()
    experiment = get_experiment.Handler(request, backend, "", api_pb2.GetExperimentRequest(hparams_limit=1000)).run()
    columns = [api_pb2.ColParams(hparam=info.name) for info in experiment.hparam_infos]
    columns += [api_pb2.ColParams(metric=info.name) for info in experiment.metric_infos]
    rows = api_pb2.ListSessionGroupsRequest(col_params=columns, start_index=0, slice_size=100,
                                            allowed_statuses=[api_pb2.STATUS_SUCCESS])  # fmt: skip
    groups = list_session_groups.Handler(request, backend, "", rows).run().session_groups
    return experiment, groups


def test_run_names_hold_only_what_varies(sweep):
    runs = EventMultiplexer().AddRunsFromDirectory(str(sweep)).Runs()
    assert sorted(runs) == JOBS and all(len(run) <= 40 for run in runs)
    # the constant overrides name the sweep folder instead
    assert all(override in sweep.name for override in ["experiment=lsgan_mlp_mnist", "loss=lsgan,hinge", "seed=0,1"])


def test_the_sweep_writes_its_experiment_summary_once_swept_keys_first(sweep):
    holders = [p.parent for p in sweep.rglob("events.out.tfevents.*") if "_hparams_/experiment" in
               events(p.parent).PluginTagToContent("hparams")]  # fmt: skip
    # in one job's own event file (the first to finish), so the sweep folder is no extra, empty run
    assert [holder.name for holder in holders] == [(sweep / SWEEP_SUMMARY).read_text()]
    experiment = plugin_data(events(holders[0]), "_hparams_/experiment").experiment
    infos = {info.name: info for info in experiment.hparam_infos}
    assert [info.name for info in experiment.hparam_infos][:2] == ["loss", "seed"]
    assert [value.string_value for value in infos["loss"].domain_discrete.values] == ["lsgan", "hinge"]
    assert [value.string_value for value in infos["seed"].domain_discrete.values] == ["0", "1"]
    assert infos["loss"].differs and infos["seed"].differs and not infos["experiment"].differs
    assert infos["seed"].type == api_pb2.DATA_TYPE_STRING  # an integer reads "1", not "1.0000"
    assert infos["train.g_lr"].type == api_pb2.DATA_TYPE_FLOAT64
    metrics = [info.name.tag for info in experiment.metric_infos]
    assert metrics[:3] == ["Metrics/fid", "Loss/D", "Loss/G"]  # eval.objective, then the losses
    assert all(tag.startswith(("Metrics/", "Loss/")) for tag in metrics)


def test_each_job_records_its_preset_and_values(sweep):
    for job in JOBS:
        hparams = plugin_data(events(sweep / job), "_hparams_/session_start_info").session_start_info.hparams
        loss, seed = (part.split("=")[1] for part in job.split(","))
        assert hparams["experiment"].string_value == "lsgan_mlp_mnist"
        assert (hparams["loss"].string_value, hparams["seed"].string_value) == (loss, seed)
        assert hparams["train.batch_size"].string_value == "4" and hparams["dataset.image_size"].string_value == "28"
        assert hparams["train.g_lr"].number_value == pytest.approx(1e-3)  # the preset's rate, a number
        scored = hparams["protocol"].string_value  # what the final scores are measured with
        assert scored.startswith("net:mnist/") and scored.endswith(", 16 samples vs mnist test (16)")
        end = plugin_data(events(sweep / job), "_hparams_/session_end_info").session_end_info
        assert end.status == api_pb2.STATUS_SUCCESS


def test_the_hparams_view_shows_swept_keys_first_and_reads_the_runs_own_series(sweep, hparams_view):
    experiment, groups = hparams_view
    names = [info.name for info in experiment.hparam_infos]
    assert names[:2] == ["loss", "seed"] and "experiment" in names[:5]  # the view ticks the first 5
    assert not [name for name in names if name.startswith(("device", "log.", "eval."))]  # how it ran: in TEXT
    assert sorted(session.name for group in groups for session in group.sessions) == JOBS
    for group in groups:
        (session,) = group.sessions
        assert group.name == session.name  # the trial ID column shows the run's name, not a hash
        accumulator = events(sweep / session.name)
        shown = {value.name.tag: value.value for value in group.metric_values}
        assert set(shown) >= {"Metrics/fid", "Loss/D", "Loss/G"}
        for tag, value in shown.items():  # the last point of the run's own series: no separate Final/ copy
            assert value == pytest.approx(accumulator.Scalars(tag)[-1].value)


def test_no_series_is_written_twice_and_the_losses_sort_first(sweep):
    for job in JOBS:
        accumulator = events(sweep / job)
        tags = accumulator.Tags()["scalars"]
        assert not [tag for tag in tags if tag.startswith("Final/")]
        for tag in tags:
            steps = [event.step for event in accumulator.Scalars(tag)]
            assert len(steps) == len(set(steps)), tag
        groups = sorted({tag.split("/")[0] for tag in tags})  # TensorBoard groups cards by prefix, in this order
        assert groups[:2] == ["Loss", "Metrics"] and "Output" in groups and "D" not in groups


def test_the_layout_opens_on_the_losses_and_the_objective(sweep):
    accumulator = events(sweep / JOBS[0])
    (event,) = accumulator.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    first = layout.category[0]
    tags = accumulator.Tags()["scalars"]
    charts = [[tag for tag in tags if re.search(chart.multiline.tag[0], tag)] for chart in first.chart]
    assert charts == [["Loss/D"], ["Loss/G"], ["Metrics/fid"]]
    assert [category.title for category in layout.category][1:] == ["Discriminator", "Speed"]


def test_the_text_tab_shows_the_command_preset_overrides_and_commit(sweep):
    card = text(events(sweep / "loss=hinge,seed=1"), "command")
    assert "-m loss=lsgan,hinge seed=0,1 experiment=lsgan_mlp_mnist train.steps=4" in card
    assert "- **preset** `experiment=lsgan_mlp_mnist`" in card
    assert "loss=hinge seed=1 experiment=lsgan_mlp_mnist" in card  # this job's own overrides
    assert "varying loss, seed" in card
    commit = git_commit()
    assert (f"- **code** `{commit}`" in card) if commit else ("**code**" not in card)
    assert "lsgan_mlp_mnist" not in text(events(sweep / "loss=hinge,seed=1"), "config")  # the resolved values


def test_a_single_toy_run_writes_its_own_summary_without_image_size(tmp_path):
    result = ganlab_train("experiment=ring8_mlp", "train.steps=20", "log.every=10", "eval.num_samples=64",
                          "log.progress=false", "device=cpu", "device.threads=1", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    (run,) = (tmp_path / "outputs" / "runs").iterdir()
    accumulator = events(run)
    experiment = plugin_data(accumulator, "_hparams_/experiment").experiment
    names = [info.name for info in experiment.hparam_infos]
    assert "experiment" in names and "dataset.image_size" not in names  # a 2-D point has no image size
    assert not any(info.differs for info in experiment.hparam_infos)  # nothing is swept
    hparams = plugin_data(accumulator, "_hparams_/session_start_info").session_start_info.hparams
    assert hparams["experiment"].string_value == "ring8_mlp" and "dataset.image_size" not in hparams
    assert hparams["protocol"].string_value == "modes, 64 samples vs ring8 modes (8)" and "protocol" in names
    assert "- **preset** `experiment=ring8_mlp`" in text(accumulator, "command")


def git(repo: Path, *arguments: str) -> str:
    identity = ["-c", "user.name=ganlab", "-c", "user.email=ganlab@example.com"]
    return subprocess.run(["git", "-C", str(repo), *identity, *arguments], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip


def test_the_code_commit_is_that_of_the_checkout_and_says_when_it_is_dirty(tmp_path):
    assert git_commit(tmp_path) is None  # not a git checkout: nothing to record
    repo = tmp_path / "repo"
    (repo / "ganlab").mkdir(parents=True)
    git(repo, "init", "-q")
    assert git_commit(repo / "ganlab") is None  # a checkout that does not track the package: not its commit
    (repo / "ganlab" / "train.py").write_text("steps = 1\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    head = git(repo, "rev-parse", "HEAD")
    assert git_commit(repo / "ganlab") == head
    (repo / "ganlab" / "train.py").write_text("steps = 2\n")
    assert git_commit(repo / "ganlab") == f"{head} (dirty)"


def test_one_job_claims_the_sweep_summary_until_its_folder_is_deleted(tmp_path):
    assert claim_sweep_summary(tmp_path, tmp_path / "a")
    writer = FileWriter(str(tmp_path / "a"))  # job a writes the summary it claimed
    writer.add_summary(experiment_summary(compose_config([]), RunRecord({}), {"seed": "0"}, ["Loss/D"]))
    writer.close()
    assert not claim_sweep_summary(tmp_path, tmp_path / "b")
    shutil.rmtree(tmp_path / "a")  # deleted, to run that job again: the next job to finish writes the summary
    assert claim_sweep_summary(tmp_path, tmp_path / "c") and (tmp_path / SWEEP_SUMMARY).read_text() == "c"
