"""The console scripts `ganlab-train`, `ganlab-sample`, `ganlab-eval` and `ganlab-report`.

Each imports its command only once inside `run_command` (torch takes seconds to import), so a user error is one
sentence and a non-zero exit, and a Ctrl-C at any moment, imports included, is one line and exit code 130.
"""

import importlib
import sys
from collections.abc import Callable

from ganlab.errors import GanlabError

INTERRUPTED = 130  # the exit code of a command stopped by Ctrl-C (128 + SIGINT), as shells report it


def run_command(command: Callable, *arguments) -> None:
    """Run `command(*arguments)`, turning a user error or a Ctrl-C into one line on stderr and an exit code."""
    try:
        command(*arguments)
    except GanlabError as error:
        print(f"ganlab: error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        print("ganlab: aborted by Ctrl-C: a run keeps its last checkpoint, and the same command continues it.",
              file=sys.stderr)  # fmt: skip
        sys.exit(INTERRUPTED)


def _call(module: str, function: str, *arguments) -> None:
    getattr(importlib.import_module(module), function)(*arguments)


def train() -> None:
    """`ganlab-train` (ganlab.train.main)."""
    run_command(_call, "ganlab.train", "main")


def sample() -> None:
    """`ganlab-sample` (ganlab.cli.sample_command)."""
    run_command(_call, "ganlab.cli", "sample_command", sys.argv[1:])


def evaluate() -> None:
    """`ganlab-eval` (ganlab.cli.eval_command)."""
    run_command(_call, "ganlab.cli", "eval_command", sys.argv[1:])


def report() -> None:
    """`ganlab-report` (ganlab.report.report)."""
    run_command(_call, "ganlab.report", "report", sys.argv[1:])
