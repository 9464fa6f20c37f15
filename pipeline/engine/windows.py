"""Ways a service may count a QPS quota of Q calls/s, for protocol doubles and benchmarks.

Each shape answers :meth:`QuotaWindow.admit` for a call arriving at ``now`` (seconds
on any monotonic clock); only admitted calls count against the quota.

* ``bucket``: a token bucket holding up to Q tokens (full at the start), refilled at
  Q per second. An idle client may send Q at once, then Q/s.
* ``fixed``: fixed calendar-second windows ``[k, k+1)``: at most ``floor(Q)`` in each
  (at least 1). Up to 2Q may pass in any second that straddles a boundary.
* ``sliding``: at most ``floor(Q)`` admitted in any 1-s window ``(now - 1, now]``.

The client is never told which one it faces; the engine's own ``--qps`` emulation
uses fixed windows (:mod:`pipeline.engine.emulation`).
"""

from __future__ import annotations

import math
from collections import deque

SHAPES = ("bucket", "fixed", "sliding")


class QuotaWindow:
    """Base: ``admit(now) -> bool`` and the quota ``q`` in calls/s."""

    def __init__(self, q: float) -> None:
        if not q > 0:
            raise ValueError("a quota must be a positive number of calls per second")
        self.q = q

    def admit(self, now: float) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError


class TokenBucket(QuotaWindow):
    def __init__(self, q: float) -> None:
        super().__init__(q)
        self._tokens = q
        self._at: float | None = None

    def admit(self, now: float) -> bool:
        if self._at is not None:
            self._tokens = min(self.q, self._tokens + (now - self._at) * self.q)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class FixedWindow(QuotaWindow):
    def __init__(self, q: float) -> None:
        super().__init__(q)
        self._limit = max(1, math.floor(q))
        self._second, self._count = -1, 0

    def admit(self, now: float) -> bool:
        second = math.floor(now)
        if second != self._second:
            self._second, self._count = second, 0
        if self._count >= self._limit:
            return False
        self._count += 1
        return True


class SlidingWindow(QuotaWindow):
    def __init__(self, q: float) -> None:
        super().__init__(q)
        self._limit = max(1, math.floor(q))
        self._admitted: deque[float] = deque()

    def admit(self, now: float) -> bool:
        while self._admitted and self._admitted[0] <= now - 1.0:
            self._admitted.popleft()
        if len(self._admitted) >= self._limit:
            return False
        self._admitted.append(now)
        return True


def make_window(shape: str, q: float) -> QuotaWindow:
    """The quota window of ``shape`` (one of :data:`SHAPES`) for Q = ``q`` calls/s."""
    kinds = {"bucket": TokenBucket, "fixed": FixedWindow, "sliding": SlidingWindow}
    if shape not in kinds:
        raise ValueError(f"unknown quota shape {shape!r}: use {', '.join(SHAPES)}")
    return kinds[shape](q)
