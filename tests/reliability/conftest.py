"""Fixtures of the reliability suite: one engine (two model processes) and one photo folder.

Each test module uses its own group and uids on the shared engine, and restores any
emulation it changes. Tests that need another engine (short token lifetime, distinctive
credentials, a subprocess to kill) start their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.reliability import face_photos

#: Photos made once for the package; tests take slices of them.
PHOTOS = 80


@pytest.fixture(scope="package")
def rel_engine(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A running EngineServer with two model processes (one per core), demo credentials."""
    from pipeline.engine.server import EngineServer  # noqa: PLC0415

    with EngineServer(tmp_path_factory.mktemp("rel-engine"), workers=2) as server:
        yield server


@pytest.fixture(scope="package")
def photos(samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """:data:`PHOTOS` small JPEGs that pass the quality gate, each with its own bytes."""
    return face_photos(samples_dir, tmp_path_factory.mktemp("rel-photos"), PHOTOS)
