"""Faces/s enrolled through engine replicas: one SQLite engine, then 1 and 2 replicas on
one PostgreSQL store.

Each engine is a real ``python -m pipeline.engine`` process with one model process;
the replicas share a temporary local PostgreSQL (pipeline.postgres.LocalCluster). A
client keeps ``--in-flight`` ``faceset/user/add`` calls going, spread round-robin over
the replicas, with the sample photos (each add runs detection, landmarks and the
descriptor). Figures: faces/s over ``--adds`` adds, and the users every replica then
sees (each replica's ``/admin/stats``, read from the shared store).

A replica's throughput is its model processes': a second replica adds as much as a
second worker, and what it really buys is a second host. On a 2-core machine shared
with other work the figure is bounded by the cores, not by the store.

    .venv/bin/python benchmarks/scale_replicas.py [--adds 60] [--in-flight 4]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ROOT, write_result  # noqa: E402
from pipeline.client.config import ENGINE_DEMO_API_KEY, ENGINE_DEMO_SECRET_KEY  # noqa: E402
from pipeline.engine.pgstore import migrate  # noqa: E402
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
    return {"replicas": len(urls), "adds": adds, "errors": errors, "wall_s": round(wall, 1),
            "faces_per_s": round((adds - errors) / wall, 2), "users_seen_by_each": seen}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--adds", type=int, default=60)
    parser.add_argument("--in-flight", type=int, default=4)
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
    with LocalCluster() as cluster:
        migrate(cluster.url)
        for count in (1, 2):
            engines = [start_engine(["--store", cluster.url]) for _ in range(count)]
            try:
                runs[f"PostgreSQL, {count} replica(s)"] = asyncio.run(enroll(
                    [u for _, u in engines], args.adds, args.in_flight, f"r{count}"))
            finally:
                for proc, _ in engines:
                    proc.terminate()
                    proc.wait(30)
    write_result("scale_replicas", {"in_flight": args.in_flight, "runs": runs,
                                    "cores": os.cpu_count()})
    print(f"{'engines':34}{'faces/s':>9}{'wall s':>8}{'errors':>8}  users seen by each")
    for label, r in runs.items():
        print(f"{label:34}{r['faces_per_s']:>9}{r['wall_s']:>8}{r['errors']:>8}  "
              f"{r['users_seen_by_each']}")


if __name__ == "__main__":
    main()
