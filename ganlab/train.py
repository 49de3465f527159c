"""ganlab's one entry point: `ganlab-train` (or `python -m ganlab.train`) composes conf/ with Hydra and trains a GAN.

Read `train` top to bottom: build the parts, then for each step `d_steps` discriminator updates and one generator
update; every `log.every` steps the scalars are read once, every `log.sample_every` a sample grid is written,
every `train.checkpoint_every` a checkpoint. `main` only wraps `train` for the command line.
"""

import logging
import math
import shlex
import signal
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ganlab import checkpoint as ckpt
from ganlab.config import (
    CONF_DIR,
    absolute_paths,
    build,
    check_command_line,
    register_configs,
    resolve_image_size,
    validate,
)
from ganlab.data import make_batches
from ganlab.device import resolve_device, seed_everything
from ganlab.distributed import Runtime, is_writer_process, join_submitit_tasks, start
from ganlab.entry import INTERRUPTED, TRAINING_ABORTED, run_command
from ganlab.errors import DivergedError, GanlabError
from ganlab.evaluate import evaluate
from ganlab.hparams import RunRecord
from ganlab.monitor import Monitor, Progress, RunningStats, Silent, StopSignals, Throughput, all_finite
from ganlab.rundir import RunDirBusy, RunLock, held_lock, open_run, record_failure
from ganlab.runfolder import RAN_TO_ITS_END, Status, has_checkpoint, objective
from ganlab.step import build_gan, generators, sample_images, train_step
from ganlab.sweep import SweepInterrupt, parallel_jobs, register_resolvers, share_machine, sweep_stopped
from ganlab.watch import ObjectiveWatch

log = logging.getLogger("ganlab")


def log_samples(
    monitor: Monitor, source, gan, fixed_noise: torch.Tensor, fixed_labels: torch.Tensor | None, step: int
) -> None:
    """The fixed-noise sample grids of G and of its EMA at `step` (for the fixed labels, or None), to TensorBoard and
    samples/: a conditional model's grid has one row per class, the same noise down each column."""
    for suffix, generator in generators(gan):
        images = sample_images(generator, fixed_noise, fixed_labels)
        picture = source.picture(images, gan.model.output_range, fixed_labels)
        monitor.picture(f"Samples/fixed_noise{suffix}", picture, step, f"{'ema' if suffix else 'step'}_{step:07d}.png")


def log_scores(monitor: Monitor, gan, evaluator, num_samples: int, seed: int, step: int) -> dict[str, float]:
    """Evaluate G and its EMA on `num_samples` samples each at `step`, log the scores under Metrics/, return them."""
    named = evaluate(generators(gan), gan.model, evaluator, num_samples, seed)
    scores = {f"Metrics/{name}": value for name, value in named.items()}
    monitor.scalars(scores, step)
    return scores


class Clock:
    """Training seconds (evaluation excluded), counted across resumes, and the evaluation seconds beside them."""

    def __init__(self, seconds_before: float):
        self.before, self.started, self.eval_seconds = seconds_before, time.monotonic(), 0.0

    def seconds(self) -> float:
        return self.before + time.monotonic() - self.started - self.eval_seconds

    @contextmanager
    def evaluating(self):
        """Time spent inside does not count as training: a time budget buys the same training with or without it."""
        began = time.monotonic()
        try:
            yield
        finally:
            self.eval_seconds += time.monotonic() - began


class EvalSchedule:
    """When to evaluate during training: every `eval.every` steps, or else `eval.times` times spread over the run.

    Spread by progress, the larger of steps done / `train.steps` and seconds used / `train.max_seconds`, so a
    time-budget run, whose number of steps is not known in advance, also gets its curve.
    """

    def __init__(self, cfg: DictConfig, step: int, clock: Clock):
        self.every, self.times, self.train = cfg.eval.every, cfg.eval.times, cfg.train
        self.done = math.floor(self.progress(step, clock) * self.times)  # marks passed before a resume

    def progress(self, step: int, clock: Clock) -> float:
        by_time = clock.seconds() / self.train.max_seconds if self.train.max_seconds else 0.0
        return min(1.0, max(step / self.train.steps, by_time))

    def due(self, step: int, clock: Clock) -> bool:
        if self.every:
            return step % self.every == 0
        mark = min(math.floor(self.progress(step, clock) * self.times), self.times - 1)  # the last is the final's
        if mark <= self.done:
            return False
        self.done = mark
        return True


def stop_reason(
    step: int, cfg: DictConfig, clock: Clock, stop: StopSignals, runtime: Runtime, verdict: Status | None
) -> Status | None:
    """Why the run ends after `step`, or None to go on: completed, time_budget, a signal, or the `verdict` of the
    last evaluation (pruned, early_stopped).

    Every process of a distributed run acts on the same answer (`Runtime.agree`); the time budget and the verdict
    are rank 0's, whose clock leaves out its evaluations, which the other ranks spend waiting.
    """
    reason = None
    if step >= cfg.train.steps:
        reason = Status.COMPLETED
    elif runtime.is_writer and cfg.train.max_seconds is not None and clock.seconds() >= cfg.train.max_seconds:
        reason = Status.TIME_BUDGET
    elif stop.requested is not None:
        reason = Status.stopped_by(stop.requested)
    elif verdict is not None:
        reason = verdict
    return runtime.agree(reason)


def train(cfg: DictConfig, run_dir: str | Path, record: RunRecord | None = None, trial=None) -> dict:
    """Train one GAN as `cfg` says, writing everything into `run_dir`; returns the summary written to metrics.json.

    With `train.resume` (the default), a run dir that holds a checkpoint is continued from it, and one whose run
    already finished is left as it is: its summary is returned, so re-running a sweep only does the missing work.
    The run holds `run_dir`'s lock throughout: another process on the same folder stops at once.

    record: how the run was started (command, preset, overrides, sweep), for its TEXT tab and HPARAMS row; None
    for a run started from Python, whose config groups are then named by their classes. trial: the sweep trial
    that each evaluation reports the objective to, whose pruner may stop the run (ganlab.pruning); None = none.
    """
    validate(cfg)
    resolve_image_size(cfg)
    absolute_paths(cfg)
    run_dir = Path(run_dir)
    writer = is_writer_process()  # under torchrun, rank 0 holds the folder for all ranks
    with RunLock.acquire(run_dir) if writer else nullcontext():
        done = open_run(run_dir, cfg)
        if done is not None:
            log.info(
                "%s already %s at step %s: skipped (delete it to train again)", run_dir, done["status"], done["step"]
            )
            return done
        return _train(cfg, run_dir, record or RunRecord.from_config(cfg), trial)


def _train(cfg: DictConfig, run_dir: Path, record: RunRecord, trial) -> dict:
    """The training loop of `train`, in a run dir that is locked and checked.

    Under torchrun every rank runs this same loop on its slice of each batch (`ganlab.distributed`); `writer`
    (rank 0) alone writes files and evaluates, and the others take care to draw exactly the random numbers it draws.
    """
    runtime = start(resolve_device(cfg.device), cfg.train.batch_size)
    try:
        return _train_as(cfg, run_dir, record, runtime, trial)
    finally:
        runtime.close()


def _train_as(cfg: DictConfig, run_dir: Path, record: RunRecord, runtime: Runtime, trial) -> dict:
    """`_train`, as the process `runtime` describes."""
    device, writer = runtime.device, runtime.is_writer
    if not writer:  # one console, rank 0's: the other ranks log only warnings and errors
        log.setLevel(logging.WARNING)
    seed_everything(cfg.seed)  # the same on every rank: they draw the same global batches and keep their slices

    source = build(cfg.dataset, "dataset")
    gan = build_gan(cfg, device, source.num_classes, runtime, source)
    model = gan.model
    batches = make_batches(source, device, model.output_range, cfg.train.batch_size, cfg.seed)
    fixed_noise, fixed_labels = model.grid_latent(cfg.log.num_samples, device)
    evaluator = source.evaluator(device, model.output_range, cfg.eval) if cfg.eval.enabled and writer else None
    runtime.share_random_state()  # the evaluator drew random numbers on rank 0 alone

    start_step, seconds_before, watch_state = 0, 0.0, None
    if has_checkpoint(run_dir):  # train.resume is true here: a false one raised in open_run
        state = ckpt.load_checkpoint(run_dir)
        start_step, seconds_before, fixed_noise, fixed_labels = ckpt.restore(state, gan, run_dir, batches)
        watch_state = state.get("watch")  # None before the best checkpoint existed: the watch starts afresh
        fixed_noise = fixed_noise.to(device)
        fixed_labels = fixed_labels.to(device) if fixed_labels is not None else None
        log.info("resuming %s from step %d", run_dir, start_step)

    protocol = evaluator.protocol(cfg.eval.num_samples) if evaluator else None  # the final evaluation's, in HPARAMS
    monitor = Monitor(run_dir, start_step, protocol) if writer else Silent()  # one writer: rank 0's
    monitor.write_config(cfg)
    if writer:
        log.info("training in %s; watch it with: tensorboard --logdir %s", run_dir, shlex.quote(str(run_dir)))
    if start_step == 0:
        real_grid, _ = batches.next(cfg.log.num_samples)  # drawn on every rank, so their random streams stay equal
        monitor.start(cfg, record)
        monitor.picture("Samples/real", source.picture(real_grid, model.output_range), 0, "real.png")

    stats = RunningStats()
    speed = Throughput(start_step, cfg.train.batch_size * cfg.train.d_steps)
    clock = Clock(seconds_before)
    progress = Progress(cfg.train.steps, cfg.train.max_seconds, start_step, enabled=cfg.log.progress and writer)
    schedule = EvalSchedule(cfg, start_step, clock)
    watch = ObjectiveWatch(cfg.eval.objective, cfg.train.patience, trial, watch_state)
    during_samples = min(cfg.eval.during_samples, cfg.eval.num_samples)  # the evaluations before the final one

    def state(step: int) -> Callable[[], dict]:
        return lambda: ckpt.training_state(step, clock.seconds(), gan, fixed_noise, fixed_labels, cfg, batches,
                                           watch.state())  # fmt: skip

    last: dict[str, float] = {}  # the latest scalar read
    scores: dict[str, float] = {}  # the latest evaluation
    scored = cfg.eval.num_samples  # how many samples it scored
    reason, verdict, step = None, None, start_step  # verdict: an evaluation's call to stop, acted on at the next step
    if start_step >= cfg.train.steps and writer:  # stopped or killed after its last checkpoint, before its summary
        log_samples(monitor, source, gan, fixed_noise, fixed_labels, step)
        with clock.evaluating():
            scores = log_scores(monitor, gan, evaluator, cfg.eval.num_samples, cfg.seed, step) if evaluator else {}
    with StopSignals(announce=writer, sweep_dir=record.sweep_dir) as stop:
        for step in range(start_step + 1, cfg.train.steps + 1):
            stats.add(train_step(gan, batches, cfg.train.batch_size, cfg.train.d_steps))
            reason = stop_reason(step, cfg, clock, stop, runtime, verdict)
            # the final evaluation is a finished run's; a stopping one (signal, pruned) checkpoints at once: a requeue
            # notice leaves little time, and a pruned run keeps the scores it was judged on
            finishing = reason in RAN_TO_ITS_END

            if step % cfg.log.every == 0 or reason:
                values = runtime.mean(stats.read())  # the global batch's: the same on every rank, NaN included
                if all_finite(values):
                    last = values | speed.read(step)
                    monitor.scalars(last, step)
                    progress.update(step, clock.seconds(), last)
                else:
                    reason = Status.DIVERGED
            if reason != Status.DIVERGED:
                if finishing or (cfg.log.sample_every and step % cfg.log.sample_every == 0):
                    log_samples(monitor, source, gan, fixed_noise, fixed_labels, step)
                if evaluator is not None and (finishing or (not reason and schedule.due(step, clock))):
                    with clock.evaluating():  # the final evaluation scores its full count, the ones before fewer
                        scored = cfg.eval.num_samples if finishing else during_samples
                        scores = log_scores(monitor, gan, evaluator, scored, cfg.seed, step)
                        best, verdict = watch.see(scores, step, schedule.progress(step, clock))
                        if best:
                            monitor.save_checkpoint(state(step), best=True)
                if reason or (cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0):
                    if all(torch.isfinite(p).all() for p in model.parameters()):
                        monitor.save_checkpoint(state(step))
                    else:
                        reason = Status.DIVERGED
            if reason:
                break
    progress.close()

    status = reason or Status.COMPLETED  # no step left to take: a resumed run that had taken them all
    summary = {
        "status": status,
        "step": step,
        "seconds": round(clock.seconds(), 3),  # training alone; evaluation is eval_seconds
        "eval_seconds": round(clock.eval_seconds, 3),
        "final": last | scores,
        "metrics": {name.removeprefix("Metrics/"): value for name, value in scores.items()},
        "best": watch.summary(),  # the best eval.objective and its step: checkpoint.best.pt's
    }
    if scores:
        summary["protocol"] = evaluator.protocol(scored)  # what `metrics` were measured with: compare only alike
    monitor.write_summary(summary)  # first: the run's result must not hang on TensorBoard's extras
    monitor.finish(status, cfg, record, tags=last | scores)  # HPARAMS: the run's status, and the columns once
    monitor.close()
    if status == Status.PRUNED:
        log.info("pruned at step %d: %s %s was behind the other trials'", step, cfg.eval.objective,
                 scores.get(f"Metrics/{cfg.eval.objective}"))  # fmt: skip
    log.info("%s at step %d; outputs in %s", status, step, run_dir)
    try:  # a launcher's own handler runs once the checkpoint is safe: submitit requeues the job (and exits) here
        stop.forward()
    except Exception as error:  # submitit raises when it will not requeue (max_num_timeout used up): not a crash
        log.warning("%s at step %d and not requeued (%s): the same command continues it", status, step, error)
    return summary


register_configs()
register_resolvers()


def main() -> None:
    """`ganlab-train`: refuse a key the config does not have before Hydra makes a folder, then run `hydra_main`.

    Called through `ganlab.entry.run_command`, which turns that refusal, and a Ctrl-C outside the training loop (or
    a second one inside it), into one line on stderr.
    """
    check_command_line(sys.argv[1:])
    hydra_main()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_main(cfg: DictConfig) -> float:
    """Command-line wrapper: run `train`, and turn a user error into one sentence on stderr and a non-zero exit.

    In a multirun a job never raises, so one bad job cannot stop the sweep: a user error or a crash is recorded as
    status `failed` in its metrics.json (a crash's traceback goes to its train.log), and the job returns +inf.
    Returns the final `eval.objective` metric, which a sweeper (`hydra/sweeper=search`) minimises.
    """
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if multirun and "submitit" in str(OmegaConf.select(hydra_cfg, "launcher._target_")):
        join_submitit_tasks()  # a job of several tasks trains one run across them
    share_machine(cfg.device, parallel_jobs(hydra_cfg), hydra_cfg.job.num if multirun else 0)
    if not multirun:
        return run_job(cfg, run_dir, multirun, hydra_cfg)
    if sweep_stopped(hydra_cfg.sweep.dir):  # a Ctrl-C stopped the sweep: the same command runs this job
        return math.inf
    previous = SweepInterrupt(hydra_cfg.sweep.dir).install()  # a Ctrl-C while this job starts stops the sweep
    try:
        return run_job(cfg, run_dir, multirun, hydra_cfg)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def run_job(cfg: DictConfig, run_dir: Path, multirun: bool, hydra_cfg: DictConfig) -> float:
    """`hydra_main`'s run: train, then turn its end into an exit code, or (in a multirun) into the objective."""
    try:
        trial = None
        if multirun:
            from ganlab.pruning import trial_for_job  # a sweep's trial, only under hydra/sweeper=search

            trial = trial_for_job(hydra_cfg)
        summary = train(cfg, run_dir, RunRecord.from_hydra(cfg, hydra_cfg, multirun), trial)
        if summary["status"] == Status.DIVERGED:
            raise DivergedError(
                f"the losses became NaN or Inf at step {summary['step']}: the run stopped, kept its last good "
                f"checkpoint and wrote metrics.json in {run_dir}; lower train.lr or change the loss."
            )
        if multirun and sweep_stopped(hydra_cfg.sweep.dir):  # a Ctrl-C: the sweep ends once its running jobs
            return math.inf  # have checkpointed (SweepSummary), and exits 130 as a shell expects
        if summary["status"] == Status.STOPPED_BY_SIGINT:
            if is_writer_process():
                print(f"ganlab: stopped by Ctrl-C at step {summary['step']} with a checkpoint in {run_dir}: run the "
                      f"same command to continue it.", file=sys.stderr)  # fmt: skip
            sys.exit(INTERRUPTED)
        if summary["status"].startswith("stopped"):  # SIGTERM ends the sweep too; the same command continues it
            sys.exit(0)
        if cfg.eval.enabled and cfg.eval.objective not in summary["metrics"]:
            log.warning("eval.objective=%s is not a metric of this run: use one of %s", cfg.eval.objective,
                        sorted(summary["metrics"]))  # fmt: skip
        return objective(summary, cfg.eval.objective)
    except GanlabError as error:
        if is_writer_process():  # under torchrun every rank meets the same error: one line, rank 0's
            print(f"ganlab: error: {error}", file=sys.stderr)
        if not multirun:
            lock = held_lock(run_dir)  # the callback's: a run that could not start leaves no folder behind
            if lock is not None and not isinstance(error, DivergedError):
                lock.discard_if_unused()
            sys.exit(error.exit_code)
        if not isinstance(error, (DivergedError, RunDirBusy)) and is_writer_process():  # a busy folder is
            record_failure(run_dir, str(error))  # the holder's; rank 0 records for all ranks
    except Exception as error:
        if not multirun:
            raise
        log.exception("job crashed")
        print(
            f"ganlab: error: job {run_dir.name} crashed ({type(error).__name__}: {error}); see its train.log.",
            file=sys.stderr,
        )
        record_failure(run_dir, f"{type(error).__name__}: {error}")
    return math.inf


if __name__ == "__main__":
    run_command(main, aborted=TRAINING_ABORTED)
