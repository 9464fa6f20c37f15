"""`faceflow enroll` again on a finished run: the whole command, wall time and peak RSS.

Builds (in a temporary folder) a finished enroll run of ``--rows`` rows: the CSV
manifest, Parquet parts of 1,000 outcomes with every second row not enrolled, and a
``run.json`` with the manifest's fingerprint. Then runs the real command
(``faceflow enroll m.csv --group bench --run-dir R``; no call is made, every row
has an outcome) in a fresh process, three times:

1. ``failures.csv`` missing: it is written (the rows not enrolled, image paths absolute);
2. nothing changed: the command only checks, and leaves failures.csv alone;
3. the same again.

Each prints the command's wall time and the process's peak RSS (``wait4``).
Goal (issue 17): <= 2 s and flat memory for the nothing-changed case at 100k rows.

    .venv/bin/python benchmarks/resume_finished.py [--rows 100000]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_result  # noqa: E402
from pipeline.runs.outcomes import OUTCOME_SCHEMA  # noqa: E402
from pipeline.runs.rundir import ManifestRef, RunDir, RunInfo, to_micros  # noqa: E402

PART_ROWS = 1000
GOAL_S = 2.0


def _part(rows: np.ndarray, ts: int) -> pa.Table:
    n = len(rows)
    cols = {f.name: pa.nulls(n, f.type) for f in OUTCOME_SCHEMA}
    failed = rows % 2 == 1
    cols.update(
        run_id=pa.array(["bench"] * n), row=pa.array(rows, pa.int64()),
        line=pa.array(rows + 2, pa.int64()), uid=pa.array([f"u{r}" for r in rows]),
        group_id=pa.array(["bench"] * n), image=pa.array([f"photos/{r}.jpg" for r in rows]),
        status=pa.array(np.where(failed, "rejected_quality", "enrolled").tolist()),
        reasons=pa.array([["blur"] if f else [] for f in failed], pa.list_(pa.string())),
        retryable=pa.array([False] * n), transformed=pa.array([[]] * n, pa.list_(pa.string())),
        attempts=pa.array(np.full(n, 2), pa.int32()),
        started_at=pa.array(np.full(n, ts), pa.timestamp("us", tz="UTC")),
        finished_at=pa.array(np.full(n, ts), pa.timestamp("us", tz="UTC")))
    return pa.table(cols, schema=OUTCOME_SCHEMA)


def build(folder: Path, rows: int) -> tuple[Path, Path]:
    """(manifest, run dir) of a finished run of ``rows`` rows."""
    manifest = folder / "m.csv"
    with open(manifest, "w", encoding="utf-8") as fh:
        fh.write("uid,image,user_info\n")
        fh.writelines(f"u{r},photos/{r}.jpg,member {r}\n" for r in range(rows))
    run = folder / "run"
    (run / "outcomes").mkdir(parents=True)
    ts = to_micros(datetime.now(UTC))
    for n, start in enumerate(range(0, rows, PART_ROWS)):
        pq.write_table(_part(np.arange(start, min(start + PART_ROWS, rows)), ts),
                       run / "outcomes" / f"part-{n:05d}.parquet")
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
    options = {"group": "bench", "mode": "add", "concurrency": 8, "qps": None,
               "largest_face": False, "threshold_overrides": {}}
    RunDir(run).write_info(RunInfo("bench", "enroll", datetime.now(UTC).isoformat(),
                                   ManifestRef(str(manifest), f"sha256:{digest}", rows),
                                   options=options, counts={"enrolled": rows}, exit_code=1))
    return manifest, run


def run_command(manifest: Path, run: Path) -> tuple[float, float, int]:
    """(wall s, peak RSS MB, exit code) of one `faceflow enroll` in a fresh process."""
    env = {**os.environ, "FACEFLOW_ENDPOINT": "http://127.0.0.1:9",
           "FACEFLOW_API_KEY": "bench-key", "FACEFLOW_SECRET_KEY": "bench-secret"}
    cmd = [sys.executable, "-c", "from jobs.cli import main; main()", "enroll", str(manifest),
           "--group", "bench", "--run-dir", str(run)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    return wall, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="faceflow-bench-") as tmp:
        manifest, run = build(Path(tmp), args.rows)
        for label in ("failures.csv missing (written)", "nothing changed",
                      "nothing changed, again"):
            wall, rss, code = run_command(manifest, run)
            lines = sum(1 for _ in open(run / "failures.csv", encoding="utf-8")) - 1
            runs.append({"case": label, "wall_s": round(wall, 2), "peak_rss_mb": round(rss),
                         "exit_code": code, "failures_rows": lines})
            print(f"{args.rows:,} rows, {label}: {wall:.2f} s, peak RSS {rss:.0f} MB, "
                  f"exit {code}, failures.csv {lines:,} rows", flush=True)
    unchanged = max((r for r in runs[1:]), key=lambda r: r["wall_s"])
    ok = unchanged["wall_s"] <= GOAL_S and all(r["exit_code"] == 1 for r in runs)
    print(f"verdict: {'PASS' if ok else 'FAIL'} (goal <= {GOAL_S} s when nothing changed)")
    write_result("resume_finished", {"rows": args.rows, "runs": runs, "goal_s": GOAL_S,
                                     "verdict": "PASS" if ok else "FAIL"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
