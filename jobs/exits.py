"""Exit codes: the one table from a job's stop reason to the process's exit code.

The library (``pipeline/``) says why a run stopped (:class:`StopReason`) and how many
rows or probes failed; only this module turns that into a number, and only the
commands in ``jobs/`` exit with it. The codes are documented in the README.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn, Protocol

import click

from pipeline.api.errors import ConfigError
from pipeline.frame import StopReason

EXIT_OK = 0  # every row has a terminal outcome and none failed
EXIT_FAILED_ROWS = 1  # the run finished, some rows failed (see failures.csv)
EXIT_CONFIG = 2  # bad options, manifest, run directory or credentials: nothing was sent
EXIT_QUOTA = 3  # stopped by the daily/total quota (17/19) or the shared budget: resume later
EXIT_AUTH = 4  # the service refused the credentials mid-run
EXIT_UNAVAILABLE = 5  # the service was gone longer than --outage-wait: resume when it is back
EXIT_DISK = 6  # the run directory could not be written mid-run (disk full): resume later
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM: outcomes flushed, resume to finish

#: Why a run stopped early -> the exit code. Every StopReason has a row (a test checks).
STOP_EXITS: dict[StopReason, int] = {
    StopReason.QUOTA: EXIT_QUOTA,
    StopReason.BUDGET: EXIT_QUOTA,
    StopReason.AUTH: EXIT_AUTH,
    StopReason.INTERRUPTED: EXIT_INTERRUPTED,
    StopReason.CREDENTIALS: EXIT_CONFIG,  # refused before any call: nothing was sent
    StopReason.DISK: EXIT_DISK,
    StopReason.OUTAGE: EXIT_UNAVAILABLE,
    StopReason.UNREACHABLE: EXIT_CONFIG,  # the endpoint is not the service: nothing was sent
}


class RunEnd(Protocol):
    """What a job's result says about how it ended (enroll's RunResult, AuditResult)."""

    @property
    def run_dir(self) -> Path: ...

    @property
    def stop_reason(self) -> str | None: ...

    @property
    def failed(self) -> int: ...


def exit_code(stop_reason: str | None, failed: int) -> int:
    """The exit code of a run that stopped for ``stop_reason`` (None: it finished) with
    ``failed`` rows (or probes) that did not succeed."""
    if stop_reason is not None:
        return STOP_EXITS[StopReason(stop_reason)]
    return EXIT_FAILED_ROWS if failed else EXIT_OK


def exit_code_of(result: RunEnd) -> int:
    """:func:`exit_code` of a job's result."""
    return exit_code(result.stop_reason, result.failed)


def exit_with(result: RunEnd) -> NoReturn:
    """Record the exit code in the run's run.json (``exit_code``) and exit with it."""
    from pipeline.runs.rundir import RunDir  # noqa: PLC0415

    code = exit_code_of(result)
    try:
        RunDir(result.run_dir).update_info(exit_code=code)
    except OSError:
        pass  # a full or read-only disk: the exit code still tells
    sys.exit(code)


class ConfigProblem(click.ClickException):
    """A configuration error: nothing was sent. Exit code 2 (EXIT_CONFIG)."""

    exit_code = EXIT_CONFIG


@contextmanager
def config_errors() -> Iterator[None]:
    """Turn a :class:`ConfigError` raised inside into :class:`ConfigProblem` (exit 2, the
    message without a traceback)."""
    try:
        yield
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from None
