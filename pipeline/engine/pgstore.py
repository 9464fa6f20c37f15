"""The engine's faceset in PostgreSQL + pgvector, shared by any number of engine replicas.

``faceflow engine serve --store postgresql://...`` uses :class:`PgStore` (the faceset:
memberships, faces, persons, tokens) and :class:`PgIndex` (search) instead of the
embedded SQLite store and in-memory index; both pairs implement the same public methods
(:mod:`pipeline.engine.store` and :mod:`pipeline.engine.index`), so the interfaces do
not know which one they talk to.

Sharing: every read and search goes to the database, so a write acknowledged by one
replica (committed: ``synchronous_commit`` stays on, the commit's WAL is flushed before
the reply) is seen by the next search on any other; no replica holds an index to
rebuild. Tokens live here too, so a token issued by one replica works on all.

Search (:class:`PgIndex`): descriptors are ``vector(128)`` unit vectors, compared by L2
distance (``<->``, the same d as the embedded index). A group with at least
:data:`LARGE_GROUP` faces gets its own IVFFlat index, a *partial* index ``WHERE group_id =
'<group>'``: its lists hold that group's faces only, so a search is not a filtered scan
of one global index (a global index filtered to a group of ten missed most results).
Partial indexes do what one partition per group would, without moving rows: they are
built ``CONCURRENTLY`` beside live writes, by the serving replicas
(:func:`index_large_groups`, one at a time under an advisory lock), and built again with
more lists once the group has grown :data:`REBUILD_GROWTH` times. Smaller groups are
searched exactly (btree on group_id, then every distance). A search scans
:func:`ivf_probes` of the index's :func:`ivf_lists` lists, rules chosen by
``benchmarks/scale_engine.py`` (see the README). IVFFlat, not HNSW: on descriptors shaped
like dlib's, HNSW (m 16, ef_construction 200) found exact search's nearest face for 97 %
of probes at 1M faces even at ef_search 800, after a 22-minute build; IVFFlat (2,000
lists) built in under a minute and, at 90 probes, found it for every probe: 23 ms p50.
An HNSW index built by an older faceflow (schema 3) is still searched as HNSW until the
replicas' next look replaces it. The best-face-per-user and top-k rules are the embedded index's
(:func:`pipeline.engine.index.rank_users`).

Schema: versioned (:data:`MIGRATIONS`, table ``engine_schema``); ``faceflow engine
migrate`` applies what is missing under an advisory lock; a store opened on a database
whose schema is older or newer than this code refuses to start and says what to run.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.engine.index import Hit, rank_users
from pipeline.engine.store import Change, FaceRow, Membership, Person, face_token_of
from pipeline.postgres import PostgresUnavailable, connect

if TYPE_CHECKING:
    from psycopg import Connection
    from psycopg.errors import Diagnostic
    from psycopg.rows import TupleRow

    #: One connection of the store (psycopg's, rows as tuples).
    Db = Connection[TupleRow]

log = logging.getLogger("faceflow.engine")

#: Groups with at least this many faces get their own index (smaller: exact search).
#: benchmarks/scale_engine.py: exact search in PostgreSQL takes p50 1.0 ms at 2,000 faces,
#: 1.4 ms at 5,000, 4.0 ms at 10,000 and 9.2 ms at 20,000 on 2 quiet cores (16-24 ms at
#: 10,000 on busy ones), as long as the index's search at 100,000 (3.75 ms): from about
#: 10,000 faces an index pays.
LARGE_GROUP = 10_000
#: A group's index is built again (k-means on its faces now, more lists) once the group
#: holds this many times the faces it was built on: its lists, and so each search, have
#: doubled by then, and a build costs seconds per 100k faces.
REBUILD_GROWTH = 2.0
#: IVFFlat lists: LISTS_PER_ROOT * sqrt(faces) (:func:`ivf_lists`), within these bounds;
#: a search scans PROBES_PER_ROOT * sqrt(lists) of them (:func:`ivf_probes`). Chosen by
#: benchmarks/scale_engine.py, see both functions.
#: MAX_LISTS: 4,000 (4M faces and more) takes 3.8 GB to build (:func:`ivf_build_memory_mb`).
MIN_LISTS, MAX_LISTS = 100, 4_000
LISTS_PER_ROOT, PROBES_PER_ROOT = 2.0, 2.0
#: The HNSW comparison (benchmarks/scale_engine.py --hnsw) and indexes of schema 3:
#: hnsw.ef_search, m and ef_construction.
EF_SEARCH = 400
HNSW_M, HNSW_EF_CONSTRUCTION = 16, 200
#: Advisory lock keys: schema migration, index building.
_MIGRATE_LOCK, _INDEX_LOCK = 0x66616365_01, 0x66616365_02

MIGRATIONS: list[str | Callable[[Any], None]] = [
    # 1: the faceset (same model as the SQLite store) + group face counts.
    """
    CREATE EXTENSION IF NOT EXISTS vector;
    CREATE TABLE engine_memberships (
        group_id text NOT NULL, uid text NOT NULL, user_info text NOT NULL,
        created timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (group_id, uid));
    CREATE INDEX engine_memberships_uid ON engine_memberships (uid);
    CREATE TABLE engine_faces (
        face_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        group_id text NOT NULL, uid text NOT NULL, sha256 text NOT NULL,
        descriptor vector(128) NOT NULL, created timestamptz NOT NULL DEFAULT now(),
        FOREIGN KEY (group_id, uid) REFERENCES engine_memberships ON DELETE CASCADE);
    CREATE INDEX engine_faces_member ON engine_faces (group_id, uid);
    CREATE TABLE engine_groups (
        group_id text PRIMARY KEY, faces bigint NOT NULL DEFAULT 0,
        hnsw_index text);
    CREATE TABLE engine_persons (
        id_card_number text PRIMARY KEY, name text NOT NULL,
        descriptor vector(128) NOT NULL, sha256 text NOT NULL);
    CREATE TABLE engine_tokens (token text PRIMARY KEY, expires double precision NOT NULL);
    """,
    # 2: v3 - face tokens, groups created explicitly (they outlive their last member).
    """
    ALTER TABLE engine_faces ADD COLUMN face_token text NOT NULL DEFAULT '';
    CREATE INDEX engine_faces_token ON engine_faces (face_token);
    ALTER TABLE engine_groups ADD COLUMN explicit_at double precision;
    """,
    # 3: the face tokens of faces stored before version 2 (computed as the SQLite store does).
    lambda conn: _fill_face_tokens(conn),
    # 4: a group's index is IVFFlat (or HNSW, built by schema 3), rebuilt as the group grows.
    """
    ALTER TABLE engine_groups RENAME COLUMN hnsw_index TO ann_index;
    ALTER TABLE engine_groups ADD COLUMN ann_kind text, ADD COLUMN ann_lists int,
        ADD COLUMN ann_faces bigint;
    UPDATE engine_groups SET ann_kind = 'hnsw', ann_faces = faces WHERE ann_index IS NOT NULL;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


# -- schema ---------------------------------------------------------------------------------


def schema_version(conn: Db) -> int:
    """The applied schema version (0: none)."""
    if _scalar(conn, "SELECT to_regclass('engine_schema')") is None:
        return 0
    version = _scalar(conn, "SELECT max(version) FROM engine_schema")
    return int(version) if isinstance(version, int) else 0


def migrate(url: str) -> tuple[int, int]:
    """Bring the schema at ``url`` to :data:`SCHEMA_VERSION`: (version before, after).

    Each step is one transaction with its version row; concurrent migrates wait for
    each other (advisory lock), so two replicas started at once do the work once.
    """
    with connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATE_LOCK,))
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS engine_schema ("
                         "version int PRIMARY KEY, applied timestamptz NOT NULL DEFAULT now())")
            before = schema_version(conn)
            if before > SCHEMA_VERSION:
                raise PostgresUnavailable(_newer(before))
            for version in range(before + 1, SCHEMA_VERSION + 1):
                step = MIGRATIONS[version - 1]
                with conn.transaction():
                    if callable(step):
                        step(conn)
                    else:
                        conn.execute(step)
                    conn.execute("INSERT INTO engine_schema (version) VALUES (%s)", (version,))
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATE_LOCK,))
    return before, SCHEMA_VERSION


def _fill_face_tokens(conn: Db) -> None:
    rows = conn.execute("SELECT face_id, sha256, descriptor::real[] FROM engine_faces "
                        "WHERE face_token = ''").fetchall()
    with conn.cursor() as cur:
        cur.executemany("UPDATE engine_faces SET face_token=%s WHERE face_id=%s",
                        [(face_token_of(sha, np.asarray(vec, dtype=np.float32)), fid)
                         for fid, sha, vec in rows])


def _scalar(conn: Db, sql: str, args: Sequence[object] = ()) -> object:
    """The first column of a query's one row."""
    row = conn.execute(sql, args).fetchone()
    if row is None:
        raise PostgresUnavailable(f"no row from: {sql}")
    return row[0]


def pgvector_version(conn: Db) -> tuple[int, ...]:
    """The installed pgvector extension's version, e.g. (0, 8, 1); () when absent."""
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'"
                       ).fetchone()
    if not row:
        return ()
    return tuple(int(part) for part in row[0].split(".") if part.isdigit())


def require_schema(conn: Db) -> None:
    """Raise PostgresUnavailable, saying what to run, unless the schema at ``conn`` is
    this code's (:data:`SCHEMA_VERSION`)."""
    version = schema_version(conn)
    if version > SCHEMA_VERSION:
        raise PostgresUnavailable(_newer(version))
    if version < SCHEMA_VERSION:
        raise PostgresUnavailable(
            f"the engine schema is at version {version}, this faceflow needs "
            f"{SCHEMA_VERSION}: run `faceflow engine migrate --store URL` first")


def _newer(version: int) -> str:
    return (f"the database's engine schema is version {version}, newer than this faceflow "
            f"({SCHEMA_VERSION}); upgrade faceflow")


@dataclass(frozen=True)
class GroupIndex:
    """A group's approximate index: its name, kind (``ivfflat`` or ``hnsw``), IVFFlat lists."""

    name: str
    kind: str
    lists: int | None = None


#: One group's faces and index (read by searches and by :func:`reindex`).
_GROUP_INFO = ("SELECT faces, ann_index, ann_kind, ann_lists FROM engine_groups "
               "WHERE group_id=%s")
#: A group whose index the replicas' next look builds (parameters: the kind wanted, the
#: growth): none yet, another kind (an HNSW index of schema 3), or grown since.
_DUE = "(ann_index IS NULL OR ann_kind IS DISTINCT FROM %s OR faces >= %s * ann_faces)"


def _group_info(row: tuple[Any, ...]) -> tuple[int, GroupIndex | None]:
    faces, name, kind, lists = row
    return int(faces), (GroupIndex(name, kind, lists) if name else None)


def index_name(group_id: str, faces: int) -> str:
    """The index of one group built on ``faces`` faces (a hash: group ids may not be valid
    identifiers; the count tells a rebuild from the index it replaces)."""
    return f"{_index_prefix(group_id)}_{faces}"


def _index_prefix(group_id: str) -> str:
    return "engine_faces_ann_" + _digest(group_id)


def _digest(group_id: str) -> str:
    """A group's short hash in its index names (schema 3's engine_faces_hnsw_<digest> too)."""
    return hashlib.sha1(group_id.encode()).hexdigest()[:16]


def ivf_lists(faces: int) -> int:
    """IVFFlat lists for a group of ``faces``: 2 sqrt(faces) (200 at 10,000, 2,000 at 1M).

    More, smaller lists cost k-means time at the build and save scanning at every
    search. At 1M faces (benchmarks/scale_engine.py --sizes 1000000 --lists 1000): 2,000
    lists built in 48 s and found exact search's nearest face for every probe from 48
    probes on (12.4 ms p50); 1,000 lists built in 20 s and needed 64 (33.9 ms).
    """
    return max(MIN_LISTS, min(MAX_LISTS, round(LISTS_PER_ROOT * math.sqrt(faces))))


def ivf_probes(lists: int) -> int:
    """Lists one search scans: 2 sqrt(lists), rounded up (29 of 200, 51 of 632, 90 of 2,000).

    The cells a same-person match may fall in grow more slowly than the lists (cells
    shrink), hence a root rather than a share. benchmarks/scale_engine.py (1,000 identify
    probes, descriptors shaped like dlib's): the smallest probes finding exact search's
    nearest face for all probes but 0.1 % were 16-32 of 632 lists (100k faces, three
    builds) and 48, 48, 64 and 64 of 2,000 (1M, four builds: k-means samples at random,
    so builds differ); 96 of 2,000 found it for every probe in all four. 1.5 sqrt(lists)
    (68 of 2,000) left rank-1 at 99.8 % in one build, 0.3 points over the 99.5 % bound;
    2 sqrt(lists) buys a wider margin for about a third more search time.
    """
    return min(lists, math.ceil(PROBES_PER_ROOT * math.sqrt(lists)))


def ivf_build_memory_mb(lists: int) -> int:
    """``maintenance_work_mem`` (MB) for building an IVFFlat index of ``lists`` lists.

    pgvector's k-means holds a sample of 50 rows per list and, for each, a bound per list
    (4 bytes): 200 lists^2 bytes. pgvector 0.8 refused 2,000 lists in 256 MB saying
    "memory required is 832 MB" (800 MB of bounds, 52 MB of sample). A fifth more, at
    least 256 MB: 1 GB at 2,000 lists (1M faces), 3.8 GB at 4,000.
    """
    need = 200 * lists * lists + 50 * lists * (128 * 4 + 8)
    return max(256, -(-need * 6 // 5 // 2**20))


def graph_bytes_per_face(m: int = HNSW_M) -> int:
    """Bytes of pgvector's in-memory HNSW graph per 128-d face.

    pgvector 0.8 said "hnsw graph no longer fits into maintenance_work_mem after 13669
    tuples" at 16 MB with m=16 (1,227 bytes each) and after 9,655 with m=32 (1,738): 715
    bytes plus 32 per unit of m (2m neighbour slots of 16 bytes). On disk the index
    takes ~830 bytes per face at m=16.
    """
    return 715 + 32 * m


def build_memory_mb(faces: int, m: int = HNSW_M) -> int:
    """``maintenance_work_mem`` (MB) for building one group's HNSW graph in memory.

    pgvector builds fast only while the whole graph fits (else it goes on, much slower,
    writing pages as it inserts, and says so in a notice, logged here as a warning).
    Twice :func:`graph_bytes_per_face`, at least 1 GB: 2.3 GB for 1M faces at m=16.
    """
    return max(1024, -(-2 * graph_bytes_per_face(m) * faces // 2**20))


def index_large_groups(url: str, min_faces: int = LARGE_GROUP, *, kind: str = "ivfflat",
                       lists: int | None = None, m: int = HNSW_M,
                       ef_construction: int = HNSW_EF_CONSTRUCTION,
                       groups: Sequence[str] | None = None) -> list[str]:
    """Build the index of every group with >= ``min_faces`` faces that lacks one, has one
    of another kind (an HNSW index of schema 3), or has grown :data:`REBUILD_GROWTH` times
    since its index was built; or, given ``groups``, of those groups with >= ``min_faces``
    faces, whatever their index (``faceflow engine reindex``).

    ``kind``: ``ivfflat`` (the engine's; ``lists`` default :func:`ivf_lists` of the group)
    or ``hnsw`` (``m``, ``ef_construction``: the benchmark's comparison). Built
    ``CONCURRENTLY`` (writes go on) under a new name, recorded in ``engine_groups``, then
    the group's other indexes are dropped: the one replaced (searches use it until then),
    and any left by a build that died (invalid, or valid but never recorded). One build at
    a time across replicas (advisory lock): without ``groups`` a replica that finds
    another building returns at once; with them it waits its turn. Returns the groups
    indexed now.
    """
    if kind not in ("ivfflat", "hnsw"):
        raise ValueError(f"index kind {kind!r}: ivfflat or hnsw")
    done: list[str] = []
    with connect(url, autocommit=True) as conn:
        if groups is not None:
            conn.execute("SELECT pg_advisory_lock(%s)", (_INDEX_LOCK,))
        elif not _scalar(conn, "SELECT pg_try_advisory_lock(%s)", (_INDEX_LOCK,)):
            return done
        conn.add_notice_handler(_build_notice)
        try:
            if groups is None:
                rows = conn.execute(
                    "SELECT group_id, faces, ann_index FROM engine_groups WHERE faces >= %s "
                    f"AND {_DUE} ORDER BY group_id",
                    (min_faces, kind, REBUILD_GROWTH)).fetchall()
            else:
                rows = conn.execute(
                    "SELECT group_id, faces, ann_index FROM engine_groups WHERE faces >= %s "
                    "AND group_id = ANY(%s) ORDER BY group_id", (min_faces, list(groups))
                ).fetchall()
            for group, faces, current in rows:
                # Never the name of the index in use: it serves searches until replaced.
                base = index_name(group, int(faces))
                name = base if base != current else base + "_r"
                _build_index(conn, group, int(faces), name, kind,
                             (lists or ivf_lists(int(faces))) if kind == "ivfflat" else None,
                             m, ef_construction)
                _drop_other_indexes(conn, group, name)
                done.append(group)
            if done:
                conn.execute("ANALYZE engine_faces")
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_INDEX_LOCK,))
    return done


def _build_index(conn: Db, group: str, faces: int, name: str, kind: str, lists: int | None,
                 m: int, ef_construction: int) -> None:
    """CREATE INDEX CONCURRENTLY one group's index ``name``, then record it."""
    from psycopg import sql  # noqa: PLC0415

    conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(name)))
    if lists is None:
        # The graph must fit while it is built, else the build is far slower.
        memory, method = build_memory_mb(faces, m), sql.SQL(
            "hnsw (descriptor vector_l2_ops) WITH (m = {}, ef_construction = {})"
        ).format(sql.Literal(m), sql.Literal(ef_construction))
    else:
        memory = ivf_build_memory_mb(lists)
        method = sql.SQL("ivfflat (descriptor vector_l2_ops) WITH (lists = {})").format(
            sql.Literal(lists))
    conn.execute(f"SET maintenance_work_mem = '{memory}MB'")
    conn.execute(sql.SQL(
        "CREATE INDEX CONCURRENTLY {} ON engine_faces USING {} WHERE group_id = {}"
    ).format(sql.Identifier(name), method, sql.Literal(group)))
    conn.execute("UPDATE engine_groups SET ann_index=%s, ann_kind=%s, ann_lists=%s, "
                 "ann_faces=%s WHERE group_id=%s", (name, kind, lists, faces, group))


@dataclass(frozen=True)
class Reindexed:
    """One group named to :func:`reindex`: its faces, its index now (None: none), the
    build's seconds (0: not built) and why not when it was not."""

    group: str
    faces: int
    index: GroupIndex | None
    seconds: float
    skipped: str = ""


def reindex(url: str, groups: Sequence[str] | None = None) -> list[Reindexed]:
    """Build now, one group after the other: the named ``groups`` (whatever their index),
    else what the replicas would build at their next look (:func:`index_large_groups`).
    Waits for a build another replica is running. Groups under :data:`LARGE_GROUP` faces
    are reported, not built; an unknown group is a ValueError, before any build. A
    schema other than this code's is refused (PostgresUnavailable) before anything."""
    with connect(url, autocommit=True) as conn:
        require_schema(conn)
        if groups is None:
            groups = [r[0] for r in conn.execute(
                f"SELECT group_id FROM engine_groups WHERE faces >= %s AND {_DUE} "
                "ORDER BY group_id", (LARGE_GROUP, "ivfflat", REBUILD_GROWTH)).fetchall()]
        sizes: dict[str, int] = dict(conn.execute("SELECT group_id, faces FROM engine_groups "
                                  "WHERE group_id = ANY(%s)", (list(groups),)).fetchall())
    missing = [g for g in dict.fromkeys(groups) if g not in sizes]
    if missing:  # before any build
        raise ValueError("no such group: " + ", ".join(missing))
    out: list[Reindexed] = []
    for group in dict.fromkeys(groups):
        faces = int(sizes[group])
        if faces < LARGE_GROUP:
            out.append(Reindexed(group, faces, None, 0.0,
                                 f"under {LARGE_GROUP:,} faces: searched exactly"))
            continue
        start = time.monotonic()
        index_large_groups(url, groups=[group])
        with connect(url) as conn:
            row = conn.execute(_GROUP_INFO, (group,)).fetchone()
        faces, index = _group_info(row) if row else (faces, None)
        out.append(Reindexed(group, faces, index, round(time.monotonic() - start, 1)))
    return out


def drop_group_index(url: str, group_id: str) -> None:
    """Drop a group's index (it is searched exactly until the next build)."""
    with connect(url, autocommit=True) as conn:
        conn.execute("UPDATE engine_groups SET ann_index=NULL, ann_kind=NULL, ann_lists=NULL, "
                     "ann_faces=NULL WHERE group_id=%s", (group_id,))
        _drop_other_indexes(conn, group_id, None)


def _drop_other_indexes(conn: Db, group_id: str, keep: str | None) -> None:
    """Drop the group's indexes but ``keep`` (schema 3 named them engine_faces_hnsw_...)."""
    from psycopg import sql  # noqa: PLC0415

    names = [r[0] for r in conn.execute(
        "SELECT indexname FROM pg_indexes WHERE tablename = 'engine_faces' AND "
        "(indexname LIKE %s OR indexname = %s)",
        (_index_prefix(group_id) + "\\_%", "engine_faces_hnsw_" + _digest(group_id))
    ).fetchall()]
    for name in names:
        if name != keep:
            conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(
                sql.Identifier(name)))


def _build_notice(notice: Diagnostic) -> None:
    # "hnsw graph no longer fits into maintenance_work_mem": the build slows down a lot.
    text = str(notice.message_primary)
    log.log(logging.WARNING if "maintenance_work_mem" in text else logging.DEBUG,
            "building a group's index: %s", text)


# -- the store -----------------------------------------------------------------------------


class PgStore:
    """The faceset at ``url`` (schema created by :func:`migrate`); same methods as Store.

    One connection per thread, opened on first use: the engine runs its interfaces on a
    bounded pool of threads (:class:`pipeline.engine.state.EngineState`), so queries of
    concurrent requests run side by side, never on the event loop; tests read from their
    own thread. Every write is one transaction on the calling thread's connection,
    committed before it returns (a read inside it sees it).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._guard = threading.Lock()
        self._local = threading.local()
        self._open_conns: list[Any] = []
        self._closed = False
        db = self._conn()  # the schema is checked now: a bad URL or schema fails at start
        #: pgvector >= 0.8 goes on scanning past ivfflat.probes / hnsw.ef_search when a
        #: query needs more faces (iterative scans); with an older one such a query is
        #: answered exactly instead (:meth:`nearest`).
        self.iterative = pgvector_version(db) >= (0, 8)

    def _open(self) -> Db:
        db = connect(self.url, autocommit=True, vector=True)
        # Custom plans: the group id is known when planning, so the planner can pick
        # that group's partial index.
        db.execute("SET plan_cache_mode = force_custom_plan")
        try:
            require_schema(db)
        except PostgresUnavailable:
            db.close()
            raise
        from pgvector.psycopg import register_vector  # noqa: PLC0415

        register_vector(db)
        return db

    def _conn(self) -> Db:
        # A connection the server dropped (restart, failover, idle timeout) fails the
        # call that meets it (the engine answers 216401; clients retry); the next call
        # reconnects here. Nothing is retried blindly: a write whose commit was in flight
        # may or may not have happened.
        db = getattr(self._local, "db", None)
        if db is not None and not db.broken:
            return db
        if self._closed:
            raise PostgresUnavailable("the engine's store is closed")
        fresh = self._open()
        with self._guard:
            if db is not None:
                db.close()
                self._open_conns.remove(db)
            self._open_conns.append(fresh)
        self._local.db = fresh
        return fresh

    @property
    def _db(self) -> Db:
        """The calling thread's connection."""
        return self._conn()

    def connections(self) -> int:
        """Connections this store holds open (one per thread that used it)."""
        with self._guard:
            return len(self._open_conns)

    def close(self) -> None:
        with self._guard:
            self._closed = True
            conns, self._open_conns = self._open_conns, []
        for db in conns:
            db.close()

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        db = self._conn()
        with db.transaction():
            yield db

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[tuple]:
        return self._conn().execute(sql, args).fetchall()

    # -- reads -------------------------------------------------------------------------

    def memberships(self, uid: str) -> list[Membership]:
        """Every group the uid is in, ordered by group_id."""
        rows = self._query("SELECT group_id, uid, user_info FROM engine_memberships "
                           "WHERE uid=%s ORDER BY group_id COLLATE \"C\"", (uid,))
        return [Membership(*row) for row in rows]

    def membership(self, group_id: str, uid: str) -> Membership | None:
        rows = self._query("SELECT group_id, uid, user_info FROM engine_memberships "
                           "WHERE group_id=%s AND uid=%s", (group_id, uid))
        return Membership(*rows[0]) if rows else None

    def groups(self, start: int = 0, num: int = 100) -> list[str]:
        """Group ids in sorted order (bytewise, as SQLite), ``num`` of them from ``start``."""
        rows = self._query("SELECT group_id FROM engine_groups g WHERE EXISTS (SELECT 1 FROM "
                           "engine_memberships m WHERE m.group_id = g.group_id) "
                           "ORDER BY group_id COLLATE \"C\" LIMIT %s OFFSET %s", (num, start))
        return [row[0] for row in rows]

    def group_users(self, group_id: str, start: int = 0, num: int = 100) -> list[Membership]:
        """Users of a group ordered by uid."""
        rows = self._query("SELECT group_id, uid, user_info FROM engine_memberships "
                           "WHERE group_id=%s ORDER BY uid COLLATE \"C\" LIMIT %s OFFSET %s",
                           (group_id, num, start))
        return [Membership(*row) for row in rows]

    def faces_of(self, group_id: str, uid: str) -> list[FaceRow]:
        rows = self._query(f"SELECT {_FACE_COLUMNS} FROM engine_faces "
                           "WHERE group_id=%s AND uid=%s ORDER BY face_id", (group_id, uid))
        return [_face(row) for row in rows]

    def face_by_token(self, face_token: str) -> FaceRow | None:
        """The oldest stored face with this registration token (any group), or None."""
        rows = self._query(f"SELECT {_FACE_COLUMNS} FROM engine_faces WHERE face_token=%s "
                           "ORDER BY face_id LIMIT 1", (face_token,))
        return _face(rows[0]) if rows else None

    def group_exists(self, group_id: str) -> bool:
        """True for a group created explicitly (v3) or holding a membership."""
        rows = self._query(
            "SELECT EXISTS (SELECT 1 FROM engine_groups WHERE group_id=%s "
            "AND explicit_at IS NOT NULL) OR EXISTS (SELECT 1 FROM engine_memberships "
            "WHERE group_id=%s)", (group_id, group_id))
        return bool(rows[0][0])

    def group_ids(self, start: int = 0, length: int = 100) -> list[str]:
        """Every group (explicit or with members) in creation order, ``length`` from ``start``.

        A group's creation time is its explicit creation's, else its oldest membership's.
        """
        rows = self._query(
            "SELECT group_id, MIN(c) AS c FROM ("
            " SELECT group_id, explicit_at AS c FROM engine_groups WHERE explicit_at IS NOT NULL"
            " UNION ALL SELECT group_id, extract(epoch FROM created)::float8 FROM"
            " engine_memberships) t GROUP BY group_id ORDER BY c, group_id COLLATE \"C\" "
            "LIMIT %s OFFSET %s", (length, start))
        return [row[0] for row in rows]

    def users_by_age(self, group_id: str, start: int = 0, length: int = 100) -> list[str]:
        """User ids of a group in registration order (v3 group getusers)."""
        rows = self._query("SELECT uid FROM engine_memberships WHERE group_id=%s "
                           "ORDER BY created, uid COLLATE \"C\" LIMIT %s OFFSET %s",
                           (group_id, length, start))
        return [row[0] for row in rows]

    def all_faces(self) -> list[FaceRow]:
        """Every stored face, in face_id order."""
        rows = self._query(f"SELECT {_FACE_COLUMNS} FROM engine_faces "
                           "ORDER BY face_id")
        return [_face(row) for row in rows]

    def counts(self) -> dict[str, int]:
        """users (distinct uids), memberships, groups, faces, persons."""
        users, members, groups, faces, persons = self._query(
            "SELECT (SELECT COUNT(DISTINCT uid) FROM engine_memberships),"
            " (SELECT COUNT(*) FROM engine_memberships),"
            " (SELECT COUNT(DISTINCT group_id) FROM engine_memberships),"
            " (SELECT COUNT(*) FROM engine_faces), (SELECT COUNT(*) FROM engine_persons)")[0]
        return {"users": users, "memberships": members, "groups": groups,
                "faces": faces, "persons": persons}

    def integrity_check(self) -> str:
        """"ok" when every group's face count matches its faces (else what differs)."""
        rows = self._query(
            "SELECT g.group_id, g.faces, count(f.face_id) FROM engine_groups g "
            "LEFT JOIN engine_faces f USING (group_id) GROUP BY g.group_id, g.faces "
            "HAVING g.faces <> count(f.face_id) LIMIT 5")
        return "ok" if not rows else "; ".join(f"{g}: counted {n}, stored {c}"
                                                for g, n, c in rows)

    # -- writes (one transaction each) ---------------------------------------------------

    def add_face(self, groups: Sequence[str], uid: str, user_info: str, sha256: str,
                 descriptor: np.ndarray, replace: bool = False) -> Change:
        """Add one face to ``uid`` in every group (creating memberships).

        ``replace``: first drop the uid's existing faces in those groups.
        """
        added: list[FaceRow] = []
        removed: list[int] = []
        with self._tx() as db:
            _lock_groups(db, groups)
            for group in groups:
                if replace:
                    removed += _delete_faces(db, group, uid)
                _upsert_membership(db, group, uid, user_info)
                added.append(_insert_face(db, group, uid, sha256, descriptor))
        return Change(tuple(added), tuple(removed))

    def delete_user(self, uid: str, group_id: str | None = None) -> Change:
        """Remove the uid from one group or from all; returns the faces removed."""
        removed: list[int] = []
        with self._tx() as db:
            groups = [group_id] if group_id else [m.group_id for m in self.memberships(uid)]
            _lock_groups(db, groups)
            for group in groups:
                removed += _delete_faces(db, group, uid)
                db.execute("DELETE FROM engine_memberships WHERE group_id=%s AND uid=%s",
                           (group, uid))
        return Change(removed=tuple(removed))

    def copy_user(self, src_group: str, targets: Sequence[str], uid: str) -> Change:
        """Copy the uid's membership (user_info + faces) from ``src_group`` into ``targets``."""
        added: list[FaceRow] = []
        with self._tx() as db:
            source = self.membership(src_group, uid)
            assert source is not None
            faces = self.faces_of(src_group, uid)
            _lock_groups(db, targets)
            for group in targets:
                _upsert_membership(db, group, uid, source.user_info)
                added += [_insert_face(db, group, uid, f.sha256, f.descriptor) for f in faces]
        return Change(tuple(added))

    def delete_face(self, face_id: int) -> Change:
        """Remove one face; a membership left without faces is removed too (v3 face delete)."""
        with self._tx() as db:
            row = db.execute("DELETE FROM engine_faces WHERE face_id=%s RETURNING group_id, uid",
                             (face_id,)).fetchone()
            if row is None:
                return Change()
            _count(db, row[0], -1)
            db.execute("DELETE FROM engine_memberships m WHERE group_id=%s AND uid=%s AND NOT "
                       "EXISTS (SELECT 1 FROM engine_faces f WHERE f.group_id=m.group_id "
                       "AND f.uid=m.uid)", row)
        return Change(removed=(face_id,))

    def add_group(self, group_id: str) -> bool:
        """Create an empty group (v3 group add); False when it already exists."""
        with self._tx() as db:
            # The row lock of the group's counter row serialises two replicas adding it.
            db.execute("INSERT INTO engine_groups (group_id) VALUES (%s) "
                       "ON CONFLICT (group_id) DO NOTHING", (group_id,))
            db.execute("SELECT 1 FROM engine_groups WHERE group_id=%s FOR UPDATE", (group_id,))
            if self.group_exists(group_id):
                return False
            db.execute("UPDATE engine_groups SET explicit_at = extract(epoch FROM now()) "
                       "WHERE group_id=%s", (group_id,))
        return True

    def delete_group(self, group_id: str) -> Change:
        """Remove a group with every membership and face in it (v3 group delete)."""
        with self._tx() as db:
            ids = [int(r[0]) for r in db.execute(
                "DELETE FROM engine_faces WHERE group_id=%s RETURNING face_id",
                (group_id,)).fetchall()]
            db.execute("DELETE FROM engine_memberships WHERE group_id=%s", (group_id,))
            db.execute("UPDATE engine_groups SET faces=0, explicit_at=NULL WHERE group_id=%s",
                       (group_id,))
        return Change(removed=tuple(ids))

    def seed_faces(self, group_id: str, items: Sequence[tuple[str, str, np.ndarray]]) -> Change:
        """Bulk fast path for benchmarks: (uid, user_info, descriptor) rows, one transaction.

        Rows go in by COPY; the Change is empty (the database's index follows by itself).
        """
        with self._tx() as db:
            cur = db.cursor()
            db.execute("CREATE TEMP TABLE seed_members (uid text PRIMARY KEY, info text) "
                       "ON COMMIT DROP")
            with cur.copy("COPY seed_members (uid, info) FROM STDIN") as cp:
                for uid, info, _ in dict((item[0], item) for item in items).values():
                    cp.write_row((uid, info))
            db.execute("INSERT INTO engine_memberships (group_id, uid, user_info) "
                       "SELECT %s, uid, info FROM seed_members ON CONFLICT (group_id, uid) "
                       "DO UPDATE SET user_info=excluded.user_info", (group_id,))
            with cur.copy("COPY engine_faces (group_id, uid, sha256, descriptor, face_token) "
                          "FROM STDIN WITH (FORMAT BINARY)") as cp:
                cp.set_types(["text", "text", "text", "vector", "text"])
                for uid, _, vec in items:
                    arr = np.asarray(vec, dtype=np.float32)
                    cp.write_row((group_id, uid, "", arr, face_token_of("", arr)))
            _count(db, group_id, len(items))
        return Change()

    # -- persons and tokens --------------------------------------------------------------

    def put_person(self, person: Person) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO engine_persons VALUES (%s, %s, %s, %s) "
                       "ON CONFLICT (id_card_number) DO UPDATE SET name=excluded.name, "
                       "descriptor=excluded.descriptor, sha256=excluded.sha256",
                       (person.id_card_number, person.name, _vec(person.descriptor),
                        person.sha256))

    def person(self, id_card_number: str) -> Person | None:
        rows = self._query("SELECT id_card_number, name, descriptor, sha256 FROM engine_persons "
                           "WHERE id_card_number=%s", (id_card_number,))
        if not rows:
            return None
        number, name, vec, sha = rows[0]
        return Person(number, name, _array(vec), sha)

    def put_token(self, token: str, expires: float) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO engine_tokens VALUES (%s, %s) ON CONFLICT (token) "
                       "DO UPDATE SET expires=excluded.expires", (token, expires))

    def token_expiry(self, token: str) -> float | None:
        """Wall-clock expiry (epoch seconds) of a token, or None when unknown."""
        rows = self._query("SELECT expires FROM engine_tokens WHERE token=%s", (token,))
        return float(rows[0][0]) if rows else None

    # -- search (used by PgIndex) --------------------------------------------------------

    def group_info(self, group_id: str) -> tuple[int, GroupIndex | None]:
        """(faces, its index or None) of one group."""
        rows = self._query(_GROUP_INFO, (group_id,))
        return _group_info(rows[0]) if rows else (0, None)

    def nearest(self, group_id: str, probe: np.ndarray, limit: int, index: GroupIndex | None,
                width: int | None = None) -> list[tuple[str, float]]:
        """(uid, distance) of the ``limit`` faces nearest ``probe`` in a group, nearest first.

        Through the group's ``index`` when given, scanning ``width`` lists (IVFFlat; default
        :func:`ivf_probes`) or with ``hnsw.ef_search`` = ``width`` (HNSW; default
        :data:`EF_SEARCH`); iterative scans go on past those when ``limit`` needs more
        faces. Without an index: exact, ties by face_id.
        """
        with self._tx() as db:
            rows = db.execute(*self._nearest_sql(db, group_id, probe, limit, index, width,
                                                 self.iterative)).fetchall()
        if index is not None and not self.iterative and len(rows) < limit:
            # The probed lists held fewer faces than asked and this pgvector cannot scan
            # on: exact search, in a transaction of its own (the settings are LOCAL).
            with self._tx() as db:
                rows = db.execute(*self._nearest_sql(db, group_id, probe, limit, None, None,
                                                     False)).fetchall()
            index = None
        found = [(uid, float(d)) for uid, d in rows]
        # An iterative scan may return slightly out of order: sort here.
        return sorted(found, key=lambda r: r[1]) if index else found

    def explain_nearest(self, group_id: str, probe: np.ndarray, limit: int,
                        index: GroupIndex | None) -> str:
        """PostgreSQL's plan of one :meth:`nearest` query (which index it scans)."""
        with self._tx() as db:
            sql, args = self._nearest_sql(db, group_id, probe, limit, index, None,
                                          self.iterative)
            return "\n".join(r[0] for r in db.execute("EXPLAIN " + sql, args).fetchall())

    @staticmethod
    def _nearest_sql(db: Db, group_id: str, probe: np.ndarray, limit: int,
                     index: GroupIndex | None, width: int | None,
                     iterative: bool) -> tuple[str, tuple]:
        # Settings are SET LOCAL: they end with the transaction.
        vec = _vec(probe)
        if index is not None:
            # The group's partial index is the one ordered path left: the planner
            # would otherwise pick btree + sort on stale statistics.
            db.execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off; "
                       "SET LOCAL enable_sort = off")
            if index.kind == "hnsw":
                ef = width or EF_SEARCH
                db.execute(f"SET LOCAL hnsw.ef_search = {min(1000, max(ef, limit))}")
                if limit > 1000 and iterative:
                    db.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
            else:
                probes = width or ivf_probes(index.lists or MIN_LISTS)
                db.execute(f"SET LOCAL ivfflat.probes = {int(probes)}")
                if iterative:  # more lists when these hold fewer than ``limit`` faces
                    db.execute("SET LOCAL ivfflat.iterative_scan = relaxed_order")
            return ("SELECT uid, descriptor <-> %s AS d FROM engine_faces WHERE group_id=%s "
                    "ORDER BY descriptor <-> %s LIMIT %s", (vec, group_id, vec, limit))
        db.execute("SET LOCAL enable_indexscan = off")  # exact: never an index scan
        return ("SELECT uid, descriptor <-> %s AS d FROM engine_faces WHERE group_id=%s "
                "ORDER BY d, face_id LIMIT %s", (vec, group_id, limit))

    def user_distances(self, probe: np.ndarray, group_id: str, uid: str) -> list[float]:
        rows = self._query("SELECT descriptor <-> %s AS d FROM engine_faces "
                           "WHERE group_id=%s AND uid=%s ORDER BY d", (_vec(probe), group_id, uid))
        return [float(row[0]) for row in rows]

    def face_total(self) -> int:
        return int(self._query("SELECT COALESCE(sum(faces), 0) FROM engine_groups")[0][0])


class PgIndex:
    """Search over a :class:`PgStore`; the methods of the embedded SearchIndex.

    ``load`` and ``apply`` do nothing: the database's tables and indexes are the index,
    already up to date when a write commits (on every replica). ``width``: lists scanned
    (IVFFlat) or ef_search (HNSW) instead of the engine's rule (the benchmark's sweep).
    """

    def __init__(self, store: PgStore, width: int | None = None) -> None:
        self.store = store
        self.width = width

    def load(self, faces: object) -> None:
        return None

    def apply(self, change: Change) -> None:
        return None

    def size(self, group_id: str | None = None) -> int:
        """Faces in one group, or in all."""
        if group_id is None:
            return self.store.face_total()
        return self.store.group_info(group_id)[0]

    def search(self, probe: np.ndarray, groups: Sequence[str], top_users: int,
               per_user: int = 1) -> list[Hit]:
        """The ``top_users`` nearest (group, uid) pairs over ``groups``, nearest first."""
        hits: list[Hit] = []
        for name in dict.fromkeys(groups):
            size, index = self.store.group_info(name)
            if size:
                hits += self._search_group(name, size, index, probe, top_users, per_user)
        hits.sort(key=lambda hit: hit.distances[0])
        return hits[:top_users]

    def _search_group(self, name: str, size: int, index: GroupIndex | None, probe: np.ndarray,
                      top_users: int, per_user: int) -> list[Hit]:
        # As the embedded index: the nearest faces first, widening until enough users.
        want = min(size, max(32, 8 * top_users * per_user))
        while True:
            rows = self.store.nearest(name, probe, want, index, self.width)
            found = rank_users(rows, top_users, per_user)
            if len(found) >= top_users or want >= size:
                break
            want = min(size, want * 4)
        return [Hit(name, uid, ds) for uid, ds in found]

    def distances_of(self, probe: np.ndarray, group_id: str, uid: str) -> list[float]:
        """Distances from the probe to every face of one user in one group, nearest first."""
        return self.store.user_distances(probe, group_id, uid)


def _vec(descriptor: np.ndarray) -> object:
    from pgvector import Vector  # noqa: PLC0415

    return Vector(np.asarray(descriptor, dtype=np.float32))


_FACE_COLUMNS = ("face_id, group_id, uid, sha256, descriptor, extract(epoch FROM created), "
                 "face_token")


def _array(value: object) -> np.ndarray:
    # pgvector's loader answers Vector objects (numpy arrays in older releases).
    to_numpy = getattr(value, "to_numpy", None)
    return np.asarray(to_numpy() if to_numpy else value, dtype=np.float32)


def _face(row: tuple) -> FaceRow:
    face_id, group, uid, sha, vec, created, token = row
    return FaceRow(int(face_id), group, uid, sha, _array(vec), float(created), token)


def _count(db: Db, group: str, delta: int) -> None:
    db.execute("INSERT INTO engine_groups (group_id, faces) VALUES (%s, %s) "
               "ON CONFLICT (group_id) DO UPDATE SET faces = engine_groups.faces + %s",
               (group, delta, delta))


def _lock_groups(db: Db, groups: Sequence[str]) -> None:
    """Lock the groups' counter rows in one order (creating missing ones) before a write
    touches several groups: two replicas writing [a, b] and [b, a] then queue instead of
    deadlocking (PostgreSQL would abort one, an internal error for its client)."""
    names = sorted(set(groups))
    if len(names) < 2:
        return
    for name in names:
        db.execute("INSERT INTO engine_groups (group_id) VALUES (%s) "
                   "ON CONFLICT (group_id) DO NOTHING", (name,))
    db.execute("SELECT 1 FROM engine_groups WHERE group_id = ANY(%s) "
               "ORDER BY group_id FOR UPDATE", (names,))


def _upsert_membership(db: Db, group: str, uid: str, info: str) -> None:
    # Every group with a membership has its row (v2's group list reads engine_groups).
    db.execute("INSERT INTO engine_groups (group_id) VALUES (%s) "
               "ON CONFLICT (group_id) DO NOTHING", (group,))
    db.execute("INSERT INTO engine_memberships (group_id, uid, user_info) VALUES (%s, %s, %s) "
               "ON CONFLICT (group_id, uid) DO UPDATE SET user_info=excluded.user_info",
               (group, uid, info))


def _insert_face(db: Db, group: str, uid: str, sha: str, descriptor: np.ndarray) -> FaceRow:
    vec = np.asarray(descriptor, dtype=np.float32)
    token = face_token_of(sha, vec)
    row = db.execute("INSERT INTO engine_faces (group_id, uid, sha256, descriptor, face_token) "
                     "VALUES (%s, %s, %s, %s, %s) RETURNING face_id, extract(epoch FROM created)",
                     (group, uid, sha, _vec(vec), token)).fetchone()
    assert row is not None  # INSERT ... RETURNING answers its row
    _count(db, group, 1)
    return FaceRow(int(row[0]), group, uid, sha, vec, float(row[1]), token)


def _delete_faces(db: Db, group: str, uid: str) -> list[int]:
    ids = [int(r[0]) for r in db.execute(
        "DELETE FROM engine_faces WHERE group_id=%s AND uid=%s RETURNING face_id",
        (group, uid)).fetchall()]
    if ids:
        _count(db, group, -len(ids))
    return ids
