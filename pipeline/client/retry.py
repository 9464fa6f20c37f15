"""The retry policy: budgets by cause, decided by exception class, never by message.

A call is sent again only when it raised a :class:`~pipeline.api.errors.RetryableError`.
Each failed send has one of three causes, each with its own rule:

``rate_limit`` (4, 18: :class:`~pipeline.api.errors.QpsLimitError`)
    "Not now", not a failure: the call waits its turn in the governor
    (:mod:`pipeline.client.ratelimit`) and goes again, after a short random wait, up to
    ``limit_attempts`` such sends (default 30).
``fault`` (timeouts, refused or dropped connections, HTTP 5xx, transient codes)
    The call's own trouble: exponential back-off with jitter, up to ``max_attempts``
    sends that met a fault (default 5), and never a retry starting later than
    ``max_delay`` seconds after the first send when that is set.
``outage`` (a fault while the service answers nobody, see :mod:`pipeline.client.health`)
    Not the call's fault: it waits for the service instead of spending its budget, and
    gives up only with :class:`~pipeline.api.errors.ServiceUnavailableError` when the
    outage outlasts the client's wait.

The last error is re-raised unchanged; its ``attempts`` (an :class:`Attempts`) says how
many sends were made, and how many per cause. ``sleep`` and ``clock`` are injectable
so tests run without waiting.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from pipeline.api.errors import ConfigError, QpsLimitError, RetryableError

if TYPE_CHECKING:
    from pipeline.client.health import Health

T = TypeVar("T")

RATE_LIMIT, FAULT, OUTAGE = "rate_limit", "fault", "outage"
CAUSES = (RATE_LIMIT, FAULT, OUTAGE)


class Attempts(int):
    """Sends made for one call (an int), with the failed ones counted by cause.

    ``rate_limited``: answered 4/18. ``faults``: timeouts, connection failures, 5xx and
    transient codes counted against the budget. ``outage``: faults met while the
    service answered nobody (not counted against it).
    """

    rate_limited: int
    faults: int
    outage: int

    def __new__(cls, sent: int, rate_limited: int = 0, faults: int = 0,
                outage: int = 0) -> Attempts:
        self = super().__new__(cls, sent)
        self.rate_limited, self.faults, self.outage = rate_limited, faults, outage
        return self

    def by_cause(self) -> dict[str, int]:
        return {RATE_LIMIT: self.rate_limited, FAULT: self.faults, OUTAGE: self.outage}

    def __add__(self, other: object) -> Attempts:  # type: ignore[override]
        if not isinstance(other, int):
            return NotImplemented
        mine, theirs = self.by_cause(), causes_of(other)
        return Attempts(int(self) + int(other), *(mine[c] + theirs[c] for c in CAUSES))

    __radd__ = __add__

    def __repr__(self) -> str:
        return (f"Attempts({int(self)}, rate_limited={self.rate_limited}, "
                f"faults={self.faults}, outage={self.outage})")


def causes_of(attempts: int) -> dict[str, int]:
    """Failed sends by cause of ``attempts`` (zeros for a plain int)."""
    if isinstance(attempts, Attempts):
        return attempts.by_cause()
    return dict.fromkeys(CAUSES, 0)


def cause_of(exc: RetryableError) -> str:
    return RATE_LIMIT if isinstance(exc, QpsLimitError) else FAULT


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to send a failed call again. Times in seconds.

    ``max_attempts``: sends that met a fault, the first send included (default 5;
    1 = never retry a fault). ``limit_attempts``: sends answered 4/18 (default 30).
    ``max_delay``: no fault retry starts later than this after the first send (None:
    no time limit, the attempts decide). ``initial_wait`` / ``max_wait`` / ``jitter``:
    the wait before fault retry n is ``min(max_wait, initial_wait * 2**(n-1)) +
    uniform(0, jitter)``. ``limit_wait``: up to this random wait before a rate-limited
    call goes back to the governor (default 0.1). ``sleep(seconds)`` and ``clock()``
    (monotonic seconds) default to the real ones.
    """

    max_attempts: int = 5
    max_delay: float | None = None
    initial_wait: float = 0.5
    max_wait: float = 8.0
    jitter: float = 0.5
    limit_attempts: int = 30
    limit_wait: float = 0.1
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.limit_attempts < 1:
            raise ConfigError("retry attempts must be at least 1")
        times = (self.initial_wait, self.max_wait, self.jitter, self.limit_wait,
                 0.0 if self.max_delay is None else self.max_delay)
        if min(times) < 0:
            raise ConfigError("retry times must not be negative")

    def wait(self, cause: str, failed: int) -> float:
        """Seconds to wait before the next send after ``failed`` failures of ``cause``."""
        if cause == RATE_LIMIT:
            return random.uniform(0, self.limit_wait)
        base = min(self.max_wait, self.initial_wait * 2 ** (failed - 1))
        return base + random.uniform(0, self.jitter)

    def spent(self, counts: dict[str, int]) -> bool:
        return counts[RATE_LIMIT] >= self.limit_attempts or counts[FAULT] >= self.max_attempts

    async def run(self, attempt: Callable[[], Awaitable[T]], *,
                  on_retry: Callable[[RetryableError, float, Attempts], None] | None = None,
                  health: Health | None = None, counts: dict[str, int] | None = None) -> T:
        """Await ``attempt()`` until it succeeds or a budget is spent (re-raising the
        last error with ``attempts`` set to an :class:`Attempts`). ``counts`` (updated
        in place) receives the failed sends by cause."""
        counts = dict.fromkeys(CAUSES, 0) if counts is None else counts
        sent, first = 0, self.clock()
        while True:
            sent_at = self.clock() if health is None else health.clock()
            sent += 1
            try:
                return await attempt()
            except RetryableError as exc:
                cause = cause_of(exc)
                if cause == FAULT and health is not None and health.service_wide(sent_at):
                    counts[OUTAGE] += 1
                    exc.attempts = Attempts(sent, counts[RATE_LIMIT], counts[FAULT],
                                            counts[OUTAGE])
                    await health.wait_turn(sent_at)  # raises once the outage outlasts it
                    continue
                counts[cause] += 1
                exc.attempts = Attempts(sent, counts[RATE_LIMIT], counts[FAULT], counts[OUTAGE])
                if self.spent(counts):
                    raise
                pause = self.wait(cause, counts[cause])
                if (cause == FAULT and self.max_delay is not None
                        and self.clock() + pause > first + self.max_delay):
                    raise
                if on_retry is not None:
                    on_retry(exc, pause, exc.attempts)
                await self.sleep(pause)
