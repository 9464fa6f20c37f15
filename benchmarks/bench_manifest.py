"""Manifest validation throughput and peak memory, on generated CSV manifests.

Builds (once, cached under runs/bench-manifest/, gitignored) a CSV manifest of
``--rows`` rows (uid, group_id, image, user_info; 0.1 % of rows repeat an earlier
row), then, in a fresh process each, measures:

- ``open``: :func:`open_manifest` (fingerprint, validation pass, duplicate pass);
- ``open+iterate``: the same, then every row through ``batches(1024)``.

Printed per run: wall and CPU seconds (CPU time includes imports; the machine may be
shared), rows/s and the peak RSS of the process (VmHWM), after the
RSS of a process that only imported faceflow's manifest module (the floor).
Goals: the validation pass of 1M rows in a few seconds; the whole enroll process
<= 300 MB peak RSS at 10M rows, so open+iterate must stay well under that.

    .venv/bin/python benchmarks/bench_manifest.py [--rows 1000000 10000000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import write_result  # noqa: E402

CACHE = ROOT / "runs" / "bench-manifest"

_CHILD = r"""
import json, resource, sys, time


def peak_mb():
    # VmHWM, not ru_maxrss: after exec, ru_maxrss can still hold the parent's peak.
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024


from pipeline.runs.manifest import open_manifest

path, mode = sys.argv[1], sys.argv[2]
t0 = time.perf_counter()
rows = dups = 0
if mode != "import":
    m = open_manifest(path)
    rows, dups = m.num_rows, m.num_duplicates
    if mode == "iterate":
        seen = sum(len(b) for b in m.batches(1024))
        assert seen == rows, (seen, rows)
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"s": time.perf_counter() - t0, "cpu": usage.ru_utime + usage.ru_stime,
                  "rows": rows, "dups": dups, "rss_mb": peak_mb()}))
"""

def build(rows: int) -> Path:
    """A CSV manifest of ``rows`` rows, written in 1M-row slices (cached)."""
    path = CACHE / f"manifest-{rows}.csv"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    rng = np.random.default_rng(1)
    with pcsv.CSVWriter(tmp, pa.schema([(n, pa.string()) for n in
                                        ("image", "uid", "group_id", "user_info")])) as out:
        for start in range(0, rows, 1_000_000):
            ids = np.arange(start, min(rows, start + 1_000_000))
            # 0.1 % of rows repeat a random earlier row: the duplicate pass has work.
            repeat = rng.random(len(ids)) < 0.001
            ids[repeat] = rng.integers(0, max(1, start + 1), repeat.sum())
            out.write_table(_table(ids))
    tmp.rename(path)
    return path


def _table(ids: np.ndarray) -> pa.Table:
    text = ids.astype(str)
    return pa.table({
        "image": [f"photos/{i[-3:]}/{i}.jpg" for i in text],
        "uid": [f"member_{i:0>9}" for i in text],
        "group_id": [f"branch_{int(i) % 50}" for i in text],
        "user_info": [f"Member {i}, joined 2024" for i in text],
    })


def measure(path: Path, mode: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), mode], cwd=ROOT,
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--iterate-max", type=int, default=None, metavar="ROWS",
                        help="iterate every row only for manifests up to ROWS (time budget)")
    args = parser.parse_args()
    floor = measure(Path("-"), "import")
    print(f"import only: peak RSS {floor['rss_mb']:.0f} MB")
    results: list[dict] = []
    for rows in args.rows:
        t0 = time.perf_counter()
        path = build(rows)
        size = path.stat().st_size / 2**20
        print(f"\n{rows:,} rows, {size:.0f} MiB CSV (built/cached in "
              f"{time.perf_counter() - t0:.1f} s)")
        iterate = args.iterate_max is None or rows <= args.iterate_max
        for mode in ("open", "iterate") if iterate else ("open",):
            r = measure(path, mode)
            results.append({"rows": rows, "mode": mode, "csv_mib": round(size),
                            "wall_s": round(r["s"], 2), "cpu_s": round(r["cpu"], 2),
                            "rows_per_s": round(r["rows"] / r["s"]),
                            "peak_rss_mb": round(r["rss_mb"]), "duplicates": r["dups"]})
            label = "open (validate)" if mode == "open" else "open + iterate all rows"
            print(f"  {label:<24} {r['s']:7.2f} s wall ({r['cpu']:.2f} s CPU)  "
                  f"{r['rows'] / r['s']:>10,.0f} rows/s  peak RSS {r['rss_mb']:5.0f} MB  "
                  f"duplicates {r['dups']:,}")
    write_result("manifest", {"import_only_rss_mb": round(floor["rss_mb"]), "runs": results,
                              "goal": "peak RSS <= 300 MB at 10M rows"})


if __name__ == "__main__":
    main()
