"""Engine replicas on one PostgreSQL store: real engine processes, real HTTP.

Two ``python -m pipeline.engine --store URL`` processes share users, faces and tokens;
a replica killed with SIGKILL while writes are in flight loses none it acknowledged.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.engine_http import Api, b64

from pipeline.client.config import ENGINE_DEMO_API_KEY, ENGINE_DEMO_SECRET_KEY
from pipeline.engine.pgstore import PgStore, migrate

pytestmark = [pytest.mark.dlib, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent


class Replica:
    """One engine process on the shared store (what :class:`Api` needs: url, credentials)."""

    api_key, secret_key = ENGINE_DEMO_API_KEY, ENGINE_DEMO_SECRET_KEY

    def __init__(self, store_url: str, tmp: Path) -> None:
        env = {**os.environ, "FACEFLOW_API_KEY": "", "FACEFLOW_SECRET_KEY": ""}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.engine", "--port", "0", "--store", store_url,
             "--data-dir", str(tmp / "unused")],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line.startswith("faceflow engine listening on http://127.0.0.1:"), (
            line or self.proc.stderr.read() if self.proc.stderr else line)
        self.url = line.rsplit(" ", 1)[1]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)


@pytest.fixture
def store_url(pg_url: str) -> Iterator[str]:
    migrate(pg_url)
    yield pg_url


async def test_two_replicas_see_each_others_writes_and_tokens(
    store_url: str, samples_dir: Path, tmp_path: Path
) -> None:
    one, two = Replica(store_url, tmp_path), Replica(store_url, tmp_path)
    try:
        async with Api(one) as a, Api(two) as b:
            added = await a.call("faceset/user/add", uid="obama", user_info="B",
                                 group_id="shared", image=b64(samples_dir / "obama_01.jpg"))
            assert "error_code" not in added, added
            b.token = a.token  # a token issued by one replica works on the other
            found = await b.call("identify", group_id="shared",
                                 image=b64(samples_dir / "obama_02.jpg"))
            assert found["result"][0]["uid"] == "obama", found
            assert found["result"][0]["scores"][0] >= 80
            assert (await b.call("faceset/user/delete", uid="obama"))["log_id"]
            gone = await a.call("faceset/user/get", uid="obama")
            assert gone.get("error_code") == 216611, gone
    finally:
        assert one.stop() == 0 and two.stop() == 0


async def test_kill_9_mid_write_loses_no_acknowledged_write(
    store_url: str, samples_dir: Path, tmp_path: Path
) -> None:
    images = [b64(samples_dir / n) for n in ("obama_01.jpg", "biden_01.jpg", "astronaut.png")]
    replica = Replica(store_url, tmp_path)
    acked: list[str] = []

    async def writer(api: Api, lane: int) -> None:
        for i in range(1000):
            uid = f"w{lane}_{i}"
            try:
                reply = await api.call("faceset/user/add", uid=uid, user_info="x",
                                       group_id="crash", image=images[i % 3])
            except Exception:  # noqa: BLE001 - the connection dies with the replica
                return
            if "error_code" not in reply:
                acked.append(uid)

    async with Api(replica) as api:
        await api.get_token()
        lanes = [asyncio.create_task(writer(api, lane)) for lane in range(4)]
        while len(acked) < 8:
            await asyncio.sleep(0.05)
        replica.proc.send_signal(signal.SIGKILL)  # writes are in flight on four lanes
        await asyncio.gather(*lanes)
    assert replica.stop() == -signal.SIGKILL
    store = PgStore(store_url)
    try:
        stored = {m.uid for m in store.group_users("crash", 0, 10_000)}
        assert set(acked) <= stored
        assert store.integrity_check() == "ok"
        assert all(len(store.faces_of("crash", uid)) == 1 for uid in acked)
    finally:
        store.close()


async def test_a_replica_indexes_a_group_grown_large_and_identify_goes_through_it(
    store_url: str, samples_dir: Path, tmp_path: Path
) -> None:
    """The serving replica's own look (at start, then every minute) builds the IVFFlat
    index of a group of LARGE_GROUP faces; identify over HTTP then searches through it."""
    import time

    import numpy as np

    from pipeline.engine.pgstore import LARGE_GROUP, ivf_lists

    one = Replica(store_url, tmp_path)
    try:
        async with Api(one) as a:
            added = await a.call("faceset/user/add", uid="obama", user_info="B",
                                 group_id="big", image=b64(samples_dir / "obama_01.jpg"))
            assert "error_code" not in added, added
    finally:
        assert one.stop() == 0
    rng = np.random.default_rng(3)
    others = rng.normal(size=(LARGE_GROUP, 128)).astype(np.float32)
    others /= np.linalg.norm(others, axis=1, keepdims=True)
    store = PgStore(store_url)
    try:
        store.seed_faces("big", [(f"g{i}", "", v) for i, v in enumerate(others)])
        two = Replica(store_url, tmp_path)  # its first look finds the group large
        try:
            deadline = time.monotonic() + 60
            while store.group_info("big")[1] is None and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            size, index = store.group_info("big")
            assert size == LARGE_GROUP + 1 and index is not None, "no index was built"
            assert index.kind == "ivfflat" and index.lists == ivf_lists(size)
            async with Api(two) as b:
                found = await b.call("identify", group_id="big",
                                     image=b64(samples_dir / "obama_02.jpg"))
            assert found["result"][0]["uid"] == "obama", found
        finally:
            assert two.stop() == 0
    finally:
        store.close()
