"""Both faceset backends, the same tests: SQLite + in-memory index, PostgreSQL + pgvector.

The ``faceset`` fixture gives a (store, index) pair of either backend; every test that
uses it runs on both. PostgreSQL-only behaviour (migrations, an index per large group, two
stores on one database) follows. The PostgreSQL runs skip, with the reason, only when no
server can be started (see tests/support/pg_fixtures.py; FACEFLOW_TEST_PG uses a site's server).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.engine.index import SearchIndex
from pipeline.engine.pgstore import (
    LARGE_GROUP,
    SCHEMA_VERSION,
    GroupIndex,
    PgIndex,
    PgStore,
    drop_group_index,
    index_large_groups,
    index_name,
    ivf_lists,
    migrate,
    pgvector_version,
)
from pipeline.engine.store import Change, Person, Store, face_token_of
from pipeline.postgres import PostgresUnavailable, connect


@dataclass
class Faceset:
    """A store and its index, as the engine holds them."""

    store: Any
    index: Any

    def write(self, change: Change) -> Change:
        self.index.apply(change)
        return change


@pytest.fixture(params=["sqlite", "postgresql"])
def faceset(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Faceset]:
    if request.param == "sqlite":
        store: Any = Store(tmp_path / "faceset.sqlite3")
        index: Any = SearchIndex()
    else:
        url = request.getfixturevalue("pg_url")
        migrate(url)
        store = PgStore(url)
        index = PgIndex(store)
    index.load(store.all_faces())
    try:
        yield Faceset(store, index)
    finally:
        store.close()


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    vecs = rng.normal(size=(n, 128)).astype(np.float32)
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def near(vec: np.ndarray, rng: np.random.Generator, scale: float = 0.02) -> np.ndarray:
    out = vec + rng.normal(scale=scale, size=128).astype(np.float32)
    return (out / np.linalg.norm(out)).astype(np.float32)


# -- both backends ---------------------------------------------------------------------------


def test_memberships_groups_and_counts(faceset: Faceset) -> None:
    rng = np.random.default_rng(1)
    vecs = unit(rng, 4)
    s = faceset.store
    faceset.write(s.add_face(["g_b", "g_a"], "u2", "two", "sha-2", vecs[0]))
    faceset.write(s.add_face(["g_a"], "u1", "one", "sha-1", vecs[1]))
    faceset.write(s.add_face(["g_a"], "u1", "one again", "sha-1b", vecs[2]))
    assert [m.group_id for m in s.memberships("u2")] == ["g_a", "g_b"]
    assert s.membership("g_a", "u1").user_info == "one again"
    assert s.membership("g_b", "u1") is None
    assert s.groups() == ["g_a", "g_b"] and s.groups(1, 5) == ["g_b"]
    assert [m.uid for m in s.group_users("g_a")] == ["u1", "u2"]
    assert [f.sha256 for f in s.faces_of("g_a", "u1")] == ["sha-1", "sha-1b"]
    assert np.allclose(s.faces_of("g_a", "u1")[0].descriptor, vecs[1], atol=1e-6)
    assert s.counts() == {"users": 2, "memberships": 3, "groups": 2, "faces": 4, "persons": 0}
    assert faceset.index.size("g_a") == 3 and faceset.index.size() == 4
    assert s.integrity_check() == "ok"


def test_replace_delete_and_copy(faceset: Faceset) -> None:
    rng = np.random.default_rng(2)
    vecs = unit(rng, 3)
    s = faceset.store
    faceset.write(s.add_face(["g"], "u", "x", "a", vecs[0]))
    faceset.write(s.add_face(["g"], "u", "x", "b", vecs[1]))
    change = faceset.write(s.add_face(["g"], "u", "y", "c", vecs[2], replace=True))
    assert len(change.removed) == 2
    assert [f.sha256 for f in s.faces_of("g", "u")] == ["c"]
    faceset.write(s.copy_user("g", ["h", "k"], "u"))
    assert [m.group_id for m in s.memberships("u")] == ["g", "h", "k"]
    assert s.faces_of("k", "u")[0].sha256 == "c" and s.membership("k", "u").user_info == "y"
    faceset.write(s.delete_user("u", "h"))
    assert [m.group_id for m in s.memberships("u")] == ["g", "k"]
    faceset.write(s.delete_user("u"))
    assert s.memberships("u") == [] and s.groups() == []
    assert s.counts()["faces"] == 0 and faceset.index.size() == 0
    assert faceset.index.search(vecs[2], ["g", "k"], 1) == []


def test_best_face_per_user_and_top_k(faceset: Faceset) -> None:
    rng = np.random.default_rng(3)
    people = unit(rng, 40)
    s = faceset.store
    for i, vec in enumerate(people):  # three faces each; u7's second face is the nearest
        for k in range(3):
            faceset.write(s.add_face(["g"], f"u{i}", "", f"{i}-{k}", near(vec, rng, 0.05)))
    faceset.write(s.add_face(["other"], "u7", "", "o", people[7]))
    probe = s.faces_of("g", "u7")[1].descriptor
    hits = faceset.index.search(probe, ["g", "other", "absent"], top_users=3, per_user=2)
    assert [(h.group_id, h.uid) for h in hits][:1] == [("g", "u7")]
    assert hits[0].distances[0] == pytest.approx(0.0, abs=1e-3)
    assert len(hits[0].distances) == 2 and hits[0].distances[0] <= hits[0].distances[1]
    assert ("other", "u7") in [(h.group_id, h.uid) for h in hits]
    assert len({(h.group_id, h.uid) for h in hits}) == 3  # each user once per group
    assert [h.distances[0] for h in hits] == sorted(h.distances[0] for h in hits)
    dists = faceset.index.distances_of(probe, "g", "u7")
    assert len(dists) == 3 and dists == sorted(dists) and dists[0] == pytest.approx(0, abs=1e-3)


def test_both_backends_answer_alike(tmp_path: Path, pg_url: str) -> None:
    rng = np.random.default_rng(4)
    vecs = unit(rng, 300)
    uids = [f"u{i % 120}" for i in range(300)]  # users with 2-3 faces
    migrate(pg_url)
    sqlite, pg = Store(tmp_path / "f.sqlite3"), PgStore(pg_url)
    memory, shared = SearchIndex(), PgIndex(pg)
    try:
        for uid, vec in zip(uids, vecs, strict=True):
            memory.apply(sqlite.add_face(["g"], uid, "", "", vec))
            pg.add_face(["g"], uid, "", "", vec)
        for probe in unit(rng, 20):
            a = memory.search(probe, ["g"], top_users=5, per_user=5)
            b = shared.search(probe, ["g"], top_users=5, per_user=5)
            assert [h.uid for h in a] == [h.uid for h in b]
            for x, y in zip(a, b, strict=True):
                assert np.allclose(x.distances, y.distances, atol=1e-5)
    finally:
        sqlite.close()
        pg.close()


def test_persons_and_tokens(faceset: Faceset) -> None:
    vec = unit(np.random.default_rng(5), 1)[0]
    s = faceset.store
    s.put_person(Person("11010119900307123X", "Li", vec, "sha"))
    s.put_person(Person("11010119900307123X", "Li Lei", vec, "sha2"))
    person = s.person("11010119900307123X")
    assert person is not None and person.name == "Li Lei" and person.sha256 == "sha2"
    assert np.allclose(person.descriptor, vec, atol=1e-6)
    assert s.person("nobody") is None
    s.put_token("t1", 123.5)
    assert s.token_expiry("t1") == 123.5 and s.token_expiry("t2") is None
    assert s.counts()["persons"] == 1


def test_seed_faces_bulk(faceset: Faceset) -> None:
    vecs = unit(np.random.default_rng(6), 50)
    faceset.write(faceset.store.seed_faces("bulk", [(f"s{i}", "i", v) for i, v in
                                                      enumerate(vecs)]))
    assert faceset.store.counts()["faces"] == 50 and faceset.index.size("bulk") == 50
    assert faceset.index.search(vecs[9], ["bulk"], 1)[0].uid == "s9"


def test_v3_groups_faces_and_tokens(faceset: Faceset) -> None:
    rng = np.random.default_rng(9)
    vecs = unit(rng, 4)
    s = faceset.store
    assert s.add_group("empty") and not s.add_group("empty")
    assert s.group_exists("empty") and not s.group_exists("nope")
    assert s.groups() == []  # v2 lists groups with members only
    faceset.write(s.add_face(["g"], "u1", "", "sha-a", vecs[0]))
    faceset.write(s.add_face(["g"], "u2", "", "sha-b", vecs[1]))
    faceset.write(s.add_face(["g"], "u1", "", "sha-c", vecs[2]))
    assert s.group_ids() == ["empty", "g"] and s.group_ids(1, 5) == ["g"]
    assert s.users_by_age("g") == ["u1", "u2"]
    first = s.faces_of("g", "u1")[0]
    assert first.created > 0 and len(first.face_token) == 32
    found = s.face_by_token(first.face_token)
    assert found is not None and found.face_id == first.face_id
    assert s.face_by_token("0" * 32) is None
    faceset.write(s.delete_face(s.faces_of("g", "u2")[0].face_id))
    assert s.membership("g", "u2") is None  # its last face went, so did the membership
    assert faceset.index.size("g") == 2 and s.integrity_check() == "ok"
    faceset.write(s.delete_group("g"))
    assert not s.group_exists("g") and s.counts()["faces"] == 0
    assert faceset.index.search(vecs[0], ["g"], 1) == [] and s.group_ids() == ["empty"]


def test_face_tokens_are_the_same_on_both_backends(tmp_path: Path, pg_url: str) -> None:
    vec = unit(np.random.default_rng(10), 1)[0]
    migrate(pg_url)
    sqlite, pg = Store(tmp_path / "f.sqlite3"), PgStore(pg_url)
    try:
        a = sqlite.add_face(["g"], "u", "", "sha", vec).added[0]
        b = pg.add_face(["g"], "u", "", "sha", vec).added[0]
        assert a.face_token == b.face_token == pg.faces_of("g", "u")[0].face_token
    finally:
        sqlite.close()
        pg.close()


# -- PostgreSQL only ------------------------------------------------------------------------


def test_migrate_is_versioned_and_the_store_refuses_an_old_schema(pg_url: str) -> None:
    with pytest.raises(PostgresUnavailable, match="faceflow engine migrate"):
        PgStore(pg_url)
    assert SCHEMA_VERSION >= 3 and migrate(pg_url) == (0, SCHEMA_VERSION)
    assert migrate(pg_url) == (SCHEMA_VERSION, SCHEMA_VERSION)
    with connect(pg_url) as conn:
        conn.execute("INSERT INTO engine_schema (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(PostgresUnavailable, match="newer than this faceflow"):
        PgStore(pg_url)


def test_two_stores_on_one_database_see_each_others_writes(pg_url: str) -> None:
    migrate(pg_url)
    one, two = PgStore(pg_url), PgStore(pg_url)
    vec = unit(np.random.default_rng(7), 1)[0]
    try:
        one.add_face(["g"], "u", "from one", "s", vec)
        two.put_token("tok", 99.0)
        assert PgIndex(two).search(vec, ["g"], 1)[0].uid == "u"
        assert two.membership("g", "u").user_info == "from one"
        assert one.token_expiry("tok") == 99.0
        two.delete_user("u")
        assert PgIndex(one).search(vec, ["g"], 1) == []
    finally:
        one.close()
        two.close()


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[PgStore]:
    """A store on a migrated database, closed afterwards."""
    migrate(pg_url)
    store = PgStore(pg_url)
    try:
        yield store
    finally:
        store.close()


def _group_indexes(url: str) -> list[str]:
    with connect(url) as conn:
        return sorted(r[0] for r in conn.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'engine_faces' "
            "AND indexdef LIKE '%%group_id = %%'").fetchall())


def test_a_large_group_gets_its_own_index_and_finds_planted_faces(
        pg_url: str, pg_store: PgStore) -> None:
    rng = np.random.default_rng(8)
    vecs = unit(rng, 3000)
    store = pg_store
    store.seed_faces("big", [(f"b{i}", "", v) for i, v in enumerate(vecs)])
    store.seed_faces("small", [(f"s{i}", "", v) for i, v in enumerate(vecs[:10])])
    assert index_large_groups(pg_url, min_faces=1000) == ["big"]
    assert index_large_groups(pg_url, min_faces=1000) == []  # built once
    built = GroupIndex(index_name("big", 3000), "ivfflat", ivf_lists(3000))
    assert store.group_info("big") == (3000, built)
    assert store.group_info("small") == (10, None)
    assert built.name in store.explain_nearest("big", vecs[0], 32, built)
    assert "ann" not in store.explain_nearest("small", vecs[0], 32, None)
    index = PgIndex(store)
    probes = [(i, near(vecs[i], rng, 0.02)) for i in range(0, 3000, 150)]
    assert all(index.search(p, ["big"], 1)[0].uid == f"b{i}" for i, p in probes)
    store.add_face(["big"], "new", "", "", vecs[5])  # the index follows new writes
    hits = index.search(vecs[5], ["big"], top_users=2)
    assert {h.uid for h in hits} == {"b5", "new"}
    # More faces than the probed lists hold: the scan goes on to further lists.
    assert len(store.nearest("big", vecs[0], 2500, built, width=1)) == 2500
    # pgvector before 0.8 has no iterative scans: such a query is answered exactly.
    assert store.iterative and pgvector_version(store._db) >= (0, 8)
    store.iterative = False
    assert built.name in store.explain_nearest("big", vecs[0], 32, built)
    assert store.nearest("big", vecs[0], 32, built)[0] == ("b0", 0.0)
    exact = store.nearest("big", vecs[0], 2500, built, width=1)
    assert len(exact) == 2500 and exact == store.nearest("big", vecs[0], 2500, None)


def test_a_grown_group_is_indexed_again_and_the_old_index_dropped(
        pg_url: str, pg_store: PgStore) -> None:
    rng = np.random.default_rng(9)
    vecs = unit(rng, 2600)
    store = pg_store
    store.seed_faces("g", [(f"a{i}", "", v) for i, v in enumerate(vecs[:1200])])
    assert index_large_groups(pg_url, min_faces=1000) == ["g"]
    first = store.group_info("g")[1]
    assert first is not None and _group_indexes(pg_url) == [first.name]
    store.seed_faces("g", [(f"b{i}", "", v) for i, v in enumerate(vecs[1200:2300])])
    assert index_large_groups(pg_url, min_faces=1000) == []  # 2,300 < 2 x 1,200
    store.seed_faces("g", [(f"c{i}", "", v) for i, v in enumerate(vecs[2300:])])
    assert index_large_groups(pg_url, min_faces=1000) == ["g"]  # 2,600 >= 2 x 1,200
    second = store.group_info("g")[1]
    assert second == GroupIndex(index_name("g", 2600), "ivfflat", ivf_lists(2600))
    assert _group_indexes(pg_url) == [second.name]
    probe = near(vecs[2500], rng, 0.02)
    assert PgIndex(store).search(probe, ["g"], 1)[0].uid == "c200"
    drop_group_index(pg_url, "g")
    assert store.group_info("g") == (2600, None) and _group_indexes(pg_url) == []
    assert PgIndex(store).search(probe, ["g"], 1)[0].uid == "c200"  # exact now


def test_an_index_a_dead_build_left_behind_is_dropped_at_the_next_build(
        pg_url: str, pg_store: PgStore) -> None:
    vecs = unit(np.random.default_rng(10), 1500)
    store = pg_store
    store.seed_faces("g", [(f"u{i}", "", v) for i, v in enumerate(vecs)])
    with connect(pg_url, autocommit=True) as conn:  # built, never recorded: died there
        conn.execute(f"CREATE INDEX {index_name('g', 1400)} ON engine_faces "
                     "USING ivfflat (descriptor vector_l2_ops) WITH (lists = 10) "
                     "WHERE group_id = 'g'")
    assert index_large_groups(pg_url, min_faces=1000) == ["g"]
    assert _group_indexes(pg_url) == [index_name("g", 1500)]


def test_an_hnsw_index_of_schema_3_is_searched_until_the_next_build(pg_url: str) -> None:
    from pipeline.engine.pgstore import MIGRATIONS

    rng = np.random.default_rng(12)
    vecs = unit(rng, 1100)
    with connect(pg_url, autocommit=True) as conn:  # a database of schema 3
        conn.execute("CREATE TABLE engine_schema (version int PRIMARY KEY, "
                     "applied timestamptz NOT NULL DEFAULT now())")
        for version, step in enumerate(MIGRATIONS[:3], 1):
            step(conn) if callable(step) else conn.execute(step)
            conn.execute("INSERT INTO engine_schema (version) VALUES (%s)", (version,))
    assert migrate(pg_url) == (3, SCHEMA_VERSION)
    store = PgStore(pg_url)
    try:
        store.seed_faces("g", [(f"u{i}", "", v) for i, v in enumerate(vecs[:1100])])
        old = "engine_faces_hnsw_" + hashlib.sha1(b"g").hexdigest()[:16]
        with connect(pg_url, autocommit=True) as conn:  # as schema 3 built and recorded it
            conn.execute(f"CREATE INDEX {old} ON engine_faces USING hnsw "
                         "(descriptor vector_l2_ops) WHERE group_id = 'g'")
            conn.execute("UPDATE engine_groups SET ann_index=%s, ann_kind='hnsw', "
                         "ann_faces=faces WHERE group_id='g'", (old,))
        hnsw = GroupIndex(old, "hnsw", None)
        assert store.group_info("g") == (1100, hnsw)
        assert old in store.explain_nearest("g", vecs[0], 32, hnsw)
        assert PgIndex(store).search(near(vecs[7], rng), ["g"], 1)[0].uid == "u7"
        assert index_large_groups(pg_url, min_faces=1000) == ["g"]  # no growth needed
        assert store.group_info("g")[1] == GroupIndex(index_name("g", 1100), "ivfflat",
                                                      ivf_lists(1100))
        assert _group_indexes(pg_url) == [index_name("g", 1100)]
        assert PgIndex(store).search(near(vecs[7], rng), ["g"], 1)[0].uid == "u7"
    finally:
        store.close()


@pytest.mark.dlib
def test_import_persons_into_the_shared_store(pg_url: str, samples_dir: Path,
                                              tmp_path: Path) -> None:
    from click.testing import CliRunner

    from jobs.cli import main

    migrate(pg_url)
    prefix = "11010519491231002"
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    number = prefix + "10X98765432"[sum(int(d) * w for d, w in zip(prefix, weights,
                                                                  strict=True)) % 11]
    csv_path = tmp_path / "persons.csv"
    csv_path.write_text(f"id_card_number,name,photo\n{number},Barack,"
                        f"{samples_dir / 'obama_01.jpg'}\n")
    result = CliRunner().invoke(main, ["engine", "import-persons", str(csv_path),
                                       "--store", pg_url])
    assert result.exit_code == 0 and "imported 1 person(s)" in result.output, result.output
    store = PgStore(pg_url)
    try:
        person = store.person(number)
        assert person is not None and person.name == "Barack"
        assert np.linalg.norm(person.descriptor) == pytest.approx(1.0, abs=1e-3)
    finally:
        store.close()


def test_upgrade_from_version_1_fills_face_tokens(pg_url: str) -> None:
    from pipeline.engine.pgstore import MIGRATIONS

    vec = unit(np.random.default_rng(11), 1)[0]
    with connect(pg_url, vector=True) as conn:  # a database migrated by the first release
        conn.execute("CREATE TABLE engine_schema (version int PRIMARY KEY, "
                     "applied timestamptz NOT NULL DEFAULT now())")
        conn.execute(MIGRATIONS[0])
        conn.execute("INSERT INTO engine_schema (version) VALUES (1)")
        conn.execute("INSERT INTO engine_memberships (group_id, uid, user_info) "
                     "VALUES ('g', 'old', '')")
        conn.execute("INSERT INTO engine_faces (group_id, uid, sha256, descriptor) "
                     "VALUES ('g', 'old', 'sha', %s)", (str(vec.tolist()),))
    assert migrate(pg_url) == (1, SCHEMA_VERSION)
    store = PgStore(pg_url)
    try:
        face = store.faces_of("g", "old")[0]
        assert face.face_token == face_token_of("sha", face.descriptor)
    finally:
        store.close()


def test_a_dropped_connection_fails_one_call_then_reconnects(pg_url: str) -> None:
    import psycopg

    migrate(pg_url)
    store = PgStore(pg_url)
    try:
        store.put_token("tok", 5.0)
        with connect(pg_url) as admin:  # the server drops the store's connection
            admin.execute("SELECT pg_terminate_backend(%s)", (store._db.info.backend_pid,))
        with pytest.raises(psycopg.OperationalError):
            store.token_expiry("tok")
        assert store.token_expiry("tok") == 5.0
    finally:
        store.close()


def test_cli_migrate_and_serve_refusals(pg_url: str) -> None:
    from click.testing import CliRunner

    from jobs.cli import main

    runner = CliRunner()
    unmigrated = runner.invoke(main, ["engine", "serve", "--store", pg_url, "--port", "0"])
    assert unmigrated.exit_code == 2 and "faceflow engine migrate" in unmigrated.output
    unindexed = runner.invoke(main, ["engine", "reindex", "--store", pg_url])
    assert unindexed.exit_code == 2 and "faceflow engine migrate" in unindexed.output
    first = runner.invoke(main, ["engine", "migrate", "--store", pg_url])
    assert first.exit_code == 0 and "upgraded from version 0" in first.output
    again = runner.invoke(main, ["engine", "migrate"], env={"FACEFLOW_ENGINE_STORE": pg_url})
    assert again.exit_code == 0 and "already current" in again.output
    bad = runner.invoke(main, ["engine", "serve", "--store", "mysql://db/x"])
    assert bad.exit_code == 2 and "postgresql://" in bad.output
    down = runner.invoke(main, ["engine", "migrate", "--store",
                                "postgresql://app:pw@/x?host=/nonexistent-dir"])
    assert down.exit_code == 2 and "cannot reach" in down.output and "pw@" not in down.output


def test_cli_reindex_builds_what_is_due_or_the_named_groups(
        pg_url: str, pg_store: PgStore) -> None:
    from click.testing import CliRunner

    from jobs.cli import main

    vecs = unit(np.random.default_rng(13), LARGE_GROUP)
    store = pg_store
    store.seed_faces("big", [(f"b{i}", "", v) for i, v in enumerate(vecs)])
    store.seed_faces("small", [(f"s{i}", "", v) for i, v in enumerate(vecs[:10])])
    runner = CliRunner()
    due = runner.invoke(main, ["engine", "reindex", "--store", pg_url])
    lists = ivf_lists(LARGE_GROUP)
    assert due.exit_code == 0, due.output
    assert f"big: {LARGE_GROUP:,} faces, ivfflat index with {lists:,} lists built" in due.output
    first = store.group_info("big")[1]
    assert first is not None and "small" not in due.output
    assert "nothing to build" in runner.invoke(
        main, ["engine", "reindex", "--store", pg_url]).output
    named = runner.invoke(main, ["engine", "reindex", "--store", pg_url,
                                 "--group", "big", "--group", "small"])
    assert named.exit_code == 0, named.output
    assert "small: 10 faces, not built: under 10,000 faces" in named.output
    second = store.group_info("big")[1]  # built again beside the first, then swapped
    assert second is not None and second.name != first.name
    assert _group_indexes(pg_url) == [second.name]
    assert PgIndex(store).search(vecs[3], ["big"], 1)[0].uid == "b3"
    unknown = runner.invoke(main, ["engine", "reindex", "--store", pg_url,
                                   "--group", "big", "--group", "nope"])
    assert unknown.exit_code == 2 and "no such group: nope" in unknown.output
    assert store.group_info("big")[1] == second  # nothing built before the refusal


def test_replicas_writing_one_user_in_two_groups_in_opposite_orders_do_not_deadlock(
    pg_url: str,
) -> None:
    import threading

    migrate(pg_url)
    vec = unit(np.random.default_rng(12), 1)[0]
    stores = [PgStore(pg_url), PgStore(pg_url)]
    errors: list[BaseException] = []

    def write(store: PgStore, groups: list[str]) -> None:
        try:
            for _ in range(40):
                store.add_face(groups, "same", "", "s", vec, replace=True)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(stores[0], ["a", "b"])),
               threading.Thread(target=write, args=(stores[1], ["b", "a"]))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == []
        assert stores[0].counts()["faces"] == 2 and stores[0].integrity_check() == "ok"
    finally:
        for store in stores:
            store.close()
