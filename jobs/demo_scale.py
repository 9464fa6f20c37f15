"""``faceflow demo-scale``: PostgreSQL, two engine replicas, two shards on one budget, merge.

Everything runs on this machine: a PostgreSQL (with pgvector, from the ``scale`` extra)
on a Unix socket in the demo folder, two ``faceflow engine`` processes sharing it, and
two ``faceflow enroll --shard K/2`` processes, each talking to its own replica, paced by
one ``--qps-budget`` on the same database. Then ``faceflow merge`` combines the shards.
The output shows the calls/s both shards made together against the budget, and that
each replica sees every enrolled user.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

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


@click.command("demo-scale")
@click.option("--folder", "base", type=click.Path(path_type=Path, file_okay=False),
              default=Path("runs"), show_default=True, help="Where the demo folder goes.")
@click.option("--rows", type=click.IntRange(2, 10_000), default=30, show_default=True,
              help="Members to enroll (sample photos, one uid each).")
@click.option("--qps", type=float, default=1.5, show_default=True,
              help="The account's budget per interface, shared by both shards (below what "
                   "two one-worker replicas can do, so the budget is what sets the pace).")
def demo_scale(base: Path, rows: int, qps: float) -> None:
    """PostgreSQL + two engine replicas + two enroll shards sharing one QPS budget + merge."""
    from pipeline.engine.pgstore import migrate  # noqa: PLC0415
    from pipeline.postgres import LocalCluster, PostgresUnavailable  # noqa: PLC0415

    folder = base / f"demo-scale-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    folder.mkdir(parents=True)
    cluster = LocalCluster(folder / "postgres")
    try:
        cluster.start()
    except PostgresUnavailable as exc:
        raise click.ClickException(f"cannot start PostgreSQL: {exc}") from None
    replicas: list[tuple[subprocess.Popen[str], str]] = []
    try:
        click.echo(f"PostgreSQL (pgvector) on {cluster.url}")
        migrate(cluster.url)
        replicas = [_start_replica(cluster.url, folder / f"replica-{k}.log") for k in (0, 1)]
        for k, (_, url) in enumerate(replicas):
            click.echo(f"engine replica {k} on {url}, faceset in PostgreSQL")
        manifest = _manifest(folder, rows)
        wall = _run_shards(manifest, folder / "runs", [u for _, u in replicas], cluster.url, qps)
        _report(folder, replicas, wall, qps, rows)
    finally:
        for proc, _ in replicas:
            proc.terminate()
            proc.wait(30)
        cluster.stop()


def _run_shards(manifest: Path, runs: Path, urls: list[str], budget: str, qps: float) -> float:
    from pipeline.client.config import (  # noqa: PLC0415
        ENGINE_DEMO_API_KEY,
        ENGINE_DEMO_SECRET_KEY,
    )

    # The replicas accept the documented demo pair (they run without FACEFLOW_API_KEY).
    env = {**os.environ, "FACEFLOW_API_KEY": ENGINE_DEMO_API_KEY,
           "FACEFLOW_SECRET_KEY": ENGINE_DEMO_SECRET_KEY}
    faceflow = str(Path(sys.executable).parent / "faceflow")
    procs = []
    start = time.monotonic()
    for k, url in enumerate(urls):
        command = [faceflow, "enroll", str(manifest), "--group", "demo_scale",
                   "--shard", f"{k}/{len(urls)}", "--run-dir", str(runs / f"shard-{k:02d}"),
                   "--endpoint", url, "--qps", f"{qps:g}", "--qps-budget", budget]
        click.echo("$ " + " ".join(command[1:]).replace(budget, "postgresql://..."))
        procs.append(subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode not in (0, 1):
            raise click.ClickException(f"a shard exited {proc.returncode}: {err[-400:]}")
    return time.monotonic() - start


def _report(folder: Path, replicas: list[tuple[subprocess.Popen[str], str]], wall: float,
            qps: float, rows: int) -> None:
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
                   f"{n / span:.2f} calls/s together (budget {qps:g}/s for the account)")
    ok = all(_stats(u)["users"] == result.counts.get("enrolled", rows) for _, u in replicas)
    click.echo("both replicas see every enrolled user" if ok else
               "the replicas disagree on the users: see the logs in " + str(folder))
