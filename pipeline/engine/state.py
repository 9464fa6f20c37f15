"""The state of one running engine (:class:`EngineState`) and how it is configured.

Store and index (SQLite + in-memory, or PostgreSQL), the pool of model processes,
the fault emulation, the v3 face tokens and the call counters. The HTTP layer
(:mod:`pipeline.engine.app`) and the interfaces (:mod:`pipeline.engine.interfaces`,
:mod:`pipeline.engine.v3`) take it as an argument; it imports neither.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import logging
import multiprocessing
import sys
import threading
import time
import types
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from datetime import date, datetime
from typing import Any, TypeVar

from pipeline.api.errors import error_message
from pipeline.engine.config import EngineConfig
from pipeline.engine.emulation import Emulation
from pipeline.engine.faceset import open_faceset
from pipeline.engine.models import (
    MODELS,
    AnalyseOptions,
    ImageAnalysis,
    ImageRejected,
    analyse,
    init_worker,
    sface_model_dir,
    warm_up,
)
from pipeline.engine.params import Failure
from pipeline.engine.store import Change
from pipeline.engine.tokens import FaceTokens

log = logging.getLogger("faceflow.engine")
T = TypeVar("T")


class EngineState:
    """Everything one running engine holds: store, index, pool, emulation, counters.

    The embedded store (SQLite, in-memory index) is used from the event loop's thread
    only. With the shared PostgreSQL store every query waits on the network and the
    database (15-50 ms for a search on a busy host), which on the loop would stall every
    other request of the replica: :meth:`run` and :meth:`call` then run the interface
    (and the token check) on a bounded pool of threads (``config.store_threads``), each
    with its own event loop and database connection. ``clock_offset`` (seconds) shifts
    the engine's clocks so tests can expire tokens and move QPS windows without sleeping.
    """

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.clock_offset = 0.0
        check_model(config.model)
        self.store, self.index = open_faceset(config)  # FaceStore, FaceIndex
        self.emulation = Emulation(config.emulation, self.monotonic, self.today)
        self.face_tokens = FaceTokens(self.now)  # v3 tokens from detect/search/match
        self.calls: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        #: request body bytes received per interface (what clients upload)
        self.request_bytes: Counter[str] = Counter()
        self.pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None
        self._thread_loops: list[asyncio.AbstractEventLoop] = []
        self._thread_local = threading.local()
        if config.store_url and config.store_threads > 0:
            self._threads = concurrent.futures.ThreadPoolExecutor(
                config.store_threads, thread_name_prefix="faceflow-store")

    def now(self) -> float:
        return time.time() + self.clock_offset

    def monotonic(self) -> float:
        return time.monotonic() + self.clock_offset

    def today(self) -> date:
        return datetime.fromtimestamp(self.now()).date()

    def start_pool(self) -> None:
        """Start the model processes and wait until each has loaded its models.

        "spawn", not fork: forking a process that has threads (the server's loop, BLAS)
        can deadlock the child. The pool starts every process during the warm-up
        submits, so they are all created inside :func:`_without_main_module`.
        """
        self.pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=self.config.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=init_worker,
            initargs=(self.config.detector, self.config.model),
        )
        with _without_main_module():
            futures = [self.pool.submit(warm_up) for _ in range(self.config.workers)]
        for future in futures:
            future.result(timeout=180)

    async def run(self, work: Callable[[], Awaitable[T]]) -> T:
        """Await ``work()`` (an interface): on the loop with the embedded store, else on
        one of the store threads (in this context: the scoring model follows)."""
        if self._threads is None:
            return await work()
        context = contextvars.copy_context()
        return await asyncio.wrap_future(
            self._threads.submit(context.run, self._in_thread, work))

    async def call(self, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` (a store call): on the loop or on a store thread, as :meth:`run`."""
        if self._threads is None:
            return func(*args)
        return await asyncio.wrap_future(self._threads.submit(func, *args))

    def _in_thread(self, work: Callable[[], Awaitable[T]]) -> T:
        loop = getattr(self._thread_local, "loop", None)
        if loop is None:
            loop = self._thread_local.loop = asyncio.new_event_loop()
            self._thread_loops.append(loop)
        return loop.run_until_complete(work())

    def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=True, cancel_futures=True)
            for loop in self._thread_loops:
                loop.close()
            self._thread_loops.clear()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        self.store.close()

    async def analyse(self, data: bytes, options: AnalyseOptions) -> ImageAnalysis:
        """Run the models on ``data`` in the pool; image problems raise :class:`Failure`."""
        pool = self.pool
        assert pool is not None
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(pool, analyse, data, options)
        except concurrent.futures.BrokenExecutor:
            # Every call in flight in the dead pool lands here; only the first replaces
            # it. Each used to restart it anew, shutting down the pool the one before had
            # just started: 8 calls in flight, 8 model loads with the loop blocked.
            if self.pool is pool:
                log.error("a model process died; restarting the pool")
                pool.shutdown(wait=False, cancel_futures=True)
                self.start_pool()
            raise Failure(216401, "a model process failed; retry") from None
        if isinstance(result, ImageRejected):
            raise Failure(result.code, _detail(result))
        return result

    def apply(self, change: Change) -> None:
        self.index.apply(change)

    def stats(self) -> dict[str, Any]:
        return {"calls": dict(self.calls), "errors": dict(self.errors),
                "request_bytes": dict(self.request_bytes),
                **self.store.counts(), "indexed_faces": self.index.size()}


def check_model(model: str) -> None:
    """Refuse an unknown model, or one whose files are not installed, before any worker
    starts (a worker's failure would only say that the pool broke)."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}: use one of {', '.join(MODELS)}")
    if model == "sface":
        sface_model_dir()


@contextlib.contextmanager
def _without_main_module() -> Iterator[None]:
    # A spawned child re-imports the parent's __main__ script unless it is guarded by
    # `if __name__ == "__main__"`; the workers only need pipeline.engine.models, so the
    # script is hidden while they are created (tests, benchmarks, the demo need no guard).
    with _SPAWN_LOCK:
        saved = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            if saved is not None:
                sys.modules["__main__"] = saved


_SPAWN_LOCK = threading.Lock()


def _detail(rejected: ImageRejected) -> str:
    base = error_message(rejected.code)
    return rejected.message[len(base) + 2:] if rejected.message.startswith(base + ":") else ""
