"""benchmarks/scale_engine.py at a tiny size: the engine's IVFFlat build and an HNSW build
on one load, each measured, and the figures make bench's table reads (the 1M run takes
minutes; this checks its machinery in seconds on a real local PostgreSQL)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import run_all
from benchmarks import scale_engine as bench
from pipeline.engine.pgstore import ivf_lists, ivf_probes
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


def test_ivfflat_and_hnsw_on_one_load_each_measured_and_tabled() -> None:
    real = _fake_real(np.random.default_rng(5))
    gen = bench.Generator(real)
    faces, probes = bench.build_set(1500, 20, real, gen)
    assert len(faces) == 1500 and len(probes) == 20
    emb, tops = bench.embedded(faces, probes)
    written: list[dict] = []
    out: dict = {}
    try:
        bench.postgres(faces, probes, tops, widths=[4, 8, 500], efs=[40, 100],
                       hnsw=[(8, 32)], out=out, progress=lambda _: written.append(dict(out)))
    except PostgresUnavailable as exc:
        pytest.skip(f"no local PostgreSQL: {exc}")
    assert len(written) == 2  # after each build
    ivf = out["ivfflat"]
    engine = ivf_probes(ivf_lists(1500))
    assert ivf["lists"] == ivf_lists(1500) and ivf["engine_probes"] == engine
    # The sweep, without widths past the lists, plus the engine's own.
    assert set(ivf["probes"]) == {"4", "8", str(engine)}
    assert list(out["hnsw"]) == ["8:32"] and set(out["hnsw"]["8:32"]["ef_search"]) == {"40", "100"}
    for result in [*ivf["probes"].values(), *out["hnsw"]["8:32"]["ef_search"].values()]:
        assert 0 <= result["same_top_as_exact"] <= 1 and 0 <= result["rank1"] <= 1
    # At 20 probes nothing may be missed for a width to be chosen; exact-like widths agree.
    assert ivf["probes"][str(engine)]["same_top_as_exact"] >= 0.9
    assert ivf["chosen_probes"] is None or ivf["chosen_probes"] in (4, 8, engine)
    report = {"sizes": {"1500": {"faces": 1500, "probes": 20, "embedded": emb,
                                 "postgresql": out}}}
    rows = run_all._scale_engine(report)
    assert any(f"IVFFlat ({ivf['lists']} lists, {engine} probed)" in r[0] for r in rows)
    assert any("HNSW (m:ef_construction 8:32)" in r[0] for r in rows)


def test_choose_width_keeps_a_margin() -> None:
    def by(*shares: float) -> dict[str, dict[str, float]]:
        widths = ("8", "16", "32")[: len(shares)]
        return {w: {"same_top_as_exact": v} for w, v in zip(widths, shares, strict=True)}

    assert bench.choose_width(by(0.997, 0.999, 1.0), 1000) == 16  # 1 miss in 1,000 allowed
    assert bench.choose_width(by(0.99, 0.9967, 1.0), 300) == 32  # none in 300
    assert bench.choose_width(by(0.9), 1000) is None
