"""Faces/s enrolled through engine replicas: one SQLite engine, then 1, 2 and 4 replicas
on one PostgreSQL store; and one replica's latency while slow queries run.

Each engine is a real ``python -m pipeline.engine`` process with one model process;
the replicas share a temporary local PostgreSQL (pipeline.postgres.LocalCluster). A
client keeps ``--in-flight`` (at least 2 per replica) ``faceset/user/add`` calls going,
spread round-robin over
the replicas, with the sample photos (each add runs detection, landmarks and the
descriptor). Figures: faces/s over ``--adds`` adds, and the users every replica then
sees (each replica's ``/admin/stats``, read from the shared store).

A replica's throughput is its model processes': a second replica adds as much as a
second worker, and what it really buys is a second host. On a 2-core machine shared
with other work the figure is bounded by the cores, not by the store.

Second part, one replica's event loop (``--loop-seconds``, 0 skips it): searches whose
queries take 15-50 ms (v3 ``search`` by FACE_TOKEN over 4 groups of 9,000 faces, exact
search: no model work, all of it in PostgreSQL), ``--searchers`` at once, while one more
client sends cheap calls (``faceset/user/get``) one after the other. Measured twice on
one replica: ``--store-threads 0`` (the queries on the event loop, as before) and the
default (on the store threads): searches/s, search p50/p99 and the cheap call's p50/p99.

    .venv/bin/python benchmarks/scale_replicas.py [--adds 60] [--in-flight 4]
        [--replicas 1 2 4] [--loop-seconds 15] [--searchers 8]

About 3 minutes on 2 cores (most of it the 4-replica start: each loads its models).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ROOT, write_result  # noqa: E402
from pipeline.client.config import ENGINE_DEMO_API_KEY, ENGINE_DEMO_SECRET_KEY  # noqa: E402
from pipeline.engine.pgstore import PgStore, migrate  # noqa: E402
from pipeline.engine.store import face_token_of  # noqa: E402
from pipeline.postgres import LocalCluster  # noqa: E402

API = "/rest/2.0/face/v2/"
PHOTOS = ["obama_01.jpg", "obama_02.jpg", "obama_03.jpg", "biden_01.jpg", "astronaut.png"]


def start_engine(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "FACEFLOW_API_KEY": "", "FACEFLOW_SECRET_KEY": ""}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.engine", "--port", "0", *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("faceflow engine listening on "):
        proc.kill()
        raise RuntimeError(f"the engine did not start: {line!r}")
    return proc, line.rsplit(" ", 1)[1]


async def _token(session: aiohttp.ClientSession, url: str) -> str:
    params = {"grant_type": "client_credentials", "client_id": ENGINE_DEMO_API_KEY,
              "client_secret": ENGINE_DEMO_SECRET_KEY}
    async with session.get(url + "/oauth/2.0/token", params=params) as reply:
        return str((await reply.json())["access_token"])


async def enroll(urls: list[str], adds: int, in_flight: int, tag: str) -> dict[str, Any]:
    images = [base64.b64encode((ROOT / "data" / "samples" / n).read_bytes()).decode()
              for n in PHOTOS]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(adds):
        queue.put_nowait(i)
    errors = 0
    async with aiohttp.ClientSession() as session:
        tokens = [await _token(session, url) for url in urls]

        async def worker() -> None:
            nonlocal errors
            while not queue.empty():
                i = queue.get_nowait()
                k = i % len(urls)
                form = {"uid": f"{tag}_{i}", "user_info": "bench", "group_id": "replicas",
                        "image": images[i % len(images)]}
                async with session.post(urls[k] + API + "faceset/user/add",
                                        params={"access_token": tokens[k]}, data=form) as r:
                    errors += "error_code" in await r.json()

        start = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(in_flight)])
        wall = time.perf_counter() - start
        seen = []
        for url in urls:
            async with session.get(url + "/admin/stats") as r:
                seen.append((await r.json())["users"])
    return {"replicas": len(urls), "adds": adds, "in_flight": in_flight, "errors": errors,
            "wall_s": round(wall, 1),
            "faces_per_s": round((adds - errors) / wall, 2), "users_seen_by_each": seen}


# -- one replica's loop under slow queries ---------------------------------------------------

LOOP_GROUPS, LOOP_GROUP_FACES = 4, 9_000


def seed_loop_groups(url: str) -> list[str]:
    """Seed the groups the loop benchmark searches; the FACE_TOKENs of some of their faces."""
    rng = np.random.default_rng(11)
    store = PgStore(url)
    tokens = []
    try:
        for g in range(LOOP_GROUPS):
            vecs = rng.normal(size=(LOOP_GROUP_FACES, 128)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            store.seed_faces(f"loop{g}", [(f"u{g}_{i}", "bench", v) for i, v in enumerate(vecs)])
            tokens += [face_token_of("", v) for v in vecs[:50]]
    finally:
        store.close()
    return tokens


def _pcts(times: list[float]) -> dict[str, float]:
    ordered = sorted(times) or [0.0]
    return {"p50_ms": round(1000 * statistics.median(ordered), 1),
            "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1)}


async def loop_load(url: str, tokens: list[str], seconds: float, searchers: int
                    ) -> dict[str, Any]:
    """Searches at ``searchers`` at once plus one client of cheap calls, for ``seconds``."""
    groups = ",".join(f"loop{g}" for g in range(LOOP_GROUPS))
    search_times: list[float] = []
    cheap_times: list[float] = []
    errors = 0
    async with aiohttp.ClientSession() as session:
        token = await _token(session, url)
        stop = time.perf_counter() + seconds

        async def searcher(k: int) -> None:
            nonlocal errors
            i = k
            while time.perf_counter() < stop:
                body = {"image": tokens[i % len(tokens)], "image_type": "FACE_TOKEN",
                        "group_id_list": groups, "max_user_num": 1}
                start = time.perf_counter()
                async with session.post(url + "/rest/2.0/face/v3/search",
                                        params={"access_token": token}, json=body) as r:
                    reply = await r.json()
                search_times.append(time.perf_counter() - start)
                errors += reply.get("error_code") != 0
                i += searchers

        async def cheap() -> None:
            nonlocal errors
            while time.perf_counter() < stop:
                start = time.perf_counter()
                async with session.post(url + API + "faceset/user/get",
                                        params={"access_token": token},
                                        data={"uid": "u0_1", "group_id": "loop0"}) as r:
                    reply = await r.json()
                cheap_times.append(time.perf_counter() - start)
                errors += "error_code" in reply

        started = time.perf_counter()
        await asyncio.gather(cheap(), *[searcher(k) for k in range(searchers)])
        wall = time.perf_counter() - started
    return {"searches": len(search_times), "searches_per_s": round(len(search_times) / wall, 1),
            "search": _pcts(search_times), "cheap_calls": len(cheap_times),
            "cheap_call": _pcts(cheap_times), "errors": errors}


def measure_loop(url: str, seconds: float, searchers: int) -> dict[str, Any]:
    tokens = seed_loop_groups(url)
    out: dict[str, Any] = {"groups": LOOP_GROUPS, "faces_per_group": LOOP_GROUP_FACES,
                           "searchers": searchers, "seconds": seconds}
    for label, threads in (("on the event loop (--store-threads 0)", "0"),
                           ("on store threads (--store-threads 16)", "16")):
        proc, engine_url = start_engine(["--store", url, "--store-threads", threads])
        try:
            asyncio.run(loop_load(engine_url, tokens, 2.0, searchers))  # warm up
            out[label] = asyncio.run(loop_load(engine_url, tokens, seconds, searchers))
        finally:
            proc.terminate()
            proc.wait(30)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adds", type=int, default=60)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--loop-seconds", type=float, default=15.0)
    parser.add_argument("--searchers", type=int, default=8)
    args = parser.parse_args()
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_engine(["--data-dir", str(Path(tmp) / "sqlite")])
        try:
            runs["embedded (SQLite), 1 engine"] = asyncio.run(
                enroll([url], args.adds, args.in_flight, "e"))
        finally:
            proc.terminate()
            proc.wait(30)
    loop: dict[str, Any] | None = None
    with LocalCluster() as cluster:
        migrate(cluster.url)
        for count in args.replicas:
            engines = [start_engine(["--store", cluster.url]) for _ in range(count)]
            try:
                # At least 2 adds in flight per replica (each has one model process).
                runs[f"PostgreSQL, {count} replica(s)"] = asyncio.run(enroll(
                    [u for _, u in engines], args.adds, max(args.in_flight, 2 * count),
                    f"r{count}"))
            finally:
                for proc, _ in engines:
                    proc.terminate()
                    proc.wait(30)
        if args.loop_seconds > 0:
            loop = measure_loop(cluster.url, args.loop_seconds, args.searchers)
    write_result("scale_replicas", {"in_flight": args.in_flight, "runs": runs,
                                    "cores": os.cpu_count(), "loop": loop})
    print(f"{'engines':34}{'faces/s':>9}{'wall s':>8}{'errors':>8}  users seen by each")
    for label, r in runs.items():
        print(f"{label:34}{r['faces_per_s']:>9}{r['wall_s']:>8}{r['errors']:>8}  "
              f"{r['users_seen_by_each']}")
    if loop:
        print(f"\none replica, {loop['searchers']} searches at once ({loop['groups']} groups of "
              f"{loop['faces_per_group']:,} faces, exact) + one client of faceset/user/get, "
              f"{loop['seconds']:g} s:")
        print(f"  {'queries run':40}{'searches/s':>11}{'search p50/p99 ms':>20}"
              f"{'user/get p50/p99 ms':>22}{'errors':>8}")
        for label, r in loop.items():
            if isinstance(r, dict):
                print(f"  {label:40}{r['searches_per_s']:>11}{_pair(r['search']):>20}"
                      f"{_pair(r['cheap_call']):>22}{r['errors']:>8}")


def _pair(p: dict[str, float]) -> str:
    return f"{p['p50_ms']} / {p['p99_ms']}"


if __name__ == "__main__":
    main()
