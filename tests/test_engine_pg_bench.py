"""benchmarks/scale_engine.py at a tiny size: two HNSW builds on one load, each measured,
and the figures make bench's table reads (the 1M run takes half an hour; this checks its
machinery in seconds on a real local PostgreSQL)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import run_all
from benchmarks import scale_engine as bench
from pipeline.postgres import PostgresUnavailable


def _fake_real(rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    """Descriptors standing in for the dev photos: 6 people, 2 photos each."""
    out = []
    for person in range(6):
        base = rng.normal(size=128)
        for _ in range(2):
            vec = base + rng.normal(scale=0.3, size=128)
            out.append((f"p{person}", (vec / np.linalg.norm(vec)).astype(np.float32)))
    return out


def test_two_builds_on_one_load_each_measured_and_tabled() -> None:
    real = _fake_real(np.random.default_rng(5))
    gen = bench.Generator(real)
    faces, probes = bench.build_set(1500, 20, real, gen)
    assert len(faces) == 1500 and len(probes) == 20
    emb, tops = bench.embedded(faces, probes)
    written: list[dict] = []
    out: dict = {}
    try:
        bench.postgres(faces, probes, [40, 100], tops, 8, [32, 16], out,
                       lambda _: written.append(dict(out)))
    except PostgresUnavailable as exc:
        pytest.skip(f"no local PostgreSQL: {exc}")
    assert list(out["builds"]) == ["32", "16"] and len(written) == 2
    for build in out["builds"].values():
        assert set(build["hnsw"]) == {"40", "100"}
        assert build["index_mb"] >= 0 and build["build_memory_mb"] == 1024
        for result in build["hnsw"].values():
            assert 0 <= result["same_top_as_exact"] <= 1 and 0 <= result["rank1"] <= 1
    # The headline figures are the first build's (the engine's ef_construction first).
    assert out["ef_construction"] == 32 and out["hnsw"] == out["builds"]["32"]["hnsw"]
    report = {"engine_ef_search": 100, "sizes": {"1500": {
        "faces": 1500, "probes": 20, "embedded": emb, "postgresql": out}}}
    rows = run_all._scale_engine(report)
    assert any("HNSW build (m=8, ef_construction=32)" in r[0] for r in rows)
    assert bench.result_name([100_000]) == "scale_engine"
    assert bench.result_name([100_000, 1_000_000]) == "scale_engine_large"
