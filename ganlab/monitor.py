"""What a run writes for people to read: TensorBoard scalars, sample grids (also as PNG), how it was started (the
TEXT tab), a layout that opens on the losses and the objective, and its HPARAMS row."""

import logging
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import save_image
from tqdm import tqdm

from ganlab import checkpoint, hparams
from ganlab.hparams import RunRecord
from ganlab.runfolder import CONFIG, FINAL, RAN_TO_ITS_END, protocol_label, write_summary
from ganlab.sweep import stop_sweep, sweep_stopped

log = logging.getLogger("ganlab")
PACKAGE_DIR = Path(__file__).resolve().parent  # the source tree whose git commit a run records


class RunningStats:
    """Sums of slash-named scalars kept on the device, so the loop never syncs until `read` is called."""

    def __init__(self):
        self.sums: dict[str, Tensor] = {}
        self.count = 0

    def add(self, stats: dict[str, Tensor]) -> None:
        for name, value in stats.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.count += 1

    def read(self) -> dict[str, float]:
        """The means since the last read (one host-device sync), then start over."""
        if not self.sums:
            return {}
        names = list(self.sums)
        values = torch.stack([self.sums[name] for name in names]).div(self.count).tolist()
        self.sums, self.count = {}, 0
        return dict(zip(names, values, strict=True))


def all_finite(stats: dict[str, float]) -> bool:
    return all(math.isfinite(value) for value in stats.values())


class Monitor:
    """What a run writes into its folder: TensorBoard event files in the folder itself (no subfolders), PNG copies
    of every sample grid, its config, checkpoints and metrics.json. Rank 0 of a distributed run holds it; the other
    ranks hold its silent twin, `Silent`."""

    def __init__(self, run_dir: Path, start_step: int = 0, protocol: dict | None = None):
        self.run_dir = run_dir
        # HPARAMS' `protocol` column: what the final scores were measured with (runfolder.protocol); {} = no scores
        self.protocol = {"protocol": protocol_label(protocol)} if protocol else {}
        self.samples_dir = run_dir / "samples"
        self.samples_dir.mkdir(parents=True, exist_ok=True)
        # purge_step drops events a previous process wrote after the checkpoint this run resumes from
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=start_step + 1 if start_step else None)

    def write_config(self, cfg: DictConfig) -> None:
        """The resolved config the run trains with (config.yaml)."""
        (self.run_dir / CONFIG).write_text(OmegaConf.to_yaml(cfg, resolve=True))

    def save_checkpoint(self, state: Callable[[], dict], best: bool = False) -> None:
        """The training state that `state()` builds, as the latest checkpoint, or with `best` as checkpoint.best.pt."""
        (checkpoint.save_best if best else checkpoint.save_checkpoint)(self.run_dir, state())

    def write_summary(self, summary: dict) -> None:
        write_summary(self.run_dir, summary)

    def scalars(self, stats: dict[str, float], step: int) -> None:
        for name, value in stats.items():
            self.writer.add_scalar(name, value, step)

    def start(self, cfg: DictConfig, record: RunRecord) -> None:
        """What a new run writes once: how it was started and its resolved config (TEXT), the CUSTOM SCALARS layout,
        and its HPARAMS row, so a running job shows in the table."""
        self.writer.add_text("command", run_text(record), 0)
        yaml = OmegaConf.to_yaml(cfg, resolve=True)
        self.writer.add_text("config", "\n".join("    " + line for line in yaml.splitlines()), 0)
        self.writer.add_custom_scalars(scalar_layout(cfg.eval.objective))
        row = hparams.session_start(hparams.hparam_values(cfg, record) | self.protocol, self.run_dir.name)
        self.writer._get_file_writer().add_summary(row)
        self.writer.flush()  # a resumed run does not write these again: a kill in its first minutes must not lose them

    def picture(self, tag: str, picture: Tensor, step: int, png_name: str) -> Path:
        """Log a (3, H, W) picture in [0, 1] to TensorBoard and save it as `samples/<png_name>`."""
        self.writer.add_image(tag, picture, step)
        path = self.samples_dir / png_name
        save_image(picture, path)
        return path

    def finish(self, status: str, cfg: DictConfig, record: RunRecord, tags) -> None:
        """The run's end in HPARAMS: its status and, the first time in a sweep (always for a single run), the experiment
        summary, whose metric columns are the objective and the losses among `tags`, the scalar tags it wrote.

        A stopped run writes nothing yet: it writes its end when a later process finishes it.
        """
        if status not in FINAL:
            return
        file_writer = self.writer._get_file_writer()
        file_writer.add_summary(hparams.session_end(status))
        if status not in RAN_TO_ITS_END:  # a pruned or diverged run may lack some metrics: another job names them
            return
        values = hparams.hparam_values(cfg, record) | self.protocol
        experiment = hparams.experiment_summary(cfg, record, values, hparams.metric_tags(tags, cfg.eval.objective))
        if record.sweep_dir is None or hparams.claim_sweep_summary(record.sweep_dir, self.run_dir):
            file_writer.add_summary(experiment)
            file_writer.flush()  # a job that finishes next reads it to know the claim is kept

    def close(self) -> None:
        self.writer.close()


class Silent:
    """The `Monitor` of a process that writes nothing: the ranks other than 0 of a distributed run."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *arguments, **options: None


def scalar_layout(objective: str) -> dict:
    """The CUSTOM SCALARS tab: the losses and the objective (G and EMA) first, D's outputs and the speed after."""
    metric = re.escape(objective.removesuffix("_ema"))
    return {
        "Training": {
            "Loss/D": ["Multiline", [r"^Loss/D$"]],
            "Loss/G": ["Multiline", [r"^Loss/G$"]],
            f"{objective.removesuffix('_ema')} of G and its EMA": ["Multiline", [rf"^Metrics/{metric}(_ema)?$"]],
        },
        "Discriminator": {"mean D output on real and fake batches": ["Multiline", [r"^Output/"]]},
        "Speed": {"steps per second": ["Multiline", [r"^Speed/steps_per_second$"]]},
    }


def command_line(argv: list[str]) -> str:
    """The command as typed, near enough: the program's name (`python -m ganlab.train` for the module) and its
    arguments, quoted for a shell."""
    program = Path(argv[0]).name
    if program == "train.py" and Path(argv[0]).parent.name == "ganlab":
        program = "python -m ganlab.train"
    return " ".join([program, *(shlex.quote(argument) for argument in argv[1:])])


def git_commit(source: Path = PACKAGE_DIR) -> str | None:
    """The commit of the git checkout that ganlab runs from, plus " (dirty)" if its tracked files were changed.

    None when ganlab is not a git checkout (an installed package), also when it lies inside another repository
    (a virtual environment in a project): the checkout must track ganlab's own files.
    """

    def git(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(source), *arguments], capture_output=True, text=True, timeout=30)

    try:
        if git("ls-files", "--error-unmatch", ".").returncode != 0:
            return None
        head = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):  # no git on this machine, or it hung
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + (" (dirty)" if changed.stdout.strip() else "")


def run_text(record: RunRecord) -> str:
    """The TEXT tab's `command` card (a Markdown list): the command line, preset, overrides, sweep and code commit."""
    rows = {
        "command": command_line(record.argv) if record.argv else "train() called from Python",
        "directory": os.getcwd(),
        "preset": f"experiment={record.choices['experiment']}" if record.choices.get("experiment") else None,
        "overrides": " ".join(record.overrides) or "none",
        "sweep": f"{record.sweep_dir}, varying {', '.join(record.swept) or 'nothing'}" if record.sweep_dir else None,
        "code": git_commit(),
    }
    return "\n".join(f"- **{name}** `{value}`" for name, value in rows.items() if value is not None)


class Throughput:
    """Steps and images per second since the previous read."""

    def __init__(self, step: int, images_per_step: int):
        self.step, self.time = step, time.monotonic()
        self.images_per_step = images_per_step

    def read(self, step: int) -> dict[str, float]:
        now = time.monotonic()
        steps_per_second = (step - self.step) / max(now - self.time, 1e-9)
        self.step, self.time = step, now
        return {
            "Speed/steps_per_second": steps_per_second,
            "Speed/images_per_second": steps_per_second * self.images_per_step,
        }


class Progress:
    """A progress bar on an interactive terminal; a log line per scalar read elsewhere (sweeps, CI).

    It counts towards the budget that will stop the run: `train.steps`, or the seconds of `train.max_seconds` when
    at this pace they run out first, so its time left is the run's.
    """

    def __init__(self, steps: int, max_seconds: float | None, start: int, enabled: bool):
        self.steps, self.max_seconds, self.by_time = steps, max_seconds, False
        self.bar = tqdm(
            total=steps, initial=start, unit="step", dynamic_ncols=True, disable=not (enabled and sys.stderr.isatty())
        )

    def update(self, step: int, seconds: float, values: dict[str, float]) -> None:
        """Show `step` after `seconds` of training (the run's clock) and the latest losses."""
        by_time = self.max_seconds is not None and seconds / self.max_seconds > step / self.steps
        d_loss, g_loss, rate = values["Loss/D"], values["Loss/G"], values["Speed/steps_per_second"]
        if self.bar.disable:
            done = f"{step} ({seconds:.0f}/{self.max_seconds:.0f} s)" if by_time else f"{step}/{self.steps}"
            log.info("step %s  Loss/D %.4f  Loss/G %.4f  %.1f steps/s", done, d_loss, g_loss, rate)
            return
        if by_time != self.by_time:  # the time budget will stop the run first: count seconds from here on
            self.by_time = by_time
            self.bar.reset(total=round(self.max_seconds) if by_time else self.steps)
            self.bar.unit = "s" if by_time else "step"
        done = round(seconds) if by_time else step
        self.bar.update(done - self.bar.n)
        losses = {"D": f"{d_loss:.3f}", "G": f"{g_loss:.3f}"}
        self.bar.set_postfix({"step": step} | losses if by_time else losses)  # counting seconds: say the step too

    def close(self) -> None:
        self.bar.close()


class StopSignals:
    """While active, SIGINT (Ctrl-C), SIGTERM, SIGUSR1 and SIGUSR2 ask the loop to checkpoint and return instead of
    killing the process.

    A second Ctrl-C aborts at once (KeyboardInterrupt), as terminal programs do: the run keeps its last checkpoint.
    SIGUSR2 is the signal submitit has SLURM send `signal_delay_s` before a job's time limit.

    announce: say on stderr that a Ctrl-C was heard (one process of a distributed run says it). sweep_dir: the sweep
    this run is a job of: a Ctrl-C here marks it stopped (ganlab.sweep.stop_sweep), and a mark made by another
    process (a Ctrl-C before this loop began, or in another joblib worker) stops this run too, within a second.
    """

    SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2")

    def __init__(self, announce: bool = True, sweep_dir: Path | None = None):
        self._requested: str | None = None
        self.interrupted = False  # a Ctrl-C came: the next one aborts
        self.announce, self.sweep_dir = announce, sweep_dir
        self._next_look = 0.0  # when to look for the sweep's mark again
        self._previous: dict = {}

    @property
    def requested(self) -> str | None:
        """The name of the signal that asks the run to stop (SIGINT for a stopped sweep), or None."""
        if self._requested is None and self.sweep_dir is not None and time.monotonic() >= self._next_look:
            self._next_look = time.monotonic() + 1.0  # a file system call a second, not a step
            if sweep_stopped(self.sweep_dir):
                self._requested = "SIGINT"
        return self._requested

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if name == "SIGINT":
            if self.interrupted:
                raise KeyboardInterrupt
            self.interrupted = True
            if self.sweep_dir is not None:
                stop_sweep(self.sweep_dir)
            if self.announce:  # os.write: print could be in the middle of writing the progress bar
                os.write(2, b"ganlab: Ctrl-C: stopping after this step with a checkpoint (Ctrl-C again aborts)\n")
        self._requested = name

    def __enter__(self) -> "StopSignals":
        for name in self.SIGNALS:
            number = getattr(signal, name, None)
            if number is not None:
                try:
                    self._previous[number] = signal.signal(number, self._handle)
                except ValueError:  # not the main thread: leave signals to the caller
                    pass
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def forward(self) -> None:
        """Pass a caught signal on to the handler that was installed before, if it was a Python function.

        A launcher may rely on its own handler: submitit's requeues a SLURM job that is timed out or preempted.
        Call this once the checkpoint is written; with the default handler it does nothing, and the run returns.
        A Ctrl-C is not passed on: it has done its work (Python's own handler would raise KeyboardInterrupt).
        """
        if self.requested in (None, "SIGINT"):
            return
        number = getattr(signal, self.requested)
        previous = self._previous.get(number)
        if callable(previous):
            previous(number, None)
