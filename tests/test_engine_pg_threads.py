"""The engine on the shared PostgreSQL store runs its queries off the event loop.

An interface whose query waits on the database (here: a table locked by another
session, as a slow or blocked query would) must not hold up the replica's other
requests; many requests at once are served by a bounded set of threads and
connections, with the same answers as one at a time. Real engine (EngineServer), real
HTTP, real PostgreSQL (tests/support/pg_fixtures.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest
from support.engine_http import Api

from pipeline.engine.pgstore import migrate
from pipeline.engine.server import EngineServer
from pipeline.postgres import connect

pytestmark = [pytest.mark.dlib]


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[EngineServer]:
    migrate(pg_url)
    with EngineServer(workers=1, store_url=pg_url) as server:
        yield server


def _unit(n: int, seed: int = 3) -> np.ndarray:
    vecs = np.random.default_rng(seed).normal(size=(n, 128)).astype(np.float32)
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


async def _wait_for_lock_wait(url: str, attempts: int = 600) -> None:
    """Until some session of the database waits on a lock (the blocked interface)."""
    with connect(url) as conn:
        for _ in range(attempts):
            waiting = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()").fetchone()[0]
            if waiting:
                return
            await asyncio.sleep(0.05)
    raise AssertionError("the interface never reached the locked table")


async def test_a_query_waiting_on_the_database_does_not_hold_up_other_requests(
        pg_engine: EngineServer, pg_url: str) -> None:
    pg_engine.seed_faces("g", ["alice"], _unit(1))
    async with Api(pg_engine) as api:
        await api.get_token()
        with connect(pg_url, autocommit=False) as locker:
            locker.execute("LOCK TABLE engine_memberships IN ACCESS EXCLUSIVE MODE")
            blocked = asyncio.create_task(api.call("faceset/user/get", uid="alice",
                                                   group_id="g"))
            await _wait_for_lock_wait(pg_url)
            # While that interface waits on the lock, the replica answers others: a new
            # token (written to engine_tokens) and an interface call (its token checked
            # in the database, then refused for its parameters).
            status, body = await asyncio.wait_for(api.get_token(), 60)
            assert status == 200 and body["access_token"]
            other = await asyncio.wait_for(api.call("faceset/user/get", group_id="g"), 60)
            assert other["error_code"] == 216101, other  # no uid
            assert not blocked.done()  # the lock is still held: it cannot have answered
            locker.rollback()
        got = await asyncio.wait_for(blocked, 60)
    assert got["result"] == [{"uid": "alice", "user_info": "synthetic alice",
                              "group_id": "g"}], got


async def test_many_requests_at_once_share_a_bounded_set_of_connections(
        pg_url: str) -> None:
    migrate(pg_url)
    with EngineServer(workers=1, store_url=pg_url, store_threads=3) as server:
        uids = [f"u{i}" for i in range(24)]
        server.seed_faces("many", uids, _unit(len(uids)))
        async with Api(server) as api:
            await api.get_token()
            replies = await asyncio.gather(*[
                api.call("faceset/user/get", uid=uid, group_id="many") for uid in uids])
            listed = await api.call("faceset/group/getusers", group_id="many", num="100")
        infos = [r["result"][0]["user_info"] for r in replies]
        assert infos == [f"synthetic {uid}" for uid in uids]
        assert sorted(r["uid"] for r in listed["result"]) == sorted(uids)
        assert server.state is not None
        # One connection per store thread, plus the opener's and the loop thread's
        # (seed_faces): 24 requests at once did not open 24.
        assert server.state.store.connections() <= 3 + 2
