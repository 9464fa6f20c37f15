"""What the SQLite and PostgreSQL ledgers share: one set of statements over a DB-API
connection, with the few dialect differences as class attributes and hooks.

A backend (:mod:`pipeline.ledger.sqlite`, :mod:`pipeline.ledger.pg`) opens the
connection and creates its schema, then provides:

- ``_write()``: one write transaction (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: a
  transaction holding the ledger's advisory lock, so concurrent ``record`` calls
  apply their batches one after the other);
- ``known_paths``: the bulk stat lookup, which each engine does its own fastest way;
- the value conversions where the column types differ (log ids as text in SQLite,
  numeric(20) in PostgreSQL; times as ISO text vs timestamptz).

Statements are written once with ``?`` placeholders; :meth:`SqlLedger._sql`
rewrites them for drivers that use ``%s``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol

from pipeline.ledger.base import (
    ENROLL_ACTIONS,
    REPLACING_ACTIONS,
    Entry,
    GroupStats,
    KnownFace,
    PathMatch,
    PathProbe,
)

FACE_COLUMNS = ("endpoint", "group_id", "uid", "image_sha256", "image_path", "image_size",
                "image_mtime_ns", "user_info", "face_count", "detect_log_id", "write_log_id",
                "run_id", '"row"', "action", "recorded_at")
_FACE_SELECT = ", ".join(f"f.{c}" for c in FACE_COLUMNS)

#: A value as a column stores it or a driver returns it.
Stored = str | int | float | datetime | None


class Cursor(Protocol):
    rowcount: int


class Connection(Protocol):
    """The part of a DB-API connection (sqlite3, psycopg 3) the statements use."""

    def execute(self, query: str, params: Sequence[Stored] = ..., /) -> Cursor: ...


class SqlLedger:
    """The :class:`~pipeline.ledger.base.Ledger` methods both SQL backends share."""

    #: Table names (the PostgreSQL ledger prefixes them: it may share a database).
    events_table: ClassVar[str] = "events"
    faces_table: ClassVar[str] = "faces"
    #: The driver's placeholder.
    placeholder: ClassVar[str] = "?"
    #: ORDER BY for uids: byte order, the same in both engines.
    uid_order: ClassVar[str] = "uid"

    location: str
    _conn: Any
    _lock: threading.Lock

    # -- what a backend provides ---------------------------------------------------

    def _write(self) -> AbstractContextManager[Any]:
        """One write transaction; yields the connection."""
        raise NotImplementedError

    def known_paths(self, endpoint: str, probes: Sequence[PathProbe]) -> list[PathMatch]:
        raise NotImplementedError

    @staticmethod
    def _log_id_out(value: int | None) -> Stored:
        """A uint64 log id as the column stores it."""
        return value

    @staticmethod
    def _time_out(at: datetime) -> Stored:
        """A UTC time as the column stores it."""
        return at.astimezone(UTC)

    @staticmethod
    def _time_in(value: Stored) -> str:
        """A stored time as ISO 8601 UTC text."""
        assert isinstance(value, datetime)
        return value.astimezone(UTC).isoformat()

    # -- shared ---------------------------------------------------------------------

    def _sql(self, statement: str) -> str:
        return statement if self.placeholder == "?" else statement.replace("?", self.placeholder)

    def _face(self, row: Sequence[Any], key: int | None = None) -> KnownFace:
        (endpoint, group, uid, sha, path, size, mtime, info, count, detect, write, run_id,
         row_n, action, recorded) = row
        return KnownFace(endpoint, group, uid, sha, path, size, mtime, info, count,
                         log_id_in(detect), log_id_in(write), run_id, int(row_n), action,
                         self._time_in(recorded), key)

    def record(self, entries: Sequence[Entry]) -> int:
        new = 0
        with self._write() as conn:
            for e in entries:
                if self._insert_event(conn, e):
                    self._apply(conn, e)
                    new += 1
        return new

    def _insert_event(self, conn: Connection, e: Entry) -> bool:
        cur = conn.execute(self._sql(
            f"INSERT INTO {self.events_table} (endpoint, group_id, uid, image_sha256, action, "
            'run_id, "row", at, face_count, detect_log_id, write_log_id, image_path, user_info) '
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) "
            'ON CONFLICT (run_id, "row", group_id, action) DO NOTHING'),
            (e.endpoint, e.group_id, e.uid, e.image_sha256, e.action, e.run_id, e.row,
             self._time_out(e.at), e.face_count, self._log_id_out(e.detect_log_id),
             self._log_id_out(e.write_log_id), e.image_path, e.user_info))
        return bool(cur.rowcount == 1)

    def _apply(self, conn: Connection, e: Entry) -> None:
        key = (e.endpoint, e.group_id, e.uid)
        of_uid = f"DELETE FROM {self.faces_table} WHERE endpoint=? AND group_id=? AND uid=?"
        if e.action not in ENROLL_ACTIONS:
            conn.execute(self._sql(of_uid), key)
            return
        if e.action in REPLACING_ACTIONS:
            conn.execute(self._sql(of_uid + " AND image_sha256 <> ?"), (*key, e.image_sha256))
        conn.execute(self._sql(
            f"INSERT INTO {self.faces_table} VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT (endpoint, group_id, uid, image_sha256) DO UPDATE SET "
            "image_path=excluded.image_path, image_size=excluded.image_size, "
            "image_mtime_ns=excluded.image_mtime_ns, user_info=excluded.user_info, "
            "face_count=excluded.face_count, detect_log_id=excluded.detect_log_id, "
            "write_log_id=excluded.write_log_id, run_id=excluded.run_id, "
            '"row"=excluded."row", action=excluded.action, recorded_at=excluded.recorded_at'),
            (*key, e.image_sha256, e.image_path, e.image_size, e.image_mtime_ns, e.user_info,
             e.face_count, self._log_id_out(e.detect_log_id), self._log_id_out(e.write_log_id),
             e.run_id, e.row, e.action, self._time_out(e.at)))

    def refresh_stat(self, face: KnownFace, image_path: str, size: int, mtime_ns: int) -> None:
        with self._write() as conn:
            conn.execute(self._sql(
                f"UPDATE {self.faces_table} SET image_path=?, image_size=?, image_mtime_ns=? "
                "WHERE endpoint=? AND group_id=? AND uid=? AND image_sha256=?"),
                (image_path, size, mtime_ns, face.endpoint, face.group_id, face.uid,
                 face.image_sha256))

    def known_image(self, endpoint: str, group_id: str, uid: str, sha256: str
                    ) -> KnownFace | None:
        with self._lock:
            row = self._conn.execute(self._sql(
                f"SELECT {_FACE_SELECT} FROM {self.faces_table} f WHERE endpoint=? "
                "AND group_id=? AND uid=? AND image_sha256=?"),
                (endpoint, group_id, uid, sha256)).fetchone()
        return None if row is None else self._face(row)

    def faces(self, endpoint: str, group_id: str, uid: str | None = None
              ) -> Iterator[KnownFace]:
        where, args = "endpoint=? AND group_id=?", [endpoint, group_id]
        if uid is not None:
            where, args = where + " AND uid=?", [*args, uid]
        with self._lock:
            rows = self._conn.execute(self._sql(
                f"SELECT {_FACE_SELECT} FROM {self.faces_table} f WHERE {where} "
                f"ORDER BY {self.uid_order}, recorded_at"), args).fetchall()
        return iter([self._face(r) for r in rows])

    def stats(self) -> list[GroupStats]:
        with self._lock:
            held = self._conn.execute(
                "SELECT endpoint, group_id, COUNT(DISTINCT uid), COUNT(*) "
                f"FROM {self.faces_table} GROUP BY endpoint, group_id").fetchall()
            events = self._conn.execute(
                "SELECT endpoint, group_id, action, COUNT(*), MAX(at) "
                f"FROM {self.events_table} GROUP BY endpoint, group_id, action").fetchall()
        table: dict[tuple[str, str], dict[str, Any]] = {}
        for endpoint, group, uids, faces in held:
            table[(endpoint, group)] = {"uids": uids, "faces": faces, "events": {}, "last": None}
        for endpoint, group, action, n, last in events:
            line = table.setdefault((endpoint, group),
                                    {"uids": 0, "faces": 0, "events": {}, "last": None})
            line["events"][action] = n
            line["last"] = max(filter(None, (line["last"], self._time_in(last))), default=None)
        return [GroupStats(e, g, v["uids"], v["faces"], v["events"], v["last"])
                for (e, g), v in sorted(table.items())]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SqlLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"


def log_id_in(value: Stored) -> int | None:
    """A stored log id (text or numeric) as int."""
    return None if value is None else int(value)  # type: ignore[arg-type]
