"""The per-interface limiter: rates held, bursts bounded, AIMD back-off and recovery.

Everything runs on :class:`VirtualClockLoop` (tests/support/doubles.py): its clock jumps to
the next timer, so the counts below are exact virtual seconds, not wall time.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import pytest
from support.doubles import run_virtual

from pipeline.api.errors import ConfigError
from pipeline.client.ratelimit import HEADROOM, INTERFACES, RateLimiter, canonical_interface
from pipeline.engine.windows import SHAPES, QuotaWindow, make_window


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
class Service:
    """A quota window reached after 2-12 ms; accepted calls answer after their work.

    ``noise``: share of admitted calls answered 18 anyway (a storm: random, not a quota).
    ``stall``: the event loop is blocked for up to this many seconds every ~0.5 s, as a
    busy machine does to both client and server.
    """

    window: QuotaWindow
    noise: float = 0.0
    stall: float = 0.0
    ok: list[float] = field(default_factory=list)
    rejected: list[float] = field(default_factory=list)

    def rate(self, start: float, end: float) -> float:
        return sum(start <= t < end for t in self.ok) / (end - start)

    def rejected_share(self, start: float = 0.0) -> float:
        rej = sum(t >= start for t in self.rejected)
        return rej / max(1, rej + sum(t >= start for t in self.ok))


async def drive(limiter: RateLimiter, service: Service, seconds: float, workers: int = 16,
                seed: int = 1) -> None:
    """``workers`` tasks send back to back through the limiter for ``seconds``."""
    loop, rng = asyncio.get_running_loop(), random.Random(seed)

    async def worker() -> None:
        while loop.time() < seconds:
            ticket = await limiter.acquire("detect")
            await asyncio.sleep(0.002 + 0.01 * rng.random())
            now = loop.time()
            if service.window.admit(now) and rng.random() >= service.noise:
                service.ok.append(now)
                await asyncio.sleep(0.03 + 0.01 * rng.random())  # the call's work
                limiter.on_answered("detect", ticket)
            else:
                service.rejected.append(now)
                await asyncio.sleep(0.002)
                limiter.on_limited("detect", ticket)

    async def stalls() -> None:
        while service.stall and loop.time() < seconds:
            await asyncio.sleep(rng.random())
            loop.now += service.stall * rng.random()  # type: ignore[attr-defined]

    await asyncio.gather(stalls(), *(worker() for _ in range(workers)))


def serve(qps: float | None, shape: str, q: float = 10, seconds: float = 30, seed: int = 1,
          **kw: float) -> tuple[RateLimiter, Service]:
    limiter, service = RateLimiter(qps), Service(make_window(shape, q), **kw)
    run_virtual(lambda: drive(limiter, service, seconds, seed=seed))
    return limiter, service


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


def test_a_late_loop_catches_up_without_a_burst() -> None:
    """The loop blocks for up to 40 ms now and then: the rate holds, no second gets more."""
    limiter = RateLimiter(20)

    async def stalled() -> list[float]:
        loop, rng = asyncio.get_running_loop(), random.Random(3)

        async def stall() -> None:
            while loop.time() < 10:
                await asyncio.sleep(0.2 * rng.random())
                loop.now += 0.04 * rng.random()  # type: ignore[attr-defined]

        times, _ = await asyncio.gather(
            acquire_times(lambda: limiter.acquire("detect"), 10.0), stall())
        return times

    times = run_virtual(stalled)
    assert max_in_window(times) <= 20
    assert len(times) / 10.0 >= 0.97 * 20


def test_interfaces_have_separate_lanes() -> None:
    limiter = RateLimiter(10)

    async def both() -> tuple[list[float], list[float]]:
        return await asyncio.gather(
            acquire_times(lambda: limiter.acquire("detect"), 5.0, workers=5),
            acquire_times(lambda: limiter.acquire("add"), 5.0, workers=5),
        )

    detect, add = run_virtual(both)
    assert len(detect) >= 0.97 * 50 and len(add) >= 0.97 * 50


# -- every way a service may count its quota ---------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("stall", [0.0, 0.04], ids=["idle", "busy"])
def test_known_quota_is_used_without_rejections(shape: str, stall: float) -> None:
    _, service = serve(10, shape, stall=stall)
    assert service.rate(2, 30) >= 0.97 * 10
    assert service.rejected_share() <= 0.005


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("qps", [30, None], ids=["qps-3Q", "no-qps"])
def test_unknown_quota_is_found(shape: str, qps: float | None) -> None:
    limiter, service = serve(qps, shape)
    assert service.rate(10, 30) >= 0.95 * 10
    assert service.rejected_share(10) <= 0.02
    # the search included; a token bucket's burst makes it costlier (~6 % here)
    assert service.rejected_share() <= (0.07 if shape == "bucket" else 0.05)
    found = limiter.found("detect")
    assert found is not None and 9 <= found <= 11.5


def test_a_large_quota_is_found_too() -> None:
    limiter, service = serve(300, "sliding", q=100)
    assert service.rate(10, 30) >= 0.95 * 100
    assert service.rejected_share(10) <= 0.02


def test_rate_recovers_when_the_quota_grows() -> None:
    limiter, service = RateLimiter(40), Service(make_window("sliding", 10))

    async def scenario() -> tuple[float | None, float | None]:
        await drive(limiter, service, 10.0)
        low = limiter.rate("detect")
        service.window = make_window("sliding", 40)
        await drive(limiter, service, 60.0)
        return low, limiter.rate("detect")

    low, high = run_virtual(scenario)
    assert low is not None and low <= 10
    assert high is not None and high >= 0.9 * 40 * (1 - HEADROOM)


# -- random rejections are not a quota ---------------------------------------------------


STORM = 0.27  # the share of admitted calls answered 18 at random (quota.py's storm: 20 % 18,
#               5 % 4, 2 % HTTP 500 on admitted calls)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("stall", [0.0, 0.04], ids=["idle", "busy"])
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_a_storm_does_not_drive_the_rate_down(shape: str, stall: float, seed: int) -> None:
    """27 % of admitted calls answer 18 at random on top of a known quota: the lane keeps
    the quota's pace, so the successes sit at the ceiling the storm leaves (0.73 of the
    pace, 0.98 Q), and the rate does not fall over a 90-s run."""
    _, service = serve(10, shape, seconds=90, noise=STORM, stall=stall, seed=seed)
    ceiling = (1 - STORM) * 10 * (1 - HEADROOM)
    assert service.rate(10, 90) >= 0.93 * ceiling
    assert service.rate(67.5, 90) >= 0.9 * service.rate(0, 22.5)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("qps", [30, None], ids=["qps-3Q", "no-qps"])
def test_a_storm_with_the_quota_unknown_keeps_most_of_what_it_leaves(
        shape: str, qps: float | None) -> None:
    """The same storm while the lane searches for the quota (four storms each): random
    rejections and quota ones mix, the hardest case. The lane keeps most of what the
    storm leaves of Q (0.8-0.9 of it on average over eight storms; 0.6 at worst), in the
    second half of the run as well (it does not collapse).
    (It tends to run somewhat over the quota here: successes are not lost by that on
    these shapes, rejected calls are; benchmarks/quota.py runs the storm with --qps Q.)"""
    ceiling = (1 - STORM) * 10
    for seed in (1, 2, 3, 4):
        _, service = serve(qps, shape, seconds=90, noise=STORM, seed=seed)
        assert service.rate(10, 90) >= 0.6 * ceiling, seed
        assert service.rate(45, 90) >= 0.6 * ceiling, seed


def test_random_rejections_without_a_quota_do_not_collapse_the_rate() -> None:
    limiter, service = serve(None, "sliding", q=1000, seconds=30, noise=0.3)
    assert service.rate(22.5, 30) >= 0.9 * service.rate(0, 7.5)
    assert service.rate(22.5, 30) > 100  # 16 workers at ~45 ms a call offer ~350/s


def test_an_isolated_rejection_with_nothing_else_sent_is_not_a_quota() -> None:
    limiter = RateLimiter(10)

    async def one() -> None:
        ticket = await limiter.acquire("detect")
        limiter.on_limited("detect", ticket)

    run_virtual(one)
    assert limiter.backoffs() == {} and limiter.found("detect") is None
    assert limiter.rate("detect") == pytest.approx(10 * (1 - HEADROOM))
