"""Is the service there? Outage detection for one client: pause, probe, resume or give up.

A call that fails for a network reason (timeout, refused or dropped connection) or with
an HTTP 5xx is a *fault*. One fault says little; many calls failing while *nothing* is
answered says the service is gone for everyone. :class:`Health` tells them apart from
one fact: whether the service answered anything (any JSON reply, errors included)
after the failed call was sent.

States (times in seconds, on ``clock``)::

    up ──fault, no answer since it was sent, silent > suspect_after──> down
    down ──any answer──> up
    down ──silent > outage_after──> paused (the job starts no new row)
    paused ──any answer──> up
    paused ──silent > outage_after + outage_wait──> gone (calls raise ServiceUnavailableError)

While the service is down, a call that meets a fault does not spend its retry budget:
it waits its turn (:meth:`Health.wait_turn`). One probe goes out at a time, the first
after ``probe_first`` seconds, then each after twice as long (at most ``probe_max``),
so an outage costs a trickle of requests, not a retry storm. When any call is answered
the waiters go again at once. Before ``suspect_after`` seconds of silence a fault counts
as the call's own, and so does the first fault after an answer (one hung call is not
an outage).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from pipeline.api.errors import ServiceUnavailableError

log = logging.getLogger("faceflow.client")

UP, DOWN, PAUSED, GONE = "up", "down", "paused", "gone"


class Health:
    """Outage state of one client's service; share one per client (one event loop).

    ``outage_after``: seconds without any answer, faults seen, before the job pauses new
    rows (default 60). ``outage_wait``: seconds to keep probing after that before calls
    give up with :class:`ServiceUnavailableError` (default 300). ``suspect_after``:
    silence after which a fault is taken as the service's, not the call's (default 2).
    """

    def __init__(self, *, outage_after: float = 60.0, outage_wait: float = 300.0,
                 suspect_after: float = 2.0, probe_first: float = 0.5, probe_max: float = 15.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if outage_after < 0 or outage_wait < 0:
            raise ValueError("outage times must not be negative")
        self.outage_after, self.outage_wait = outage_after, outage_wait
        self.suspect_after = suspect_after
        self.probe_first, self.probe_max = probe_first, probe_max
        self.clock = clock
        self.last_answer = clock()
        self.faults = 0  # faults met since the last answer
        self.outages = 0  # times the service went down (for reports)
        self._down_since: float | None = None
        self._probe_gap = probe_first
        self._next_probe = 0.0
        self._answered: asyncio.Event | None = None

    def configure(self, *, outage_after: float, outage_wait: float) -> None:
        """Change the two limits (seconds) of a client already open."""
        if outage_after < 0 or outage_wait < 0:
            raise ValueError("outage times must not be negative")
        self.outage_after, self.outage_wait = outage_after, outage_wait

    # -- what the calls report ------------------------------------------------------------

    def answered(self) -> None:
        """The service answered a call (any JSON reply, an API error included)."""
        self.last_answer = self.clock()
        self.faults = 0
        if self._down_since is not None:
            log.warning("the service answers again after %.0f s", self.last_answer
                        - self._down_since)
            self._down_since = None
            self._probe_gap = self.probe_first
        if self._answered is not None:
            self._answered.set()
            self._answered = None

    def service_wide(self, sent_at: float) -> bool:
        """A call sent at ``sent_at`` met a fault: is it the service's (an outage)?"""
        self.faults += 1
        now = self.clock()
        if (self.last_answer >= sent_at or now - self.last_answer < self.suspect_after
                or self.faults < 2):
            return False  # someone was answered since, or too soon, or one call alone
        if self._down_since is None:
            self._down_since = self.last_answer
            self._next_probe = now + self._probe_gap
            self.outages += 1
            log.warning("no answer from the service for %.0f s: waiting for it", now
                        - self.last_answer)
        return True

    # -- state ------------------------------------------------------------------------------

    def state(self) -> str:
        if self._down_since is None:
            return UP
        silent = self.clock() - self.last_answer
        if silent >= self.outage_after + self.outage_wait:
            return GONE
        return PAUSED if silent >= self.outage_after else DOWN

    def gone_error(self) -> ServiceUnavailableError:
        silent = self.clock() - self.last_answer
        return ServiceUnavailableError(
            None, f"the service has not answered for {silent:.0f} s "
                  f"({self.faults} failed calls); gave up waiting", attempts=0)

    # -- waiting ------------------------------------------------------------------------------

    def _event(self) -> asyncio.Event:
        if self._answered is None:
            self._answered = asyncio.Event()
        return self._answered

    async def wait_turn(self, sent_at: float,
                        sleep: Callable[[float], object] | None = None) -> None:
        """Wait until the service answers someone, or until this caller's probe turn.

        Raises :class:`ServiceUnavailableError` once the outage outlasts ``outage_wait``.
        """
        while True:
            if self.last_answer > sent_at or self._down_since is None:
                return
            state = self.state()
            if state == GONE:
                raise self.gone_error()
            now = self.clock()
            if now >= self._next_probe:
                self._probe_gap = min(self.probe_max, self._probe_gap * 2)
                self._next_probe = now + self._probe_gap
                return  # this caller is the probe
            deadline = self.last_answer + self.outage_after + self.outage_wait
            wait = max(0.01, min(self._next_probe, deadline) - now)
            try:
                await asyncio.wait_for(self._event().wait(), wait)
            except TimeoutError:
                pass

    async def wait_ready(self) -> None:
        """Return when new work may start: at once unless the job is paused (or gone:
        then raise :class:`ServiceUnavailableError`)."""
        while True:
            state = self.state()
            if state == GONE:
                raise self.gone_error()
            if state != PAUSED:
                return
            deadline = self.last_answer + self.outage_after + self.outage_wait
            try:
                await asyncio.wait_for(self._event().wait(),
                                       max(0.01, deadline - self.clock()))
            except TimeoutError:
                pass
