"""Shared fixtures. Helpers for one area live next to their tests (e.g. tests/doubles.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "data" / "samples"
DEVSET = ROOT.parent / "shared" / "faces"


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
