"""The governor: per-interface pacing that finds and holds the service's QPS quota.

Interface names
    The canonical names are the short ones of :data:`INTERFACES` (``detect``,
    ``add``, ``group_list``...), the names used by ``--qps detect=5,add=2``, by
    :class:`~pipeline.client.faceclient.ClientStats` and in logs. The client's method names
    (``add_user``, ``get_group_list``...) and the HTTP names (``multi-identify``)
    are accepted as aliases; :func:`canonical_interface` maps them. Baidu counts
    its QPS quota per interface, so each interface has its own lane: a limit
    given as one number applies to *each* interface separately.

How a server may count its quota, and why the governor paces
    A quota of Q calls/s may be a token bucket (bursts up to Q, then Q/s), fixed
    calendar-second windows (up to Q in each [k, k+1): 2Q may pass in the second
    that straddles a boundary) or a sliding 1-s window (never more than Q in any
    second). The client is never told which. Sending at a steady pace below Q with
    no bursts satisfies all three, so each lane sends one call every
    ``1 / (quota * (1 - headroom))`` seconds, and also keeps a log of its own sends:
    never more than ``M = floor(quota)`` in any ``M / quota * (1 + cap_margin)``
    seconds. The pace is a schedule of slots, not a sleep per call: a loop that wakes
    late (a busy machine) sends the missed slot at once (catch-up, at most
    ``max_debt`` seconds of it), and the send log, which counts real send times,
    stops catch-up from ever putting more than M calls into one second. The rate
    held therefore does not depend on the event loop's timing precision.

Finding the quota (no ``--qps``, or one set too high)
    A rejection (4 or 18) of a call sent at ``t`` by any of the three shapes means
    that about Q calls were admitted in the second before it. The lane counts
    ``A``: its own calls sent in ``(t - 1, t]`` that were not rejected. Counting by
    send time, not reply time, keeps ``A`` right when the service answers rejections
    at once and accepted calls only after their work. The quota found is the second
    smallest ``A`` of the last five rejections (a count may hold calls still in flight,
    or miss one that jitter moved across the second). A lane with no ceiling starts
    at 8 calls/s and doubles each second until a quota shows. Quiet for
    ``probe_wait`` seconds, the lane probes upward (1 % of the found quota, doubling
    while no rejection comes, at most 25 %, never above the configured ceiling); a
    probe that draws a rejection goes back to the level the probes started from, and
    the next one waits twice as long (up to ``probe_wait_max``). Rejections of calls
    sent before the last cut, or within a second after it (their count still holds
    calls of the old pace), are not counted against the new pace; nor are rare ones
    (``jitter_share``) at a quota the lane found itself: a busy machine delays a call
    into the next second now and then.

Random rejections are not a quota
    A quota accepts about Q calls/s however fast the lane sends; random rejections
    (an error storm, cluster-wide 4s) take the same share at any pace. So a cut of
    more than a call or so per second is a test, judged on calls *sent* in each phase
    (after a settling second): first ``low``, below the quota the rejections suggest
    (``test_pace`` of it, and of the calls accepted per second lately). Nothing
    rejected there: a quota. Rejections went on there: a fresh sample at a pace above
    the cut (the pace before it, but no more than the cut or twice the low pace,
    whichever is higher) decides, since the share
    that set the cut off is high by selection (a cluster of random rejections is what
    sets a cut off). Clearly more rejected above than below: a quota, taken from what
    was *delivered* above it (accepted calls/s over the share the random rejections
    leave, as BBR estimates a bottleneck from its delivery rate, not its losses); the
    same share at both: random, the cut is undone (at most twice the pace measured;
    a lane still searching goes on by probes that look at the share), and while the
    share rejected
    stays near the random one (``noise_hold``, renewed while it lasts; the share
    measured over at least ``2 * test_replies`` replies) only a clearly higher share
    counts as a quota. Random ones are left to the retries: the rate is not driven
    down by them (tests/test_ratelimit.py, storm cases: the successes sit at what the
    storm leaves of the quota).

Time is the event loop's clock (``loop.time()``), so tests drive everything with a
loop whose clock they control (tests/support/doubles.py ``run_virtual``).
"""


from __future__ import annotations

import asyncio
import bisect
import logging
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

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
class Tuning:
    """How a lane paces and adapts. Times in seconds, rates in calls/s.

    ``headroom``: the pace is ``quota * (1 - headroom)`` (default 2 %).
    ``cap_margin``: the send log allows M calls per ``M / quota * (1 + cap_margin)`` s.
    ``max_debt``: seconds of missed slots a late loop may catch up at once (0.1).
    ``probe_wait`` / ``probe_wait_max``: quiet seconds before a probe upward; doubled
    after each probe that drew a rejection (2, up to 16).
    ``probe_step`` / ``probe_max``: the first probe's increase and the largest one
    (1 %, 25 %; each quiet probe doubles the step).
    ``evidence_window``: seconds of replies a rejection is compared with (3).
    ``test_seconds`` / ``test_settle`` / ``test_replies``: a cut of more than 10 % is
    tested in phases of at least ``test_seconds`` (2.5), each judged on the replies
    (30 below the cut, 60 above it) to calls sent after its first ``test_settle``
    second (1);
    random rejections found: for ``noise_hold`` seconds (20, doubling with each such
    test up to ``noise_hold_max``, 160) only a share above the random one plus
    ``noise_margin`` (0.2) counts as a quota.
    ``jitter_share``: at a quota the lane found itself, rejections at about it that are no
    more than this share of the replies of the last ``history`` seconds (12) are jitter:
    no step down (1 %).
    ``min_rate``: the pace never goes below this (0.1).
    ``start_rate`` / ``slow_start`` / ``slow_start_max``: a lane with no limit configured
    starts at 8 calls/s and doubles every second until a quota shows (unpaced from 4096).
    """

    headroom: float = 0.02
    cap_margin: float = 0.015
    max_debt: float = 0.1
    probe_wait: float = 2.0
    probe_wait_max: float = 16.0
    probe_step: float = 0.01
    probe_max: float = 0.25
    evidence_window: float = 3.0
    test_seconds: float = 2.5
    test_settle: float = 1.0
    noise_hold: float = 20.0
    noise_hold_max: float = 160.0
    noise_margin: float = 0.2
    test_replies: int = 30
    test_pace: float = 0.85
    history: float = 12.0
    jitter_share: float = 0.01
    min_rate: float = 0.1
    start_rate: float = 8.0
    slow_start: float = 1.0
    slow_start_max: float = 4096.0


#: The former name of :class:`Tuning` (the limiter used to be AIMD).
Aimd = Tuning
#: Share of the quota kept free by default (see :class:`Tuning`).
HEADROOM = Tuning().headroom


class _Test:
    """A large cut under test: when it and its current phase began (and were last
    judged), the found quota and pace before the cut, and once the ``low`` phase is
    judged: (its share rejected, replies, the found quota and pace of the cut, calls/s
    accepted in it)."""

    __slots__ = ("started", "phase_start", "checked", "found", "rate", "low")

    def __init__(self, start: float, found: float | None, rate: float | None) -> None:
        self.started = self.phase_start = start
        self.checked = -math.inf
        self.found, self.rate = found, rate
        self.low: tuple[float, int, float | None, float | None, float] | None = None


class Ticket:
    """One send through a lane: when it left, and whether the service rejected it."""

    __slots__ = ("sent", "rejected")

    def __init__(self, sent: float) -> None:
        self.sent = sent
        self.rejected = False


class _Times:
    """Non-decreasing times in a list with a moving start (cheap append, trim, bisect)."""

    __slots__ = ("items", "start")

    def __init__(self) -> None:
        self.items: list[float] = []
        self.start = 0

    def add(self, t: float) -> None:
        if self.items and t < self.items[-1]:  # a rejection reported out of send order
            bisect.insort(self.items, t, lo=self.start)
        else:
            self.items.append(t)

    def count(self, lo: float, hi: float) -> int:
        """Times in ``(lo, hi]``."""
        return (bisect.bisect_right(self.items, hi, lo=self.start)
                - bisect.bisect_right(self.items, lo, lo=self.start))

    def oldest_after(self, lo: float) -> float | None:
        i = bisect.bisect_right(self.items, lo, lo=self.start)
        return self.items[i] if i < len(self.items) else None

    def trim(self, before: float) -> None:
        self.start = bisect.bisect_left(self.items, before, lo=self.start)
        if self.start > 512 and self.start * 2 > len(self.items):
            del self.items[:self.start]
            self.start = 0


class _Lane:
    """One interface: its pace, send log and what the service has shown of its quota.

    ``ceiling``: the configured limit (None: unlimited). ``found``: the quota the
    service showed (an upper bound, see the module docstring), None until then.
    ``rate``: the pace, ``min(ceiling, found) * (1 - headroom)``; None while unlimited.
    """

    __slots__ = (
        "t", "ceiling", "found", "rate", "backoffs", "_lock", "_next", "_sends", "_rejects",
        "_accepted", "_rejected", "_last_evidence", "_last_probe", "_probe_wait", "_step",
        "_test", "_noise", "_noise_until", "_history", "_quiet", "_changed", "_born",
        "_anchor", "_noise_cap", "_hold_for", "_searching", "_stormy_until",
    )

    def __init__(self, qps: float | None, tuning: Tuning, now: float) -> None:
        self.t = tuning
        self.ceiling = qps
        self.found: float | None = None
        self.rate = None if qps is None else max(tuning.min_rate, qps * (1 - tuning.headroom))
        self.backoffs = 0
        self._lock = asyncio.Lock()
        self._next = now  # the next free slot of the pace
        self._sends, self._rejects = _Times(), _Times()
        self._accepted: deque[tuple[float, int]] = deque()  # (reply time, A) of accepted calls
        #: (reply time, A if the rejection was quota evidence else None) of rejections
        self._rejected: deque[tuple[float, int | None]] = deque()
        #: a large cut under test (see :class:`_Test`), None when none is
        self._test: _Test | None = None
        self._noise, self._noise_until, self._noise_cap = 0.0, -math.inf, 0.0
        self._hold_for = tuning.noise_hold  # doubles with each test that found random
        #: a lane that was searching when random rejections showed: it goes on by probes
        self._searching = False
        #: random rejections were seen lately: a test needs its full count of replies
        self._stormy_until = -math.inf
        #: (reply time, send time, rate limited?) of the replies of the last ``history`` s
        self._history: deque[tuple[float, float, bool]] = deque()
        #: the found quota the current run of probes started from (it drew no rejection)
        self._quiet: float | None = None
        self._changed = -math.inf  # when the pace last went down
        self._born = now
        #: the quota last confirmed (the ceiling, or a test's verdict): small untested
        #: steps may not take the lane further than 10 % below it
        self._anchor = qps
        self._last_evidence = self._last_probe = now
        self._probe_wait = tuning.probe_wait
        self._step = tuning.probe_step

    # -- sending ------------------------------------------------------------------------

    def quota(self) -> float | None:
        """The quota the lane holds to: ceiling and found, whichever is lower."""
        if self.found is None:
            return self.ceiling
        return self.found if self.ceiling is None else min(self.ceiling, self.found)

    async def acquire(self, loop: asyncio.AbstractEventLoop) -> Ticket:
        async with self._lock:  # one waiter at a time: slots go out in arrival order
            while True:
                now = loop.time()
                self._maybe_probe(now)
                wait = self._wait(now)
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            return self._send(now)

    def _pace(self, now: float) -> float | None:
        """Calls/s to send at now; None: unpaced. A lane with no limit known starts
        slowly and doubles its pace every ``slow_start`` seconds until the service
        shows a quota (or the pace passes ``slow_start_max``: then it is unpaced)."""
        if self.rate is not None:
            return self.rate
        pace = self.t.start_rate * 2 ** ((now - self._born) / self.t.slow_start)
        return pace if pace < self.t.slow_start_max else None

    def _wait(self, now: float) -> float:
        """Seconds until the next call may leave (<= 0: now)."""
        if self._pace(now) is None:
            return 0.0
        wait = max(self._next, now - self.t.max_debt) - now
        quota = self.quota()
        if quota is None:
            return wait
        most = max(1, math.floor(quota))
        span = most / quota * (1 + self.t.cap_margin)
        if self._sends.count(now - span, now) >= most:
            # the oldest send of the span must leave it before another may go
            oldest = self._nth_recent(now - span, most)
            wait = max(wait, oldest + span - now)
        return wait

    def _nth_recent(self, lo: float, most: int) -> float:
        items, start = self._sends.items, self._sends.start
        i = bisect.bisect_right(items, lo, lo=start)
        return items[len(items) - most] if len(items) - most >= i else items[i]

    def _send(self, now: float) -> Ticket:
        pace = self._pace(now)
        if pace is not None:
            self._next = max(self._next, now - self.t.max_debt) + 1.0 / pace
        self._sends.add(now)
        keep = now - self.t.evidence_window - 2.0
        self._sends.trim(keep)
        self._rejects.trim(keep)
        return Ticket(now)

    # -- replies ------------------------------------------------------------------------

    def behind(self, ticket: Ticket) -> int:
        """A: calls sent in the second up to ``ticket`` (itself included), not rejected."""
        lo = ticket.sent - 1.0
        return self._sends.count(lo, ticket.sent) - self._rejects.count(lo, ticket.sent)

    def on_limited(self, ticket: Ticket, now: float) -> None:
        if not ticket.rejected:
            ticket.rejected = True
            self._rejects.add(ticket.sent)
        # A: calls of its second admitted before it (it counts itself as sent, not admitted)
        shown = self.behind(ticket)
        self._history.append((now, ticket.sent, True))
        self._forget(now)
        evidence = self._is_evidence(shown)
        self._rejected.append((now, shown if evidence else None))
        if self._test is not None or ticket.sent < self._changed + 1.0:
            # a cut is under test (its result decides), or it left at the old pace or
            # within a second of the change (its count still holds calls of the old pace)
            return
        if evidence and not self._noise_hides(now):
            self._learn(now)

    def on_answered(self, ticket: Ticket, now: float) -> None:
        self._accepted.append((now, self.behind(ticket)))
        self._history.append((now, ticket.sent, False))
        self._forget(now)

    def _forget(self, now: float) -> None:
        old = now - self.t.evidence_window
        while self._accepted and self._accepted[0][0] < old:
            self._accepted.popleft()
        while self._rejected and self._rejected[0][0] < old:
            self._rejected.popleft()
        while self._history and self._history[0][0] < now - self.t.history:
            self._history.popleft()
        test = self._test
        if test is not None and now >= test.checked + 0.1 and now >= test.phase_start + (
                self.t.test_seconds if test.low is None else 1.5):
            test.checked = now
            self._judge_test(now)

    def _share(self, since: float, until: float = math.inf, least: int = 0
               ) -> tuple[float, int]:
        """(share rejected, replies) of the replies in ``(since, until]``; reaching further
        back than ``since`` (within the history) until there are ``least`` replies."""
        rej = n = 0
        for t, _, limited in reversed(self._history):
            if t > until:
                continue
            if t <= since and n >= least:
                break
            n += 1
            rej += limited
        return (rej / n if n else 0.0), n

    def _is_evidence(self, shown: int) -> bool:
        """Did this rejection have as many calls admitted before it as accepted calls had?

        Under a quota it did (it came because the second was full); a random rejection
        falls on a second as busy as any. One call of tolerance: a token bucket refills
        continuously, so its rejections and acceptances mix at the same count.
        """
        if shown < 1:
            return False  # nothing admitted in its second: no quota said no
        if len(self._accepted) < 5 or len(self._history) < 12:
            return False  # too little seen to tell (12 replies: a lane sent at 3Q must
            # not wait much longer for its first cut, each 0.1 s costs two rejections)
        counts = sorted(a for _, a in self._accepted)
        return shown >= counts[len(counts) // 4] - 1

    def _noise_hides(self, now: float) -> bool:
        """While random rejections are known to run at share ``noise``, only more counts.

        The share is taken over at least ``2 * test_replies`` replies (a few seconds'
        worth: a short cluster of random rejections is not a quota). A share clearly
        above the random one is not hidden: it sets off a test, whose verdict sets the
        random share afresh. The estimate follows the storm down as it calms (and ends
        it below 3 %); upward only a little above what a test measured, so a quota met
        during a storm is not taken for more of the storm.
        """
        if self._noise_until == -math.inf:
            return False
        share, replies = self._share(now - self.t.evidence_window, least=2 * self.t.test_replies)
        spread = 2.5 * math.sqrt(self._noise * (1 - self._noise) / max(1, replies))
        if share > self._noise + max(self.t.noise_margin, spread):
            return False
        if now >= self._noise_until:
            self._noise_until = now + self._hold_for  # still the same random share
        longer, _ = self._share(now - self.t.history)
        self._noise = min(self._noise_cap + 0.1, 0.95 * self._noise + 0.05 * longer)
        if self._noise < 0.03:
            self._noise, self._noise_until = 0.0, -math.inf  # the storm is over
        return True

    def _learn(self, now: float) -> None:
        """Quota rejections: hold to the median count they showed (at most that)."""
        # The second fewest of the last five: a count may include calls still in flight
        # (too many) or miss one that jitter moved across the second (one too few).
        shown = sorted(v for _, v in list(self._rejected)[-5:] if v is not None)
        least = shown[1] if len(shown) > 1 else shown[0]
        # Random rejections of admitted calls are missing from the counts: add them back.
        quota = float(max(1, round(least / (1 - min(0.5, self._noise)))))
        current = self.quota()
        if self._quiet is not None and self.found is not None and self._quiet < self.found:
            # A probe overshot: the level the probes started from was quiet, so go back
            # there (the counts of one rejection may be a call short); probe less often.
            quota = max(quota, self._quiet)
            self._probe_wait = min(self.t.probe_wait_max, self._probe_wait * 2)
        elif current is not None and quota >= current - min(1.5, 0.15 * current):
            # About the quota held to: jitter squeezed a call into one second, or the
            # count of this rejection is a call short. Step down a little; but not for
            # rare ones at a quota the lane found itself (a busy machine delays a call
            # onto the next second's now and then; a quota below the pace would reject
            # a share of every second's calls), or it drifts below the quota, each probe
            # back drawing the next such rejection.
            found_itself = self.ceiling is None or (self.found or math.inf) < self.ceiling
            if found_itself and self._share(now - self.t.history)[0] <= self.t.jitter_share:
                self._last_evidence = now
                return
            quota = max(min(quota, 0.98 * current), 0.96 * current)
        self._quiet = None
        self._searching = False
        self._last_evidence = now
        self._step = self.t.probe_step
        if self.found is not None and quota >= self.found:
            return
        before = (self.found, self.rate)
        self.found = quota
        self._set_rate()
        self._changed = now
        # later evidence is judged on calls sent at the new pace only
        self._rejected = deque((t, None) for t, _ in self._rejected)
        if before[1] is None or (self.rate is not None and self.rate < before[1]):
            self.backoffs += 1
        small = (current is not None and current - quota <= min(1.5, 0.15 * current)
                 and (self._anchor is None or quota >= 0.9 * self._anchor))
        if self.rate is not None and not small \
                and (before[1] is None or self.rate < 0.97 * before[1]):
            # A large cut is a test: sent a little below the quota it suggests, a quota
            # leaves (nearly) nothing to reject; random rejections go on at their share.
            # The counts may include calls still unanswered or a token bucket's burst: test
            # below the calls accepted per second lately too, whichever is fewer.
            lately = self._accepted_per_second(now)
            self._test = _Test(now, before[0], before[1])
            self.rate = max(self.t.min_rate, self.t.test_pace * min(self.rate, lately))
        log.debug("quota shown: %.0f calls/s; pace %s -> %.3f", quota,
                  "unlimited" if before[1] is None else f"{before[1]:.3f}", self.rate or 0.0)

    def _accepted_per_second(self, now: float) -> float:
        """Calls accepted per second lately: the median of the three whole seconds before
        the last (by send time; the last one's replies are still coming). A token
        bucket's burst fills one of them, not the median."""
        bins = [0, 0, 0]
        for _, sent, limited in self._history:
            k = math.floor(now - 1.0 - sent)
            if not limited and 0 <= k < 3:
                bins[k] += 1
        if now - self._born < 4.0:
            # a young lane: accepted in its last two seconds, halved (low on purpose: its
            # first second may hold a token bucket's burst or a calendar second's 2Q)
            return max(1.0, sum(1 for t, _ in self._accepted if t > now - 2.0) / 2.0)
        return max(1.0, float(sorted(bins)[1]))

    def _sent_share(self, since: float) -> tuple[float, int, int]:
        """(share rejected, replies, accepted) of the calls sent after ``since`` answered
        so far."""
        rej = n = 0
        for _, sent, limited in self._history:
            if sent > since:
                n += 1
                rej += limited
        return (rej / n if n else 0.0), n, n - rej

    def _judge_test(self, now: float) -> None:
        """A large cut was made: if the share rejected did not fall, it was not a quota.

        Two phases, each judged on the calls *sent* in it: ``low`` (the cut pace) and,
        when rejections went on there, ``recheck`` (the pace before the cut again). The
        share that set the cut off is not the one compared: a cluster of random
        rejections is what sets a cut off, so the share before it is high by selection
        and any later share looks lower. Only two fresh samples, below and at the pace
        in question, tell a quota (fewer rejected below it) from random rejections (the
        same share at both paces).
        """
        test = self._test
        assert test is not None
        # the calls sent in the phase after its first second: a quota window still full
        # of the calls sent before the change rejects the first ones whatever the pace
        since = test.phase_start + (self.t.test_settle if test.low is None else 0.5)
        share, replies, accepted = self._sent_share(since)
        delivered = accepted / max(0.5, now - since)  # accepted calls/s
        # nothing rejected: judged on fewer replies, unless a storm may be on
        quiet = share == 0.0 and replies >= self.t.test_replies // (
            1 if now < self._stormy_until else 3)
        # The phase above the cut decides between a quota and random rejections: twice
        # test_replies, fewer when far more are rejected than below the cut already.
        enough = (
            self.t.test_replies if test.low is None else 2 * self.t.test_replies)
        if test.low is not None and replies >= 2 * self.t.test_replies // 3 \
                and share - test.low[0] >= max(0.2, 3 * math.sqrt(
                    share * (1 - share) / replies + test.low[0] * (1 - test.low[0]) / test.low[1])):
            enough = 0
        if (replies < enough and now < since + 2.5 * self.t.test_seconds
                and not quiet) or now < since + 1.0:
            return  # too few replies yet to judge
        if test.low is None:
            if share <= 0.05:  # (nearly) nothing rejected below it: a quota, no storm
                self._verdict_quota(share, now)
                return
            # rejections went on below it: measure a pace above the cut afresh
            log.debug("test: %.0f %% rejected below the cut; a pace above it again",
                      share * 100)
            test.low = (share, replies, self.found, self.rate, delivered)
            test.phase_start = now
            low_rate, cut = self.rate or 0.0, self.found
            if test.rate is not None:
                self.found, self.rate = test.found, test.rate
                if self._anchor is not None and (self.found is None
                                                 or self.found < self._anchor):
                    self.found = self._anchor  # small steps before the test: above them
                    self._set_rate()
            # The pace before the cut, but not far above the cut (a limit set 3x too high,
            # or a lane still searching): there a quota would reject most calls, and a
            # pace a little above the cut and the test's tells them apart as well.
            if cut is not None:
                high = max(2.0 * low_rate, cut * (1 - self.t.headroom))
                self.rate = high if test.rate is None else min(self.rate or high, high)
            return
        low, low_replies, found, rate, low_delivered = test.low
        pooled = (low * low_replies + share * replies) / max(1, low_replies + replies)
        spread = math.sqrt(pooled * (1 - pooled) * (1 / max(1, low_replies) + 1 / max(1, replies)))
        # Below a quota only the random share is rejected; above it, more.
        if share - low >= max(2.5 * spread, 0.05) and low <= 0.6 * share:
            # A quota. What was accepted per second above it (a sending rate's delivery, as
            # BBR's) measures it better than the counts of the rejections that set the cut
            # off (they may hold a token bucket's burst or a calendar second's 2Q).
            self.found, self.rate = found, rate
            below = low_delivered < 0.9 * delivered
            if below:
                # Fewer accepted below the cut than above it: the cut was below the quota,
                # what it still saw rejected is the random share, and the quota is the
                # delivery above it over what that share leaves.
                measured = delivered / max(0.05, 1 - low)
            else:
                # As many accepted at both paces: both were above the quota, which is what
                # they delivered (the rejections below the cut were the quota's own).
                measured = max(low_delivered, delivered)
            if self.found is not None:
                self.found = min(self.found, max(1.0, measured))
            self._verdict_quota(low if below else 0.0, now)
            return
        # the same share at both paces: random, not a quota; back to the pace before the
        # cut (a limit given, or one a test confirmed: nothing showed a quota below it;
        # the lane may well have sent less than its pace, fed by an earlier interface),
        # or at most twice the pace measured
        held = self.rate
        self.found, self.rate = test.found, test.rate
        if test.rate is None and held is not None:
            # A lane still searching: above the pace measured nothing is known. It goes
            # on from there by probes (doubling every second while the share rejected
            # stays near the random one) rather than by the slow start's doubling, which
            # does not look at the share and would run far past a quota.
            self.found = held / (1 - self.t.headroom)
            self._set_rate()
            self._searching = True
        else:
            if self._anchor is not None and (self.found is None or self.found < self._anchor):
                self.found = self._anchor  # small steps before the test were random too
                self._set_rate()
            if held is not None and self.rate is not None and self.rate > 2 * held:
                # far above the pace measured (a limit set 3x too high): not all the way
                self.found = 2 * held / (1 - self.t.headroom)
                self._set_rate()
        self._end_test(now)
        self._anchor = self.quota()
        self._hold(pooled, now)
        # the same storm again and again: test it less often
        self._hold_for = min(self.t.noise_hold_max, 2 * self._hold_for)
        log.debug("rejections at %.0f %% whatever the rate: random, not a quota", pooled * 100)

    def _end_test(self, now: float) -> None:
        self._test = None
        # evidence seen at the test's pace says nothing of the pace that follows
        self._rejected = deque((t, None) for t, _ in self._rejected)
        self._changed = now

    def _verdict_quota(self, share: float, now: float) -> None:
        """Fewer rejected below the cut: a quota. What is still rejected is random."""
        self._searching = False
        log.debug("test: a quota of %.1f calls/s (%.0f %% still rejected below it)",
                  self.found or 0.0, share * 100)
        self._end_test(now)
        self._anchor = self.quota()
        self._hold_for = self.t.noise_hold
        if share < 0.05:
            self._noise, self._noise_until = 0.0, -math.inf
        else:
            self._hold(share, now)
        self._set_rate()

    def _hold(self, share: float, now: float) -> None:
        self._stormy_until = now + 60.0
        self._noise, self._noise_until = share, now + self._hold_for
        self._noise_cap = share

    def _maybe_probe(self, now: float) -> None:
        """Quiet for a while: raise the found quota a little (never above the ceiling)."""
        if self.found is None or (self.ceiling is not None and self.found >= self.ceiling):
            return
        if self._test is not None:
            return
        noisy = self._noise + 0.05 if self._noise_until != -math.inf else 0.0
        if self._share(now - self._probe_wait)[0] > noisy + 0.05:
            return  # not quiet: more rejected than the random share
        wait = self.t.slow_start if self._searching else self._probe_wait
        if now - max(self._last_evidence, self._last_probe) < wait:
            return
        self._last_probe = now
        if self._quiet is None:
            self._quiet = self.found
        if self._searching:  # the search goes on, by steps a storm's share can check
            self.found *= 2.0
        else:
            self.found *= 1 + self._step
            self._step = min(self.t.probe_max, self._step * 2)
        self._set_rate()

    def _set_rate(self) -> None:
        quota = self.quota()
        assert quota is not None
        self.rate = max(self.t.min_rate, quota * (1 - self.t.headroom))


class RateLimiter:
    """Per-interface governors for one process (share one instance between tasks).

    ``qps``: None (no limit until the service shows one), one number of calls/s
    for *each* interface, or a mapping ``{interface: calls/s}`` (others unlimited).
    A configured limit is a ceiling: the quota the service shows may be lower.
    Names may be canonical or aliases. Raises ConfigError for an unknown name or a
    non-positive rate. Use it from one event loop.

    Each send: ``ticket = await acquire(name)``, then for its reply either
    :meth:`on_limited` (4, 18) or :meth:`on_answered` (anything else the service
    answered). Calls that got no answer (timeouts, dropped connections) report nothing.
    """

    __slots__ = ("_limits", "_lanes", "tuning")

    def __init__(self, qps: float | Mapping[str, float] | None = None, *,
                 aimd: Tuning | None = None, tuning: Tuning | None = None):
        self._limits = normalise_qps(qps)
        self._lanes: dict[str, _Lane] = {}
        self.tuning = tuning or aimd or Tuning()

    def _lane(self, interface: str, now: float) -> _Lane:
        lane = self._lanes.get(interface)
        if lane is None:
            canon = canonical_interface(interface)
            lane = self._lanes.get(canon) or _Lane(self._limits[canon], self.tuning, now)
            self._lanes[interface] = self._lanes[canon] = lane
        return lane

    async def acquire(self, interface: str) -> Ticket:
        """Wait until one more call to ``interface`` may be sent; its ticket."""
        loop = asyncio.get_running_loop()
        return await self._lane(interface, loop.time()).acquire(loop)

    def on_limited(self, interface: str, ticket: Ticket | None = None) -> None:
        """The service answered 4 or 18 to the call of ``ticket`` (None: one sent now)."""
        now = asyncio.get_running_loop().time()
        self._lane(interface, now).on_limited(ticket or Ticket(now), now)

    def on_answered(self, interface: str, ticket: Ticket) -> None:
        """The service answered the call of ``ticket`` with anything but a rate limit."""
        now = asyncio.get_running_loop().time()
        self._lane(interface, now).on_answered(ticket, now)

    def rate(self, interface: str) -> float | None:
        """The current pace in calls/s for ``interface`` (None = unlimited)."""
        lane = self._lanes.get(canonical_interface(interface))
        if lane is None:
            limit = self._limits[canonical_interface(interface)]
            return None if limit is None else limit * (1 - self.tuning.headroom)
        return lane.rate

    def found(self, interface: str) -> float | None:
        """The quota the service has shown for ``interface`` (calls/s), None if none yet."""
        lane = self._lanes.get(canonical_interface(interface))
        return None if lane is None else lane.found

    def ceiling(self, interface: str) -> float | None:
        """The configured limit (calls/s) for ``interface``, None when unlimited."""
        return self._limits[canonical_interface(interface)]

    def backoffs(self) -> dict[str, int]:
        """Decreases of the pace made so far, per canonical interface that had any."""
        return {n: lane.backoffs for n, lane in self._lanes.items()
                if n in INTERFACES and lane.backoffs}
