"""Per-interface QPS limits shared by every task of a process, with AIMD back-off.

Interface names
    The canonical names are the short ones of :data:`INTERFACES` (``detect``,
    ``add``, ``group_list``...), the names used by ``--qps detect=5,add=2``, by
    :class:`~pipeline.client.faceclient.ClientStats` and in logs. The client's method names
    (``add_user``, ``get_group_list``...) and the HTTP names (``multi-identify``)
    are accepted as aliases; :func:`canonical_interface` maps them. Baidu counts
    its QPS quota per interface, so each interface has its own bucket: a limit
    given as one number applies to *each* interface separately.

Why the bucket is shaped the way it is
    :class:`aiolimiter.AsyncLimiter` is a leaky bucket: up to ``max_rate`` calls
    go at once, then calls drain at ``max_rate / time_period`` per second. Over any
    interval of T seconds it admits at most ``capacity + rate * T`` calls. Baidu
    (and our engine) count calls per 1-second window, so with the naive
    ``AsyncLimiter(Q, 1)`` an idle client may send 2*Q calls within one second and
    see error 18. We therefore run the bucket at ``rate = (1 - HEADROOM) * Q`` with
    ``capacity = HEADROOM * Q``: any 1-second window then holds at most
    ``HEADROOM*Q + (1-HEADROOM)*Q = Q`` calls. Below Q = 100 the capacity is
    ``1 + HEADROOM*Q/2`` instead (a bucket must hold one call, and a little more so
    late wake-ups are not lost); the integer count ``floor(capacity + 0.98*Q)`` is
    still <= Q. The 2 % headroom also absorbs network jitter that squeezes calls
    together on the way to the server.

Adapting to the real quota (AIMD)
    A configured limit is a *ceiling*. When the service answers 4 or 18
    (:meth:`RateLimiter.on_limited`), the interface's rate drops (multiplicative
    decrease) to the quota the service showed: the calls/s it accepted over the last
    :attr:`Aimd.window` seconds (sent minus rejected), less the headroom, but never
    by more than :attr:`Aimd.max_drop` in one step; with nothing measured yet it is
    multiplied by :attr:`Aimd.decrease` (0.7). Rejections within
    :attr:`Aimd.cooldown` of a decrease are ignored: those calls left at the old
    rate. After :attr:`Aimd.probe` quiet seconds the rate probes upward (additive
    increase, 1 % of the found quota, doubling while no rejection comes) back toward
    the ceiling; a probe that draws a rejection is undone and the next one waits
    twice as long. An unlimited interface (``None``) has no bucket until a rejection
    comes once its rate can be measured (a quarter window of traffic), so a run
    converges on the account's quota without being told it.

Rejections that are not a quota
    A real quota accepts about Q calls/s however fast we send, so a cut raises the
    share of calls accepted. Random rejections (an error storm, cluster-wide 4s) take
    the same share at any rate. When a whole window sent after a cut shows fewer calls
    sent but no better share accepted, the cut is undone and rejections are left to
    the retries for ``Aimd.probe_wait_max`` seconds: without this, a storm of 30 %
    random 18s drove the rate down to ``min_rate`` (tests/reliability/test_storm.py).

    Measured on a simulated server enforcing Q per sliding 1-s window (virtual
    clock, 60 workers, 30 s): limit = Q gives 0.98 Q with no rejection; limit = 3Q
    gives 0.95-0.99 Q after a few seconds (tests/test_ratelimit.py checks both).

Time is the event loop's clock (``loop.time()``), as in aiolimiter, so a test can
drive everything with a loop whose clock it controls.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

from aiolimiter import AsyncLimiter

from pipeline.api.errors import ConfigError

log = logging.getLogger("faceflow.client")

#: Canonical interface names, in the order of the reference (contract §1.2).
INTERFACES: tuple[str, ...] = (
    "detect", "match", "identify", "verify", "multi_identify", "add", "update", "delete",
    "get", "group_list", "group_users", "group_add", "group_delete", "person_verify",
    "faceverify",
    # v3 only (pipeline.client.v3.PATHS); v3 calls sharing a v2 name share its lane, and
    # search / multi-search take identify's / multi_identify's (so --qps identify=N
    # paces an audit on either protocol)
    "face_delete", "face_list", "user_copy", "group_create", "group_remove", "idmatch",
)
#: Accepted alternative spellings -> canonical name (client method names, HTTP names).
ALIASES: dict[str, str] = {
    "identify_user": "identify", "verify_user": "verify", "multi-identify": "multi_identify",
    "add_user": "add", "update_user": "update", "delete_user": "delete", "get_user": "get",
    "get_group_list": "group_list", "get_group_users": "group_users",
    "add_group_user": "group_add", "delete_group_user": "group_delete",
    "user_add": "add", "user_update": "update", "user_delete": "delete", "user_get": "get",
    "group_getlist": "group_list", "group_getusers": "group_users",
    "group_adduser": "group_add", "group_deleteuser": "group_delete",
    "search": "identify", "multi_search": "multi_identify", "multi-search": "multi_identify",
    "face_getlist": "face_list",
    "person_idmatch": "idmatch",
}

#: Share of the configured rate kept free (see the module docstring).
HEADROOM = 0.02
#: Seconds of calls the bucket may hold; HEADROOM / (1 - HEADROOM) makes
#: capacity + rate * 1 s equal to the configured Q.
BURST_SECONDS = HEADROOM / (1 - HEADROOM)


def canonical_interface(name: str) -> str:
    """The canonical name for ``name`` (case, ``-``/``_`` insensitive); ConfigError if unknown."""
    key = name.strip().lower()
    if key in INTERFACES:
        return key
    alias = ALIASES.get(key) or ALIASES.get(key.replace("_", "-"))
    if alias is None and key.replace("-", "_") in INTERFACES:
        alias = key.replace("-", "_")
    if alias is None:
        raise ConfigError(f"unknown interface {name!r} in --qps; use {', '.join(INTERFACES)}")
    return alias


def normalise_qps(qps: float | Mapping[str, float] | None) -> dict[str, float | None]:
    """``qps`` as {canonical interface: calls/s or None}: one number applies to each."""
    if qps is None or isinstance(qps, (int, float)):
        single = None if qps is None else _positive("qps", float(qps))
        return {name: single for name in INTERFACES}
    limits: dict[str, float | None] = dict.fromkeys(INTERFACES)
    for name, value in qps.items():
        canon = canonical_interface(name)
        limits[canon] = None if value is None else _positive(f"qps {name}", float(value))
    return limits


def _positive(what: str, value: float) -> float:
    if not value > 0 or math.isinf(value):
        raise ConfigError(f"{what} must be a positive number of calls per second, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Aimd:
    """How an interface's rate reacts to rejections (4, 18). Times in seconds.

    ``window``: seconds over which the accepted rate is measured (default 2).
    ``max_drop``: the most one decrease may cut, as a factor (0.5 = at most halve).
    ``decrease``: factor used when nothing has been measured yet (default 0.7).
    ``cooldown``: rejections this soon after a decrease are ignored (default 1 s,
    one server window: those calls left at the old rate).
    ``probe``: seconds without a rejection before each probe above the found quota;
    doubled after each probe that is rejected, up to ``probe_wait_max`` (default 30).
    ``probe_step``: the first probe's increase (default 1 %); each further probe
    without a rejection doubles it, up to ``probe_max`` (default 25 %).
    ``min_rate``: calls/s the rate never goes below (default 0.1).
    """

    window: float = 2.0
    max_drop: float = 0.5
    decrease: float = 0.7
    cooldown: float = 1.0
    probe: float = 2.0
    probe_step: float = 0.01
    probe_max: float = 0.25
    probe_wait_max: float = 30.0
    min_rate: float = 0.1


def _capacity(rate: float) -> float:
    """Bucket size for ``rate`` calls/s: HEADROOM * Q calls, and above 1 for small Q.

    A bucket of exactly 1 loses the time by which each wake-up is late (the level
    cannot drain below 0), which costs a few % at 20 calls/s. Half the headroom on
    top of 1 absorbs that and still keeps floor(capacity + rate * 1 s) <= Q.
    """
    burst = rate * BURST_SECONDS
    return max(burst, 1.0 + burst / 2)


class _Bucket(AsyncLimiter):
    """An :class:`AsyncLimiter` whose rate can change while tasks wait on it."""

    __slots__ = ()

    def __init__(self, rate: float) -> None:
        capacity = _capacity(rate)
        super().__init__(capacity, capacity / rate)

    def set_rate(self, rate: float) -> None:
        """Change the drain rate (calls/s) and capacity; waiters are re-timed."""
        # Drain what the old rate owed up to now before switching; aiolimiter keeps
        # the rate in a private field computed once in __init__, hence the writes.
        self._leak()
        self.max_rate = _capacity(rate)
        self.time_period = self.max_rate / rate
        self._rate_per_sec = rate
        self._wake_next()


class _Lane:
    """One interface: its bucket (None while unlimited) and the adaptive state.

    ``found`` is the quota the service showed (calls/s it accepted while rejecting
    others), None until the first rejection. The rate runs at
    ``min(ceiling, found) * (1 - HEADROOM)`` and probes upward while all is quiet.
    """

    __slots__ = (
        "aimd", "ceiling", "rate", "bucket", "found", "backoffs", "_step", "_last_probe", "_good",
        "_probe_wait",
        "_last_decrease", "_win_start", "_sent", "_rejected", "_prev_accepted", "_prev_sent",
        "_prev_start", "_cut", "_noise_until",
    )

    def __init__(self, qps: float | None, aimd: Aimd, now: float) -> None:
        self.aimd = aimd
        self.ceiling = qps
        self.rate = None if qps is None else qps * (1 - HEADROOM)
        self.bucket = None if self.rate is None else _Bucket(self.rate)
        self.found: float | None = None
        self.backoffs = 0
        self._step = aimd.probe_step
        self._good: float | None = None  # the found quota before the latest probe
        self._probe_wait = aimd.probe
        self._last_probe, self._last_decrease = now, -math.inf
        self._win_start, self._sent, self._rejected = now, 0, 0
        self._prev_accepted: float | None = None
        self._prev_sent: float | None = None
        self._prev_start = -math.inf
        #: (time, calls/s sent, share accepted, rate) of the first cut not yet judged.
        self._cut: tuple[float, float, float, float | None] | None = None
        self._noise_until = -math.inf

    async def acquire(self, now: float) -> None:
        if now - self._win_start >= self.aimd.window:
            self._roll(now)
        if self.bucket is not None:
            if self.found is not None and now - self._last_probe >= self._probe_wait:
                self._probe(now)
            await self.bucket.acquire()
        self._sent += 1

    def _probe(self, now: float) -> None:
        """Quiet for a while: raise the found quota by the probe step, then double it."""
        assert self.found is not None and self.rate is not None
        self._last_probe = now
        if now - self._last_decrease < self._probe_wait:
            return
        if self.ceiling is not None and self.found >= self.ceiling:
            return  # back at the configured limit: nothing left to find
        self._good = self.found
        self.found *= 1 + self._step
        self._step = min(self.aimd.probe_max, self._step * 2)
        self._set(self._target(), now)

    def _target(self) -> float:
        assert self.found is not None
        quota = self.found if self.ceiling is None else min(self.ceiling, self.found)
        return max(self.aimd.min_rate, quota * (1 - HEADROOM))

    def on_limited(self, now: float) -> None:
        if now - self._win_start >= self.aimd.window:
            self._roll(now)
        self._rejected += 1
        if now - self._last_decrease < self.aimd.cooldown or now < self._noise_until:
            return
        before = self._window(now)
        new = self._noise_check(now)
        if new is None:
            rate = self.rate
            new = self._decreased(now)
            if new is not None and before is not None and self._cut is None:
                self._cut = (now, *before, rate)
        if new is None:
            return
        self.backoffs += 1
        self._last_decrease = self._last_probe = now
        self._step = self.aimd.probe_step
        self._set(new, now)

    def _noise_check(self, now: float) -> float | None:
        """The rate to return to when the last cut proved the rejections are not a limit.

        Under a real quota the service accepts about Q calls/s however fast we send, so
        a cut raises the share it accepts. Random rejections (a storm, cluster-wide 4s)
        take the same share at any rate: if the cut lowered what we sent but not the
        share rejected, it bought nothing. Then undo it and let the retries absorb the
        rejections for ``probe_wait_max`` seconds before judging again. The judgement
        waits for a whole window sent after the cut (a mixed one proves nothing).
        """
        if self._cut is None or self._prev_start < self._cut[0] or not self._prev_sent:
            return None
        (_, sent0, share0, rate0), self._cut = self._cut, None
        assert self._prev_accepted is not None
        sent1, share1 = self._prev_sent, self._prev_accepted / self._prev_sent
        rejected0, rejected1 = 1 - share0, 1 - share1
        # Noise: we sent less, the share accepted did not rise, and a real share (>= 10 %)
        # was and still is rejected. A probe overshoot rejects ~1 %: that is a quota.
        if not (sent1 < sent0 * 0.95 and share1 <= share0 * 1.1 + 0.02
                and rejected0 >= 0.1 and rejected1 >= 0.5 * rejected0):
            return None
        self._noise_until = now + self.aimd.probe_wait_max
        restored = rate0 if rate0 is not None else sent0
        self.found = restored / (1 - HEADROOM)
        log.debug("rejections at the same share after a cut: not a rate limit; rate back")
        return restored

    def _window(self, now: float) -> tuple[float, float] | None:
        """(calls/s sent, share accepted) over the last full window, or this one if long enough."""
        if self._prev_sent is not None and self._prev_accepted is not None:
            sent = self._prev_sent
            return (sent, self._prev_accepted / sent) if sent > 0 else None
        elapsed = now - self._win_start
        if elapsed < self.aimd.window / 4 or self._sent == 0:
            return None
        return self._sent / elapsed, max(0, self._sent - self._rejected) / self._sent

    def _decreased(self, now: float) -> float | None:
        a = self.aimd
        if self._good is not None and now - self._last_probe < a.probe:
            # The last probe overshot: go back to the level that was quiet before it,
            # and probe less often (each rejected probe costs a call).
            self.found, self._good = self._good, None
            self._probe_wait = min(a.probe_wait_max, self._probe_wait * 2)
            assert self.rate is not None
            return max(self.rate * a.max_drop, self._target())
        self._good, self._probe_wait = None, a.probe
        accepted = self._accepted(now)
        if accepted is None:
            if self.rate is None:
                return None  # unlimited and nothing measured yet: wait for the next one
            # too early to measure: a blind multiplicative step
            self.found = max(a.min_rate, self.rate * a.decrease) / (1 - HEADROOM)
            return self._target()
        self.found = max(a.min_rate, accepted)
        if self.rate is None:
            return self._target()
        return max(self.rate * a.max_drop, min(self.rate * (1 - HEADROOM), self._target()))

    def _accepted(self, now: float) -> float | None:
        """Calls/s the service accepted in the last full window (or this one, if long enough)."""
        if self._prev_accepted is not None:
            return self._prev_accepted
        elapsed = now - self._win_start
        if elapsed < self.aimd.window / 4 or self._sent == 0:
            return None
        return max(0.0, self._sent - self._rejected) / elapsed

    def _roll(self, now: float) -> None:
        elapsed = now - self._win_start
        self._prev_accepted = max(0.0, self._sent - self._rejected) / elapsed
        self._prev_sent = self._sent / elapsed
        self._prev_start = self._win_start
        self._win_start, self._sent, self._rejected = now, 0, 0

    def _set(self, rate: float, now: float) -> None:
        old, self.rate = self.rate, rate
        if self.bucket is None:
            self.bucket = _Bucket(rate)
        else:
            self.bucket.set_rate(rate)
        log.debug("rate %s -> %.3f calls/s", "unlimited" if old is None else f"{old:.3f}", rate)


class RateLimiter:
    """Per-interface QPS limits for one process (share one instance between tasks).

    ``qps``: None (no limit until the service rejects a call), one number of
    calls/s for *each* interface, or a mapping ``{interface: calls/s}`` (others
    unlimited). Names may be canonical or aliases. Raises ConfigError for an
    unknown name or a non-positive rate. Use it from one event loop.
    """

    __slots__ = ("_limits", "_lanes", "aimd")

    def __init__(self, qps: float | Mapping[str, float] | None = None, *, aimd: Aimd | None = None):
        self._limits = normalise_qps(qps)
        self._lanes: dict[str, _Lane] = {}
        self.aimd = aimd or Aimd()

    def _lane(self, interface: str, now: float) -> _Lane:
        lane = self._lanes.get(interface)
        if lane is None:
            canon = canonical_interface(interface)
            lane = self._lanes.get(canon) or _Lane(self._limits[canon], self.aimd, now)
            self._lanes[interface] = self._lanes[canon] = lane
        return lane

    async def acquire(self, interface: str) -> None:
        """Wait until one more call to ``interface`` may be sent."""
        now = asyncio.get_running_loop().time()
        await self._lane(interface, now).acquire(now)

    def on_limited(self, interface: str) -> None:
        """The service answered 4 or 18 for ``interface``: slow that interface down."""
        now = asyncio.get_running_loop().time()
        self._lane(interface, now).on_limited(now)

    def rate(self, interface: str) -> float | None:
        """The current rate in calls/s for ``interface`` (None = unlimited)."""
        lane = self._lanes.get(canonical_interface(interface))
        if lane is None:
            limit = self._limits[canonical_interface(interface)]
            return None if limit is None else limit * (1 - HEADROOM)
        return lane.rate

    def ceiling(self, interface: str) -> float | None:
        """The configured limit (calls/s) for ``interface``, None when unlimited."""
        return self._limits[canonical_interface(interface)]

    def backoffs(self) -> dict[str, int]:
        """Decreases made so far, per canonical interface that had any."""
        return {n: lane.backoffs for n, lane in self._lanes.items()
                if n in INTERFACES and lane.backoffs}
