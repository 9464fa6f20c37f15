"""Shared fixtures. Helpers used by several test modules live in tests/support/."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from support.pg_fixtures import pg_server, pg_url  # noqa: F401 - fixtures (PostgreSQL)

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "data" / "samples"
DEVSET = ROOT.parent / "shared" / "faces"


@pytest.fixture(autouse=True)
def _logger_levels():
    """Put back the levels of faceflow's loggers after each test: a CLI run through
    CliRunner sets them (jobs.cli.configure_logging), and a level left behind hides
    the records a later test captures with caplog."""
    names = ("faceflow", "pipeline", "jobs")
    saved = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """Public-domain photos fetched by `make setup` (data/fetch_samples.py)."""
    if not (SAMPLES / ".complete").exists():
        from data.fetch_samples import fetch  # noqa: PLC0415

        fetch(SAMPLES)
    return SAMPLES


@pytest.fixture(scope="session")
def devset_dir() -> Path:
    """The labelled development set ../shared/faces; tests using it skip when absent."""
    if not (DEVSET / "labels.csv").exists():
        pytest.skip("../shared/faces is not present")
    return DEVSET


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """A running local engine (pipeline.engine.server.EngineServer) shared by the session.

    One model process, a fresh data dir, demo credentials; ``engine.url``,
    ``engine.api_key`` / ``engine.secret_key``, ``engine.store.counts()``. Tests that
    change its emulation must restore it (``engine.configure_emulation(...)``).
    ``FACEFLOW_TEST_ENGINE_STORE=postgresql`` runs it on the shared PostgreSQL store
    instead (a fresh schema on the tests' server), so the engine's API tests cover both.
    """
    from pipeline.engine.server import EngineServer  # noqa: PLC0415

    store_url = None
    if os.environ.get("FACEFLOW_TEST_ENGINE_STORE", "") == "postgresql":
        from support.pg_fixtures import fresh_schema  # noqa: PLC0415

        from pipeline.engine.pgstore import migrate  # noqa: PLC0415

        store_url = fresh_schema(request.getfixturevalue("pg_server"))
        migrate(store_url)
    with EngineServer(tmp_path_factory.mktemp("engine-data"), workers=1,
                      store_url=store_url) as server:
        yield server
