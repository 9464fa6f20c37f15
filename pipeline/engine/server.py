"""Running the engine: :class:`EngineServer` in a background thread, or :func:`serve` in front.

``EngineServer`` is a sync context manager for tests, benchmarks and the demo::

    with EngineServer() as engine:          # temp data dir, 127.0.0.1, a free port
        settings = Settings(endpoint=engine.url, api_key=Secret(engine.api_key), ...)

It runs the aiohttp app on its own event loop in a daemon thread; ``.store`` (thread-safe
reads: ``.store.counts()``) and ``.emulation`` are there for assertions and control.

``serve`` is what ``faceflow engine serve`` and ``python -m pipeline.engine`` run: it
prints ``faceflow engine listening on http://HOST:PORT`` (flushed) once bound, and shuts
down cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

import numpy as np
from aiohttp import web

from pipeline.api.endpoints import ENGINE_DEMO_API_KEY, ENGINE_DEMO_SECRET_KEY
from pipeline.engine.app import create_app
from pipeline.engine.emulation import Emulation, EmulationConfig
from pipeline.engine.state import EngineConfig, EngineState

if TYPE_CHECKING:
    from pipeline.engine.faceset import FaceStore


log = logging.getLogger("faceflow.engine")

_T = TypeVar("_T")


def credentials_from_env(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(api_key, secret_key) from FACEFLOW_API_KEY / FACEFLOW_SECRET_KEY, else the demo pair."""
    env = os.environ if env is None else env
    return (env.get("FACEFLOW_API_KEY") or ENGINE_DEMO_API_KEY,
            env.get("FACEFLOW_SECRET_KEY") or ENGINE_DEMO_SECRET_KEY)


def _qps_config(qps: float | Mapping[str, float] | None) -> float | dict[str, float] | None:
    return dict(qps) if isinstance(qps, Mapping) else qps


class EngineServer:
    """The engine on 127.0.0.1 in a background thread (see the module docstring).

    ``data_dir`` None means a temporary folder removed by :meth:`stop`. ``token_ttl`` in
    seconds; ``qps`` None / one number / per-interface numbers; ``daily_quota`` per
    interface and day.
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        workers: int = 1,
        api_key: str = ENGINE_DEMO_API_KEY,
        secret_key: str = ENGINE_DEMO_SECRET_KEY,
        token_ttl: float = 2592000,
        qps: float | Mapping[str, float] | None = None,
        daily_quota: int | None = None,
        detector: str = "hog",
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Mapping[str, float] | None = None,
        seed: int | None = None,
        store_url: str | None = None,
        model: str = "dlib",
        store_threads: int = 16,
    ) -> None:
        self._tmp = None if data_dir is not None else tempfile.mkdtemp(prefix="faceflow-engine-")
        self.data_dir = Path(data_dir if data_dir is not None else self._tmp or ".")
        self.api_key, self.secret_key = api_key, secret_key
        self.host, self._port = host, port
        emulation = EmulationConfig(qps=_qps_config(qps), daily_quota=daily_quota,
                                    faults=dict(faults or {}), seed=seed)
        self.config = EngineConfig(self.data_dir, api_key, secret_key, workers, token_ttl,
                                   detector, emulation, store_url, model, store_threads)
        self.state: EngineState | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> EngineServer:
        """Load the models, bind, and serve in the background; returns self."""
        if self._thread is not None:
            raise RuntimeError("this EngineServer is already running")
        self.state = EngineState(self.config)
        self.state.start_pool()
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True,
                                        name="faceflow-engine")
        self._thread.start()
        ready.wait(timeout=60)
        if not self.url:
            self.stop()
            raise RuntimeError("the engine did not start")
        return self

    def _run(self, ready: threading.Event) -> None:
        assert self._loop is not None
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._bind())
        finally:
            ready.set()
        self._loop.run_forever()

    async def _bind(self) -> None:
        assert self.state is not None
        self._runner = web.AppRunner(create_app(self.state), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._port)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://{self.host}:{port}"

    def stop(self) -> None:
        """Stop serving, shut the model processes down, remove a temporary data dir."""
        if self._loop is not None and self._thread is not None:
            if self._runner is not None:
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._loop.close()
        if self.state is not None:
            self.state.close()
        self._loop = self._thread = self._runner = None
        self.state = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> EngineServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- access for tests and benchmarks -------------------------------------------------

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1]) if self.url else 0

    @property
    def store(self) -> FaceStore:
        assert self.state is not None, "the engine is not running"
        return self.state.store

    @property
    def emulation(self) -> Emulation:
        assert self.state is not None, "the engine is not running"
        return self.state.emulation

    def call_in_loop(self, func: Callable[..., _T], *args: object) -> _T:
        """Run ``func(*args)`` on the engine's loop thread and return its result."""
        assert self._loop is not None

        async def run() -> _T:
            return func(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(120)

    def configure_emulation(self, **changes: Any) -> dict[str, Any]:
        """Change limits/faults at run time (same keys as POST /admin/emulation)."""
        return self.call_in_loop(lambda: self.emulation.configure(changes).as_json())

    def advance_clock(self, seconds: float) -> None:
        """Move the engine's clocks forward (token expiry, QPS windows, quota days)."""
        def shift() -> None:
            assert self.state is not None
            self.state.clock_offset += seconds
        self.call_in_loop(shift)

    def seed_faces(self, group_id: str, uids: list[str], descriptors: np.ndarray) -> int:
        """Bulk-register one face per uid (unit vectors, shape (n, 128)) without images."""
        def seed() -> int:
            assert self.state is not None
            rows = [(uid, f"synthetic {uid}", vec) for uid, vec in zip(uids, descriptors,
                                                                       strict=True)]
            self.state.apply(self.state.store.seed_faces(group_id, rows))
            return len(rows)
        return int(self.call_in_loop(seed))


def build_config(
    data_dir: Path,
    *,
    workers: int = 1,
    qps: float | None = None,
    daily_quota: int | None = None,
    token_ttl: float = 2592000.0,
    detector: str = "hog",
    faults: Mapping[str, float] | None = None,
    delay: float = 2.0,
    seed: int | None = None,
    env: Mapping[str, str] | None = None,
    store_url: str | None = None,
    model: str = "dlib",
    store_threads: int = 16,
) -> EngineConfig:
    """The configuration ``faceflow engine serve`` builds from its flags and environment."""
    api_key, secret_key = credentials_from_env(env)
    emulation = EmulationConfig(qps=qps, daily_quota=daily_quota, faults=dict(faults or {}),
                                delay=delay, seed=seed)
    return EngineConfig(Path(data_dir), api_key, secret_key, workers, token_ttl, detector,
                        emulation, store_url, model, store_threads)


def _check_listen(host: str, port: int) -> None:
    """ListenError when ``host:port`` cannot be bound now (port 0 always can)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ListenError(host, port, exc) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp does
        try:
            probe.bind(address)
        except OSError as exc:
            raise ListenError(host, port, exc) from None


class ListenError(OSError):
    """The engine cannot listen on ``host:port`` (in use, not allowed, no such address)."""

    def __init__(self, host: str, port: int, cause: OSError) -> None:
        why = ("the port is in use (another engine?); stop it or choose another --port"
               if cause.errno == errno.EADDRINUSE else cause.strerror or str(cause))
        super().__init__(cause.errno, f"cannot listen on {host}:{port}: {why}")
        self.host, self.port = host, port

    def __str__(self) -> str:
        return str(self.strerror)


def serve(
    config: EngineConfig, host: str = "127.0.0.1", port: int = 8480, out: TextIO | None = None
) -> None:
    """Run the engine in the foreground until SIGTERM/SIGINT (see the module docstring)."""
    out = out or sys.stdout
    _check_listen(host, port)  # before the model processes start: fail in a moment
    state = EngineState(config)
    state.start_pool()
    try:
        asyncio.run(_serve(state, host, port, out))
    finally:
        state.close()


async def _serve(state: EngineState, host: str, port: int, out: TextIO) -> None:
    # Handlers first: a parent may send SIGTERM the moment it reads the "listening" line,
    # and the default action would kill us and orphan the model processes.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(create_app(state), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise ListenError(host, port, exc) from None
    bound = runner.addresses[0][1]
    print(f"faceflow engine listening on http://{host}:{bound}", file=out, flush=True)
    indexer = (asyncio.create_task(_index_large_groups(state.config.store_url))
               if state.config.store_url else None)
    try:
        await stop.wait()
    finally:
        if indexer is not None:
            indexer.cancel()
        await runner.cleanup()


#: Seconds between two looks for shared-store groups grown large enough for an index, or
#: grown enough since theirs was built to build it again.
INDEX_EVERY = 60.0


async def _index_large_groups(url: str) -> None:
    """Build the index of groups that grew large, or grew since (pgstore.index_large_groups).

    Every replica looks; an advisory lock lets one build at a time, off the loop thread.
    A failed look is logged and retried at the next one: search stays exact meanwhile.
    """
    from pipeline.engine.pgstore import index_large_groups  # noqa: PLC0415

    while True:
        try:
            built = await asyncio.to_thread(index_large_groups, url)
            if built:
                log.info("built the index of %d group(s): %s", len(built), ", ".join(built))
        except Exception as exc:  # noqa: BLE001 - a background chore must not die
            log.warning("indexing large groups failed: %s", exc)
        await asyncio.sleep(INDEX_EVERY)
