"""What a run writes for people to read: TensorBoard scalars, sample grids (also as PNG), config and hparams."""

import json
import logging
import math
import signal
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary
from torchvision.utils import save_image
from tqdm import tqdm

log = logging.getLogger("ganlab")


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
    """TensorBoard event files in the run dir itself (no subfolders), plus PNG copies of every sample grid."""

    def __init__(self, run_dir: Path, start_step: int = 0):
        self.run_dir = run_dir
        self.samples_dir = run_dir / "samples"
        self.samples_dir.mkdir(parents=True, exist_ok=True)
        # purge_step drops events a previous process wrote after the checkpoint this run resumes from
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=start_step + 1 if start_step else None)

    def scalars(self, stats: dict[str, float], step: int) -> None:
        for name, value in stats.items():
            self.writer.add_scalar(name, value, step)

    def config(self, cfg: DictConfig) -> None:
        yaml = OmegaConf.to_yaml(cfg, resolve=True)
        self.writer.add_text("config", "\n".join("    " + line for line in yaml.splitlines()), 0)

    def picture(self, tag: str, picture: Tensor, step: int, png_name: str) -> Path:
        """Log a (3, H, W) picture in [0, 1] to TensorBoard and save it as `samples/<png_name>`."""
        self.writer.add_image(tag, picture, step)
        path = self.samples_dir / png_name
        save_image(picture, path)
        return path

    def hparams(self, hparams: dict, metrics: dict[str, float], step: int) -> None:
        """The HPARAMS entry for this run, written into the run's own event file (not a timestamped subfolder)."""
        experiment, session_start, session_end = hparams_summary(hparams, metrics)
        file_writer = self.writer._get_file_writer()
        for summary in (experiment, session_start, session_end):
            file_writer.add_summary(summary)
        self.scalars(metrics, step)

    def close(self) -> None:
        self.writer.close()


def write_json(path: Path, data: dict) -> None:
    """Write `data` as JSON atomically, so a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


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
    """A progress bar on an interactive terminal; a log line per scalar read elsewhere (sweeps, CI)."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.bar = tqdm(
            total=total, initial=start, unit="step", dynamic_ncols=True, disable=not (enabled and sys.stderr.isatty())
        )

    def update(self, step: int, values: dict[str, float]) -> None:
        d_loss, g_loss, rate = values["Loss/D"], values["Loss/G"], values["Speed/steps_per_second"]
        if self.bar.disable:
            log.info("step %d/%d  Loss/D %.4f  Loss/G %.4f  %.1f steps/s", step, self.bar.total, d_loss, g_loss, rate)
            return
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix({"D": f"{d_loss:.3f}", "G": f"{g_loss:.3f}"})

    def close(self) -> None:
        self.bar.close()


class StopSignals:
    """While active, SIGTERM, SIGUSR1 and SIGUSR2 ask the loop to checkpoint and return instead of killing the process.

    SIGUSR2 is the signal submitit has SLURM send `signal_delay_s` before a job's time limit.
    """

    SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2")

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        self.requested = signal.Signals(signum).name

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
        """
        if self.requested is None:
            return
        number = getattr(signal, self.requested)
        previous = self._previous.get(number)
        if callable(previous):
            previous(number, None)
