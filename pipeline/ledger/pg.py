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
from typing import TYPE_CHECKING

from pipeline.api.errors import ConfigError
from pipeline.ledger.base import PathMatch, PathProbe
from pipeline.ledger.sql import SqlLedger, log_id_in
from pipeline.postgres import PostgresUnavailable, connect, redact

if TYPE_CHECKING:
    from psycopg import Connection
    from psycopg.rows import TupleRow

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

class PgLedger(SqlLedger):
    """The :class:`~pipeline.ledger.base.Ledger` in the PostgreSQL database at ``url``."""

    events_table = "ledger_events"
    faces_table = "ledger_faces"
    placeholder = "%s"
    uid_order = 'uid COLLATE "C"'
    _conn: Connection[TupleRow]

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
    def _tx(self) -> Iterator[Connection[TupleRow]]:
        with self._lock, self._conn.transaction():
            yield self._conn

    @contextmanager
    def _write(self) -> Iterator[Connection[TupleRow]]:
        """A transaction holding the ledger's advisory lock: concurrent writers apply
        their batches one after the other."""
        with self._tx() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_RECORD_LOCK,))
            yield conn

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
        return [(int(k), g, sha, count, log_id_in(d), log_id_in(w))
                for k, g, sha, count, d, w in rows]
