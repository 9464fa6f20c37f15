"""The per-interface limiter: rates held, bursts bounded, AIMD back-off and recovery.

Everything runs on :class:`VirtualClockLoop` (tests/support/doubles.py): its clock jumps to
the next timer, so the counts below are exact virtual seconds, not wall time.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

import pytest
from aiolimiter import AsyncLimiter
from support.doubles import run_virtual

from pipeline.api.errors import ConfigError
from pipeline.client.ratelimit import HEADROOM, INTERFACES, RateLimiter, canonical_interface


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """Most events in any half-open interval [t, t + window)."""
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - window:
            start += 1
        best = max(best, end - start + 1)
    return best


async def acquire_times(acquire, seconds: float, workers: int = 20) -> list[float]:
    """Times of acquisitions made by ``workers`` tasks acquiring back to back."""
    loop = asyncio.get_running_loop()
    end, times = loop.time() + seconds, []

    async def worker() -> None:
        while True:
            await acquire()
            if loop.time() >= end:
                return
            times.append(loop.time())

    await asyncio.gather(*(worker() for _ in range(workers)))
    return sorted(times)


@dataclass
class Server:
    """A service allowing ``quota`` calls per sliding 1-s window; the rest get 18."""

    quota: float
    accepted: deque[float] = field(default_factory=deque)
    ok: list[float] = field(default_factory=list)
    rejected: list[float] = field(default_factory=list)

    def admit(self, now: float) -> bool:
        while self.accepted and self.accepted[0] <= now - 1.0:
            self.accepted.popleft()
        if len(self.accepted) < self.quota:
            self.accepted.append(now)
            self.ok.append(now)
            return True
        self.rejected.append(now)
        return False

    def ok_rate(self, start: float, end: float) -> float:
        return sum(start <= t < end for t in self.ok) / (end - start)


async def drive(limiter: RateLimiter, server: Server, seconds: float, *, workers: int = 20,
                latency: float = 0.02) -> None:
    """Workers send through the limiter; the reply (after ``latency``) may be an 18."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds

    async def worker() -> None:
        while loop.time() < end:
            await limiter.acquire("detect")
            await asyncio.sleep(latency / 2)
            admitted = server.admit(loop.time())
            await asyncio.sleep(latency / 2)
            if not admitted:
                limiter.on_limited("detect")

    await asyncio.gather(*(worker() for _ in range(workers)))


# -- names and configuration ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "canonical"),
    [("detect", "detect"), ("add_user", "add"), ("get_group_list", "group_list"),
     ("multi-identify", "multi_identify"), ("Multi_Identify", "multi_identify"),
     ("group_adduser", "group_add"), ("delete_group_user", "group_delete"),
     ("person-verify", "person_verify")],
)
def test_interface_names(name: str, canonical: str) -> None:
    assert canonical_interface(name) == canonical


def test_unknown_names_and_bad_rates_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown interface 'detcet'"):
        RateLimiter({"detcet": 5})
    for bad in (0, -1, float("inf")):
        with pytest.raises(ConfigError, match="positive"):
            RateLimiter(bad)


def test_one_number_limits_each_interface_a_mapping_only_those_named() -> None:
    every = RateLimiter(10)
    assert all(every.ceiling(name) == 10 for name in INTERFACES)
    some = RateLimiter({"detect": 4, "add_user": 2})
    assert (some.ceiling("detect"), some.ceiling("add"), some.ceiling("match")) == (4, 2, None)
    assert some.rate("add") == pytest.approx(2 * (1 - HEADROOM))
    assert some.rate("match") is None


# -- holding a rate --------------------------------------------------------------------


@pytest.mark.parametrize("qps", [3, 20, 150])
def test_rate_is_held_and_no_window_exceeds_the_limit(qps: float) -> None:
    limiter = RateLimiter(qps)
    times = run_virtual(lambda: acquire_times(lambda: limiter.acquire("detect"), 10.0))
    assert max_in_window(times) <= qps
    assert len(times) / 10.0 >= 0.97 * qps


def test_naive_bucket_would_burst_past_a_server_window() -> None:
    # Why the bucket is shaped: AsyncLimiter(Q, 1) lets an idle client send 2Q in 1 s.
    naive = AsyncLimiter(20, 1)
    times = run_virtual(lambda: acquire_times(naive.acquire, 5.0))
    assert max_in_window(times) > 20


def test_interfaces_have_separate_buckets() -> None:
    limiter = RateLimiter(10)

    async def both() -> tuple[list[float], list[float]]:
        return await asyncio.gather(
            acquire_times(lambda: limiter.acquire("detect"), 5.0, workers=5),
            acquire_times(lambda: limiter.acquire("add"), 5.0, workers=5),
        )

    detect, add = run_virtual(both)
    assert len(detect) >= 0.97 * 50 and len(add) >= 0.97 * 50


# -- adapting to the service's quota ----------------------------------------------------


def test_limit_equal_to_the_quota_uses_it_without_rejections() -> None:
    limiter, server = RateLimiter(20), Server(20)
    run_virtual(lambda: drive(limiter, server, 30.0))
    assert server.ok_rate(0, 30) >= 0.97 * 20
    assert len(server.rejected) <= 0.005 * len(server.ok)


@pytest.mark.parametrize(("limit", "quota"), [(60, 20), (300, 100)], ids=["60vs20", "300vs100"])
def test_limit_three_times_the_quota_converges(limit: float, quota: float) -> None:
    limiter, server = RateLimiter(limit), Server(quota)
    run_virtual(lambda: drive(limiter, server, 30.0))
    assert server.ok_rate(0, 30) >= 0.95 * quota
    assert server.ok_rate(10, 30) >= 0.95 * quota
    assert limiter.rate("detect") <= 1.05 * quota
    # most rejections happen while finding the quota, few once it is found
    assert sum(t >= 10 for t in server.rejected) <= 0.05 * server.ok_rate(10, 30) * 20


def test_unlimited_interface_learns_the_quota() -> None:
    limiter, server = RateLimiter(None), Server(20)
    run_virtual(lambda: drive(limiter, server, 30.0))
    assert limiter.rate("detect") == pytest.approx(20, rel=0.05)
    assert server.ok_rate(10, 30) >= 0.95 * 20


def test_rate_recovers_when_the_quota_comes_back() -> None:
    limiter, server = RateLimiter(40), Server(10)

    async def scenario() -> tuple[float, float]:
        await drive(limiter, server, 10.0)
        low = limiter.rate("detect")
        server.quota = 40
        await drive(limiter, server, 40.0)
        return low, limiter.rate("detect")

    low, high = run_virtual(scenario)
    assert low is not None and low <= 10.5
    assert high is not None and high >= 0.95 * 40 * (1 - HEADROOM)


def test_a_burst_of_rejections_is_one_decrease_and_a_blind_one_is_x07() -> None:
    limiter = RateLimiter(10)

    async def burst() -> None:
        await limiter.acquire("detect")
        for _ in range(10):  # ten replies of calls that left at the old rate
            limiter.on_limited("detect")

    run_virtual(burst)
    assert limiter.backoffs() == {"detect": 1}
    # nothing measured yet (first instant): the multiplicative step of 0.7
    assert limiter.rate("detect") == pytest.approx(10 * (1 - HEADROOM) * 0.7)
