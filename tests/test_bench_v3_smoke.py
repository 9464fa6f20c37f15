"""benchmarks/v3.py's cores at tiny sizes (structure and counts, no timing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import v3 as bench
from pipeline.client.config import Secret, Settings


def test_quota_on_v3_paths_is_counted_by_the_server():
    report = bench.measure_quota(5, 2)
    runs = list(report["runs"].values())
    assert len(runs) == 2 and all(r["rows"] == 10 for r in runs)
    assert all(r["detect"]["calls"] >= 10 and r["add"]["calls"] >= 10 for r in runs)


@pytest.mark.dlib
def test_bytes_runs_count_what_each_protocol_uploads(engine, samples_dir: Path, tmp_path):
    settings = Settings(endpoint=engine.url, api_key=Secret(engine.api_key),
                        secret_key=Secret(engine.secret_key))
    photo = samples_dir / "obama_01.jpg"
    runs = {api: bench._bytes_run(engine.url, settings,
                                  bench._enrollable(tmp_path, photo, 2, f"smoke_{api}"),
                                  tmp_path, "smoke", api, 2) for api in ("v2", "v3")}
    assert runs["v2"]["enrolled"] == runs["v3"]["enrolled"] == 2
    # v2 sends the photo twice, v3 once plus a face_token
    assert runs["v3"]["bytes_write"] < 1000 < runs["v2"]["bytes_write"]
    assert runs["v3"]["bytes_detect"] <= runs["v2"]["bytes_detect"]
