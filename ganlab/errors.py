"""Errors a user can fix: each carries one sentence that names the key or file, what is wrong, and what to do."""


class GanlabError(Exception):
    """A problem with the user's input; the command line prints its message alone and exits non-zero."""

    exit_code = 2


class ConfigError(GanlabError):
    """A config value that ganlab cannot run with."""


class DataError(GanlabError):
    """A dataset that is missing, unreadable or of the wrong shape."""


class CheckpointError(GanlabError):
    """A checkpoint that cannot be read or does not fit the run."""


class DivergedError(GanlabError):
    """The losses became NaN or Inf; the run stopped and kept its last good checkpoint."""

    exit_code = 3
