"""The ledger in PostgreSQL, shared by shards and nightly runs on several hosts.

``--ledger postgresql://...`` (or ``FACEFLOW_LEDGER``) opens :class:`PgLedger`: the same
two tables as the SQLite ledger (:mod:`pipeline.ledger.base` says what they hold), named
``ledger_events`` and ``ledger_faces`` so the engine's store (``engine_*``) and the QPS
budget (``qps_budget``) can live in the same database.

Concurrency: every method is one transaction. ``record`` takes a transaction-level
advisory lock, so two processes recording at once apply their events one batch after the
other, in a consistent order, as SQLite's single writer does; reads never wait. A killed
process leaves its open transaction uncommitted (PostgreSQL rolls it back), so every
event that was committed has its face, and none that was not.

Log ids are uint64 (beyond bigint), stored as numeric and read back as int.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC
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
from pipeline.postgres import PostgresUnavailable, connect, redact

SCHEMA_VERSION = 1
_RECORD_LOCK = 0x66616365_03

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS ledger_events (
    event_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint text NOT NULL, group_id text NOT NULL, uid text NOT NULL,
    image_sha256 text, action text NOT NULL,
    run_id text NOT NULL, "row" bigint NOT NULL, at timestamptz NOT NULL,
    face_count int, detect_log_id numeric(20), write_log_id numeric(20),
    image_path text, user_info text,
    UNIQUE (run_id, "row", group_id, action));
CREATE INDEX IF NOT EXISTS ledger_events_by_uid ON ledger_events (endpoint, group_id, uid);
CREATE TABLE IF NOT EXISTS ledger_faces (
    endpoint text NOT NULL, group_id text NOT NULL, uid text NOT NULL,
    image_sha256 text NOT NULL,
    image_path text, image_size bigint, image_mtime_ns bigint, user_info text,
    face_count int, detect_log_id numeric(20), write_log_id numeric(20),
    run_id text NOT NULL, "row" bigint NOT NULL, action text NOT NULL,
    recorded_at timestamptz NOT NULL,
    PRIMARY KEY (endpoint, group_id, uid, image_sha256));
"""

_FACE_SELECT = ("f.endpoint, f.group_id, f.uid, f.image_sha256, f.image_path, f.image_size, "
                "f.image_mtime_ns, f.user_info, f.face_count, f.detect_log_id, "
                "f.write_log_id, f.run_id, f.\"row\", f.action, f.recorded_at")


class PgLedger:
    """The :class:`~pipeline.ledger.base.Ledger` in the PostgreSQL database at ``url``."""

    def __init__(self, url: str) -> None:
        self.location = redact(url)
        self._url = url
        self._lock = threading.Lock()
        try:
            self._conn = connect(url, autocommit=True)
            self._create()
        except PostgresUnavailable as exc:
            raise ConfigError(f"--ledger: {exc}") from None

    def _create(self) -> None:
        import psycopg  # noqa: PLC0415

        try:
            with self._conn.transaction():
                self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_RECORD_LOCK,))
                self._conn.execute(_SCHEMA)
                found = self._conn.execute(
                    "SELECT value FROM ledger_meta WHERE key='schema_version'").fetchone()
                if found is None:
                    self._conn.execute(
                        "INSERT INTO ledger_meta VALUES ('schema_version', %s), "
                        "('created_at', now()::text)", (str(SCHEMA_VERSION),))
                elif found[0] != str(SCHEMA_VERSION):
                    raise ConfigError(f"--ledger {self.location}: schema version {found[0]}, "
                                      f"this faceflow reads {SCHEMA_VERSION}")
        except psycopg.Error as exc:
            self._conn.close()
            raise ConfigError(f"--ledger {self.location}: cannot set up the ledger tables "
                              f"({str(exc).strip().splitlines()[0]})") from None

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        with self._lock, self._conn.transaction():
            yield self._conn

    # -- writes -----------------------------------------------------------------

    def record(self, entries: Sequence[Entry]) -> int:
        new = 0
        with self._tx() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_RECORD_LOCK,))
            for e in entries:
                if _insert_event(conn, e):
                    _apply(conn, e)
                    new += 1
        return new

    def refresh_stat(self, face: KnownFace, image_path: str, size: int, mtime_ns: int) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE ledger_faces SET image_path=%s, image_size=%s, image_mtime_ns=%s "
                "WHERE endpoint=%s AND group_id=%s AND uid=%s AND image_sha256=%s",
                (image_path, size, mtime_ns, face.endpoint, face.group_id, face.uid,
                 face.image_sha256))

    # -- reads ------------------------------------------------------------------

    def known_paths(self, endpoint: str, probes: Sequence[PathProbe]) -> list[PathMatch]:
        if not probes:
            return []
        with self._tx() as conn:
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS ledger_probe (k bigint, "
                         "group_id text, uid text, image_path text, size bigint, "
                         "mtime bigint) ON COMMIT DELETE ROWS")
            with conn.cursor() as cur, cur.copy(
                    "COPY ledger_probe (k, group_id, uid, image_path, size, mtime) "
                    "FROM STDIN") as copy:
                for probe in probes:
                    copy.write_row(probe)
            rows = conn.execute(
                "SELECT p.k, f.group_id, f.image_sha256, f.face_count, f.detect_log_id, "
                "f.write_log_id FROM ledger_probe p JOIN ledger_faces f ON f.endpoint=%s "
                "AND f.group_id=p.group_id AND f.uid=p.uid AND f.image_path=p.image_path "
                "AND f.image_size=p.size AND f.image_mtime_ns=p.mtime",
                (endpoint,)).fetchall()
        return [(int(k), g, sha, count, _log_id(d), _log_id(w))
                for k, g, sha, count, d, w in rows]

    def known_image(self, endpoint: str, group_id: str, uid: str, sha256: str
                    ) -> KnownFace | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_FACE_SELECT} FROM ledger_faces f WHERE endpoint=%s AND group_id=%s "
                "AND uid=%s AND image_sha256=%s", (endpoint, group_id, uid, sha256)).fetchone()
        return None if row is None else _face(row)

    def faces(self, endpoint: str, group_id: str, uid: str | None = None
              ) -> Iterator[KnownFace]:
        where, args = "endpoint=%s AND group_id=%s", [endpoint, group_id]
        if uid is not None:
            where, args = where + " AND uid=%s", [*args, uid]
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_FACE_SELECT} FROM ledger_faces f WHERE {where} "
                "ORDER BY uid COLLATE \"C\", recorded_at", args).fetchall()
        return iter([_face(r) for r in rows])

    def stats(self) -> list[GroupStats]:
        with self._lock:
            held = self._conn.execute(
                "SELECT endpoint, group_id, COUNT(DISTINCT uid), COUNT(*) FROM ledger_faces "
                "GROUP BY endpoint, group_id").fetchall()
            events = self._conn.execute(
                "SELECT endpoint, group_id, action, COUNT(*), MAX(at) FROM ledger_events "
                "GROUP BY endpoint, group_id, action").fetchall()
        table: dict[tuple[str, str], dict[str, Any]] = {}
        for endpoint, group, uids, faces in held:
            table[(endpoint, group)] = {"uids": uids, "faces": faces, "events": {}, "last": None}
        for endpoint, group, action, n, last in events:
            line = table.setdefault((endpoint, group),
                                    {"uids": 0, "faces": 0, "events": {}, "last": None})
            line["events"][action] = n
            text = last.astimezone(UTC).isoformat()
            line["last"] = max(filter(None, (line["last"], text)), default=None)
        return [GroupStats(e, g, v["uids"], v["faces"], v["events"], v["last"])
                for (e, g), v in sorted(table.items())]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> PgLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PgLedger({self.location!r})"


def _log_id(value: Any) -> int | None:
    return None if value is None else int(value)


def _insert_event(conn: Any, e: Entry) -> bool:
    cur = conn.execute(
        'INSERT INTO ledger_events (endpoint, group_id, uid, image_sha256, action, run_id, '
        '"row", at, face_count, detect_log_id, write_log_id, image_path, user_info) '
        "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) "
        'ON CONFLICT (run_id, "row", group_id, action) DO NOTHING',
        (e.endpoint, e.group_id, e.uid, e.image_sha256, e.action, e.run_id, e.row,
         e.at.astimezone(UTC), e.face_count, e.detect_log_id, e.write_log_id, e.image_path,
         e.user_info))
    return bool(cur.rowcount == 1)


def _apply(conn: Any, e: Entry) -> None:
    key = (e.endpoint, e.group_id, e.uid)
    if e.action not in ENROLL_ACTIONS:
        conn.execute("DELETE FROM ledger_faces WHERE endpoint=%s AND group_id=%s AND uid=%s",
                     key)
        return
    if e.action in REPLACING_ACTIONS:
        conn.execute("DELETE FROM ledger_faces WHERE endpoint=%s AND group_id=%s AND uid=%s "
                     "AND image_sha256 <> %s", (*key, e.image_sha256))
    conn.execute(
        "INSERT INTO ledger_faces VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) "
        "ON CONFLICT (endpoint, group_id, uid, image_sha256) DO UPDATE SET "
        "image_path=excluded.image_path, image_size=excluded.image_size, "
        "image_mtime_ns=excluded.image_mtime_ns, user_info=excluded.user_info, "
        "face_count=excluded.face_count, detect_log_id=excluded.detect_log_id, "
        "write_log_id=excluded.write_log_id, run_id=excluded.run_id, "
        '"row"=excluded."row", action=excluded.action, recorded_at=excluded.recorded_at',
        (*key, e.image_sha256, e.image_path, e.image_size, e.image_mtime_ns, e.user_info,
         e.face_count, e.detect_log_id, e.write_log_id, e.run_id, e.row, e.action,
         e.at.astimezone(UTC)))


def _face(row: Sequence[Any], key: int | None = None) -> KnownFace:
    (endpoint, group, uid, sha, path, size, mtime, info, count, detect, write, run_id, row_n,
     action, recorded) = row
    return KnownFace(endpoint, group, uid, sha, path, size, mtime, info, count,
                     _log_id(detect), _log_id(write), run_id, int(row_n), action,
                     recorded.astimezone(UTC).isoformat(), key)
