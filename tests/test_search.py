"""`hydra/sweeper=search` (hydra_plugins/ganlab_search, ganlab/search.py, ganlab/pruning.py): real studies over real
toy runs of the command line, in the sweep folder's journal file and in SQLite, with the basic and joblib launchers,
continued by the same command; and a job's reports to its trial, which the study's pruner judges."""

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import CONF_DIR, ganlab_train, wait_for
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.utils import instantiate
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from ganlab.errors import ConfigError
from ganlab.pruning import JOURNAL, trial_for_job
from ganlab.runfolder import write_summary
from ganlab.search import SearchSpace, build_sampler, job_value, outcome

# a toy run of a fraction of a second, evaluated 4 times; high_quality is higher-is-better, so a job returns it negated
TOY = ["dataset=ring8", "model=mlp", "model.hidden=16", "train.steps=60", "train.batch_size=32", "log.every=10",
       "eval.num_samples=64", "eval.during_samples=64", "eval.times=4", "eval.objective=high_quality", "device=cpu",
       "device.threads=1", "log.progress=false"]  # fmt: skip
SEARCH = ["hydra/sweeper=search", "hydra.sweeper.sampler.seed=0", "hydra.sweep.dir=sweep"]


def hydra_config(overrides: list[str]):
    """The `hydra` node of the real config composed with `overrides`, as a job sees it (composing runs nothing)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True).hydra


def journal_storage(sweep: Path) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(sweep / JOURNAL)))


def journal_study(sweep: Path) -> optuna.Study:
    return optuna.load_study(study_name="ganlab", storage=journal_storage(sweep))


def jobs_by_trial(sweep: Path) -> dict[int, Path]:
    """Each job folder of a sweep by the trial number the sweeper gave it (hydra.sweeper.trial in .hydra/)."""
    jobs = {}
    for saved in sweep.glob("*/.hydra/hydra.yaml"):
        hydra = yaml.safe_load(saved.read_text())["hydra"]
        (trial,) = [int(o.split("=")[1]) for o in hydra["overrides"]["hydra"] if o.startswith("hydra.sweeper.trial=")]
        jobs[trial] = saved.parent.parent
    return jobs


def objective(job: Path) -> float:
    """What the job returned: its final high_quality, negated."""
    return -yaml.safe_load((job / "metrics.json").read_text())["metrics"]["high_quality"]


def test_the_search_space_reads_the_command_lines_sweep_syntax():
    space = SearchSpace(
        ["train.lr=0.5", "loss=bce,lsgan,hinge", "train.lr=tag(log, interval(1e-4, 1e-2))",
         "model.hidden=range(8,33,8)", "train.d_steps=tag(int, interval(1, 3))", "train.ema_decay=interval(0.9, 0.99)",
         "seed=3", "+extra=choice(a,b)"]
    )  # fmt: skip
    assert space.distributions == {
        "loss": CategoricalDistribution(["bce", "lsgan", "hinge"]),
        "train.lr": FloatDistribution(1e-4, 1e-2, log=True),  # the later override of a key wins
        "model.hidden": IntDistribution(8, 32, step=8),  # range's stop is excluded, as in Python
        "train.d_steps": IntDistribution(1, 3),
        "train.ema_decay": FloatDistribution(0.9, 0.99),
        "+extra": CategoricalDistribution(["a", "b"]),
    }
    assert space.fixed == ["seed=3"]
    assert SearchSpace(["train.lr=interval(0.1, 1)", "train.lr=0.3"]).fixed == ["train.lr=0.3"]  # a plain value wins
    # a drawn float reaches its job with 3 significant digits (more where that would leave the interval): short names
    assert job_value(0.0012318769281, FloatDistribution(1e-4, 1e-2, log=True)) == "0.00123"
    assert job_value(1000.5312, FloatDistribution(1000.5, 1000.6)) == "1000.5"
    assert job_value(1.0, FloatDistribution(0.5, 2.0)) == "1.0"  # still a float for Hydra
    small = job_value(2.5e-05, FloatDistribution(1e-5, 1e-4))
    assert OverridesParser.create().parse_override(f"train.lr={small}").value() == 2.5e-05
    with pytest.raises(ConfigError, match="grid needs a list of values for train.lr"):
        SearchSpace(["train.lr=interval(0.1, 1)"]).grid()


@pytest.mark.parametrize("group", ["sampler", "pruner"])
def test_every_sampler_and_pruner_option_builds(group):
    options = sorted(path.stem for path in (CONF_DIR / "hydra" / "sweeper" / group).glob("*.yaml"))
    assert len(options) >= 3
    space = SearchSpace(["loss=bce,lsgan", "seed=range(0,3)"])
    for option in options:
        settings = hydra_config(["hydra/sweeper=search", f"hydra/sweeper/{group}={option}"]).sweeper
        built = build_sampler(settings.sampler, space) if group == "sampler" else instantiate(settings.pruner)
        assert type(built).__name__ == settings[group]._target_.rsplit(".", 1)[1]


def test_a_search_runs_a_study_in_the_sweep_folders_journal_and_the_same_command_continues_it(tmp_path):
    command = [*TOY, *SEARCH, "hydra.sweeper.n_trials=3", "loss=bce,lsgan", "train.lr=tag(log, interval(1e-4, 1e-2))"]
    first = ganlab_train("-m", *command, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    sweep = tmp_path / "sweep"
    study = journal_study(sweep)
    trials = study.get_trials()
    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 3
    jobs = jobs_by_trial(sweep)
    assert sorted(jobs) == [0, 1, 2]
    for trial in trials:
        assert trial.params["loss"] in ("bce", "lsgan") and 1e-4 <= trial.params["train.lr"] <= 1e-2
        lr = job_value(trial.params["train.lr"], trial.distributions["train.lr"])
        # named by the swept keys, not by the trial number the sweeper adds
        assert jobs[trial.number].name == f"loss={trial.params['loss']},lr={lr}" and len(lr) <= 8
        assert trial.value == objective(jobs[trial.number])
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == min(trial.value for trial in trials)
    assert results["trials"] == {"complete": 3}

    # the same command again: every trial is finished, so it runs no job
    finished = {job: (job / "metrics.json").stat().st_mtime_ns for job in jobs.values()}
    again = ganlab_train("-m", *command, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "Launching" not in again.stdout and len(journal_study(sweep).get_trials()) == 3
    assert {job: (job / "metrics.json").stat().st_mtime_ns for job in jobs.values()} == finished

    # a sweep stopped after the study handed out trial 3: a larger n_trials runs that trial with its own parameters,
    # then new trials only up to n_trials
    unfinished = study.ask(trials[0].distributions)
    more = ganlab_train("-m", *command, "hydra.sweeper.n_trials=5", cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    trials = journal_study(sweep).get_trials()
    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 5
    assert trials[3].params == unfinished.params
    jobs = jobs_by_trial(sweep)
    assert sorted(jobs) == [0, 1, 2, 3, 4] and trials[3].value == objective(jobs[3])
    assert {job: (job / "metrics.json").stat().st_mtime_ns for job in finished} == finished  # none ran again


def test_jobs_of_the_joblib_launcher_report_to_one_study(tmp_path):
    result = ganlab_train(
        "-m", *TOY, *SEARCH, "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=4", "hydra/sweeper/sampler=random", "train.lr=interval(1e-4, 1e-2)", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("is launching 2 jobs") == 2  # two batches of two, each in 2 worker processes
    sweep = tmp_path / "sweep"
    trials = journal_study(sweep).get_trials()
    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 4
    jobs = jobs_by_trial(sweep)
    assert sorted(jobs) == [0, 1, 2, 3]
    for number, job in jobs.items():
        # the job's own Hydra config (its worker's) leads to its trial in the sweep's study
        report = trial_for_job(OmegaConf.load(job / ".hydra" / "hydra.yaml").hydra)
        assert report.number == number and trials[number].value == objective(job)
        lr = job_value(trials[number].params["train.lr"], trials[number].distributions["train.lr"])
        assert job.name == f"lr={lr}"


def test_a_search_in_sqlite_with_the_grid_sampler_runs_each_combination_once(tmp_path):
    database = tmp_path / "study.db"
    result = ganlab_train("-m", *TOY, *SEARCH, "hydra/sweeper/sampler=grid", f"hydra.sweeper.storage=sqlite:///{database}",
                          "loss=bce,lsgan", "train.batch_size=16,32", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="ganlab", storage=f"sqlite:///{database}")
    trials = study.get_trials()
    assert [trial.state for trial in trials] == [TrialState.COMPLETE] * 4  # n_trials (20) stops at the grid's size
    assert sorted((t.params["loss"], t.params["train.batch_size"]) for t in trials) == [
        ("bce", 16), ("bce", 32), ("lsgan", 16), ("lsgan", 32)
    ]  # fmt: skip
    assert not (tmp_path / "sweep" / JOURNAL).exists()
    assert sorted(job.name for job in jobs_by_trial(tmp_path / "sweep").values()) == [
        "batch_size=16,loss=bce", "batch_size=16,loss=lsgan", "batch_size=32,loss=bce", "batch_size=32,loss=lsgan"
    ]  # fmt: skip


def test_a_storage_that_cannot_be_opened_is_one_line_and_exit_code_2(tmp_path):
    url = f"sqlite:///{tmp_path / 'no' / 'such' / 'folder' / 'study.db'}"
    result = ganlab_train("-m", *TOY, *SEARCH, f"hydra.sweeper.storage={url}", "loss=bce,lsgan", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"ganlab: error: hydra.sweeper.storage={url} cannot be opened (unable to open database file): give an "
        f"Optuna storage URL this machine can reach, e.g. sqlite:///study.db, or null for the journal file "
        f"{JOURNAL} in the sweep folder."
    ]  # fmt: skip
    assert "Traceback" not in result.stdout and "Launching" not in result.stdout


@pytest.mark.parametrize(
    "status, returned, ending",
    [
        ("completed", -0.5, (TrialState.COMPLETE, -0.5)),
        ("time_budget", 2.0, (TrialState.COMPLETE, 2.0)),
        ("early_stopped", 1.0, (TrialState.COMPLETE, 1.0)),
        ("completed", math.inf, (TrialState.FAIL, None)),  # no such metric: +inf is not a value to tell
        ("pruned", math.inf, (TrialState.PRUNED, None)),
        ("diverged", math.inf, (TrialState.PRUNED, None)),
        ("failed", math.inf, (TrialState.FAIL, None)),
        ("stopped by SIGTERM", math.inf, None),  # left RUNNING: the same command resumes it
        (None, math.inf, None),  # no metrics.json: it never started (a Ctrl-C stopped the sweep first)
    ],
)
def test_a_jobs_status_decides_how_its_trial_ends(tmp_path, status, returned, ending):
    if status is not None:
        write_summary(tmp_path, {"status": status, "step": 10})
    hydra = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(tmp_path)}}})
    job = JobReturn(hydra_cfg=hydra, status=JobStatus.COMPLETED, _return_value=returned)
    assert outcome(job) == ending


@pytest.mark.parametrize(
    "launcher", [[], ["hydra/launcher=submitit_local", "hydra.launcher.cpus_per_task=1"]], ids=["basic", "submitit"]
)
def test_a_real_sweep_prunes_a_trial_whose_curve_falls_behind(tmp_path, launcher):
    # the trials come from the study's queue, in order: a learning rate that covers modes, then one that learns nothing;
    # on submitit's local executor each job is a process of its own, which reports to the journal in the sweep folder
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    study = optuna.create_study(study_name="ganlab", storage=journal_storage(sweep))
    study.enqueue_trial({"train.lr": 2e-3})
    study.enqueue_trial({"train.lr": 1e-7})
    longer = ["train.steps=1500", "eval.num_samples=256", "eval.during_samples=256", "eval.objective=modes_covered"]
    result = ganlab_train(
        "-m", *TOY, *longer, *SEARCH, *launcher, "hydra.sweeper.n_trials=2", "train.lr=tag(log, interval(1e-7, 1e-2))",
        "hydra/sweeper/pruner=median", "hydra.sweeper.pruner.n_startup_trials=1",
        "hydra.sweeper.pruner.n_warmup_steps=0", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    good, bad = journal_study(sweep).get_trials()
    assert (good.params, good.state, bad.params, bad.state) == (
        {"train.lr": 2e-3}, TrialState.COMPLETE, {"train.lr": 1e-7}, TrialState.PRUNED
    )  # fmt: skip
    assert list(good.intermediate_values) == [250, 500, 750, 1000]  # each evaluation, at its per-mille of the run
    assert good.intermediate_values[500] < 0  # modes covered by half-way, negated
    assert bad.intermediate_values == {250: 0.0, 500: 0.0}  # none: behind the median at the second evaluation
    summary = yaml.safe_load((jobs_by_trial(sweep)[1] / "metrics.json").read_text())
    assert summary["status"] == "pruned" and summary["step"] < 1500


def study_with_completed_trials(tmp_path: Path, pruner: str):
    """A study in a sweep folder's journal with 5 completed trials whose curves fell from 1.0 to 0.4, reported at a
    quarter, half, three quarters and all of each run, as jobs report; and the Hydra config of a sixth trial's job."""
    sweep = tmp_path / "sweep"
    hydra = [f"hydra.sweep.dir={sweep}", "hydra/sweeper=search", f"hydra/sweeper/pruner={pruner}"]
    # the sweeper creates the study; each job reports to its trial, and the sweeper tells how it ended
    from ganlab.search import open_study

    study = open_study(hydra_config(hydra).sweeper, SearchSpace([]), sweep)
    for number in range(5):
        study.ask()
        report = trial_for_job(hydra_config(hydra + [f"hydra.sweeper.trial={number}"]))
        assert not any(report.report(value, progress) for value, progress in [(1.0, 0.25), (0.7, 0.5), (0.5, 0.75)])
        assert not report.report(0.4, 1.0)
        study.tell(number, 0.4)
    study.ask()
    return trial_for_job(hydra_config(hydra + ["hydra.sweeper.trial=5"]))


def test_a_trial_far_behind_the_completed_trials_is_pruned_after_the_warm_up(tmp_path):
    report = study_with_completed_trials(tmp_path, "median")
    assert report.number == 5
    assert report.report(5.0, 0.25) is False  # far behind, but within the first 30% of its run (n_warmup_steps)
    assert report.report(4.0, 0.5) is True  # its best, 4.0, is worse than the completed trials' median there (0.7)
    assert journal_study(tmp_path / "sweep").trials[5].intermediate_values == {250: 5.0, 500: 4.0}  # per-mille steps


def test_a_trial_as_good_as_the_others_is_not_pruned(tmp_path):
    report = study_with_completed_trials(tmp_path, "median")
    assert not any(report.report(value, progress) for value, progress in [(0.9, 0.25), (0.6, 0.5), (0.5, 0.75)])


def test_the_none_pruner_never_prunes(tmp_path):
    report = study_with_completed_trials(tmp_path, "none")
    assert not any(report.report(value, progress) for value, progress in [(5.0, 0.25), (4.0, 0.5), (math.inf, 1.0)])


def test_a_job_outside_a_search_has_no_trial():
    assert trial_for_job(hydra_config(["hydra/sweeper=search"])) is None  # hydra.sweeper.trial unset: not a trial job
    assert trial_for_job(hydra_config([])) is None  # the basic sweeper


def test_the_fid_search_preset_is_a_search(tmp_path):
    result = ganlab_train("hydra/sweeper=fid_search", "--cfg", "hydra", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    sweeper = yaml.safe_load(result.stdout)["hydra"]["sweeper"]
    assert sweeper["_target_"] == "hydra_plugins.ganlab_search.search_sweeper.SearchSweeper"
    assert (sweeper["direction"], sweeper["n_trials"], sweeper["sampler"]["seed"]) == ("minimize", 20, 0)
    assert sweeper["pruner"]["_target_"] == "optuna.pruners.HyperbandPruner" and sweeper["storage"] is None
    assert set(sweeper["params"]) == {"train.lr", "train.batch_size", "train.d_steps"}
    space = SearchSpace([f"{key}={value}" for key, value in sweeper["params"].items()])
    assert space.distributions["train.lr"] == FloatDistribution(1e-5, 1e-2, log=True)
    assert space.distributions["train.batch_size"] == CategoricalDistribution([32, 64, 128])


def test_a_sweep_stopped_by_sigterm_while_trials_run_continues_to_n_trials_training_no_trial_twice(tmp_path):
    """SIGTERM (as SLURM sends on preemption) to the whole sweep while its first trial trains: the same command then
    resumes that trial from its checkpoint in its folder and adds trials only up to n_trials."""
    sweep = tmp_path / "sweep"
    long = ["train.steps=3000", "train.checkpoint_every=50", "eval.times=10", "hydra.sweeper.n_trials=3"]
    command = [sys.executable, "-m", "ganlab.train", "-m", *TOY, *long, *SEARCH, "hydra/sweeper/pruner=none",
               "loss=bce,hinge", "train.lr=tag(log, interval(1e-4, 1e-2))"]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)  # fmt: skip
    wait_for(lambda: any(sweep.glob("*/checkpoint.pt")) or process.poll() is not None, "the first trial's checkpoint")
    os.killpg(process.pid, signal.SIGTERM)
    process.communicate(timeout=120)
    (first,) = [job for job in jobs_by_trial(sweep).values() if (job / "checkpoint.pt").exists()]
    stopped_at = yaml.safe_load((first / "metrics.json").read_text())["step"]
    assert [t.state for t in journal_study(sweep).trials] == [TrialState.RUNNING]  # left for the same command

    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = journal_study(sweep).trials
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
    jobs = jobs_by_trial(sweep)
    assert sorted(jobs) == [0, 1, 2] and jobs[0] == first
    assert f"resuming {first} from step {stopped_at}" in (first / "train.log").read_text()
    for job in jobs.values():  # each trained its 3000 steps once: one folder, one run, no step trained again
        summary = yaml.safe_load((job / "metrics.json").read_text())
        assert (summary["status"], summary["step"]) == ("completed", 3000)
