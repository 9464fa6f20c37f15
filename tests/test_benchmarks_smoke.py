"""The benchmark scripts' cores at tiny sizes, so they do not rot between `make bench` runs.

Structure and counts only: no assertion here depends on how fast the machine is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import quota, run_all, scale

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def no_work_server():
    """benchmarks/quota.py's counting server (Q = 5 per interface), in its own process."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "quota.py"),
                             "--serve", "5"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield f"http://127.0.0.1:{proc.stdout.readline().strip()}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_manifest_generator_and_stream_child_see_every_row(tmp_path: Path, samples_dir: Path):
    photos = scale.copy_photos(tmp_path)
    path = tmp_path / "m.csv"
    scale.write_manifest(path, 2500, photos, slice_rows=1000)  # three slices
    lines = path.read_text().splitlines()
    assert lines[0] == '"uid","image","user_info"'
    assert len(lines) == 2501  # header + one line per row
    assert lines[2500] == f'"u2499","{photos[2499 % len(photos)]}","member 2499"'
    result = scale.stream_child(path, tmp_path / "run")
    assert result["rows"] == 2500 and result["refused_rows"] == 0
    assert result["peak_rss_mb"] > 0


def test_faceflow_and_naive_runs_are_counted_by_the_server(tmp_path: Path, samples_dir: Path,
                                                           no_work_server: str):
    manifest = quota.make_manifest(tmp_path, 12)
    quota._admin(no_work_server, "/admin/reset?q=5", "POST")
    quota.run_faceflow(no_work_server, manifest, tmp_path / "run", 5)
    stats = quota._admin(no_work_server, "/admin/stats")
    assert sum(stats["ok"]["detect"].values()) == 12
    assert sum(stats["ok"]["add"].values()) == 12
    quota._admin(no_work_server, "/admin/reset?q=5", "POST")
    quota.run_naive(no_work_server, (tmp_path / "face.jpg").read_bytes(), 12, threads=4)
    stats = quota._admin(no_work_server, "/admin/stats")
    # 4 threads against 5/s: the naive script meets error 18 and still does every row.
    assert sum(stats["ok"]["add"].values()) == 12
    assert sum(stats["rejected"].get("detect", {}).values()) > 0


def test_utilisation_timeline_and_verdicts_from_server_counts():
    ok = {str(s): 10 for s in range(100, 140)}
    stats = {"ok": {"detect": ok, "add": ok}, "rejected": {"detect": {"100": 5}}}
    figures = quota.utilisation(stats, 10.0)
    assert figures["detect"]["utilisation"] == 1.0
    assert figures["detect"]["rejected"] == 5 and figures["add"]["rejected"] == 0
    line = quota.timeline(stats, 10.0)
    assert len(line["detect"]) == 7 and set(line["detect"]) == {1.0}
    run = {**figures, "timeline_5s": line, "after_30s": quota.after(line, 30)}
    slow = {**run, "after_30s": {"min": 0.9, "mean": 0.95, "windows": 2}}
    assert quota.verdicts({"runs": {"a": run, "b": run}}) == {
        "known_quota": "FAIL", "unknown_quota": "PASS"}  # 5 rejections of 405: > 0.5 %
    assert quota.verdicts({"runs": {"a": run, "b": slow}})["unknown_quota"] == "FAIL"


def test_run_all_understands_every_committed_result():
    """Each script's JSON (as last committed) becomes table rows, none 'not understood'."""
    results = {}
    for name, (command, _) in run_all.SCRIPTS.items():
        path = ROOT / "benchmarks" / "results" / f"{name}.json"
        if path.exists():
            results[name] = {"status": "ok", "wall_s": 1.0, "command": " ".join(command),
                             "result": json.loads(path.read_text())}
    results["crashed"] = {"status": "exit 1", "wall_s": 1.0, "command": "x", "result": None}
    rows = run_all.table_rows(results)
    assert not [r for r in rows if "not understood" in r[1]]
    assert ("crashed", "exit 1", "", "**no figure**", "`x`") in rows
    assert len({r[4] for r in rows}) == len(results)


def test_ledger_bench_decides_exactly_the_known_rows(tmp_path: Path) -> None:
    from benchmarks import ledger as bench
    from pipeline.ledger import open_ledger
    from pipeline.ledger.runs import known_rows, skip_known
    from pipeline.runs.manifest import open_manifest
    from pipeline.runs.outcomes import OUTCOME_SCHEMA
    from pipeline.runs.rundir import RunDir

    manifest_path, ledger_path, _ = bench.build(tmp_path / "b", 2500, 2400)
    manifest = open_manifest(manifest_path, default_group=bench.GROUP)
    with open_ledger(str(ledger_path)) as book:
        found = [k for batch in known_rows(manifest, book, bench.ENDPOINT) for k in batch.rows]
        assert found == list(range(2400))  # the first 2400 rows are the known ones
        store = RunDir(tmp_path / "run").open_store(OUTCOME_SCHEMA, manifest.num_rows)
        assert skip_known(manifest, book, bench.ENDPOINT, store, "r") == 2400
        store.close()
    assert int(store.done.sum()) == 2400
