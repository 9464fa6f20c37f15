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
from typing import Any

from pipeline.api.errors import ConfigError
from pipeline.ledger.base import (
    ENROLL_ACTIONS,
    REPLACING_ACTIONS,
    Entry,
    GroupStats,
    KnownFace,
    PathMatch,
    PathProbe,
)

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

_FACE_COLUMNS = ("endpoint", "group_id", "uid", "image_sha256", "image_path", "image_size",
                 "image_mtime_ns", "user_info", "face_count", "detect_log_id", "write_log_id",
                 "run_id", '"row"', "action", "recorded_at")
_FACE_SELECT = ", ".join(f"f.{c}" for c in _FACE_COLUMNS)


def _log_id(value: int | None) -> str | None:
    return None if value is None else str(value)


def _read_log_id(value: Any) -> int | None:
    return None if value is None else int(value)


class SqliteLedger:
    """The :class:`~pipeline.ledger.base.Ledger` on one SQLite file (created when missing)."""

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

    # -- writes -----------------------------------------------------------------

    def record(self, entries: Sequence[Entry]) -> int:
        new = 0
        with self._write() as conn:
            for e in entries:
                if self._insert_event(conn, e):
                    self._apply(conn, e)
                    new += 1
        return new

    @staticmethod
    def _insert_event(conn: sqlite3.Connection, e: Entry) -> bool:
        cur = conn.execute(
            'INSERT OR IGNORE INTO events (endpoint, group_id, uid, image_sha256, action, '
            'run_id, "row", at, face_count, detect_log_id, write_log_id, image_path, user_info) '
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (e.endpoint, e.group_id, e.uid, e.image_sha256, e.action, e.run_id, e.row,
             e.at.astimezone(UTC).isoformat(), e.face_count, _log_id(e.detect_log_id),
             _log_id(e.write_log_id), e.image_path, e.user_info))
        return cur.rowcount == 1

    @staticmethod
    def _apply(conn: sqlite3.Connection, e: Entry) -> None:
        key = (e.endpoint, e.group_id, e.uid)
        if e.action not in ENROLL_ACTIONS:
            conn.execute("DELETE FROM faces WHERE endpoint=? AND group_id=? AND uid=?", key)
            return
        if e.action in REPLACING_ACTIONS:
            conn.execute("DELETE FROM faces WHERE endpoint=? AND group_id=? AND uid=? "
                         "AND image_sha256 != ?", (*key, e.image_sha256))
        conn.execute(
            "INSERT INTO faces VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT (endpoint, group_id, uid, image_sha256) DO UPDATE SET "
            "image_path=excluded.image_path, image_size=excluded.image_size, "
            "image_mtime_ns=excluded.image_mtime_ns, user_info=excluded.user_info, "
            "face_count=excluded.face_count, detect_log_id=excluded.detect_log_id, "
            "write_log_id=excluded.write_log_id, run_id=excluded.run_id, "
            '"row"=excluded."row", action=excluded.action, recorded_at=excluded.recorded_at',
            (*key, e.image_sha256, e.image_path, e.image_size, e.image_mtime_ns, e.user_info,
             e.face_count, _log_id(e.detect_log_id), _log_id(e.write_log_id), e.run_id, e.row,
             e.action, e.at.astimezone(UTC).isoformat()))

    def refresh_stat(self, face: KnownFace, image_path: str, size: int, mtime_ns: int) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE faces SET image_path=?, image_size=?, image_mtime_ns=? WHERE endpoint=? "
                "AND group_id=? AND uid=? AND image_sha256=?",
                (image_path, size, mtime_ns, face.endpoint, face.group_id, face.uid,
                 face.image_sha256))

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

    def known_image(self, endpoint: str, group_id: str, uid: str, sha256: str
                    ) -> KnownFace | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_FACE_SELECT} FROM faces f WHERE endpoint=? AND group_id=? AND uid=? "
                "AND image_sha256=?", (endpoint, group_id, uid, sha256)).fetchone()
        return None if row is None else _face(row)

    def faces(self, endpoint: str, group_id: str, uid: str | None = None
              ) -> Iterator[KnownFace]:
        where, args = "endpoint=? AND group_id=?", [endpoint, group_id]
        if uid is not None:
            where, args = where + " AND uid=?", [*args, uid]
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_FACE_SELECT} FROM faces f WHERE {where} "
                "ORDER BY uid, recorded_at", args).fetchall()
        return iter([_face(r) for r in rows])

    def stats(self) -> list[GroupStats]:
        with self._lock:
            held = self._conn.execute(
                "SELECT endpoint, group_id, COUNT(DISTINCT uid), COUNT(*) FROM faces "
                "GROUP BY endpoint, group_id").fetchall()
            events = self._conn.execute(
                "SELECT endpoint, group_id, action, COUNT(*), MAX(at) FROM events "
                "GROUP BY endpoint, group_id, action").fetchall()
        table: dict[tuple[str, str], dict[str, Any]] = {}
        for endpoint, group, uids, faces in held:
            table[(endpoint, group)] = {"uids": uids, "faces": faces, "events": {}, "last": None}
        for endpoint, group, action, n, last in events:
            line = table.setdefault((endpoint, group),
                                    {"uids": 0, "faces": 0, "events": {}, "last": None})
            line["events"][action] = n
            line["last"] = max(filter(None, (line["last"], last)), default=None)
        return [GroupStats(e, g, v["uids"], v["faces"], v["events"], v["last"])
                for (e, g), v in sorted(table.items())]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SqliteLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SqliteLedger({self.location!r})"


def _face(row: Sequence[Any], key: int | None = None) -> KnownFace:
    (endpoint, group, uid, sha, path, size, mtime, info, count, detect, write, run_id, row_n,
     action, recorded) = row
    return KnownFace(endpoint, group, uid, sha, path, size, mtime, info, count,
                     _read_log_id(detect), _read_log_id(write), run_id, row_n, action, recorded,
                     key)
