"""What an enroll run tells its caller: :class:`RunStart`, :class:`Progress`, the
:class:`EnrollObserver` hooks and the :class:`RunResult`. The library never prints; the
CLI (jobs/enroll.py) turns these into lines and the exit code."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline.frame import StopReason
from pipeline.runs.outcomes import SUCCESS_STATUSES, Outcome


@dataclass(frozen=True, slots=True)
class Progress:
    """A snapshot for progress displays. Rows counted over this session only,
    except ``already_done`` (rows skipped because an earlier session finished them).
    ``elapsed_s`` is seconds since the session started."""

    total_rows: int
    already_done: int
    done: int
    in_flight: int
    counts: Mapping[str, int]
    elapsed_s: float


@dataclass(frozen=True, slots=True)
class RunStart:
    run_id: str
    run_dir: Path
    manifest: Path
    total_rows: int
    already_done: int
    resumed: bool
    recovered: int  # journal records of a crashed session turned into parts now
    #: The CSV separator when it was detected from the header (not given), else None.
    delimiter_detected: str | None = None


@dataclass(frozen=True, slots=True)
class RunResult:
    """What a session did. ``counts`` covers the whole run (every session),
    ``session_counts`` this session only. ``stop_reason`` is None when every
    row got an outcome, else why the run stopped early (jobs/exits.py turns it and
    :attr:`failed` into the exit code)."""

    run_id: str
    run_dir: Path
    manifest: Path
    stop_reason: StopReason | None
    stop_message: str | None
    counts: Mapping[str, int]
    session_counts: Mapping[str, int]
    total_rows: int
    already_done: int
    remaining: int
    resumed: bool
    elapsed_s: float
    failures_csv: Path
    outcomes_dir: Path

    @property
    def failed(self) -> int:
        """Rows of the run (every session) whose outcome is not a success."""
        return sum(n for status, n in self.counts.items() if status not in SUCCESS_STATUSES)


class EnrollObserver:
    """Receives progress; the default does nothing. Called on the event loop thread."""

    def started(self, start: RunStart) -> None:
        """The run directory is ready and rows are about to start."""

    def row_done(self, outcome: Outcome, progress: Progress) -> None:
        """One row has its terminal outcome (journaled)."""

    def tick(self, progress: Progress) -> None:
        """About once a second while the run goes on."""

    def stopping(self, reason: StopReason, message: str) -> None:
        """The run stops early (quota, auth, interrupted): no new rows start."""

    def known_skipped(self, rows: int) -> None:
        """The ledger held ``rows`` rows (path, size and mtime unchanged): ``skipped_known``."""
