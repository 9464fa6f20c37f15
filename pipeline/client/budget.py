"""One QPS budget per account, shared by every process that uses the same API key.

``--qps-budget postgresql://...``: the per-interface pace of every enroll/audit process
(on any host) comes from one row per (account, interface) in PostgreSQL, so together
they send what the account may send, not each process as if it were alone.

GCRA in one row
    The row holds ``tat``, the theoretical arrival time of the next call (seconds on
    the *database server's* clock, so hosts with skewed clocks agree). One
    ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` per call reserves the next
    slot, ``max(tat, now)``, moves ``tat`` one interval ``1 / rate`` past it, and
    answers how long the caller waits for its slot (a duration: the caller's own clock
    is fine for sleeping it). Slots are spaced evenly, with no burst, so no 1-s window
    of any shape (fixed, sliding, token bucket) sees more than the rate. One round
    trip per call; the row lock is held for that statement only.

The learned rate is shared too (AIMD in the same row)
    ``--qps`` is the account-wide ceiling; the pace is ``ceiling * (1 - headroom)``.
    A rejection (4 or 18) reported by any process (:meth:`PgBudget.on_limited`) cuts
    the row's rate to ``beta`` times what it was (at most once per ``cooldown``
    seconds: calls already in flight left at the old rate), so one process's 18 slows
    all. From a cut the rate grows back linearly, ``gain`` of the ceiling per second
    after ``hold`` quiet seconds, up to the pace. All of it is computed from the row in
    the statement that reserves the slot.

Never unlimited
    When the database cannot be reached (or answers an error), :meth:`acquire` raises
    :class:`BudgetUnavailable`; jobs stop with a resumable reason rather than send
    without the budget.

Interfaces ``--qps`` gives no ceiling for (``--qps detect=10,add=5`` says nothing of
identify) are paced by the process's own governor (``fallback``), as without a budget.

The account key is a hash of the endpoint and API key: neither appears in the table.
The interface is the governor's interface: ``await budget.acquire(interface)`` before
each call, ``budget.on_limited(interface)`` after a 4/18, as :class:`RateLimiter`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from pipeline.api.errors import ConfigError, FaceflowError
from pipeline.client.ratelimit import canonical_interface, normalise_qps
from pipeline.postgres import is_postgres_url, redact

log = logging.getLogger("faceflow.client")


class BudgetUnavailable(FaceflowError):
    """The shared QPS budget cannot be reached: stop (resumably), never send unpaced."""


@dataclass(frozen=True, slots=True)
class BudgetTuning:
    """How the shared rate reacts (seconds, shares of the ceiling). See the docstring."""

    headroom: float = 0.02
    beta: float = 0.7
    cooldown: float = 1.0
    hold: float = 5.0
    gain: float = 0.02
    min_rate: float = 0.1
    timeout: float = 5.0


#: Advisory lock key of the table's creation.
_SCHEMA_LOCK = 0x66616365_04

SCHEMA = """
CREATE TABLE IF NOT EXISTS qps_budget (
    account text NOT NULL, interface text NOT NULL,
    tat double precision NOT NULL,          -- next free slot, server epoch seconds
    cut_rate double precision,              -- rate set by the latest cut (NULL: none)
    last_cut double precision NOT NULL DEFAULT 0,
    rejections bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (account, interface))
"""

# The rate now, from the row (b) and the server clock (c.now); %(pace)s is the ceiling
# less headroom. Shared by acquire and on_limited so both see the same rate.
_RATE = ("LEAST(%(pace)s, COALESCE(b.cut_rate + %(gain)s * GREATEST(0, c.now - b.last_cut "
         "- %(hold)s), %(pace)s))")

_ACQUIRE = f"""
WITH c AS (SELECT extract(epoch FROM clock_timestamp())::float8 AS now)
INSERT INTO qps_budget AS b (account, interface, tat)
SELECT %(account)s, %(interface)s, c.now + 1.0 / %(pace)s FROM c
ON CONFLICT (account, interface) DO UPDATE SET
    tat = GREATEST(b.tat, (SELECT now FROM c))
          + 1.0 / (SELECT {_RATE} FROM c)
RETURNING tat - (SELECT now FROM c) - 1.0 / (SELECT {_RATE} FROM c),
          (SELECT {_RATE} FROM c)
"""

_CUT = f"""
WITH c AS (SELECT extract(epoch FROM clock_timestamp())::float8 AS now)
UPDATE qps_budget AS b SET
    cut_rate = GREATEST(%(min_rate)s, %(beta)s * {_RATE}),
    last_cut = c.now, rejections = b.rejections + 1
FROM c
WHERE b.account = %(account)s AND b.interface = %(interface)s
  AND c.now - b.last_cut >= %(cooldown)s
"""


def account_key(endpoint: str, api_key: str) -> str:
    """A stable, non-reversible name for one account at one endpoint."""
    return hashlib.sha256(f"{endpoint}\0{api_key}".encode()).hexdigest()[:24]


class PgBudget:
    """The shared budget at ``url`` for one account; ``qps`` is the account's ceiling.

    ``qps``: one number (each interface) or per-interface numbers; an interface with
    no ceiling is not paced by the budget. Use ``async with`` (or :meth:`open` /
    :meth:`close`).
    """

    def __init__(self, url: str, account: str, qps: float | Mapping[str, float] | None,
                 tuning: BudgetTuning | None = None, fallback: Any = None) -> None:
        if not is_postgres_url(url):
            raise ConfigError(f"--qps-budget: use a postgresql:// URL, not {redact(url)}")
        self.url, self.account = url, account
        self.limits = normalise_qps(qps)
        if not any(v for v in self.limits.values()):
            raise ConfigError("--qps-budget needs --qps: the account's quota, shared by "
                              "every process (e.g. --qps 10 or --qps detect=10,add=10)")
        self.tuning = tuning or BudgetTuning()
        #: The process's own limiter for interfaces the budget has no ceiling for
        #: (``--qps detect=10,add=5`` leaves identify to it): they are never unpaced.
        self.fallback = fallback
        self.rates: dict[str, float] = {}
        self.waited = 0.0
        self._conn: Any = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self) -> PgBudget:
        """Connect and create the table when missing; BudgetUnavailable when unreachable."""
        try:
            import psycopg  # noqa: PLC0415
        except ImportError:
            raise BudgetUnavailable("--qps-budget needs psycopg: pip install -e '.[scale]'"
                                    ) from None
        try:
            self._conn = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=max(1, int(self.tuning.timeout)))
            # Processes starting together would race CREATE TABLE IF NOT EXISTS (one of
            # them fails on PostgreSQL's catalog): the first creates, the others wait.
            async with self._conn.transaction():
                await self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                await self._conn.execute(SCHEMA)
        except (psycopg.Error, OSError) as exc:
            raise BudgetUnavailable(_unreachable(self.url, exc)) from None
        return self

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def __aenter__(self) -> PgBudget:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _args(self, interface: str) -> dict[str, Any] | None:
        name = canonical_interface(interface)
        ceiling = self.limits.get(name)
        if not ceiling:
            return None
        t = self.tuning
        return {"account": self.account, "interface": name, "pace": ceiling * (1 - t.headroom),
                "gain": t.gain * ceiling, "hold": t.hold, "beta": t.beta,
                "cooldown": t.cooldown, "min_rate": t.min_rate}

    async def acquire(self, interface: str) -> Any:
        """Reserve the account's next slot for ``interface`` and wait for it.

        Returns the fallback governor's ticket for an interface it paces, else None
        (the governor's interface: pass it back to :meth:`on_limited` /
        :meth:`on_answered`).
        """
        if self.fallback is not None and self._args(interface) is None:
            return await self.fallback.acquire(interface)
        wait = await self.reserve(interface)
        if wait > 0:
            self.waited += wait
            await asyncio.sleep(wait)
        return None

    async def reserve(self, interface: str) -> float:
        """Reserve the next slot; the seconds until it comes (0: now). No sleeping."""
        args = self._args(interface)
        if args is None:
            return 0.0
        row = await self._execute(_ACQUIRE, args)
        self.rates[args["interface"]] = float(row[1])
        return max(0.0, float(row[0]))

    def on_limited(self, interface: str, ticket: Any = None) -> None:
        """A 4/18 for ``interface``: cut the shared rate (in the background)."""
        args = self._args(interface)
        if args is None:
            if self.fallback is not None:
                self.fallback.on_limited(interface, ticket)
            return
        task = asyncio.get_running_loop().create_task(self._cut(args))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def on_answered(self, interface: str, ticket: Any = None) -> None:
        """Any other answer: the fallback governor hears of its own calls' answers."""
        if self.fallback is not None and ticket is not None and self._args(interface) is None:
            self.fallback.on_answered(interface, ticket)

    async def _cut(self, args: dict[str, Any]) -> None:
        try:
            await self._execute(_CUT, args, fetch=False)
        except BudgetUnavailable as exc:
            # The next acquire meets the same failure and stops the job.
            log.warning("could not report a rejection to the QPS budget: %s", exc)

    async def _execute(self, sql: str, args: dict[str, Any], fetch: bool = True) -> Any:
        import psycopg  # noqa: PLC0415

        if self._conn is None:
            raise BudgetUnavailable("the QPS budget is not open")
        try:
            async with self._lock:
                cur = await asyncio.wait_for(self._conn.execute(sql, args),
                                             self.tuning.timeout)
                return await cur.fetchone() if fetch else None
        except (psycopg.Error, OSError, TimeoutError) as exc:
            raise BudgetUnavailable(_unreachable(self.url, exc)) from None


def _unreachable(url: str, exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    detail = text[0] if text else type(exc).__name__
    return f"the QPS budget at {redact(url)} cannot be reached: {detail}"


def check_budget_options(url: str, qps: float | Mapping[str, float] | None) -> None:
    """ConfigError (before any call) for a ``--qps-budget`` that cannot work."""
    PgBudget(url, "check", qps)


@asynccontextmanager
async def open_budget(url: str | None, settings: Any,
                      qps: float | Mapping[str, float] | None) -> AsyncIterator[PgBudget | None]:
    """The open budget for ``--qps-budget URL`` (None without one); closed afterwards.

    The account is ``settings``' endpoint and API key (hashed). Raises
    :class:`BudgetUnavailable` when the database cannot be reached.
    """
    if url is None:
        yield None
        return
    from pipeline.client.ratelimit import RateLimiter  # noqa: PLC0415

    budget = PgBudget(url, account_key(settings.endpoint, settings.api_key.reveal()), qps,
                      fallback=RateLimiter(None))
    await budget.open()
    try:
        yield budget
    finally:
        await budget.close()
