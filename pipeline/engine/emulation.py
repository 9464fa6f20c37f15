"""Service emulation for testing clients: QPS limits, daily quotas and fault injection.

Every face call goes through :meth:`Emulation.admit` after the token check and BEFORE any
parsing, decoding or write, so a rejected call does no work and changes nothing.

Interfaces are named as in interfaces.py; v3 paths as ``v3/<name>`` (v3.py), each
with its own window and count.

* **QPS** (error 18): per interface, a fixed one-second window on the engine's monotonic
  clock: at most ``floor(qps)`` calls are admitted in each window [k, k+1) s (at least 1).
  Exact and O(1) per call; like the real service it allows a burst at the start of a
  window, so a client must spread its calls to stay under the limit over any second.
* **Daily quota** (error 17): per interface, the number of calls admitted per calendar
  day (local time of the engine). Every admitted call counts, whether it then succeeds
  or fails; calls refused by the QPS limit or the quota itself do not count (a call
  refused by the quota has still used its slot of the QPS window, checked first).
* **Faults**, drawn after the limits from a seeded ``random.Random`` (one draw per admitted
  call; rates are probabilities that add up to at most 1):
  ``"4"`` and ``"18"`` (rate-limit codes), any transient server code such as
  ``"216400"``, ``"216500"``, ``"216300"``; ``"http500"`` (HTTP 500 with a non-JSON body,
  as a failing proxy sends), ``"drop"`` (the connection is closed with no reply) and
  ``"slow"`` (the reply is delayed ``delay`` seconds, then the call runs normally).

The configuration is set by CLI flags or at run time through ``POST /admin/emulation``
(see :meth:`Emulation.configure`); ``GET /admin/emulation`` shows it.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

FAULT_KINDS = ("http500", "drop", "slow")


@dataclass(frozen=True, slots=True)
class Admission:
    """What to do with a call: ``kind`` is "ok", "error", "http500", "drop" or "slow"."""

    kind: str = "ok"
    code: int | None = None
    delay: float = 0.0


ADMIT = Admission()


@dataclass(slots=True)
class EmulationConfig:
    """Limits and faults. ``qps``: None (no limit), one number for every interface, or
    per-interface numbers (keys: detect, match, identify, ..., "default")."""

    qps: float | dict[str, float] | None = None
    daily_quota: int | None = None
    faults: dict[str, float] = field(default_factory=dict)
    delay: float = 2.0
    seed: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {"qps": self.qps, "daily_quota": self.daily_quota, "faults": dict(self.faults),
                "delay": self.delay, "seed": self.seed}


class Emulation:
    """The emulation state of one engine. Clocks are injectable for tests."""

    __slots__ = ("config", "_rng", "_windows", "_days", "_monotonic", "_today")

    def __init__(
        self,
        config: EmulationConfig | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        today: Callable[[], date] = lambda: datetime.now().date(),
    ) -> None:
        self.config = config or EmulationConfig()
        _check(self.config)
        self._rng = random.Random(self.config.seed)
        self._windows: dict[str, tuple[int, int]] = {}  # interface -> (second, count)
        self._days: dict[str, tuple[date, int]] = {}  # interface -> (day, count)
        self._monotonic = monotonic
        self._today = today

    def configure(self, changes: Mapping[str, Any]) -> EmulationConfig:
        """Merge ``changes`` (keys of :class:`EmulationConfig`, plus ``"reset": true`` to
        clear the QPS windows and quota counts) and reseed when ``seed`` is given."""
        unknown = set(changes) - {"qps", "daily_quota", "faults", "delay", "seed", "reset"}
        if unknown:
            raise ValueError(f"unknown emulation keys: {', '.join(sorted(unknown))}")
        new = EmulationConfig(**{**self.config.as_json(), **{
            k: v for k, v in changes.items() if k != "reset"}})
        _check(new)
        self.config = new
        if "seed" in changes or "faults" in changes:
            self._rng = random.Random(new.seed)
        if changes.get("reset"):
            self._windows.clear()
            self._days.clear()
        return new

    def admit(self, interface: str) -> Admission:
        """Decide the fate of one call to ``interface`` (see the module docstring)."""
        limit = self._qps_limit(interface)
        if limit is not None and not self._take_window(interface, limit):
            return Admission("error", 18)
        if self.config.daily_quota is not None and not self._take_day(interface):
            return Admission("error", 17)
        return self._draw_fault()

    def _qps_limit(self, interface: str) -> int | None:
        qps = self.config.qps
        if isinstance(qps, dict):
            # v3 paths ("v3/detect") take their own key, else the v2 name's, else default;
            # their windows and quota counts are their own either way.
            qps = qps.get(interface, qps.get(interface.removeprefix("v3/"), qps.get("default")))
        return None if qps is None else max(1, math.floor(float(qps)))

    def _take_window(self, interface: str, limit: int) -> bool:
        second = math.floor(self._monotonic())
        start, count = self._windows.get(interface, (second, 0))
        if start != second:
            start, count = second, 0
        if count >= limit:
            return False
        self._windows[interface] = (start, count + 1)
        return True

    def _take_day(self, interface: str) -> bool:
        today = self._today()
        day, count = self._days.get(interface, (today, 0))
        if day != today:
            day, count = today, 0
        if count >= int(self.config.daily_quota or 0):
            return False
        self._days[interface] = (day, count + 1)
        return True

    def _draw_fault(self) -> Admission:
        if not self.config.faults:
            return ADMIT
        draw = self._rng.random()
        for kind, rate in self.config.faults.items():
            if draw < rate:
                if kind == "slow":
                    return Admission("slow", delay=float(self.config.delay))
                if kind in FAULT_KINDS:
                    return Admission(kind)
                return Admission("error", int(kind))
            draw -= rate
        return ADMIT


def _check(config: EmulationConfig) -> None:
    for kind, rate in config.faults.items():
        if kind not in FAULT_KINDS and not str(kind).isdigit():
            raise ValueError(f"unknown fault {kind!r}: use an error code, http500, drop or slow")
        if not 0.0 <= float(rate) <= 1.0:
            raise ValueError(f"fault rate for {kind} must be within 0-1")
    if sum(float(r) for r in config.faults.values()) > 1.0 + 1e-9:
        raise ValueError("fault rates add up to more than 1")
    if config.daily_quota is not None and int(config.daily_quota) < 0:
        raise ValueError("daily_quota must be >= 0")
    if config.delay < 0:
        raise ValueError("delay must be >= 0 seconds")
