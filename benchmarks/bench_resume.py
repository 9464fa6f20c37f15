"""How long resume takes to decide what is left of a finished 1M-row enroll run.

Builds (once, cached under runs/bench-resume-<rows>/, gitignored) a finished run: a
1,000,000-row CSV manifest and 1,000 Parquet parts of 1,000 outcomes, plus one
journal segment of 500 outcomes that never became a part (a crash). Then times,
in a fresh process each: opening the manifest (fingerprint, row count),
recovering the store (journal -> part, bitmap from the parts' ``row`` column),
and finding the first row left. Goal: <= 10 s in all.

    .venv/bin/python benchmarks/bench_resume.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.runs.outcomes import OUTCOME_SCHEMA  # noqa: E402
from pipeline.runs.rundir import ManifestRef, RunDir, RunInfo, to_micros  # noqa: E402

PART_ROWS = 1000
CRASHED = 500


def _part(run_id: str, rows: np.ndarray, ts: int) -> pa.Table:
    n = len(rows)
    cols = {name: pa.nulls(n, f.type) for name, f in zip(OUTCOME_SCHEMA.names, OUTCOME_SCHEMA,
                                                          strict=True)}
    cols.update(
        run_id=pa.array([run_id] * n), row=pa.array(rows, pa.int64()),
        line=pa.array(rows + 2, pa.int64()), uid=pa.array([f"u{r}" for r in rows]),
        image=pa.array([f"img/{r}.jpg" for r in rows]), status=pa.array(["enrolled"] * n),
        reasons=pa.array([[]] * n, pa.list_(pa.string())), retryable=pa.array([False] * n),
        transformed=pa.array([[]] * n, pa.list_(pa.string())),
        attempts=pa.array(np.full(n, 2), pa.int32()),
        started_at=pa.array(np.full(n, ts), pa.timestamp("us", tz="UTC")),
        finished_at=pa.array(np.full(n, ts), pa.timestamp("us", tz="UTC")),
    )
    return pa.table(cols, schema=OUTCOME_SCHEMA)


def build(folder: Path, rows: int) -> None:
    """A finished run of ``rows`` rows, the last CRASHED outcomes only in the journal."""
    if (folder / "done").exists():
        return
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "run" / "outcomes").mkdir(parents=True)
    (folder / "run" / "journal").mkdir(parents=True)
    manifest = folder / "manifest.csv"
    with open(manifest, "w") as fh:
        fh.write("uid,image,user_info\n")
        fh.writelines(f"u{r},img/{r}.jpg,member {r}\n" for r in range(rows))
    ts = to_micros(datetime.now(UTC))
    in_parts = rows - CRASHED
    for n, start in enumerate(range(0, in_parts, PART_ROWS)):
        stop = min(start + PART_ROWS, in_parts)
        pq.write_table(_part("bench", np.arange(start, stop), ts),
                       folder / "run" / "outcomes" / f"part-{n:05d}.parquet")
    seg = folder / "run" / "journal" / f"seg-{n + 1:05d}.jsonl"
    journal = _part("bench", np.arange(in_parts, rows), ts).to_pylist()
    with open(seg, "w") as fh:
        for rec in journal:
            rec["started_at"] = rec["finished_at"] = ts
            fh.write(json.dumps(rec) + "\n")
    RunDir(folder / "run").write_info(RunInfo("bench", "enroll", datetime.now(UTC).isoformat(),
                                              ManifestRef(str(manifest), "", rows)))
    (folder / "done").touch()


_MEASURE = """
import sys, time, json
t0 = time.perf_counter()
import numpy as np
from pipeline.runs.outcomes import OUTCOME_SCHEMA
from pipeline.runs.rundir import RunDir
t_import = time.perf_counter()
folder, rows = sys.argv[1], int(sys.argv[2])
fingerprint = None
try:
    from pipeline.runs.manifest import open_manifest
    m = open_manifest(folder + "/manifest.csv", default_group="g")
    rows, fingerprint = m.num_rows, m.fingerprint
except ImportError:
    pass
t_manifest = time.perf_counter()
store = RunDir(folder + "/" + sys.argv[3]).open_store(OUTCOME_SCHEMA, rows)
t_store = time.perf_counter()
left = np.flatnonzero(~store.done)
t_left = time.perf_counter()
print(json.dumps({"imports_s": t_import - t0, "manifest_s": t_manifest - t_import,
                  "store_s": t_store - t_manifest, "left_s": t_left - t_store,
                  "recovered": store.recovered, "rows_left": int(left.size),
                  "with_manifest_module": fingerprint is not None}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    folder = ROOT / "runs" / f"bench-resume-{args.rows}"
    t = time.perf_counter()
    build(folder, args.rows)
    print(f"fixture ready in {time.perf_counter() - t:.1f} s: {folder}")
    shutil.rmtree(folder / "run2", ignore_errors=True)
    shutil.copytree(folder / "run", folder / "run2")  # the copy gets recovered
    results = []
    for attempt in ("first resume (recovers the journal)", "second resume (parts only)"):
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", _MEASURE, str(folder), str(args.rows), "run2"],
                             cwd=ROOT, capture_output=True, text=True, check=True,
                             env={"PYTHONPATH": str(ROOT)} | _env())
        total = time.perf_counter() - t
        stats = json.loads(out.stdout)
        print(f"{attempt}: {total:.2f} s wall in a fresh process; "
              + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in stats.items()))
        results.append({"attempt": attempt, "wall_s": round(total, 2),
                        **{k: round(v, 3) if isinstance(v, float) else v
                           for k, v in stats.items()}})
    shutil.rmtree(folder / "run2", ignore_errors=True)
    from benchmarks.common import write_result

    worst = max(r["wall_s"] for r in results)
    write_result("resume", {"rows": args.rows, "runs": results, "worst_wall_s": worst,
                            "goal": "<= 10 s", "verdict": "PASS" if worst <= 10 else "FAIL"})


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


if __name__ == "__main__":
    main()
