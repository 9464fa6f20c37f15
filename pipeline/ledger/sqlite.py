"""The embedded ledger: one SQLite file in WAL mode.

Why SQLite: it is in the standard library, one file is easy to copy and back
up, DuckDB and pandas read it directly, and its write-ahead log gives what a
nightly job needs:

- **kill -9 safe**: a transaction is in the WAL or it is not; the next open
  rolls back a torn one. ``synchronous=NORMAL`` keeps committed transactions
  across a killed process (a power cut may lose the last ones: the next run then
  sends those rows again and the service answers "image exist", which is
  recorded as ``already_enrolled``).
- **two runs at once**: every write is a short ``BEGIN IMMEDIATE`` transaction;
  a second process waits for the lock (``busy_timeout``, 60 s) instead of failing.

One connection per :class:`SqliteLedger`, shared by the event loop and worker
threads under a lock. Log ids are uint64, beyond SQLite's signed 64-bit
range, so they are stored as decimal text and read back as int.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from pipeline.api.errors import ConfigError
from pipeline.ledger.base import PathMatch, PathProbe
from pipeline.ledger.sql import SqlLedger, Stored

SCHEMA_VERSION = "1"
BUSY_TIMEOUT_MS = 60_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    event_id INTEGER PRIMARY KEY,
    endpoint TEXT NOT NULL, group_id TEXT NOT NULL, uid TEXT NOT NULL,
    image_sha256 TEXT, action TEXT NOT NULL,
    run_id TEXT NOT NULL, "row" INTEGER NOT NULL, at TEXT NOT NULL,
    face_count INTEGER, detect_log_id TEXT, write_log_id TEXT,
    image_path TEXT, user_info TEXT,
    UNIQUE (run_id, "row", group_id, action)
);
CREATE INDEX IF NOT EXISTS events_by_uid ON events (endpoint, group_id, uid);
CREATE TABLE IF NOT EXISTS faces (
    endpoint TEXT NOT NULL, group_id TEXT NOT NULL, uid TEXT NOT NULL,
    image_sha256 TEXT NOT NULL,
    image_path TEXT, image_size INTEGER, image_mtime_ns INTEGER, user_info TEXT,
    face_count INTEGER, detect_log_id TEXT, write_log_id TEXT,
    run_id TEXT NOT NULL, "row" INTEGER NOT NULL, action TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (endpoint, group_id, uid, image_sha256)
) WITHOUT ROWID;
"""

class SqliteLedger(SqlLedger):
    """The :class:`~pipeline.ledger.base.Ledger` on one SQLite file (created when missing)."""

    @staticmethod
    def _log_id_out(value: int | None) -> Stored:
        return None if value is None else str(value)  # uint64 is beyond SQLite's integer

    @staticmethod
    def _time_out(at: datetime) -> Stored:
        return at.astimezone(UTC).isoformat()

    @staticmethod
    def _time_in(value: Stored) -> str:
        return str(value)

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self._lock = threading.Lock()
        self._conn = self._connect()

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                                   isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"--ledger {self.path}: cannot open ({exc})") from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._set_up(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise ConfigError(f"--ledger {self.path}: not a faceflow ledger ({exc})") from None
        return conn

    def _set_up(self, conn: sqlite3.Connection) -> None:
        """WAL mode and the schema. Two processes opening a new ledger at once can get
        "database is locked" at once from the switch to WAL, which SQLite's busy handler
        does not wait for: try again for up to the busy timeout."""
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                self._check_or_create(conn)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @staticmethod
    def _check_or_create(conn: sqlite3.Connection) -> None:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "meta" not in tables:
            raise sqlite3.DatabaseError("the file holds other tables and no faceflow meta table")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            found = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if found is None:
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?), ('created_at', ?)",
                             (SCHEMA_VERSION, datetime.now(UTC).isoformat()))
            elif found[0] != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"schema version {found[0]}, this faceflow "
                                            f"reads {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: the write lock is taken at BEGIN (waits up to
        busy_timeout for another process), so two writers never deadlock mid-way."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # -- reads ------------------------------------------------------------------

    def known_paths(self, endpoint: str, probes: Sequence[PathProbe]) -> list[PathMatch]:
        if not probes:
            return []
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN")
            try:
                conn.execute("CREATE TEMP TABLE IF NOT EXISTS probe2 (k INTEGER, "
                             "group_id TEXT, uid TEXT, image_path TEXT, size INTEGER, "
                             "mtime INTEGER)")
                conn.execute("DELETE FROM probe2")
                conn.executemany("INSERT INTO probe2 VALUES (?,?,?,?,?,?)", probes)
                # CROSS JOIN fixes the loop order (SQLite's rule): for each probe, seek the
                # faces by the primary key's (endpoint, group_id, uid) prefix. Left to the
                # planner, a fresh temp table without statistics made it scan every face
                # of the endpoint once per probe.
                rows = conn.execute(
                    "SELECT p.k, f.group_id, f.image_sha256, f.face_count, f.detect_log_id, "
                    "f.write_log_id "
                    "FROM probe2 p CROSS JOIN faces f "
                    "WHERE f.endpoint=? AND f.group_id=p.group_id AND f.uid=p.uid "
                    "AND f.image_path=p.image_path AND f.image_size=p.size "
                    "AND f.image_mtime_ns=p.mtime", (endpoint,)).fetchall()
                conn.execute("DELETE FROM probe2")
            finally:
                conn.execute("COMMIT")
        return rows
