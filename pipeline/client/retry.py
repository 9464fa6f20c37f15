"""The retry policy: tenacity, decided by exception class, bounded in attempts and time.

A call is sent again only when it raised a :class:`~pipeline.api.errors.RetryableError`
(4/18 rate limits, transient server codes, SDK108 timeouts, dropped connections,
HTTP 5xx, non-JSON replies). Waits grow exponentially with random jitter. The
loop stops at ``max_attempts`` sends or when the next sleep would end past
``max_delay`` seconds after the first send, whichever comes first; the last error
is then re-raised unchanged (its ``attempts`` says how many sends were made).

``sleep`` and ``clock`` are injectable so tests run without waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)
from tenacity.stop import stop_base

from pipeline.api.errors import ConfigError, RetryableError

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to send a failed call again. Times in seconds.

    ``max_attempts``: sends in all, the first included (default 5; 1 = never retry).
    ``max_delay``: no retry starts later than this after the first send (default 60).
    ``initial_wait`` / ``max_wait`` / ``jitter``: the wait before retry n is
    ``min(max_wait, initial_wait * 2**(n-1)) + uniform(0, jitter)``.
    ``sleep(seconds)`` and ``clock()`` (monotonic seconds) default to the real ones.
    """

    max_attempts: int = 5
    max_delay: float = 60.0
    initial_wait: float = 0.5
    max_wait: float = 8.0
    jitter: float = 0.5
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError("retry max_attempts must be at least 1")
        if self.max_delay < 0 or self.initial_wait < 0 or self.max_wait < 0 or self.jitter < 0:
            raise ConfigError("retry times must not be negative")

    def retrying(self, before_sleep: Callable[[RetryCallState], None] | None = None
                 ) -> AsyncRetrying:
        """A fresh tenacity controller for one call; its time budget starts now."""
        return AsyncRetrying(
            retry=retry_if_exception_type(RetryableError),
            stop=stop_after_attempt(self.max_attempts) | _StopBeforeDeadline(self),
            wait=wait_exponential(multiplier=self.initial_wait, max=self.max_wait)
            + wait_random(0, self.jitter),
            sleep=self.sleep,
            reraise=True,
            before_sleep=before_sleep,
        )

    async def run(self, attempt: Callable[[], Awaitable[T]],
                  before_sleep: Callable[[RetryCallState], None] | None = None) -> T:
        """Await ``attempt()`` until it succeeds or the policy gives up (re-raising)."""
        async for round_ in self.retrying(before_sleep):
            with round_:
                return await attempt()
        raise AssertionError("tenacity ended without an outcome")  # pragma: no cover


class _StopBeforeDeadline(stop_base):
    """Stop when the coming sleep would end past ``max_delay`` since the first send.

    tenacity's own ``stop_before_delay`` reads ``time.monotonic``; this one reads the
    policy's clock so a test can control it.
    """

    def __init__(self, policy: RetryPolicy) -> None:
        self._clock = policy.clock
        self._deadline = policy.clock() + policy.max_delay

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._clock() + retry_state.upcoming_sleep > self._deadline
