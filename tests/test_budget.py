"""The account-wide QPS budget (pipeline/client/budget.py) on a real PostgreSQL and Redis.

The semantic tests run on both stores (``store`` is parametrized): two budget objects
stand for two processes of one account (each has its own connection, as separate
processes do). Assertions are on the reserved schedule kept in the store's record, not
on elapsed time.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image
from support.doubles import API_KEY, SECRET_KEY, ProtocolDouble, double  # noqa: F401
from support.redis_fixtures import RedisFor, hashes, redis_server, redis_url  # noqa: F401

from jobs.exits import exit_code_of
from pipeline.api.errors import ConfigError
from pipeline.client.budget import (
    BudgetUnavailable,
    PgBudget,
    RedisBudget,
    SharedBudget,
    account_key,
    check_budget_options,
    make_budget,
)
from pipeline.enroll.config import resume_enroll_config
from pipeline.enroll.job import EnrollConfig, run_enroll
from pipeline.postgres import connect, without_password
from pipeline.runs.rundir import RunDir

ACCOUNT = account_key("ak-test")


@dataclass
class Store:
    """One budget store for a test: its URL and what the test needs to look at it."""

    kind: str
    url: str
    #: A URL of the same kind (with a password) where nothing answers.
    unreachable: str
    records: Callable[[], list[tuple[str, str, float, int]]]
    go_away: Callable[[], None]  # the store drops every budget connection / stops
    come_back: Callable[[], None]
    dump: Callable[[], str]  # everything the budget stored, keys and values, as text

    def tat(self, interface: str = "detect") -> float:
        return next(r[2] for r in self.records() if r[1] == interface)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_store(url: str) -> Store:
    def records() -> list[tuple[str, str, float, int]]:
        with connect(url) as conn:
            rows = conn.execute("SELECT account, interface, tat, rejections FROM qps_budget "
                                "ORDER BY interface, account").fetchall()
        return [(a, i, float(t), int(r)) for a, i, t, r in rows]

    def go_away() -> None:
        with connect(url) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE query ILIKE '%%qps_budget%%' AND pid <> pg_backend_pid()")

    def dump() -> str:
        with connect(url) as conn:
            return repr(conn.execute("SELECT * FROM qps_budget").fetchall())

    return Store("postgresql", url, "postgresql://app:pw@/db?host=/nonexistent-dir",
                 records, go_away, lambda: None, dump)


def _redis_store(url: str, server: RedisFor) -> Store:
    prefix = parse_qs(urlsplit(url).query)["prefix"][-1]

    def records() -> list[tuple[str, str, float, int]]:
        out = []
        for key, fields in hashes(server.url, prefix).items():
            _, kind, account, interface = key.split(":")
            assert kind == "qps_budget"
            out.append((account, interface, float(fields["tat"]),
                        int(fields.get("rejections", 0))))
        return sorted(out, key=lambda r: (r[1], r[0]))

    return Store("redis", url, f"redis://:pw@127.0.0.1:{_closed_port()}/0", records,
                 server.stop, server.start, lambda: repr(hashes(server.url, prefix)))


@pytest.fixture(params=["postgresql", "redis"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    if request.param == "postgresql":
        yield _pg_store(request.getfixturevalue("pg_url"))
    else:
        yield _redis_store(request.getfixturevalue("redis_url"),
                           request.getfixturevalue("redis_server"))


def _budget(store: Store, qps: object = 10, account: str = ACCOUNT, **kw: object
            ) -> SharedBudget:
    return make_budget(store.url, account, qps, **kw)  # type: ignore[arg-type]


async def test_two_processes_share_one_schedule(store: Store) -> None:
    async with _budget(store, 20) as one, _budget(store, 20) as two:
        first = await one.reserve("detect")
        for _ in range(30):  # the next free slot is then ~1.5 s ahead: the 40 below all
            await two.reserve("detect")  # come before it, however slowly they are sent
        start = store.tat()
        waits = await asyncio.gather(*[b.reserve("detect") for b in (one, two) * 20])
        pace = 20 * (1 - one.tuning.headroom)
        # The record moved exactly 40 intervals, and the last caller (of either process)
        # waits ~3.5 s for its slot (nobody sleeps here: reserve only says how long).
        assert store.tat() - start == pytest.approx(40 / pace, rel=1e-6)
        assert first == 0.0 and max(waits) > 69 / pace - 1.0
        assert len({round(w * pace) for w in waits}) >= 38  # distinct slots, not shared
        # Another interface has its own record and pace; an unpaced one waits for nothing.
        assert await one.reserve("add") == 0.0


async def test_a_rejection_in_one_process_slows_the_other(store: Store) -> None:
    async with _budget(store) as one, _budget(store) as two:
        await two.reserve("detect")
        assert two.rates["detect"] == pytest.approx(9.8)
        one.on_limited("detect")
        one.on_limited("detect")  # within the cooldown: the same cut
        await one.close()
        await two.reserve("detect")
        assert two.rates["detect"] == pytest.approx(9.8 * 0.7, rel=1e-3)
    assert [r[3] for r in store.records()] == [1]


async def test_other_accounts_are_not_slowed(store: Store) -> None:
    other = account_key("ak-other")
    async with _budget(store) as one, _budget(store, account=other) as two:
        for _ in range(10):
            await one.reserve("detect")
        assert await two.reserve("detect") == 0.0


async def test_an_unreachable_budget_stops_instead_of_sending_unpaced(store: Store) -> None:
    with pytest.raises(BudgetUnavailable, match="cannot be reached") as caught:
        await make_budget(store.unreachable, ACCOUNT, 10).open()
    assert "pw" not in str(caught.value)
    budget = await _budget(store).open()
    try:
        await budget.reserve("detect")
        store.go_away()
        with pytest.raises(BudgetUnavailable):
            await budget.acquire("detect")
    finally:
        await budget.close()


def test_options_are_checked_before_any_call() -> None:
    with pytest.raises(ConfigError, match="needs --qps"):
        PgBudget("postgresql://h/db", ACCOUNT, None)
    with pytest.raises(ConfigError, match="postgresql://"):
        PgBudget("redis://h", ACCOUNT, 10)
    with pytest.raises(ConfigError, match="needs --qps"):
        check_budget_options("redis://h:6379/0", None)
    with pytest.raises(ConfigError, match="redis://"):
        RedisBudget("postgresql://h/db", ACCOUNT, 10)
    with pytest.raises(ConfigError, match=r"postgresql:// or redis://.*:\*\*\*@"):
        check_budget_options("mysql://app:pw@h/db", 10)
    with pytest.raises(ConfigError, match="prefix="):
        check_budget_options("redis://h/0?prefix=", 10)
    assert isinstance(make_budget("rediss://h:6380/0", ACCOUNT, 10), RedisBudget)
    assert "ak-test" not in ACCOUNT and len(ACCOUNT) == 24
    budget = make_budget("redis://:pw@h/0?prefix=site1&health_check_interval=30", ACCOUNT, 10)
    assert isinstance(budget, RedisBudget)
    assert budget.key("detect") == f"site1:qps_budget:{ACCOUNT}:detect"


# -- enroll with --qps-budget (against the protocol double) ----------------------------------


def _manifest(folder: Path, rows: int) -> Path:
    Image.new("RGB", (240, 300), (180, 140, 120)).save(folder / "face.jpg", quality=90)
    path = folder / "members.csv"
    path.write_text("uid,image\n" + "".join(f"u{i},face.jpg\n" for i in range(rows)))
    return path


async def test_enroll_paced_by_the_shared_budget(
    double: ProtocolDouble, store: Store, tmp_path: Path,  # noqa: F811
    caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    config = EnrollConfig(manifest=_manifest(tmp_path, 6), settings=double.settings(),
                          group="g", qps=40, qps_budget=store.url, run_dir=tmp_path / "run")
    result = await run_enroll(config)
    assert result.stop_reason is None and result.remaining == 0
    assert len(double.calls("detect")) == 6 and len(double.calls("add")) == 6
    records = store.records()
    account = account_key(API_KEY)
    assert [(r[0], r[1]) for r in records] == [(account, "add"), (account, "detect")]
    # The secrets are nowhere: not in the store's keys or values, run.json or the logs.
    stored = store.dump()
    for secret in (API_KEY, SECRET_KEY):
        assert secret not in stored
        assert secret not in (tmp_path / "run" / "run.json").read_text()
        assert secret not in caplog.text


async def test_processes_reaching_the_service_by_other_addresses_share_one_budget(
    double: ProtocolDouble, store: Store, tmp_path: Path  # noqa: F811
) -> None:
    """The account is the API key: a shard sent through another address of the same
    service (a replica, a balancer, localhost) is paced by the same budget."""
    settings = double.settings()
    other = double.settings(endpoint=settings.endpoint.replace("127.0.0.1", "localhost"))
    assert other.endpoint != settings.endpoint
    for name, shard in (("a", settings), ("b", other)):
        (tmp_path / name).mkdir()
        config = EnrollConfig(manifest=_manifest(tmp_path / name, 3), settings=shard,
                              group="g", qps=40, qps_budget=store.url,
                              run_dir=tmp_path / name / "run")
        assert (await run_enroll(config)).remaining == 0
    assert {r[0] for r in store.records()} == {account_key(API_KEY)}


async def test_enroll_stops_resumably_when_the_budget_is_unreachable(
    double: ProtocolDouble, store: Store, tmp_path: Path  # noqa: F811
) -> None:
    config = EnrollConfig(manifest=_manifest(tmp_path, 4), settings=double.settings(),
                          group="g", qps=40, run_dir=tmp_path / "run",
                          qps_budget=store.unreachable)
    result = await run_enroll(config)
    assert result.stop_reason == "budget" and exit_code_of(result) == 3
    assert result.remaining == 4 and double.requests == []  # nothing sent unpaced
    assert "cannot be reached" in (result.stop_message or "")
    assert "pw" not in (result.stop_message or "")
    with pytest.raises(ConfigError, match="needs --qps"):
        EnrollConfig(manifest=config.manifest, settings=double.settings(), group="g",
                     qps_budget=store.unreachable)


async def test_audit_stops_resumably_when_the_budget_is_unreachable(
    double: ProtocolDouble, store: Store, tmp_path: Path  # noqa: F811
) -> None:
    from pipeline.audit.job import AuditConfig, run_audit

    config = AuditConfig(settings=double.settings(), groups=("g",),
                         manifest=_manifest(tmp_path, 3), qps=10, run_dir=tmp_path / "audit",
                         qps_budget=store.unreachable)
    result = await run_audit(config)
    assert result.stop_reason == "budget" and exit_code_of(result) == 3
    assert double.requests == []


async def test_enroll_stops_when_the_budget_goes_away_mid_run_and_resumes(
    double: ProtocolDouble, store: Store, tmp_path: Path  # noqa: F811
) -> None:
    config = EnrollConfig(manifest=_manifest(tmp_path, 12), settings=double.settings(),
                          group="g", qps=4, qps_budget=store.url, run_dir=tmp_path / "run",
                          concurrency=2)
    task = asyncio.create_task(run_enroll(config))
    while len(double.calls("detect")) < 2 and not task.done():
        await asyncio.sleep(0.02)
    store.go_away()  # PostgreSQL drops the budget's connections; Redis stops
    stopped = await task
    assert stopped.stop_reason == "budget" and exit_code_of(stopped) == 3
    assert 0 < stopped.remaining < 12
    store.come_back()
    resumed = await run_enroll(config)  # the store is reachable again: the rest goes
    assert resumed.stop_reason is None and resumed.remaining == 0
    assert sorted(c.form["uid"] for c in double.calls("add")) == sorted(
        f"u{i}" for i in range(12))


async def test_a_resume_not_given_the_budget_again_keeps_the_runs_budget(
    double: ProtocolDouble, store: Store, tmp_path: Path  # noqa: F811
) -> None:
    manifest = _manifest(tmp_path, 8)
    config = EnrollConfig(manifest=manifest, settings=double.settings(), group="g", qps=4,
                          qps_budget=store.url, run_dir=tmp_path / "run", concurrency=2)
    task = asyncio.create_task(run_enroll(config))
    while len(double.calls("detect")) < 2 and not task.done():
        await asyncio.sleep(0.02)
    store.go_away()
    assert (await task).stop_reason == "budget"
    store.come_back()
    recorded = RunDir(tmp_path / "run").read_info().options["qps_budget"]
    assert recorded == without_password(store.url)
    # the resume command as a user types it: no --qps-budget
    resumed_config = resume_enroll_config(tmp_path / "run", manifest, double.settings(), {})
    assert resumed_config.qps_budget == recorded
    before = [r[2] for r in store.records() if r[1] == "detect"]  # Redis came back empty
    resumed = await run_enroll(resumed_config)
    assert resumed.stop_reason is None and resumed.remaining == 0
    assert store.tat() > max(before, default=0.0)  # its calls were paced by the budget


def test_a_budget_url_is_recorded_without_its_password() -> None:
    for url, kept in (("postgresql://app:s3cret@db.example/faces?sslmode=require",
                       "postgresql://app@db.example/faces?sslmode=require"),
                      ("redis://:s3cret@cache.example:6379/0", "redis://cache.example:6379/0"),
                      ("rediss://user:s3cret@cache.example/1?prefix=ff",
                       "rediss://user@cache.example/1?prefix=ff")):
        assert without_password(url) == kept


async def test_interfaces_without_a_ceiling_go_to_the_process_limiter(store: Store) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.acquired: list[str] = []
            self.limited: list[str] = []

            self.answered: list[str] = []

        async def acquire(self, interface: str) -> str:
            self.acquired.append(interface)
            return f"ticket-{len(self.acquired)}"

        def on_limited(self, interface: str, ticket: str | None = None) -> None:
            self.limited.append(f"{interface}:{ticket}")

        def on_answered(self, interface: str, ticket: str) -> None:
            self.answered.append(f"{interface}:{ticket}")

    own = Recorder()
    async with _budget(store, {"detect": 10}, fallback=own) as budget:
        assert await budget.acquire("detect") is None
        ticket = await budget.acquire("identify")
        budget.on_limited("identify", ticket)
        budget.on_answered("identify", await budget.acquire("identify"))
        budget.on_answered("detect", None)
    assert own.acquired == ["identify", "identify"]
    assert own.limited == ["identify:ticket-1"] and own.answered == ["identify:ticket-2"]
    assert [r[1] for r in store.records()] == ["detect"]


async def test_processes_starting_together_all_open_the_budget(store: Store) -> None:
    budgets = [_budget(store) for _ in range(6)]
    try:
        await asyncio.gather(*(b.open() for b in budgets))  # the table is created once
        waits = await asyncio.gather(*(b.reserve("detect") for b in budgets))
        assert len(waits) == 6 and min(waits) == 0.0
    finally:
        await asyncio.gather(*(b.close() for b in budgets))


async def test_redis_reloads_its_scripts_after_a_flush(redis_url: str,  # noqa: F811
                                                       redis_server: RedisFor) -> None:  # noqa: F811
    import redis  # noqa: PLC0415

    async with make_budget(redis_url, ACCOUNT, 10) as budget:
        await budget.reserve("detect")
        with redis.Redis.from_url(redis_server.url) as admin:
            admin.script_flush()  # a server restart or failover forgets loaded scripts
        assert await budget.reserve("detect") > 0  # re-sent with its text, same record


def test_the_cli_names_a_wrong_url_and_stops_on_an_unreachable_redis(tmp_path: Path) -> None:
    from click.testing import CliRunner  # noqa: PLC0415

    from jobs.cli import main  # noqa: PLC0415

    manifest = _manifest(tmp_path, 2)
    env = {"FACEFLOW_ENDPOINT": "http://127.0.0.1:1", "FACEFLOW_API_KEY": "ak-cli",
           "FACEFLOW_SECRET_KEY": "sk-cli"}
    args = ["enroll", str(manifest), "--group", "g", "--qps", "5"]
    wrong = CliRunner().invoke(main, [*args, "--run-dir", str(tmp_path / "a"),
                                      "--qps-budget", "mysql://app:s3cret@h/db"], env=env)
    assert wrong.exit_code == 2, wrong.output  # before any call, naming the fix
    assert "postgresql:// or redis://" in wrong.output and "s3cret" not in wrong.output
    url = f"redis://:s3cret@127.0.0.1:{_closed_port()}/0"
    stopped = CliRunner().invoke(main, [*args, "--run-dir", str(tmp_path / "b")],
                                 env={**env, "FACEFLOW_QPS_BUDGET": url})
    assert stopped.exit_code == 3, stopped.output  # resumable, nothing sent
    assert "redis://:***@127.0.0.1" in stopped.output and "s3cret" not in stopped.output
    assert "Traceback" not in stopped.output


async def test_redis_takes_one_round_trip_per_call(redis_url: str,  # noqa: F811
                                                   redis_server: RedisFor) -> None:  # noqa: F811
    import redis  # noqa: PLC0415

    if redis_server.local is None:
        pytest.skip("a site's server counts other clients' commands too")

    def commands() -> dict[str, int]:
        with redis.Redis.from_url(redis_server.url) as admin:
            stats = admin.info("commandstats")
        return {name: int(v["calls"]) for name, v in stats.items() if name != "cmdstat_info"}

    async with make_budget(redis_url, ACCOUNT, 50) as budget:
        await budget.reserve("detect")  # the connection is made and set up
        before = commands()
        for _ in range(20):
            await budget.reserve("detect")
        budget.on_limited("detect")
        await budget.close()  # waits for the cut's report
        after = commands()
        with redis.Redis.from_url(redis_server.url) as admin:  # unused keys go away
            assert 3500 < admin.ttl(budget.key("detect")) <= 3600  # type: ignore[attr-defined]
    grown = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    assert grown.pop("cmdstat_evalsha") == 21  # 20 reservations and one cut
    # Besides: what the scripts ran on the server, and the second admin connection's
    # handshake (hello, client setinfo); no EVAL, SCRIPT, PING or reads of our own.
    inside = {"time", "hmget", "hset", "expire", "hincrby"}
    assert set(grown) <= {f"cmdstat_{c}" for c in (*inside, "hello", "client")}
    assert grown["cmdstat_time"] == 21 and grown["cmdstat_hincrby"] == 1
