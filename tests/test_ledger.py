"""The ledger: SQLite backend (idempotent events, replace semantics, kill -9, two writers),
the bulk "already known" decision, ``ledger import`` / ``ledger stats``."""

from __future__ import annotations

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from jobs.cli import main
from pipeline.api.errors import ConfigError
from pipeline.ledger import Entry, endpoint_key, open_ledger
from pipeline.ledger.runs import known_rows, skipped_table, stat_file
from pipeline.runs.manifest import open_manifest
from pipeline.runs.outcomes import OUTCOME_SCHEMA, make_outcome
from pipeline.runs.rundir import ManifestRef, RunDir, RunInfo

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 11, 25, 1, 2, 3, tzinfo=UTC)
EP = "127.0.0.1:8480"


def entry(uid: str, sha: str, action: str = "enrolled", *, group: str = "g", run: str = "r1",
          row: int = 0, minutes: int = 0, path: str | None = None) -> Entry:
    return Entry(endpoint=EP, group_id=group, uid=uid, image_sha256=sha, action=action,
                 run_id=run, row=row, at=T0 + timedelta(minutes=minutes), image_path=path,
                 write_log_id=2**64 - 1)


def faces(book, group: str = "g") -> list[tuple[str, str]]:
    return [(f.uid, f.image_sha256) for f in book.faces(EP, group)]


@pytest.mark.parametrize(("url", "key"), [
    ("https://aip.baidubce.com", "aip.baidubce.com"),
    ("https://AIP.baidubce.com:443/", "aip.baidubce.com"),
    ("http://127.0.0.1:8480", "127.0.0.1:8480"),
    ("http://localhost:80", "localhost"),
], ids=["baidu", "default-port", "engine", "http-80"])
def test_endpoint_key(url: str, key: str) -> None:
    assert endpoint_key(url) == key


def test_record_is_idempotent_and_replace_and_removal_apply(tmp_path: Path) -> None:
    book = open_ledger(str(tmp_path / "l.sqlite"))
    first = [entry("a", "s1", row=0), entry("a", "s2", row=1), entry("b", "s3", row=2)]
    assert book.record(first) == 3
    assert book.record(first) == 0  # the same events again change nothing
    assert faces(book) == [("a", "s1"), ("a", "s2"), ("b", "s3")]
    # user update replaces every face of the uid in that group
    assert book.record([entry("a", "s4", "updated", run="r2", minutes=1)]) == 1
    assert faces(book) == [("a", "s4"), ("b", "s3")]
    # reconcile found b gone: its faces leave the ledger, so the next enroll sends it again
    gone = Entry(endpoint=EP, group_id="g", uid="b", image_sha256=None,
                 action="missing_in_service", run_id="rc", row=0, at=T0)
    assert book.record([gone]) == 1
    assert faces(book) == [("a", "s4")]
    assert book.known_image(EP, "g", "a", "s4").write_log_id == 2**64 - 1
    assert book.known_image(EP, "g", "a", "s1") is None
    assert book.known_image("other:1", "g", "a", "s4") is None  # services never mix
    stats = {s.group_id: s for s in book.stats()}
    assert stats["g"].faces == 1 and stats["g"].uids == 1
    assert stats["g"].events == {"enrolled": 3, "updated": 1, "missing_in_service": 1}
    book.close()


def test_readable_with_pandas(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with open_ledger(str(path)) as book:
        book.record([entry("a", "s1"), entry("b", "s2", row=1)])
    with sqlite3.connect(path) as conn:
        df = pd.read_sql("SELECT group_id, uid, image_sha256, write_log_id FROM faces", conn)
    assert sorted(df.uid) == ["a", "b"] and int(df.write_log_id[0]) == 2**64 - 1


def test_not_a_ledger_and_unknown_backends_are_config_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConfigError, match="not a faceflow ledger"):
        open_ledger(str(junk))
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    with pytest.raises(ConfigError, match="not a faceflow ledger"):
        open_ledger(str(other))
    with pytest.raises(ConfigError, match="cannot reach") as caught:  # tests/test_ledger_pg.py
        open_ledger("postgresql://app:pw@/faceflow?host=/nonexistent-dir")
    assert "pw" not in str(caught.value)
    assert open_ledger(f"sqlite://{tmp_path / 'u.sqlite'}").location == str(tmp_path / "u.sqlite")


_WRITER = textwrap.dedent("""
    import sys
    from datetime import UTC, datetime
    from pipeline.ledger import Entry, open_ledger
    book = open_ledger(sys.argv[1])
    run, n = sys.argv[2], int(sys.argv[3])
    print("ready", flush=True)
    for i in range(n):
        book.record([Entry(endpoint="e", group_id="g", uid=f"{run}_{i}", image_sha256=f"s{i}",
                           action="enrolled", run_id=run, row=i, at=datetime.now(UTC))])
""")


def _writer(path: Path, run: str, n: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _WRITER, str(path), run, str(n)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)


def test_two_processes_write_at_once_and_nothing_is_lost(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    open_ledger(str(path)).close()
    procs = [_writer(path, run, 300) for run in ("A", "B")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    with open_ledger(str(path)) as book:
        (stats,) = book.stats()
    assert stats.faces == 600 and stats.events == {"enrolled": 600}


def test_kill_9_mid_write_leaves_a_consistent_ledger(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    proc = _writer(path, "K", 1_000_000)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until some transactions have committed
        time.sleep(0.2)
        with sqlite3.connect(path) as conn:
            if conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] >= 50:
                break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with open_ledger(str(path)) as book:  # opens, and every event has its face
        (stats,) = book.stats()
        assert stats.faces == stats.events["enrolled"] >= 50
        book.record([entry("after", "s")])  # and it still takes writes


# -- the bulk decision --------------------------------------------------------------------


def _files(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"p{i}.jpg"
        p.write_bytes(f"photo {i}".encode())
        paths.append(p)
    return paths


def _manifest(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["uid", "image", "group_id"])
        w.writerows(rows)
    return path


def _known_entry(uid: str, group: str, p: Path, row: int) -> Entry:
    st = stat_file(p)
    assert st is not None
    return Entry(endpoint=EP, group_id=group, uid=uid, image_sha256=f"sha-{p.name}",
                 action="enrolled", run_id="old", row=row, at=T0, image_path=st.path,
                 image_size=st.size, image_mtime_ns=st.mtime_ns, face_count=1,
                 write_log_id=1000 + row)


def test_known_rows_trusts_path_size_and_mtime_in_every_group(tmp_path: Path) -> None:
    p = _files(tmp_path / "img", 5)
    book = open_ledger(str(tmp_path / "l.sqlite"))
    book.record([_known_entry("u0", "g", p[0], 0), _known_entry("u1", "g", p[1], 1),
                 _known_entry("u2", "g", p[2], 2), _known_entry("u3", "a", p[3], 3)])
    os.utime(p[2], ns=(1, 1))  # touched since: must be read again, not trusted
    m = open_manifest(_manifest(tmp_path / "m.csv", [
        ("u0", "img/p0.jpg", "g"),  # known
        ("u1", "img/p1.jpg", "g"),  # known, but done already in this run (skip)
        ("u2", "img/p2.jpg", "g"),  # mtime changed
        ("u3", "img/p3.jpg", "a,b"),  # known in a, not in b
        ("u4", "img/p4.jpg", "g"),  # new
        ("u0", "img/p0.jpg", "g"),  # repeats row 0: keeps its invalid_input outcome
        ("uX", "img/p0.jpg", "g"),  # same file, another uid: not known
    ]))
    skip = np.zeros(m.num_rows, dtype=bool)
    skip[1] = True
    (found,) = list(known_rows(m, book, EP, skip=skip))  # one chunk
    assert found.rows.tolist() == [0]
    table = skipped_table("run9", found)
    assert table.schema == OUTCOME_SCHEMA
    rec = table.to_pylist()[0]
    assert (rec["status"], rec["attempts"], rec["image_sha256"], rec["write_log_id"],
            rec["face_count"]) == ("skipped_known", 0, "sha-p0.jpg", 1000, 1)
    book.close()


# -- ledger import / stats -----------------------------------------------------------------


def _run_dir(tmp_path: Path, name: str, manifest: Path, rows: list[tuple[int, str, str]],
             created: str, endpoint: str = "http://127.0.0.1:8480") -> Path:
    """A finished enroll run dir whose outcomes are (row, uid, status) with sha sha-<uid>."""
    m = open_manifest(manifest)
    rd = RunDir(tmp_path / name)
    rd.write_info(RunInfo(run_id=name, job="enroll", created_at=created,
                          manifest=ManifestRef(str(manifest), m.fingerprint, m.num_rows),
                          settings={"endpoint": endpoint}))
    store = rd.open_store(OUTCOME_SCHEMA, m.num_rows)
    for row, uid, status in rows:
        store.append(make_outcome(run_id=name, row=row, uid=uid, group_id="g",
                                  image=f"img/p{row}.jpg", image_sha256=f"sha-{uid}",
                                  status=status, write_log_id=7, started_at=T0,
                                  finished_at=T0))
    store.close()
    return rd.path


def test_ledger_import_is_idempotent_and_stats_counts_per_group(tmp_path: Path) -> None:
    _files(tmp_path / "img", 3)
    manifest = _manifest(tmp_path / "m.csv", [("u0", "img/p0.jpg", "g"),
                                              ("u1", "img/p1.jpg", "g"),
                                              ("u2", "img/p2.jpg", "g")])
    run1 = _run_dir(tmp_path, "run1", manifest,
                    [(0, "u0", "enrolled"), (1, "u1", "rejected_quality"),
                     (2, "u2", "already_enrolled")], "2026-11-25T01:00:00+00:00")
    ledger = str(tmp_path / "l.sqlite")
    runner = CliRunner()
    first = runner.invoke(main, ["ledger", "import", str(run1), "--ledger", ledger])
    assert first.exit_code == 0, first.output
    assert "run1: 2 successful rows, 2 new ledger entries" in first.output
    again = runner.invoke(main, ["ledger", "import", str(run1)], env={"FACEFLOW_LEDGER": ledger})
    assert again.exit_code == 0 and "2 successful rows, 0 new ledger entries" in again.output
    with open_ledger(ledger) as book:
        held = list(book.faces(EP, "g"))
    assert [(f.uid, f.image_path) for f in held] == [
        ("u0", str(tmp_path / "img" / "p0.jpg")), ("u2", str(tmp_path / "img" / "p2.jpg"))]
    stats = runner.invoke(main, ["ledger", "stats", "--ledger", ledger])
    assert stats.exit_code == 0
    line = next(x for x in stats.output.splitlines() if x.startswith("127.0.0.1:8480"))
    assert line.split()[:4] == ["127.0.0.1:8480", "g", "2", "2"]
    assert line.endswith("already_enrolled 1, enrolled 1")


def test_ledger_import_refuses_other_jobs_before_writing(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "audit1")
    rd.write_info(RunInfo(run_id="a", job="audit", created_at=T0.isoformat(),
                          manifest=ManifestRef("/m.csv", "sha256:0", 0)))
    result = CliRunner().invoke(main, ["ledger", "import", str(rd.path), "--ledger",
                                       str(tmp_path / "l.sqlite")])
    assert result.exit_code == 2 and "not an enroll run" in result.output


@pytest.mark.parametrize("ledger", ["postgresql://db/faceflow", "junk.sqlite"],
                         ids=["no-postgres-yet", "not-a-ledger"])
def test_enroll_with_a_bad_ledger_stops_before_anything(tmp_path: Path, ledger: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "junk.sqlite").write_bytes(b"not a database" * 100)
    _files(tmp_path / "img", 1)
    manifest = _manifest(tmp_path / "m.csv", [("u0", "img/p0.jpg", "g")])
    result = CliRunner().invoke(main, ["enroll", str(manifest), "--run-dir", "run", "--ledger",
                                       ledger], env={"FACEFLOW_ENDPOINT": "http://127.0.0.1:9",
                                                     "FACEFLOW_API_KEY": "k",
                                                     "FACEFLOW_SECRET_KEY": "s"})
    assert result.exit_code == 2 and "--ledger" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()


def _open_new_ledger(path: str) -> str:
    from pipeline.ledger.sqlite import SqliteLedger  # noqa: PLC0415

    try:
        SqliteLedger(path)
    except ConfigError as exc:
        return str(exc)
    return "ok"


def test_two_processes_creating_one_ledger_both_open_it(tmp_path: Path) -> None:
    """The switch to WAL answers "database is locked" at once to the second of two
    processes creating a ledger together (the busy handler does not wait for it): the
    ledger tries again instead of calling the file "not a faceflow ledger"."""
    import multiprocessing  # noqa: PLC0415

    with multiprocessing.get_context("fork").Pool(2) as pool:
        for i in range(30):
            path = str(tmp_path / f"l{i}.sqlite")
            assert pool.map(_open_new_ledger, [path, path]) == ["ok", "ok"]
