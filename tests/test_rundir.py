"""Run directories: run.json, the journal, atomic parts and the resume set."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.api.errors import ConfigError
from pipeline.runs.outcomes import OUTCOME_SCHEMA, make_outcome
from pipeline.runs.rundir import ManifestRef, RunDir, RunInfo, new_run_id, read_journal, to_micros

T0 = datetime(2026, 11, 25, 1, 2, 3, tzinfo=UTC)
ROOT = Path(__file__).resolve().parent.parent


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def rec(row: int, status: str = "enrolled"):
    return make_outcome(run_id="r1", row=row, line=row + 2, uid=f"u{row}", status=status,
                        started_at=T0, finished_at=T0 + timedelta(milliseconds=row))


def rows_in_parts(rd: RunDir) -> list[int]:
    return sorted(rd.read_records(OUTCOME_SCHEMA, ["row"]).column("row").to_pylist())


def test_run_id_is_sortable_time_then_hex() -> None:
    assert new_run_id(T0, token=lambda n: "ab" * n) == "20261125T010203Z-ababab"
    assert len(new_run_id().split("-")[1]) == 6


def test_run_info_round_trip_and_missing(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "run")
    with pytest.raises(ConfigError, match="holds no run"):
        rd.read_info()
    info = RunInfo(run_id="x", job="enroll", created_at=T0.isoformat(),
                   manifest=ManifestRef("/m.csv", "sha256:00", 3), options={"mode": "add"})
    rd.write_info(info)
    assert rd.exists() and rd.read_info() == info
    updated = rd.update_info(exit_code=1, counts={"enrolled": 2})
    assert RunDir(rd.path).read_info().exit_code == 1 and updated.counts == {"enrolled": 2}
    assert not list(rd.path.glob("*.tmp"))


def test_flush_by_row_count_writes_parts_and_drops_segments(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    store = rd.open_store(OUTCOME_SCHEMA, 10, flush_rows=4, flush_seconds=1e9)
    for i in range(10):
        store.append(rec(i))
    assert [p.name for p in rd.part_paths()] == ["part-00000.parquet", "part-00001.parquet"]
    assert store.pending == 2
    assert [p.name for p in rd.journal_dir.iterdir()] == ["seg-00002.jsonl"]
    store.close()
    assert rows_in_parts(rd) == list(range(10))
    assert not list(rd.journal_dir.iterdir())
    assert store.done.all()


def test_flush_by_time_uses_the_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    store = RunDir(tmp_path).open_store(OUTCOME_SCHEMA, 5, flush_rows=100, flush_seconds=10,
                                        clock=clock)
    store.append(rec(0))
    assert not store.maybe_flush()
    clock.now = 9.9
    assert not store.maybe_flush()
    clock.now = 10.0
    assert store.maybe_flush() and store.pending == 0


def test_unflushed_journal_is_recovered_on_reopen(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    store = rd.open_store(OUTCOME_SCHEMA, 6, flush_rows=3, flush_seconds=1e9)
    for i in (0, 1, 2, 4):
        store.append(rec(i))
    del store  # "crash": row 4 is only in the journal
    again = rd.open_store(OUTCOME_SCHEMA, 6, flush_rows=3)
    assert again.recovered == 1
    assert again.done.tolist() == [True, True, True, False, True, False]
    assert rows_in_parts(rd) == [0, 1, 2, 4]
    again.append(rec(3))
    again.close()
    assert rows_in_parts(rd) == [0, 1, 2, 3, 4]
    table = rd.read_records(OUTCOME_SCHEMA)
    assert table.schema == OUTCOME_SCHEMA
    assert table.column("finished_at").to_pylist()[0] == T0


def test_torn_line_garbage_and_stale_files_are_ignored(tmp_path: Path) -> None:
    rd = RunDir(tmp_path)
    store = rd.open_store(OUTCOME_SCHEMA, 4, flush_rows=2)
    store.append(rec(0))
    store.append(rec(1))  # part 0 written
    store.append(rec(2))  # in seg 1
    seg = rd.journal_dir / "seg-00001.jsonl"
    with open(seg, "a") as fh:
        fh.write("not json\n")
        fh.write('{"run_id":"r1","row":3,"sta')  # torn: killed mid-write
    # A segment whose part already exists (crash between rename and unlink).
    (rd.journal_dir / "seg-00000.jsonl").write_text('{"row": 0}\n')
    (rd.outcomes_dir / "part-00009.parquet.tmp").write_bytes(b"half a file")
    # The run's own atomic writes, killed between write and rename.
    for name in ("timeline.parquet.tmp", "failures.csv.tmp"):
        (tmp_path / name).write_bytes(b"half a file")
    del store
    again = rd.open_store(OUTCOME_SCHEMA, 4)
    assert again.done.tolist() == [True, True, True, False]
    assert rows_in_parts(rd) == [0, 1, 2]
    assert not list(rd.outcomes_dir.glob("*.tmp")) and not list(rd.journal_dir.iterdir())
    assert not list(tmp_path.glob("*.tmp"))


def test_read_journal_skips_a_torn_last_line(tmp_path: Path) -> None:
    seg = tmp_path / "seg-00000.jsonl"
    seg.write_text('{"row": 1}\n{"row": 2}\n{"row": 3')
    assert [r["row"] for r in read_journal(seg)] == [1, 2]


def test_to_micros() -> None:
    assert to_micros(datetime(1970, 1, 1, 0, 0, 1, 5, tzinfo=UTC)) == 1_000_005


_CHILD = textwrap.dedent(
    """
    import sys
    from datetime import UTC, datetime
    from pipeline.runs.outcomes import OUTCOME_SCHEMA, make_outcome
    from pipeline.runs.rundir import RunDir
    t = datetime.now(UTC)
    store = RunDir(sys.argv[1]).open_store(OUTCOME_SCHEMA, 10**6, flush_rows=37)
    for i in range(10**6):
        store.append(make_outcome(run_id="k", row=i, status="enrolled", started_at=t,
                                  finished_at=t))
        print(i, flush=True)
    """
)


def test_sigkill_loses_no_acknowledged_record_and_duplicates_none(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    acked = -1
    assert proc.stdout is not None
    for line in proc.stdout:
        acked = int(line)
        if acked >= 500:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = RunDir(tmp_path).open_store(OUTCOME_SCHEMA, 10**6)
    rows = np.array(rows_in_parts(RunDir(tmp_path)))
    assert len(rows) == len(np.unique(rows))  # nothing twice
    assert rows.max() >= acked and store.done[: acked + 1].all()  # nothing acknowledged lost
    assert store.done.sum() == len(rows)
    assert all(pq.read_metadata(p).num_rows > 0 for p in RunDir(tmp_path).part_paths())
