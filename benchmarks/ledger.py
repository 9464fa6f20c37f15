"""How long a run with a ledger takes to decide what to send: 1M rows, 999k known.

Builds in a temporary folder: ``--rows`` image files (hard links to 20 small
files, so the setup stays fast; each path has its own directory entry and stat),
a CSV manifest of one row per file, and a ledger that holds ``--known`` of those
rows (recorded through the ledger's own ``record``, with each file's stat, as an
enroll with ``--ledger`` leaves them). Then times, in this process:

1. validate: ``open_manifest`` (the pass every enroll makes first);
2. decide: :func:`pipeline.ledger.runs.known_rows` over every row: the ledger
   lookup (one join per batch) and one ``stat`` per candidate row;
3. write: the ``skipped_known`` outcomes of the known rows as Parquet parts
   (:func:`skip_known` into a fresh run directory's store).

Goal: decide <= 30 s for 1M rows with 999k known (issue 13). Peak RSS is printed.

    .venv/bin/python benchmarks/ledger.py [--rows 1000000 --known 999000]
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_result  # noqa: E402
from pipeline.ledger import Entry, open_ledger  # noqa: E402
from pipeline.ledger.runs import known_rows, skip_known  # noqa: E402
from pipeline.runs.manifest import open_manifest  # noqa: E402
from pipeline.runs.outcomes import OUTCOME_SCHEMA  # noqa: E402
from pipeline.runs.rundir import RunDir  # noqa: E402

ENDPOINT = "127.0.0.1:8480"
GROUP = "members"
PER_DIR = 1000
SOURCES = 20  # ext4 allows 65,000 links per file


def build(folder: Path, rows: int, known: int) -> tuple[Path, Path, float]:
    """(manifest, ledger, setup seconds)."""
    started = time.perf_counter()
    img = folder / "img"
    img.mkdir(parents=True)
    sources = []
    for s in range(SOURCES):
        src = img / f"source{s}.jpg"
        src.write_bytes(b"\xff\xd8 not decoded here " + str(s).encode() * 50)
        sources.append(src)
    stats = [os.stat(p) for p in sources]
    manifest = folder / "members.csv"
    now = datetime.now(UTC)
    book = open_ledger(str(folder / "ledger.sqlite"))
    entries: list[Entry] = []
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["uid", "image", "user_info"])
        for r in range(rows):
            sub = img / f"d{r // PER_DIR:04d}"
            if r % PER_DIR == 0:
                sub.mkdir()
            rel = f"img/d{r // PER_DIR:04d}/m{r}.jpg"
            os.link(sources[r % SOURCES], folder / rel)
            writer.writerow([f"member_{r}", rel, f"member {r}"])
            if r < known:
                st = stats[r % SOURCES]
                entries.append(Entry(
                    endpoint=ENDPOINT, group_id=GROUP, uid=f"member_{r}",
                    image_sha256=f"{r:064x}", action="enrolled", run_id="night-1", row=r,
                    at=now, face_count=1, detect_log_id=r, write_log_id=r,
                    image_path=str(folder / rel), image_size=st.st_size,
                    image_mtime_ns=st.st_mtime_ns, user_info=f"member {r}"))
            if len(entries) >= 50_000:
                book.record(entries)
                entries = []
    book.record(entries)
    book.close()
    return manifest, folder / "ledger.sqlite", time.perf_counter() - started


def _rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--known", type=int, default=999_000)
    parser.add_argument("--goal-s", type=float, default=30.0)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="faceflow-bench-ledger-"))
    try:
        manifest_path, ledger_path, setup_s = build(folder, args.rows, args.known)
        rss_setup = _rss_mb()
        t0 = time.perf_counter()
        manifest = open_manifest(manifest_path, default_group=GROUP)
        t1 = time.perf_counter()
        book = open_ledger(str(ledger_path))
        decided = sum(len(found) for found in known_rows(manifest, book, ENDPOINT))
        t2 = time.perf_counter()
        rundir = RunDir(folder / "run")
        store = rundir.open_store(OUTCOME_SCHEMA, manifest.num_rows)
        written = skip_known(manifest, book, ENDPOINT, store, "night-2")
        store.close()
        t3 = time.perf_counter()
        book.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result = {
        "rows": args.rows, "known": args.known, "setup_s": round(setup_s, 1),
        "validate_s": round(t1 - t0, 2), "decide_s": round(t2 - t1, 2),
        "decided_known": decided, "to_send": args.rows - decided,
        "decide_and_write_s": round(t3 - t2, 2), "written_skipped_known": written,
        "peak_rss_mb_setup": rss_setup, "peak_rss_mb": _rss_mb(), "goal_s": args.goal_s,
        "verdict": "PASS" if t2 - t1 <= args.goal_s and decided == args.known else "FAIL",
    }
    print(f"{args.rows:,} rows, {args.known:,} in the ledger (setup {setup_s:.0f} s)")
    print(f"  validate the manifest            {t1 - t0:6.2f} s")
    print(f"  decide what to send              {t2 - t1:6.2f} s   goal <= {args.goal_s:g} s: "
          f"{result['verdict']} ({decided:,} known, {args.rows - decided:,} to send)")
    print(f"  decide again + write {written:,} skipped_known outcomes  {t3 - t2:6.2f} s")
    print(f"  peak RSS {result['peak_rss_mb']} MB (after setup {rss_setup} MB)")
    write_result("ledger", result)


if __name__ == "__main__":
    main()
