"""Holding a run directory for one session, and starting the next session of a run.

A run directory is held by one session at a time (:meth:`RunDir.hold`, a lock
file); a job opens it inside :func:`open_held` so that a failure while opening
(a different manifest, a bad option) releases it again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from pipeline.runs.rundir import RunDir, RunInfo

__all__ = ["next_session", "open_held"]

T = TypeVar("T")


def open_held(rundir: RunDir, open_: Callable[[RunDir], T]) -> T:
    """Hold ``rundir`` and return ``open_(rundir)``; the caller releases it when done.

    If ``open_`` raises, the directory is released before the error goes on.
    """
    rundir.hold()
    try:
        return open_(rundir)
    except BaseException:
        rundir.release()
        raise


def next_session(rundir: RunDir, info: RunInfo, **current: Any) -> RunInfo:
    """run.json for a resumed run: one more session, the last one's end cleared, and
    ``current`` (this session's settings and options) written over the saved ones."""
    info = replace(info, sessions=info.sessions + 1, finished_at=None, exit_code=None,
                   stop_reason=None, **current)
    rundir.write_info(info)
    return info
