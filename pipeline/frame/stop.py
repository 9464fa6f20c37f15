"""Why a job stops before every row has an outcome, and the exception that carries it.

A job never ends on one row's failure: that becomes an outcome row. It stops early
only when no further call can succeed (the quota is spent, the credentials are
refused, the service is gone for longer than the job waits for it, the endpoint is not
the service at all) or when it is told to (Ctrl-C, SIGTERM). The library returns the reason;
``jobs/`` alone turns it into an exit code (``jobs/exits.py``).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pipeline.api.errors import (
    AuthError,
    FaceflowError,
    QuotaError,
    ServiceUnavailableError,
    UnreachableError,
)
from pipeline.client.budget import BudgetUnavailable

__all__ = ["STOPPING_ERRORS", "StopReason", "StopRun", "as_stop", "disk_message", "stop_for"]


class StopReason(StrEnum):
    """Every reason a job stops early. Written as its value into run.json (``stop_reason``)."""

    QUOTA = "quota"  # 17/19: the daily or total quota is spent; resume later
    AUTH = "auth"  # the service refused the credentials, even after a token refresh
    INTERRUPTED = "interrupted"  # the caller's stop event (Ctrl-C, SIGTERM)
    BUDGET = "budget"  # the shared QPS budget (--qps-budget) cannot be reached; resume later
    OUTAGE = "outage"  # the service answered nothing for longer than --outage-wait; resume
    UNREACHABLE = "unreachable"  # at the start, the endpoint is not the service: fix it
    CREDENTIALS = "credentials"  # refused when the session opened, before any API call
    DISK = "disk"  # the run directory cannot be written (disk full, I/O error); resume later


class StopRun(Exception):  # noqa: N818 - control flow, not an error of the row
    """Raised by a job's work on one item to stop the whole run: no new item starts.

    ``error`` is the API error behind the stop, when there is one.
    """

    def __init__(self, reason: StopReason, message: str, error: BaseException | None = None
                 ) -> None:
        super().__init__(message)
        self.reason, self.message, self.error = reason, message, error


#: API errors that end a run rather than one row, and the reason each gives.
_STOPPING: tuple[tuple[type[FaceflowError], StopReason], ...] = (
    (QuotaError, StopReason.QUOTA),
    (AuthError, StopReason.AUTH),
    (BudgetUnavailable, StopReason.BUDGET),
    (ServiceUnavailableError, StopReason.OUTAGE),
    (UnreachableError, StopReason.UNREACHABLE),
)
#: The classes of :data:`_STOPPING`, for ``except STOPPING_ERRORS``.
STOPPING_ERRORS: tuple[type[FaceflowError], ...] = tuple(cls for cls, _ in _STOPPING)


def stop_for(exc: BaseException) -> StopRun | None:
    """The :class:`StopRun` an error calls for, or None when it concerns one row only."""
    for cls, reason in _STOPPING:
        if isinstance(exc, cls):
            return StopRun(reason, str(exc), exc)
    return None


def as_stop(exc: BaseException) -> StopRun:
    """The :class:`StopRun` of an error of :data:`STOPPING_ERRORS` (``except`` blocks)."""
    stop = stop_for(exc)
    if stop is None:
        raise TypeError(f"{type(exc).__name__} does not stop a run") from exc
    return stop


def disk_message(run_dir: Path, exc: OSError) -> str:
    """The message of a :attr:`StopReason.DISK` stop: which file could not be written and
    why (``No space left on device``), in one line."""
    where = getattr(exc, "filename", None) or run_dir
    return (f"cannot write {where}: {exc.strerror or exc}; what was written so far is kept "
            "(work in flight is left for resume)")
