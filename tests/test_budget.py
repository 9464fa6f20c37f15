"""The account-wide QPS budget (pipeline/client/budget.py) on a real PostgreSQL.

Two PgBudget objects stand for two processes of one account (each has its own
connection, as separate processes do). Assertions are on the reserved schedule kept in
the database row, not on elapsed time.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from PIL import Image
from support.doubles import API_KEY, ProtocolDouble, double  # noqa: F401 - double: fixture

from jobs.exits import exit_code_of
from pipeline.api.errors import ConfigError
from pipeline.client.budget import BudgetUnavailable, PgBudget, account_key
from pipeline.enroll.job import EnrollConfig, run_enroll
from pipeline.postgres import connect

ACCOUNT = account_key("http://127.0.0.1:1", "ak-test")


def _tat(url: str, interface: str = "detect") -> float:
    with connect(url) as conn:
        row = conn.execute("SELECT tat FROM qps_budget WHERE interface=%s",
                           (interface,)).fetchone()
    assert row is not None
    return float(row[0])


async def test_two_processes_share_one_schedule(pg_url: str) -> None:
    async with PgBudget(pg_url, ACCOUNT, 20) as one, PgBudget(pg_url, ACCOUNT, 20) as two:
        first = await one.reserve("detect")
        start = _tat(pg_url)
        waits = await asyncio.gather(*[b.reserve("detect") for b in (one, two) * 20])
        pace = 20 * (1 - one.tuning.headroom)
        # 41 slots reserved in a few milliseconds: the row moved 40 intervals, and the
        # last caller (of either process) waits ~2 s for its slot.
        assert _tat(pg_url) - start == pytest.approx(40 / pace, rel=1e-6)
        assert first == 0.0 and max(waits) > 39 / pace - 0.5
        assert len({round(w * pace) for w in waits}) >= 38  # distinct slots, not shared
        # Another interface has its own row and pace; an unpaced one waits for nothing.
        assert await one.reserve("add") == 0.0


async def test_a_rejection_in_one_process_slows_the_other(pg_url: str) -> None:
    async with PgBudget(pg_url, ACCOUNT, 10) as one, PgBudget(pg_url, ACCOUNT, 10) as two:
        await two.reserve("detect")
        assert two.rates["detect"] == pytest.approx(9.8)
        one.on_limited("detect")
        one.on_limited("detect")  # within the cooldown: the same cut
        await one.close()
        await two.reserve("detect")
        assert two.rates["detect"] == pytest.approx(9.8 * 0.7, rel=1e-3)
    with connect(pg_url) as conn:
        assert conn.execute("SELECT rejections FROM qps_budget").fetchone() == (1,)


async def test_other_accounts_are_not_slowed(pg_url: str) -> None:
    other = account_key("http://127.0.0.1:1", "ak-other")
    async with PgBudget(pg_url, ACCOUNT, 10) as one, PgBudget(pg_url, other, 10) as two:
        for _ in range(10):
            await one.reserve("detect")
        assert await two.reserve("detect") == 0.0


async def test_an_unreachable_budget_stops_instead_of_sending_unpaced(pg_url: str) -> None:
    with pytest.raises(BudgetUnavailable, match="cannot be reached") as caught:
        await PgBudget("postgresql://u:pw@/x?host=/nonexistent", ACCOUNT, 10).open()
    assert "pw" not in str(caught.value)
    budget = await PgBudget(pg_url, ACCOUNT, 10).open()
    try:
        await budget.reserve("detect")
        pid = budget._conn.info.backend_pid
        with connect(pg_url) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(BudgetUnavailable):
            await budget.acquire("detect")
    finally:
        await budget.close()


def test_options_are_checked_before_any_call() -> None:
    with pytest.raises(ConfigError, match="needs --qps"):
        PgBudget("postgresql://h/db", ACCOUNT, None)
    with pytest.raises(ConfigError, match="postgresql://"):
        PgBudget("redis://h", ACCOUNT, 10)
    assert "ak-test" not in ACCOUNT and len(ACCOUNT) == 24


# -- enroll with --qps-budget (against the protocol double) ----------------------------------


def _manifest(folder: Path, rows: int) -> Path:
    Image.new("RGB", (240, 300), (180, 140, 120)).save(folder / "face.jpg", quality=90)
    path = folder / "members.csv"
    path.write_text("uid,image\n" + "".join(f"u{i},face.jpg\n" for i in range(rows)))
    return path


async def test_enroll_paced_by_the_shared_budget(
    double: ProtocolDouble, pg_url: str, tmp_path: Path  # noqa: F811
) -> None:
    config = EnrollConfig(manifest=_manifest(tmp_path, 6), settings=double.settings(),
                          group="g", qps=40, qps_budget=pg_url, run_dir=tmp_path / "run")
    result = await run_enroll(config)
    assert result.stop_reason is None and result.remaining == 0
    assert len(double.calls("detect")) == 6 and len(double.calls("add")) == 6
    with connect(pg_url) as conn:
        rows = conn.execute("SELECT account, interface FROM qps_budget ORDER BY 2").fetchall()
    account = account_key(double.url, API_KEY)
    assert rows == [(account, "add"), (account, "detect")]
    assert API_KEY not in (tmp_path / "run" / "run.json").read_text()


async def test_enroll_stops_resumably_when_the_budget_is_unreachable(
    double: ProtocolDouble, tmp_path: Path  # noqa: F811
) -> None:
    config = EnrollConfig(manifest=_manifest(tmp_path, 4), settings=double.settings(),
                          group="g", qps=40, run_dir=tmp_path / "run",
                          qps_budget="postgresql://app:pw@/db?host=/nonexistent-dir")
    result = await run_enroll(config)
    assert result.stop_reason == "budget" and exit_code_of(result) == 3
    assert result.remaining == 4 and double.requests == []  # nothing sent unpaced
    assert "pw" not in (result.stop_message or "")
    with pytest.raises(ConfigError, match="needs --qps"):
        EnrollConfig(manifest=config.manifest, settings=double.settings(), group="g",
                     qps_budget="postgresql://h/db")


async def test_audit_stops_resumably_when_the_budget_is_unreachable(
    double: ProtocolDouble, tmp_path: Path  # noqa: F811
) -> None:
    from pipeline.audit.job import AuditConfig, run_audit

    config = AuditConfig(settings=double.settings(), groups=("g",),
                         manifest=_manifest(tmp_path, 3), qps=10, run_dir=tmp_path / "audit",
                         qps_budget="postgresql://app:pw@/db?host=/nonexistent-dir")
    result = await run_audit(config)
    assert result.stop_reason == "budget" and exit_code_of(result) == 3
    assert double.requests == []


async def test_enroll_stops_when_the_budget_goes_away_mid_run_and_resumes(
    double: ProtocolDouble, pg_url: str, tmp_path: Path  # noqa: F811
) -> None:
    config = EnrollConfig(manifest=_manifest(tmp_path, 12), settings=double.settings(),
                          group="g", qps=4, qps_budget=pg_url, run_dir=tmp_path / "run",
                          concurrency=2)
    task = asyncio.create_task(run_enroll(config))
    while len(double.calls("detect")) < 2 and not task.done():
        await asyncio.sleep(0.02)
    with connect(pg_url) as admin:  # the budget's database drops its connection
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE query ILIKE '%%qps_budget%%' AND pid <> pg_backend_pid()")
    stopped = await task
    assert stopped.stop_reason == "budget" and exit_code_of(stopped) == 3
    assert 0 < stopped.remaining < 12
    resumed = await run_enroll(config)  # the database is reachable again: the rest goes
    assert resumed.stop_reason is None and resumed.remaining == 0
    assert sorted(c.form["uid"] for c in double.calls("add")) == sorted(
        f"u{i}" for i in range(12))


async def test_interfaces_without_a_ceiling_go_to_the_process_limiter(pg_url: str) -> None:
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
    async with PgBudget(pg_url, ACCOUNT, {"detect": 10}, fallback=own) as budget:
        assert await budget.acquire("detect") is None
        ticket = await budget.acquire("identify")
        budget.on_limited("identify", ticket)
        budget.on_answered("identify", await budget.acquire("identify"))
        budget.on_answered("detect", None)
    assert own.acquired == ["identify", "identify"]
    assert own.limited == ["identify:ticket-1"] and own.answered == ["identify:ticket-2"]
    with connect(pg_url) as conn:
        assert conn.execute("SELECT interface FROM qps_budget").fetchall() == [("detect",)]


async def test_processes_starting_together_all_open_the_budget(pg_url: str) -> None:
    budgets = [PgBudget(pg_url, ACCOUNT, 10) for _ in range(6)]
    try:
        await asyncio.gather(*(b.open() for b in budgets))  # the table is created once
        waits = await asyncio.gather(*(b.reserve("detect") for b in budgets))
        assert len(waits) == 6 and min(waits) == 0.0
    finally:
        await asyncio.gather(*(b.close() for b in budgets))
