"""Run directories: ``run.json``, a crash-safe journal, atomic Parquet parts, the resume set.

Generic: nothing here knows about enrollment. A job passes its record schema
(one pyarrow schema, one frozen dataclass) and the name of the integer key
column (``row``: the 0-based manifest row). Layout::

    <run_dir>/run.json                       what ran, with which options; counts at the end
    <run_dir>/.lock                          held (flock) by the session running; holds its pid
    <run_dir>/journal/seg-NNNNN.jsonl        terminal records not yet in a part
    <run_dir>/outcomes/part-NNNNN.parquet    the records, in parts of flush_rows rows

Why a JSON-lines journal rather than SQLite WAL: there is one writer (the event
loop), and each terminal record is one ``write()`` of one line, handed to the
OS at once; a SIGKILLed process loses nothing the OS already has. A torn last
line (the process died mid-write) fails to parse and is ignored: that record
was never acknowledged, so its row simply runs again. The journal needs no
dependency, and a human can ``tail`` it.

Segments and parts share their number. When a segment's records are written
to part N (to ``part-N.parquet.tmp``, fsynced, then renamed: atomic), segment
N is deleted and later records go to segment N+1. So the journal never holds
more than one flush interval of records, and resume reads only the segments
that have no part yet, never a million JSON lines. After a crash, recovery
deletes stale temporaries and segments whose part exists (the crash hit
between rename and delete), and turns the others into parts.

The resume set is a numpy bool array indexed by key (1 byte per row), built
from the key column of the parts alone.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import __version__
from pipeline.api.errors import ConfigError

RUN_JSON = "run.json"
LOCK_FILE = ".lock"
JOURNAL_DIR = "journal"
OUTCOMES_DIR = "outcomes"
_PART_RE = re.compile(r"^part-(\d{5,})\.parquet$")
_SEG_RE = re.compile(r"^seg-(\d{5,})\.jsonl$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
RUN_ID_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")


def new_run_id(now: datetime | None = None, token: Callable[[int], str] = secrets.token_hex) -> str:
    """A sortable run id: UTC time to the second, then 6 random hex digits.

    Example: ``20261125T010203Z-3fa9c1``.
    """
    now = now or datetime.now(UTC)
    return f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{token(3)}"


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ManifestRef:
    """Which input a run reads: path (absolute), content fingerprint, data rows."""

    path: str
    fingerprint: str
    num_rows: int


@dataclass(frozen=True, slots=True)
class RunInfo:
    """The content of ``run.json``. Never holds secrets: ``settings`` is Settings.public().

    Times are ISO 8601 UTC strings. ``counts`` maps status -> rows, over the
    whole run (every session). ``exit_code`` and ``stop_reason`` (None,
    ``"quota"``, ``"auth"``, ``"interrupted"``) describe the last session.
    """

    run_id: str
    job: str
    created_at: str
    manifest: ManifestRef
    settings: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] | None = None
    parent_run_id: str | None = None
    version: str = __version__
    sessions: int = 1
    finished_at: str | None = None
    counts: dict[str, int] | None = None
    exit_code: int | None = None
    stop_reason: str | None = None
    #: The number of outcomes ``failures.csv`` was last written from (None: not yet).
    failures_for: int | None = None
    #: Options changed on resume (``--change-options``): one entry per such session,
    #: ``{"session": n, "at": iso time, "changes": ["--qps: 3 in the run, 5 now", ...]}``.
    option_changes: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RunInfo:
        raw = json.loads(text)
        known = {f.name for f in fields(cls)}
        raw = {k: v for k, v in raw.items() if k in known}
        raw["manifest"] = ManifestRef(**raw["manifest"])
        return cls(**raw)


class RunDir:
    """A run directory on disk. Creating the object touches nothing."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None

    def hold(self) -> None:
        """Hold the directory for one session: an exclusive ``flock`` on ``.lock``.

        Two sessions at once (an overlapping cron start) would number their journal
        segments and parts alike, salvage each other's live journal and replace each
        other's parts. The hold ends with :meth:`release` or with the process, however
        it ends (kill -9 included), so a crash never blocks the resume. ConfigError,
        naming the holder's pid, when another process or session holds it.
        """
        if self._lock_fd is not None:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # read-only mount, no permission, a file in the way
            raise ConfigError(f"{self.path}: cannot use it as the run directory: "
                              f"{exc.strerror or exc}; choose another --run-dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise ConfigError(f"{self.path} is in use by another faceflow process (pid "
                              f"{holder}); wait for it to finish, or choose another "
                              "--run-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode("ascii"))
        self._lock_fd = fd

    def release(self) -> None:
        """End :meth:`hold` (nothing happens when not held)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def holder_pid(self) -> int | None:
        """The pid of the process holding the directory (:meth:`hold`) now, or None.

        Read from ``/proc/locks`` (no lock is taken, so a session starting at this
        moment is never refused because we looked); elsewhere, a shared-lock probe.
        """
        lock = self.path / LOCK_FILE
        try:
            st = lock.stat()
        except OSError:
            return None
        try:
            text = Path("/proc/locks").read_text()
        except OSError:
            return self._probe_holder(lock)
        for line in text.splitlines():
            parts = line.split()
            # "1: FLOCK  ADVISORY  WRITE 1234 00:2a:56789 0 EOF"
            if len(parts) >= 6 and parts[1] == "FLOCK" and parts[3] == "WRITE":
                dev_inode = parts[5].rsplit(":", 1)
                if len(dev_inode) == 2 and dev_inode[1] == str(st.st_ino):
                    return int(parts[4])
        return None

    def _probe_holder(self, lock: Path) -> int | None:
        fd = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else -1
        finally:
            os.close(fd)  # closing drops the shared lock, if taken
        return None

    def journal_records(self, schema: pa.Schema, key: str = "row") -> pa.Table:
        """Records still in the journal (a session running now, or killed) whose ``key`` is
        in no part, the first per key: what :meth:`read_records` does not see yet. Read
        only: nothing is recovered or written."""
        rows: dict[int, dict[str, Any]] = {}
        for _, seg in _numbered(self.journal_dir, _SEG_RE):
            try:
                for rec in read_journal(seg):
                    if isinstance(rec.get(key), int):
                        rows.setdefault(rec[key], rec)
            except FileNotFoundError:
                continue  # became a part while we looked: read below
        # The parts after the journal: a segment flushed meanwhile is found in its part.
        in_parts = set(self.read_records(schema, [key]).column(key).to_pylist())
        rows = {k: r for k, r in rows.items() if k not in in_parts}
        if not rows:
            return schema.empty_table()
        known = set(schema.names)
        return pa.Table.from_pylist([{n: v for n, v in r.items() if n in known}
                                     for r in rows.values()], schema=schema)

    @property
    def info_path(self) -> Path:
        return self.path / RUN_JSON

    @property
    def outcomes_dir(self) -> Path:
        return self.path / OUTCOMES_DIR

    @property
    def journal_dir(self) -> Path:
        return self.path / JOURNAL_DIR

    def exists(self) -> bool:
        """True when the directory holds a run (a readable ``run.json``)."""
        return self.info_path.is_file()

    def read_info(self) -> RunInfo:
        try:
            return RunInfo.from_json(self.info_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{self.path} holds no run (no {RUN_JSON})") from None
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"{self.info_path} is not a faceflow run file: {exc}") from None

    def write_info(self, info: RunInfo) -> None:
        """Write ``run.json`` atomically (temporary file, then rename)."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.info_path, info.to_json().encode("utf-8"))

    def update_info(self, **changes: Any) -> RunInfo:
        info = replace(self.read_info(), **changes)
        self.write_info(info)
        return info

    def open_store(self, schema: pa.Schema, num_rows: int, **options: Any) -> RecordStore:
        """Recover what a previous session left, and return a store ready to append."""
        return RecordStore(self, schema, num_rows, **options)

    def part_paths(self) -> list[Path]:
        """The Parquet parts, in part-number order."""
        return [p for _, p in _numbered(self.outcomes_dir, _PART_RE)]

    def read_records(
        self, schema: pa.Schema, columns: list[str] | None = None
    ) -> pa.Table:
        """Every record of the parts as one ``schema`` table (parts in order; empty when none).

        Records still in the journal are not included: open a store (which
        recovers them into parts) first when a previous session may have crashed.
        """
        paths = self.part_paths()
        if not paths:
            empty = schema.empty_table()
            return empty if columns is None else empty.select(columns)
        tables = [pq.read_table(p, columns=columns, schema=schema) for p in paths]
        return pa.concat_tables(tables)


class RecordStore:
    """Journal + parts of one run directory; see the module docstring.

    ``flush_rows`` (default 1000) and ``flush_seconds`` (default 10 s, measured
    with ``clock``, monotonic seconds) decide when buffered records become a
    part. ``durable=True`` also fsyncs every journal line (survives power loss,
    costs a disk flush per row); without it a line survives a killed process.
    """

    def __init__(
        self,
        rundir: RunDir,
        schema: pa.Schema,
        num_rows: int,
        *,
        key: str = "row",
        flush_rows: int = 1000,
        flush_seconds: float = 10.0,
        durable: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if key not in schema.names:
            raise ValueError(f"key column {key!r} is not in the schema")
        self.rundir, self.schema, self.key = rundir, schema, key
        self.flush_rows, self.flush_seconds = max(1, flush_rows), flush_seconds
        self.durable, self._clock = durable, clock
        self._ts_cols = frozenset(f.name for f in schema if pa.types.is_timestamp(f.type))
        self._pending: list[dict[str, Any]] = []
        self._segment: Any = None
        self._last_flush = clock()
        self.done = np.zeros(num_rows, dtype=bool)
        self.recovered = 0  # journal records turned into parts by recovery
        #: The write error (disk full, I/O error) that stopped the store, or None. Once
        #: set, nothing more is written: what the journal holds is recovered on resume.
        self.broken: OSError | None = None
        self._next = self._recover()

    # -- recovery ---------------------------------------------------------------

    def _recover(self) -> int:
        """Clean up after a crash; fill ``done``; return the next part number."""
        for d in (self.rundir.outcomes_dir, self.rundir.journal_dir):
            d.mkdir(parents=True, exist_ok=True)
        # Half-written files of a killed session (parts, and the run's own atomic writes:
        # run.json, failures.csv, timeline.parquet); the run dir is held, so none is live.
        for tmp in [*self.rundir.outcomes_dir.glob("*.tmp"), *self.rundir.path.glob("*.tmp")]:
            tmp.unlink(missing_ok=True)
        parts = dict(_numbered(self.rundir.outcomes_dir, _PART_RE))
        for part in parts.values():
            self._mark(pq.read_table(part, columns=[self.key]).column(0).to_numpy())
        segments = _numbered(self.rundir.journal_dir, _SEG_RE)
        for n, seg in segments:
            if n not in parts:
                self._salvage(n, seg)
            seg.unlink()
        return max([*parts, *(n for n, _ in segments), -1]) + 1

    def _salvage(self, number: int, segment: Path) -> None:
        """Turn a segment that never became a part into part ``number``."""
        rows = [r for r in read_journal(segment) if not self._is_done(r.get(self.key))]
        unique: dict[int, dict[str, Any]] = {}
        for r in rows:
            unique.setdefault(int(r[self.key]), r)  # the first terminal record wins
        if unique:
            self._write_part(number, list(unique.values()))
            self._mark(np.fromiter(unique.keys(), dtype=np.int64))
            self.recovered += len(unique)

    def _is_done(self, key: object) -> bool:
        return isinstance(key, int) and 0 <= key < len(self.done) and bool(self.done[key])

    def _mark(self, keys: np.ndarray) -> None:
        keys = keys[(keys >= 0) & (keys < len(self.done))]
        self.done[keys] = True

    # -- appending --------------------------------------------------------------

    def append(self, record: object) -> None:
        """Journal one terminal record (a dataclass with the schema's fields), then buffer it.

        When this returns, the record is in the OS (and on disk with ``durable``).
        """
        if self.broken is not None:
            raise self.broken
        row = self._to_row(record)
        try:
            if self._segment is None:
                path = self.rundir.journal_dir / f"seg-{self._next:05d}.jsonl"
                self._segment = open(path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)
            self._segment.write(json.dumps(row, separators=(",", ":"), ensure_ascii=False)
                                + "\n")
            self._segment.flush()
            if self.durable:
                os.fsync(self._segment.fileno())
        except OSError as exc:
            seg = self.rundir.journal_dir / f"seg-{self._next:05d}.jsonl"
            raise self._break(exc, seg) from None
        self._pending.append(row)
        key = row[self.key]
        if 0 <= key < len(self.done):
            self.done[key] = True
        self.maybe_flush()

    def append_table(self, table: pa.Table) -> None:
        """Write terminal records made in bulk (``table`` has the store's schema) as one
        part at once, after what is buffered: atomic like every part, no journal lines.
        For records that need no call (a ledger's ``skipped_known`` rows)."""
        if table.num_rows == 0:
            return
        self.flush()
        table = table.select(self.schema.names).cast(self.schema)
        path = self.rundir.outcomes_dir / f"part-{self._next:05d}.parquet"
        write_table_atomic(path, table)
        _fsync_dir(path.parent)
        self._mark(table.column(self.key).to_numpy())
        self._next += 1

    def maybe_flush(self) -> bool:
        """Flush when ``flush_rows`` records wait or ``flush_seconds`` passed; True if flushed."""
        due = self._clock() - self._last_flush >= self.flush_seconds
        if self._pending and (len(self._pending) >= self.flush_rows or due):
            self.flush()
            return True
        return False

    def flush(self) -> None:
        """Write the buffered records to the next part and drop their journal segment."""
        self._last_flush = self._clock()
        if not self._pending or self.broken is not None:
            return
        number, rows = self._next, self._pending
        self._segment.close()
        self._segment, self._pending = None, []
        try:
            self._write_part(number, rows)
        except OSError as exc:  # the segment stays: recovery makes it a part on resume
            part = self.rundir.outcomes_dir / f"part-{number:05d}.parquet"
            raise self._break(exc, part) from None
        (self.rundir.journal_dir / f"seg-{number:05d}.jsonl").unlink()
        self._next = number + 1

    def close(self) -> None:
        """Flush what is buffered. The store can still be appended to afterwards."""
        self.flush()

    def _break(self, exc: OSError, path: Path) -> OSError:
        """Stop writing at the first error: close the segment (a torn last line is skipped
        by recovery) and forget the buffer (journaled, so recovered on resume). Returns
        the error naming ``path``, the file that could not be written."""
        code = exc.errno or errno.EIO
        # The system's words for the errno: pyarrow's own strerror is "Error writing bytes".
        self.broken = OSError(code, os.strerror(code), str(path))
        if self._segment is not None:
            try:
                self._segment.close()
            except OSError:
                pass
        self._segment, self._pending = None, []
        return self.broken

    @property
    def pending(self) -> int:
        """Records journaled but not yet in a part."""
        return len(self._pending)

    # -- helpers ----------------------------------------------------------------

    def _to_row(self, record: object) -> dict[str, Any]:
        row = {name: getattr(record, name) for name in self.schema.names}
        for name in self._ts_cols:
            if isinstance(row[name], datetime):
                row[name] = to_micros(row[name])
        for name, value in row.items():
            if isinstance(value, tuple):
                row[name] = list(value)
        return row

    def _write_part(self, number: int, rows: list[dict[str, Any]]) -> None:
        table = pa.Table.from_pylist(rows, schema=self.schema)
        path = self.rundir.outcomes_dir / f"part-{number:05d}.parquet"
        write_table_atomic(path, table)
        _fsync_dir(path.parent)


def read_journal(path: Path) -> Iterable[dict[str, Any]]:
    """The complete records of a journal segment; a torn or garbled line is skipped."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.endswith("\n"):
                return  # torn last line: the write never finished
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record


def to_micros(ts: datetime) -> int:
    """Microseconds since the Unix epoch for an aware datetime (Parquet's timestamp[us])."""
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def status_counts(table: pa.Table, column: str = "status") -> dict[str, int]:
    """value -> number of rows, for a string column (empty dict for an empty table)."""
    if table.num_rows == 0:
        return {}
    counts = table.column(column).value_counts()
    return {str(v["values"]): int(v["counts"]) for v in counts.to_pylist()}


def _numbered(folder: Path, pattern: re.Pattern[str]) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = [(m, p) for p in folder.iterdir() if (m := pattern.match(p.name))]
    return sorted((int(m.group(1)), p) for m, p in found)


def write_table_atomic(path: Path, table: pa.Table) -> None:
    """Write a Parquet file under a temporary name, fsync, then rename over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        pq.write_table(table, fh, compression="zstd")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync and rename: all or nothing."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # The rename itself must reach the disk, or a power cut could bring back the old name.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
