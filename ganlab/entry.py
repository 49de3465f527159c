"""The console scripts `ganlab-train`, `ganlab-sample`, `ganlab-eval` and `ganlab-report`.

Each imports its command only once inside `run_command` (torch takes seconds to import), so a user error is one
sentence and a non-zero exit, and a Ctrl-C at any moment, imports included, is one line and exit code 130.
"""

import importlib
import sys
from collections.abc import Callable
from typing import NoReturn

from ganlab.errors import GanlabError

INTERRUPTED = 130  # the exit code of a command stopped by Ctrl-C (128 + SIGINT), as shells report it


TRAINING_ABORTED = "a run keeps its last checkpoint, and the same command continues it"


def run_command(command: Callable, *arguments, aborted: str = "nothing was written") -> None:
    """Run `command(*arguments)`, turning a user error or a Ctrl-C into one line on stderr and an exit code.

    aborted: what a Ctrl-C leaves behind, for its line.
    """
    try:
        command(*arguments)
    except GanlabError as error:
        exit_with(error)
    except KeyboardInterrupt:
        print(f"ganlab: aborted by Ctrl-C: {aborted}.", file=sys.stderr)
        sys.exit(INTERRUPTED)


def exit_with(error: GanlabError) -> NoReturn:
    """Print a user error as one line on stderr and exit with its code.

    Also for code that Hydra calls and would print with a traceback hint (a sweeper): SystemExit passes through it.
    """
    print(f"ganlab: error: {error}", file=sys.stderr)
    sys.exit(error.exit_code)


def _call(module: str, function: str, *arguments) -> None:
    getattr(importlib.import_module(module), function)(*arguments)


def train() -> None:
    """`ganlab-train` (ganlab.train.main)."""
    run_command(_call, "ganlab.train", "main", aborted=TRAINING_ABORTED)


def sample() -> None:
    """`ganlab-sample` (ganlab.cli.sample_command)."""
    run_command(_call, "ganlab.cli", "sample_command", sys.argv[1:], aborted="no sample file was written")


def evaluate() -> None:
    """`ganlab-eval` (ganlab.cli.eval_command)."""
    run_command(_call, "ganlab.cli", "eval_command", sys.argv[1:], aborted="nothing was scored")


def report() -> None:
    """`ganlab-report` (ganlab.report.report)."""
    run_command(_call, "ganlab.report", "report", sys.argv[1:], aborted="the report was not written")
