"""ganlab's one entry point: `ganlab-train` (or `python -m ganlab.train`) composes conf/ with Hydra and trains a GAN.

Read `train` top to bottom: build the parts, then for each step `d_steps` discriminator updates and one generator
update; every `log.every` steps the scalars are read once, every `log.sample_every` a sample grid is written,
every `train.checkpoint_every` a checkpoint. `main` only wraps `train` for the command line.
"""

import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ganlab import checkpoint as ckpt
from ganlab.config import build, register_configs, validate
from ganlab.data import make_batches
from ganlab.device import resolve_device, seed_everything
from ganlab.errors import CheckpointError, ConfigError, DivergedError, GanlabError
from ganlab.evaluate import evaluate
from ganlab.monitor import Monitor, Progress, RunningStats, StopSignals, Throughput, all_finite, write_json
from ganlab.report import DONE
from ganlab.step import build_gan, generators, sample_images, train_step
from ganlab.sweep import parallel_jobs, register_resolvers, share_machine

log = logging.getLogger("ganlab")
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def check_writable(run_dir: Path) -> None:
    """Fail at start-up, not after an hour of training, if the run dir cannot be written."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ConfigError(
            f"cannot write to the run dir {run_dir} ({error.strerror}): set hydra.run.dir to a writable folder."
        ) from None


def read_summary(run_dir: Path) -> dict | None:
    """The run's metrics.json, or None if it has none (or only a damaged one)."""
    try:
        return json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None


def finished_summary(run_dir: Path, cfg: DictConfig) -> dict | None:
    """The metrics.json summary of a run that has nothing left to do in `run_dir`, else None.

    Done means diverged, completed all `train.steps`, or used all of `train.max_seconds`; a stopped, failed or
    interrupted run (no metrics.json) still has work, and so does a finished one whose steps or budget were raised.
    """
    summary = read_summary(run_dir)
    if summary is None:
        return None
    status, budget = summary.get("status"), cfg.train.max_seconds
    if (
        status == "diverged"
        or (status == "completed" and summary.get("step", 0) >= cfg.train.steps)
        or (status == "time_budget" and budget is not None and summary.get("seconds", 0) >= budget)
    ):
        return summary
    return None


# keys a continued run may change: how long it trains, how it logs and evaluates, where it runs and finds the data
RESUMABLE_CHANGES = ("train.steps", "train.max_seconds", "train.resume", "train.checkpoint_every", "log.", "eval.",
                     "device.", "dataset.root", "dataset.download", "dataset.workers", "dataset.in_memory",
                     "dataset.memory_limit_mb")  # fmt: skip


def flatten(node, prefix: str = "") -> dict:
    """A nested config as {"train.lr": 0.001, ...}."""
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def check_same_run(run_dir: Path, cfg: DictConfig) -> None:
    """Refuse to continue or skip a run whose saved config differs from `cfg` in what it trains.

    Folders are named by the command line, so an edited preset or config file would otherwise find the old run.
    """
    try:
        saved = flatten(OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml")))
    except (OSError, ValueError, TypeError):
        return  # no readable config: the checkpoint's own check (restore) still guards the weights
    current = flatten(OmegaConf.to_container(cfg, resolve=True))
    changed = [
        f"{key}: {saved.get(key)} -> {current.get(key)}"
        for key in sorted(saved.keys() | current.keys())
        if not key.startswith(RESUMABLE_CHANGES) and saved.get(key) != current.get(key)
    ]
    if changed:
        raise CheckpointError(
            f"run dir {run_dir} holds a run with a different config ({'; '.join(changed[:3])}): set hydra.run.dir "
            f"(hydra.sweep.dir for a sweep) to a new folder, or delete that one to start over."
        )


def log_samples(monitor: Monitor, source, gan, fixed_noise: torch.Tensor, step: int) -> None:
    """The fixed-noise sample grids of G and of its EMA at `step`, to TensorBoard and samples/."""
    for suffix, generator in generators(gan):
        picture = source.picture(sample_images(generator, fixed_noise), gan.model.output_range)
        monitor.picture(f"Samples/fixed_noise{suffix}", picture, step, f"{'ema' if suffix else 'step'}_{step:07d}.png")


def log_scores(monitor: Monitor, gan, evaluator, cfg: DictConfig, step: int) -> dict[str, float]:
    """Evaluate G and its EMA at `step`, log the scores under Metrics/ and return them."""
    named = evaluate(generators(gan), gan.model, evaluator, cfg.eval.num_samples, cfg.seed)
    scores = {f"Metrics/{name}": value for name, value in named.items()}
    monitor.scalars(scores, step)
    return scores


def train(cfg: DictConfig, run_dir: str | Path, choices: dict | None = None, overrides: Sequence[str] = ()) -> dict:
    """Train one GAN as `cfg` says, writing everything into `run_dir`; returns the summary written to metrics.json.

    With `train.resume` (the default), a run dir that holds a checkpoint is continued from it, and one whose run
    already finished is left as it is: its summary is returned, so re-running a sweep only does the missing work.

    choices: the config-group options of this run (model, loss, ...), used as hparam names; None derives them
    from the `_target_` classes. overrides: the command line's `key=value` overrides, added to the hparams.
    """
    validate(cfg)
    run_dir = Path(run_dir)
    check_writable(run_dir)
    if ckpt.has_checkpoint(run_dir) or (run_dir / "metrics.json").exists():
        if not cfg.train.resume:
            raise CheckpointError(
                f"run dir {run_dir} already holds a run: drop train.resume=false to continue it, "
                f"or set hydra.run.dir to a new folder."
            )
        check_same_run(run_dir, cfg)
        done = finished_summary(run_dir, cfg)
        if done is not None:
            log.info(
                "%s already %s at step %s: skipped (delete it to train again)", run_dir, done["status"], done["step"]
            )
            return done
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)

    gan = build_gan(cfg, device)
    model = gan.model
    source = build(cfg.dataset, "dataset")
    batches = make_batches(source, device, model.output_range, cfg.train.batch_size)
    fixed_noise = model.sample_noise(cfg.log.num_samples, device)
    evaluator = source.evaluator(device, model.output_range) if cfg.eval.enabled else None

    start_step, seconds_before = 0, 0.0
    if ckpt.has_checkpoint(run_dir):  # train.resume is true here: a false one raised above
        start_step, seconds_before, fixed_noise = ckpt.restore(ckpt.load_checkpoint(run_dir), gan, run_dir)
        fixed_noise = fixed_noise.to(device)
        log.info("resuming %s from step %d", run_dir, start_step)

    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    monitor = Monitor(run_dir, start_step)
    if start_step == 0:
        monitor.config(cfg)
        real_grid = batches.next(cfg.log.num_samples)
        monitor.picture("Samples/real", source.picture(real_grid, model.output_range), 0, "real.png")

    stats = RunningStats()
    speed = Throughput(start_step, cfg.train.batch_size * cfg.train.d_steps)
    progress = Progress(cfg.train.steps, start_step, enabled=cfg.log.progress)
    last: dict[str, float] = {}  # the latest scalar read
    scores: dict[str, float] = {}  # the latest evaluation
    status, step = "completed", start_step
    started = time.monotonic()
    if start_step >= cfg.train.steps:  # stopped or killed after its last checkpoint, before its summary
        log_samples(monitor, source, gan, fixed_noise, step)
        scores = log_scores(monitor, gan, evaluator, cfg, step) if evaluator is not None else {}
    with StopSignals() as stop:
        for step in range(start_step + 1, cfg.train.steps + 1):
            stats.add(train_step(gan, batches, cfg.train.batch_size, cfg.train.d_steps))

            out_of_time = cfg.train.max_seconds is not None and (
                seconds_before + time.monotonic() - started >= cfg.train.max_seconds
            )
            final = step == cfg.train.steps or out_of_time
            # asked to stop: checkpoint at once (a requeue notice leaves little time); evaluating waits for the end
            stopping = stop.requested is not None and not final
            if step % cfg.log.every == 0 or final or stopping:
                values = stats.read()
                if not all_finite(values):
                    status = "diverged"
                    break
                last = values | speed.read(step)
                monitor.scalars(last, step)
                progress.update(step, last)
            if final or (cfg.log.sample_every and step % cfg.log.sample_every == 0):
                log_samples(monitor, source, gan, fixed_noise, step)
            if evaluator is not None and (final or (cfg.eval.every and step % cfg.eval.every == 0)):
                scores = log_scores(monitor, gan, evaluator, cfg, step)
            if final or stopping or (cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0):
                if not all(torch.isfinite(p).all() for p in model.parameters()):
                    status = "diverged"
                    break
                seconds = seconds_before + time.monotonic() - started
                ckpt.save_checkpoint(run_dir, ckpt.training_state(step, seconds, gan, fixed_noise, cfg))
            if out_of_time or stopping:
                status = "time_budget" if out_of_time else f"stopped by {stop.requested}"
                break
    progress.close()

    summary = {
        "status": status,
        "step": step,
        "seconds": round(seconds_before + time.monotonic() - started, 3),
        "final": last | scores,
        "metrics": {name.removeprefix("Metrics/"): value for name, value in scores.items()},
    }
    if status in DONE:  # a stopped run writes its hparams when it finishes
        hparams = hparam_values(cfg, choices, overrides)
        final_values = {
            f"Final/{k}": v for k, v in (last | scores).items() if k.startswith(("Loss/", "D/", "Metrics/"))
        }
        monitor.hparams(hparams, final_values, step)
    monitor.close()
    write_json(run_dir / "metrics.json", summary)
    log.info("%s at step %d; outputs in %s", status, step, run_dir)
    stop.forward()  # a launcher's own handler (submitit requeues the job) runs once the checkpoint is safe
    return summary


def hparam_values(cfg: DictConfig, choices: dict | None, overrides: Sequence[str] = ()) -> dict:
    """The same hparam keys for every run of a sweep, so its HPARAMS table lines up: fixed ones and the overridden.

    Every job of a grid or Optuna sweep overrides the same keys, so adding them keeps the keys equal across jobs.
    """
    if choices is None:
        choices = {
            group: cfg[group]["_target_"].rsplit(".", 1)[-1] for group in ("model", "loss", "regularizer", "dataset")
        }
    values = {group: str(choices.get(group)) for group in ("model", "loss", "regularizer", "dataset")}
    values.update(
        {
            "seed": cfg.seed,
            "train.batch_size": cfg.train.batch_size,
            "train.d_steps": cfg.train.d_steps,
            "train.g_lr": cfg.train.g_lr,
            "train.d_lr": cfg.train.d_lr,
            "model.z_dim": cfg.model.z_dim,
            "dataset.image_size": cfg.dataset.image_size,
        }
    )
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        value = OmegaConf.select(cfg, key, default=None)
        if key not in values and (value is None or isinstance(value, (bool, int, float, str))):
            values[key] = "null" if value is None else value  # TensorBoard takes no None: keep the key anyway
    return values


def objective(summary: dict, name: str) -> float:
    """The number a sweeper minimises: the final metric `name`, or +inf for a run that did not finish or has none."""
    value = summary.get("metrics", {}).get(name)
    if summary.get("status") not in DONE or not isinstance(value, (int, float)) or math.isnan(value):
        return math.inf
    return float(value)


register_configs()
register_resolvers()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    """Command-line wrapper: run `train`, and turn a user error into one sentence on stderr and a non-zero exit.

    In a multirun a job never raises, so one bad job cannot stop the sweep: a user error or a crash is recorded as
    status `failed` in its metrics.json (a crash's traceback goes to its train.log), and the job returns +inf.
    Returns the final `eval.objective` metric, which the Optuna sweeper minimises.
    """
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    run_dir = Path(hydra_cfg.runtime.output_dir)
    share_machine(cfg.device, parallel_jobs(hydra_cfg), hydra_cfg.job.num if multirun else 0)
    try:
        summary = train(cfg, run_dir, dict(hydra_cfg.runtime.choices), list(hydra_cfg.overrides.task))
        if summary["status"] == "diverged":
            raise DivergedError(
                f"the losses became NaN or Inf at step {summary['step']}: the run stopped, kept its last good "
                f"checkpoint and wrote metrics.json in {run_dir}; lower train.lr or change the loss."
            )
        if summary["status"].startswith("stopped"):  # SIGTERM ends the sweep too; the same command continues it
            sys.exit(0)
        if cfg.eval.enabled and cfg.eval.objective not in summary["metrics"]:
            log.warning("eval.objective=%s is not a metric of this run: use one of %s", cfg.eval.objective,
                        sorted(summary["metrics"]))  # fmt: skip
        return objective(summary, cfg.eval.objective)
    except GanlabError as error:
        print(f"ganlab: error: {error}", file=sys.stderr)
        if not multirun:
            sys.exit(error.exit_code)
        if not isinstance(error, DivergedError):
            record_failure(run_dir, str(error))
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


def record_failure(run_dir: Path, error: str) -> None:
    """Mark a sweep job `failed` in its metrics.json (if its folder can be written), for the summary and report.

    A finished run's summary is never replaced: the error (e.g. a changed config) is about this attempt, not it.
    """
    if (read_summary(run_dir) or {}).get("status") in DONE + ("diverged",):
        return
    try:
        write_json(run_dir / "metrics.json", {"status": "failed", "error": error})
    except OSError:
        log.warning("could not record the failure in %s", run_dir)


if __name__ == "__main__":
    main()
