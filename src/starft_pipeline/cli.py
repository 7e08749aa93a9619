"""``kedro run`` (and ``python -m starft_pipeline``) with errors a user can act on.

Kedro's own ``run`` command, unchanged, except that an error of this project (an exception class
defined in ``starft_pipeline``, or Kedro's parameter validation error our hook raises) reaches the
terminal as one paragraph, its message, which names the file, row or parameter and the fix, while
the full traceback goes to the log file of ``conf/logging.yml``'s ``error_file`` handler. Any other
exception keeps Kedro's traceback: it is a bug, not bad input.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from kedro.framework.cli.project import run as kedro_run

#: The logger whose file handler keeps the traceback (conf/logging.yml).
ERROR_LOGGER = "starft_pipeline.errors"
_KEDRO_USER_ERRORS = ("kedro.validation",)  # Kedro's ParameterValidationError, raised by our hook


def is_user_error(error: BaseException) -> bool:
    """An error whose message is written for the user: raised by this project's own error types."""
    module = type(error).__module__
    return module.split(".")[0] == "starft_pipeline" or module.startswith(_KEDRO_USER_ERRORS)


def _traceback_files() -> list[Path]:
    handlers = logging.getLogger(ERROR_LOGGER).handlers
    return [Path(handler.baseFilename) for handler in handlers if isinstance(handler, logging.FileHandler)]


def report_user_error(error: BaseException) -> str:
    """Log the traceback to the error file (or stderr when the logging config has none) and
    return the paragraph to show: the error's type and message and where the traceback is."""
    files = _traceback_files()
    for path in files:
        path.parent.mkdir(parents=True, exist_ok=True)
    if files:
        logging.getLogger(ERROR_LOGGER).error("the run stopped", exc_info=error)
        where = f"(full traceback in {', '.join(str(path) for path in files)})"
    else:
        logging.getLogger(__name__).error("the run stopped", exc_info=error)
        where = "(traceback above)"
    message = str(error).strip() or repr(error)
    return f"Error: {type(error).__name__}: {message}\n{where}"


def _reporting_user_errors(callback: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(callback)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except Exception as error:
            if not is_user_error(error):
                raise
            click.echo(report_user_error(error), err=True)
            raise SystemExit(1) from None

    return wrapper


@click.group(name="starft_pipeline")
def cli() -> None:
    """starft_pipeline's commands (Kedro's, with errors reported as one paragraph)."""


run = copy.copy(kedro_run)
run.callback = _reporting_user_errors(kedro_run.callback) if kedro_run.callback else None
cli.add_command(run, "run")
