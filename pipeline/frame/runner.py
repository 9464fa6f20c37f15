"""The one bounded-concurrency runner every job shares (enroll rows, audit probes, ...).

``await Runner(concurrency, stop).run(items, work)`` runs ``work(item)`` for each
item with at most ``concurrency`` in flight and returns None when every item ran,
else the :class:`Stopped` reason:

- ``work`` raised :class:`StopRun` (quota, auth...): no new item starts, items in
  flight finish; the first reason wins.
- the ``stop`` event was set (Ctrl-C): items in flight are cancelled and left for
  resume (:attr:`StopReason.INTERRUPTED`).

Items are read lazily (a sync or async iterable; a manifest of 10M rows is never
held in memory) and an item source can watch :attr:`Runner.halted` to stop reading.
Any other exception from ``work`` is a bug: the run halts and it is raised once the
items in flight are done. ``tick`` is called every ``tick_seconds`` while items run
(progress, periodic flushes).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from pipeline.frame.stop import STOPPING_ERRORS, StopReason, StopRun, as_stop

__all__ = ["Runner", "Stopped", "outage_pause"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Stopped:
    """Why a run stopped early, and the message to show (no secrets in it)."""

    reason: StopReason
    message: str


class Runner(Generic[T]):
    """Runs ``work`` over items, at most ``concurrency`` at a time; reusable for several
    :meth:`run` calls (e.g. an audit's three phases share no state but the stop event).

    ``on_stop(stopped)`` is called once, when the run starts stopping. ``noun`` names
    the items in the interrupt message ("rows in flight are left for resume").
    ``ready()``, when given, is awaited before each new item starts: the outage pause
    (:meth:`pipeline.client.health.Health.wait_ready` returns once the service answers
    again); a :class:`StopRun` it raises stops the run like one from ``work``.
    """

    def __init__(self, concurrency: int, stop: asyncio.Event | None = None, *,
                 on_stop: Callable[[Stopped], None] | None = None, noun: str = "items",
                 tick: Callable[[], None] | None = None, tick_seconds: float = 1.0,
                 ready: Callable[[], Awaitable[None]] | None = None) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency, self.stop, self.noun, self.ready = concurrency, stop, noun, ready
        self._on_stop, self._tick, self._tick_seconds = on_stop, tick, tick_seconds
        self.halted = asyncio.Event()  # set once the run stops taking new items
        self.stopped: Stopped | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._bug: BaseException | None = None

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def halt(self, reason: StopReason, message: str) -> None:
        """Stop taking new items (the first reason wins); items in flight go on."""
        if self.stopped is None:
            self.stopped = Stopped(reason, message)
            self.halted.set()
            if self._on_stop is not None:
                self._on_stop(self.stopped)

    async def run(self, items: Iterable[T] | AsyncIterable[T],
                  work: Callable[[T], Awaitable[None]]) -> Stopped | None:
        """Run ``work`` over ``items``; see the module docstring."""
        if self.halted.is_set():
            return self.stopped
        feed = asyncio.create_task(self._feed(items, work))
        helpers = [asyncio.create_task(self._ticker())] if self._tick else []
        waiters: set[asyncio.Future[None]] = {feed}
        if self.stop is not None:
            helpers.append(asyncio.create_task(self._wait_stop()))
            waiters.add(helpers[-1])
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if not feed.done():
                self.halt(StopReason.INTERRUPTED,
                          f"{self.noun} in flight are left for resume")
                await _cancel([feed, *self._tasks])
            elif not feed.cancelled():
                feed.result()
        finally:
            await _cancel(helpers)
        if self._bug is not None:
            raise self._bug
        return self.stopped

    async def _feed(self, items: Iterable[T] | AsyncIterable[T],
                    work: Callable[[T], Awaitable[None]]) -> None:
        slots = asyncio.Semaphore(self.concurrency)
        async for item in _aiter(items):
            await slots.acquire()
            if self.ready is not None and not self.halted.is_set():
                try:
                    await self.ready()
                except StopRun as stop:
                    self.halt(stop.reason, stop.message)
            if self.halted.is_set():
                slots.release()
                break
            task = asyncio.create_task(self._one(work, item))
            self._tasks.add(task)
            task.add_done_callback(self._finished(slots))
            await asyncio.sleep(0)  # let the item start before the next one is read
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _finished(self, slots: asyncio.Semaphore) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            slots.release()

        return done

    async def _one(self, work: Callable[[T], Awaitable[None]], item: T) -> None:
        try:
            await work(item)
        except StopRun as stop:
            self.halt(stop.reason, stop.message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in work: stop taking items, raise it at the end
            if self._bug is None:
                self._bug = exc
            self.halted.set()

    async def _wait_stop(self) -> None:
        assert self.stop is not None
        await self.stop.wait()

    async def _ticker(self) -> None:
        assert self._tick is not None
        while True:
            await asyncio.sleep(self._tick_seconds)
            self._tick()


def outage_pause(client: object) -> Callable[[], Awaitable[None]] | None:
    """The ``ready`` hook of a job on ``client``: while the service answers nobody no new
    item starts; once it has been gone longer than the client waits, the run stops
    (:attr:`StopReason.OUTAGE`). None for a client without an outage state."""
    health = getattr(client, "health", None)
    if health is None:
        return None

    async def ready() -> None:
        try:
            await health.wait_ready()
        except STOPPING_ERRORS as exc:
            raise as_stop(exc) from exc

    return ready


async def _aiter(items: Iterable[T] | AsyncIterable[T]) -> AsyncIterator[T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


async def _cancel(tasks: Iterable[asyncio.Task[None]]) -> None:
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
