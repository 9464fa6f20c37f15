"""The benchmark scripts' cores at tiny sizes, so they do not rot between `make bench` runs.

Structure and counts only: no assertion here depends on how fast the machine is.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import quota, run_all, scale

ROOT = Path(__file__).resolve().parent.parent


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


def test_one_quota_scenario_of_each_client_is_counted_by_its_server(samples_dir: Path):
    """benchmarks/quota.py's runs at a tiny size: its server (Q = 5, fixed windows) counts
    every call of faceflow and of the naive script; every row gets done."""
    for client, qps in (("faceflow", 5.0), ("naive", None)):
        spec = {"name": f"fixed: {client}", "kind": "known", "client": client, "qps": qps,
                "shape": "fixed", "faults": {}, "length": 1, "q": 5.0, "seconds": 3}
        run = quota.one_run(spec)
        assert (run["rows"], run["rows_failed"], run["unfinished"]) == (15, 0, 0)
        assert run["calls"] >= 30  # a detect and an add per row, at least
        assert 0.0 <= run["rejected"] <= 1.0


def test_figures_and_verdicts_from_server_counts():
    ok = {str(s): 10 for s in range(100, 140)}
    stats = {"detect": {"ok": ok, "limited": {"100": 5}}, "add": {"ok": ok}}
    run = quota.measure_run(stats, 10.0)
    assert run["q_share"] == run["q_share_after_10s"] == 1.0 and run["calls"] == 805
    assert run["rejected"] == round(5 / 805, 4) and run["rejected_after_10s"] == 0.0
    assert run["rows_per_s_first_quarter"] == run["rows_per_s_last_quarter"] == 10.0
    known = {**run, "name": "a", "kind": "known", "client": "faceflow", "rows_failed": 0,
             "unfinished": 0}
    assert quota.verdict(known, [known]) == "FAIL"  # 5 rejections of 805: > 0.5 %
    assert quota.verdict({**known, "kind": "unknown"}, [known]) == "PASS"
    assert quota.verdict({**known, "client": "naive"}, [known]) is None


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
