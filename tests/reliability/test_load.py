"""64 clients at once for 20 s against the engine: no 5xx, no error, no lost write.

Each client is its own FaceClient (own session, own token) looping over a seeded mix of
detect (50 %), identify (30 %) and user add (20 %, a new uid each time) on small photos.
Afterwards the engine holds exactly one face per acknowledged add and nothing else in the
group. Latency percentiles are printed (run with -s to see them); the test asserts on
correctness only. FACEFLOW_LOAD_SECONDS shortens or lengthens the run (default 20,
which keeps the suite within its 6-minute budget; 60 for the issue's full figure).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.reliability import faces_per_uid

from pipeline.api.errors import ApiError, ImageExistsError
from pipeline.client.config import Settings
from pipeline.client.faceclient import ClientStats, FaceClient

pytestmark = [pytest.mark.slow, pytest.mark.dlib]

CLIENTS = 64
#: 20 s by default keeps the suite within its budget; FACEFLOW_LOAD_SECONDS=60 for the full run.
SECONDS = float(os.environ.get("FACEFLOW_LOAD_SECONDS", "20"))
GROUP = "rel_load"
MIX = {"detect": 0.5, "identify": 0.3, "add": 0.2}


class _Tally:
    """What all clients did: latencies (s) per operation, acknowledged adds, errors."""

    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = {op: [] for op in MIX}
        self.acked: list[str] = []
        self.errors: list[tuple[str, str]] = []
        self.stats: list[ClientStats] = []


async def _one_op(client: FaceClient, op: str, image: bytes, uid: str, tally: _Tally) -> None:
    if op == "detect":
        await client.detect(image)
    elif op == "identify":
        await client.identify(GROUP, image)
    else:
        try:
            await client.add_user(uid, "load test", GROUP, image)
        except ImageExistsError:
            pass  # an earlier send of this same add landed: the face is there
        tally.acked.append(uid)


async def _client(index: int, settings: Settings, images: list[bytes], deadline: float,
                  tally: _Tally) -> None:
    rng = random.Random(index)
    async with FaceClient(settings) as client:
        n = 0
        while time.monotonic() < deadline:
            op = rng.choices(list(MIX), weights=list(MIX.values()))[0]
            uid, n = f"load_{index}_{n}", n + 1
            started = time.perf_counter()
            try:
                await _one_op(client, op, rng.choice(images), uid, tally)
            except ApiError as exc:
                tally.errors.append((op, str(exc)))
                continue
            tally.latency[op].append(time.perf_counter() - started)
        tally.stats.append(client.stats)


def _percentiles(values: list[float]) -> str:
    p50, p90, p99 = np.percentile(values, [50, 90, 99]) if values else (0, 0, 0)
    return f"p50 {p50 * 1000:6.0f} ms  p90 {p90 * 1000:6.0f} ms  p99 {p99 * 1000:6.0f} ms"


def _report(tally: _Tally, elapsed: float) -> None:
    every = [x for values in tally.latency.values() for x in values]
    print(f"\nload: {CLIENTS} clients for {elapsed:.1f} s (FACEFLOW_LOAD_SECONDS={SECONDS:g}), "
          f"{len(every)} calls, {len(every) / elapsed:.1f} calls/s")
    for op, values in tally.latency.items():
        print(f"  {op:9s} {len(values):6d} calls  {_percentiles(values)}")
    print(f"  {'all':9s} {len(every):6d} calls  {_percentiles(every)}")


def test_64_clients_no_5xx_no_lost_write(rel_engine: Any, photos: list[Path]) -> None:
    settings = Settings(endpoint=rel_engine.url, api_key=rel_engine.api_key,
                        secret_key=rel_engine.secret_key)
    images = [p.read_bytes() for p in photos[:8]]
    errors_before = Counter(rel_engine.state.errors)
    counts_before = rel_engine.store.counts()
    tally = _Tally()

    async def run() -> float:
        async with FaceClient(settings) as seeder:  # identify needs a group with users
            for i, image in enumerate(images[:4]):
                await seeder.add_user(f"load_seed_{i}", "seed", GROUP, image)
                tally.acked.append(f"load_seed_{i}")
        started = time.monotonic()
        await asyncio.gather(*[_client(i, settings, images, started + SECONDS, tally)
                               for i in range(CLIENTS)])
        return time.monotonic() - started

    elapsed = asyncio.run(run())
    _report(tally, elapsed)
    assert not tally.errors, tally.errors[:5]
    assert all(not stats.errors for stats in tally.stats), [  # not even a retried 5xx/timeout
        dict(s.errors) for s in tally.stats if s.errors][:5]
    assert Counter(rel_engine.state.errors) == errors_before  # the engine logged none
    assert len(tally.stats) == CLIENTS and min(map(len, tally.latency.values())) > 0
    faces = faces_per_uid(rel_engine.store, GROUP)
    assert faces == {uid: 1 for uid in tally.acked}  # every acknowledged add, once
    counts = rel_engine.store.counts()
    for key in ("users", "faces"):  # and nothing else was written anywhere
        assert counts[key] - counts_before[key] == len(tally.acked), (key, counts)
