"""One QPS budget per account, shared by every process that uses the same API key.

``--qps-budget postgresql://...`` or ``--qps-budget redis://...``: the per-interface pace
of every enroll/audit process (on any host) comes from one record per (account,
interface) in PostgreSQL (a row) or Redis (a hash), so together they send what the
account may send, not each process as if it were alone. The URL's scheme picks the
backend (:func:`make_budget`); both implement :class:`Budget` and share everything that
is not storage (:class:`SharedBudget`).

GCRA in one record
    The record holds ``tat``, the theoretical arrival time of the next call (seconds on
    the *store server's* clock, so hosts with skewed clocks agree). One atomic step per
    call reserves the next slot, ``max(tat, now)``, moves ``tat`` one interval
    ``1 / rate`` past it, and answers how long the caller waits for its slot (a
    duration: the caller's own clock is fine for sleeping it). Slots are spaced evenly,
    with no burst, so no 1-s window of any shape (fixed, sliding, token bucket) sees
    more than the rate. One round trip per call: on PostgreSQL an ``INSERT ... ON
    CONFLICT DO UPDATE ... RETURNING`` (the row lock is held for that statement only);
    on Redis a Lua script run by ``EVALSHA`` on the server's ``TIME`` (scripts run one
    at a time, so the step is atomic).

The learned rate is shared too (AIMD in the same record)
    ``--qps`` is the account-wide ceiling; the pace is ``ceiling * (1 - headroom)``.
    A rejection (4 or 18) reported by any process (:meth:`SharedBudget.on_limited`) cuts
    the record's rate to ``beta`` times what it was (at most once per ``cooldown``
    seconds: calls already in flight left at the old rate), so one process's 18 slows
    all. From a cut the rate grows back linearly, ``gain`` of the ceiling per second
    after ``hold`` quiet seconds, up to the pace. All of it is computed from the record
    in the step that reserves the slot.

Never unlimited
    When the store cannot be reached (or answers an error), :meth:`acquire` raises
    :class:`BudgetUnavailable`; jobs stop with a resumable reason rather than send
    without the budget.

Interfaces ``--qps`` gives no ceiling for (``--qps detect=10,add=5`` says nothing of
identify) are paced by the process's own governor (``fallback``), as without a budget.

The account key is a hash of the endpoint and API key: neither appears in the table or
in a Redis key. The interface is the governor's interface: ``await
budget.acquire(interface)`` before each call, ``budget.on_limited(interface)`` after a
4/18, as :class:`RateLimiter`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Self, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pipeline.api.errors import ConfigError, FaceflowError
from pipeline.client.ratelimit import RateLimiter, Ticket, canonical_interface, normalise_qps
from pipeline.postgres import is_postgres_url, redact

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg.rows import TupleRow
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

    from pipeline.client.config import Settings

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


class Budget(Protocol):
    """What the client and the jobs use of a shared budget, whichever its store."""

    url: str
    account: str
    #: The shared rate each interface was last paced at (calls/s), for reports and tests.
    rates: dict[str, float]
    #: Seconds this process slept for its slots.
    waited: float

    async def open(self) -> Budget: ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> Budget: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def acquire(self, interface: str) -> Ticket | None: ...

    async def reserve(self, interface: str) -> float: ...

    def on_limited(self, interface: str, ticket: Ticket | None = None) -> None: ...

    def on_answered(self, interface: str, ticket: Ticket | None = None) -> None: ...


def account_key(api_key: str) -> str:
    """A stable, non-reversible name for one account: its API key's hash.

    Not the endpoint: a quota belongs to the application (the key), so processes that
    reach the service through different addresses (engine replicas, a balancer, ``localhost``
    or ``127.0.0.1``) still share one budget.
    """
    return hashlib.sha256(f"faceflow-account\0{api_key}".encode()).hexdigest()[:24]


def is_redis_url(value: str) -> bool:
    """True for ``redis://`` and ``rediss://`` (TLS) URLs."""
    return value.startswith(("redis://", "rediss://"))


class SharedBudget:
    """The shared budget at ``url`` for one account; ``qps`` is the account's ceiling.

    Everything but the store: the ceilings, the fallback for interfaces without one,
    waiting for the reserved slot, reporting rejections in the background. A backend
    implements :meth:`open`, :meth:`_disconnect`, :meth:`_reserve` (one atomic step:
    the wait and the rate) and :meth:`_cut`.

    ``qps``: one number (each interface) or per-interface numbers; an interface with
    no ceiling is not paced by the budget. Use ``async with`` (or :meth:`open` /
    :meth:`close`).
    """

    #: The URL schemes the backend takes, for the message about a wrong one.
    SCHEMES = ""

    def __init__(self, url: str, account: str, qps: float | Mapping[str, float] | None,
                 tuning: BudgetTuning | None = None, fallback: RateLimiter | None = None) -> None:
        if not self._accepts(url):
            raise ConfigError(f"--qps-budget: use a {self.SCHEMES} URL, not {redact(url)}")
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
        self._tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def _accepts(url: str) -> bool:
        raise NotImplementedError

    async def open(self) -> Self:
        """Connect (and prepare the store); BudgetUnavailable when unreachable."""
        raise NotImplementedError

    async def _disconnect(self) -> None:
        raise NotImplementedError

    async def _reserve(self, args: dict[str, Any]) -> tuple[float, float]:
        """Reserve the next slot: (seconds until it, the rate now). One round trip."""
        raise NotImplementedError

    async def _cut(self, args: dict[str, Any]) -> None:
        """Cut the shared rate (unless cut within the cooldown). One round trip."""
        raise NotImplementedError

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._disconnect()

    async def __aenter__(self) -> Self:
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

    async def acquire(self, interface: str) -> Ticket | None:
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
        wait, rate = await self._reserve(args)
        self.rates[args["interface"]] = rate
        return max(0.0, wait)

    def on_limited(self, interface: str, ticket: Ticket | None = None) -> None:
        """A 4/18 for ``interface``: cut the shared rate (in the background)."""
        args = self._args(interface)
        if args is None:
            if self.fallback is not None:
                self.fallback.on_limited(interface, ticket)
            return
        task = asyncio.get_running_loop().create_task(self._report_cut(args))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def on_answered(self, interface: str, ticket: Ticket | None = None) -> None:
        """Any other answer: the fallback governor hears of its own calls' answers."""
        if self.fallback is not None and ticket is not None and self._args(interface) is None:
            self.fallback.on_answered(interface, ticket)

    async def _report_cut(self, args: dict[str, Any]) -> None:
        try:
            await self._cut(args)
        except BudgetUnavailable as exc:
            # The next acquire meets the same failure and stops the job.
            log.warning("could not report a rejection to the QPS budget: %s", exc)

    def _unreachable(self, exc: BaseException) -> BudgetUnavailable:
        text = str(exc).strip().splitlines()
        detail = text[0] if text else type(exc).__name__
        return BudgetUnavailable(f"the QPS budget at {redact(self.url)} cannot be reached: "
                                 f"{detail}")


# -- PostgreSQL: one row per (account, interface) -----------------------------------------

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


class PgBudget(SharedBudget):
    """The budget in PostgreSQL: table ``qps_budget``, created when missing."""

    SCHEMES = "postgresql://"

    def __init__(self, url: str, account: str, qps: float | Mapping[str, float] | None,
                 tuning: BudgetTuning | None = None, fallback: RateLimiter | None = None) -> None:
        super().__init__(url, account, qps, tuning, fallback)
        self._conn: AsyncConnection[TupleRow] | None = None
        self._lock = asyncio.Lock()

    @staticmethod
    def _accepts(url: str) -> bool:
        return is_postgres_url(url)

    async def open(self) -> Self:
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
            raise self._unreachable(exc) from None
        return self

    async def _disconnect(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def _reserve(self, args: dict[str, Any]) -> tuple[float, float]:
        row = await self._execute(_ACQUIRE, args)
        assert row is not None  # INSERT ... RETURNING answers one row
        return float(row[0]), float(row[1])

    async def _cut(self, args: dict[str, Any]) -> None:
        await self._execute(_CUT, args, fetch=False)

    async def _execute(self, sql: str, args: dict[str, Any], fetch: bool = True
                       ) -> TupleRow | None:
        import psycopg  # noqa: PLC0415

        if self._conn is None:
            raise BudgetUnavailable("the QPS budget is not open")
        try:
            async with self._lock:
                cur = await asyncio.wait_for(self._conn.execute(sql, args),
                                             self.tuning.timeout)
                return await cur.fetchone() if fetch else None
        except (psycopg.Error, OSError, TimeoutError) as exc:
            raise self._unreachable(exc) from None


# -- Redis: one hash per (account, interface), stepped by Lua on the server ----------------

# Both scripts: the server's clock and the rate now from the hash's cut_rate/last_cut,
# as _RATE above. Floats go back as strings (Redis truncates Lua numbers to integers).
_LUA_COMMON = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local pace, gain, hold = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local h = redis.call('HMGET', KEYS[1], 'tat', 'cut_rate', 'last_cut')
local rate = pace
if h[2] then
    rate = math.min(pace, tonumber(h[2]) + gain * math.max(0, now - tonumber(h[3]) - hold))
end
local function num(x) return string.format('%.17g', x) end
"""

# ARGV: pace, gain, hold, ttl. Returns {wait, rate}.
_LUA_ACQUIRE = _LUA_COMMON + """
local slot = math.max(tonumber(h[1]) or now, now)
redis.call('HSET', KEYS[1], 'tat', num(slot + 1 / rate))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return {num(slot - now), num(rate)}
"""

# ARGV: pace, gain, hold, beta, min_rate, cooldown. Returns 1 when it cut. A key that
# is not there (never reserved, or expired) is left alone, as the row UPDATE does.
_LUA_CUT = _LUA_COMMON + """
if not h[1] then return 0 end
if now - (tonumber(h[3]) or 0) < tonumber(ARGV[6]) then return 0 end
redis.call('HSET', KEYS[1], 'cut_rate', num(math.max(tonumber(ARGV[5]), tonumber(ARGV[4]) * rate)),
           'last_cut', num(now))
redis.call('HINCRBY', KEYS[1], 'rejections', 1)
return 1
"""

#: A key unused this long is dropped by Redis: by then its slot is past and any cut has
#: grown back, so a new key is the same budget (only the ``rejections`` count restarts).
REDIS_TTL = 3600


def redis_key(prefix: str, account: str, interface: str) -> str:
    """The hash of one (account, interface): ``<prefix>:qps_budget:<account>:<interface>``."""
    return f"{prefix}:qps_budget:{account}:{interface}"


class RedisBudget(SharedBudget):
    """The budget in Redis (or a server speaking its protocol with Lua scripting).

    ``redis://[:password@]host[:port][/db][?prefix=NAME]`` (``rediss://`` for TLS):
    keys are ``NAME:qps_budget:<account>:<interface>`` (NAME ``faceflow`` by default),
    hashes with ``tat``, ``cut_rate``, ``last_cut``, ``rejections``; each expires an
    hour after its last use. Other query options are redis-py's.
    """

    SCHEMES = "redis://"

    def __init__(self, url: str, account: str, qps: float | Mapping[str, float] | None,
                 tuning: BudgetTuning | None = None, fallback: RateLimiter | None = None) -> None:
        super().__init__(url, account, qps, tuning, fallback)
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        prefixes = [v for k, v in query if k == "prefix"]
        self.prefix = prefixes[-1] if prefixes else "faceflow"
        if not self.prefix or any(c.isspace() for c in self.prefix):
            raise ConfigError(f"--qps-budget: prefix= in {redact(url)} must be a word, "
                              "e.g. ?prefix=faceflow")
        #: The URL redis-py is given (without our prefix=).
        self._client_url = urlunsplit(parts._replace(
            query=urlencode([(k, v) for k, v in query if k != "prefix"])))
        self._client: Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}

    @staticmethod
    def _accepts(url: str) -> bool:
        return is_redis_url(url)

    def key(self, interface: str) -> str:
        return redis_key(self.prefix, self.account, canonical_interface(interface))

    async def open(self) -> Self:
        """Connect and load the two scripts; BudgetUnavailable when unreachable."""
        try:
            import redis.asyncio as aioredis  # noqa: PLC0415
            from redis.asyncio.retry import Retry  # noqa: PLC0415
            from redis.backoff import ExponentialBackoff  # noqa: PLC0415
        except ImportError:
            raise BudgetUnavailable("--qps-budget redis:// needs redis-py: "
                                    "pip install -e '.[scale]'") from None
        timeout = self.tuning.timeout
        try:
            # A dropped connection is retried twice within a second (a server restart or
            # failover); past that the budget is unreachable and the job stops.
            self._client = aioredis.Redis.from_url(
                self._client_url, socket_timeout=timeout, socket_connect_timeout=timeout,
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2))
            for name, lua in (("acquire", _LUA_ACQUIRE), ("cut", _LUA_CUT)):
                script = self._client.register_script(lua)
                # Loading checks the server runs Lua (some hosted ones do not); then each
                # call is one EVALSHA (re-sent with its text once after a script flush).
                await asyncio.wait_for(self._client.script_load(lua), timeout)
                self._scripts[name] = script
        except Exception as exc:  # noqa: BLE001 - redis-py's errors, OSError, timeouts
            await self._disconnect()
            raise self._unreachable(exc) from None
        return self

    async def _disconnect(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            try:
                await client.aclose()
            except Exception as exc:  # noqa: BLE001 - closing a broken connection
                log.debug("closing the QPS budget's Redis connection: %s", exc)

    async def _reserve(self, args: dict[str, Any]) -> tuple[float, float]:
        reply = await self._run("acquire", args["interface"], (
            args["pace"], args["gain"], args["hold"], REDIS_TTL))
        wait, rate = cast("list[bytes | str]", reply)  # the script's {wait, rate}, as text
        return float(wait), float(rate)

    async def _cut(self, args: dict[str, Any]) -> None:
        await self._run("cut", args["interface"], (
            args["pace"], args["gain"], args["hold"], args["beta"], args["min_rate"],
            args["cooldown"]))

    async def _run(self, script: str, interface: str, argv: tuple[float, ...]) -> object:
        """One EVALSHA of ``script``; its reply (what the Lua returns, as redis-py reads it)."""
        if self._client is None:
            raise BudgetUnavailable("the QPS budget is not open")
        from redis.exceptions import RedisError  # noqa: PLC0415

        try:
            return await asyncio.wait_for(
                self._scripts[script](keys=[self.key(interface)],
                                      args=[repr(float(v)) for v in argv]),
                self.tuning.timeout)
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._unreachable(exc) from None


# -- choosing and opening one ------------------------------------------------------------


def make_budget(url: str, account: str, qps: float | Mapping[str, float] | None,
                tuning: BudgetTuning | None = None, fallback: RateLimiter | None = None
                ) -> SharedBudget:
    """The budget for ``url`` by its scheme (not yet open); ConfigError for another."""
    if is_postgres_url(url):
        return PgBudget(url, account, qps, tuning, fallback)
    if is_redis_url(url):
        return RedisBudget(url, account, qps, tuning, fallback)
    raise ConfigError(f"--qps-budget: use a postgresql:// or redis:// URL, not {redact(url)}")


def check_budget_options(url: str, qps: float | Mapping[str, float] | None) -> None:
    """ConfigError (before any call) for a ``--qps-budget`` that cannot work."""
    make_budget(url, "check", qps)


@asynccontextmanager
async def open_budget(url: str | None, settings: Settings,
                      qps: float | Mapping[str, float] | None
                      ) -> AsyncIterator[Budget | None]:
    """The open budget for ``--qps-budget URL`` (None without one); closed afterwards.

    The account is ``settings``' API key (hashed; not the endpoint). Raises
    :class:`BudgetUnavailable` when the store cannot be reached.
    """
    if url is None:
        yield None
        return
    budget = make_budget(url, account_key(settings.api_key.reveal()), qps,
                         fallback=RateLimiter(None))
    await budget.open()
    try:
        yield budget
    finally:
        await budget.close()
