"""PostgreSQL for tests: one throwaway cluster per session, one fresh schema per test.

``pg_server`` (session): the URL of a server with pgvector. ``FACEFLOW_TEST_PG=<url>``
uses a site's own server (it must have the ``vector`` extension available); otherwise a
:class:`pipeline.postgres.LocalCluster` starts in a temporary folder on a Unix socket
(as the dedicated non-root user when the tests run as root, as CI does). Tests that use
it skip, with the reason, only when no server can be started.

``pg_url`` (per test): a URL whose ``search_path`` is a new, empty schema, dropped after
the test; everything the test creates (tables, partitions) lives there, so tests never
see each other's rows and a site's server keeps nothing.
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from pipeline.postgres import LocalCluster, PostgresUnavailable, connect

_SCHEMAS = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    site = os.environ.get("FACEFLOW_TEST_PG", "").strip()
    if site:
        _ensure_vector(site)
        yield site
        return
    cluster = LocalCluster(fsync=False)
    try:
        cluster.start()
        _ensure_vector(cluster.url)
    except (PostgresUnavailable, OSError) as exc:
        cluster.stop()
        pytest.skip(f"no PostgreSQL for these tests: {exc}")
    try:
        yield cluster.url
    finally:
        cluster.stop()


def _ensure_vector(url: str) -> None:
    with connect(url) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    schema = new_schema(pg_server)
    yield with_schema(pg_server, schema)
    with connect(pg_server) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def new_schema(server: str) -> str:
    """Create a new, empty schema on ``server``; its name."""
    schema = f"t{next(_SCHEMAS)}_{uuid.uuid4().hex[:8]}"
    with connect(server) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return schema


def fresh_schema(server: str) -> str:
    """A URL of ``server`` whose search_path starts with a new, empty schema."""
    return with_schema(server, new_schema(server))


def with_schema(url: str, schema: str) -> str:
    """``url`` with libpq ``options`` putting ``schema`` first on the search_path."""
    option = quote(f"-csearch_path={schema},public", safe="")
    return f"{url}{'&' if '?' in url else '?'}options={option}"
