"""The ledger on PostgreSQL (``--ledger postgresql://...``): the SQLite ledger's behaviour
(tests/test_ledger.py) on the shared backend, two writer processes, a killed writer, and
the bulk "already known" decision of a manifest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
from support.doubles import ProtocolDouble, double  # noqa: F401 - double: fixture
from test_ledger import EP, T0, _files, _known_entry, _manifest, entry, faces

from pipeline.ledger import Entry, open_ledger
from pipeline.ledger.runs import known_rows
from pipeline.postgres import connect
from pipeline.runs.manifest import open_manifest

ROOT = Path(__file__).resolve().parent.parent


def test_record_is_idempotent_and_replace_and_removal_apply(pg_url: str) -> None:
    with open_ledger(pg_url) as book:
        assert "PgLedger" in repr(book)
        first = [entry("a", "s1", row=0), entry("a", "s2", row=1), entry("b", "s3", row=2)]
        assert book.record(first) == 3
        assert book.record(first) == 0
        assert faces(book) == [("a", "s1"), ("a", "s2"), ("b", "s3")]
        assert book.record([entry("a", "s4", "updated", run="r2", minutes=1)]) == 1
        assert faces(book) == [("a", "s4"), ("b", "s3")]
        gone = Entry(endpoint=EP, group_id="g", uid="b", image_sha256=None,
                     action="missing_in_service", run_id="rc", row=0, at=T0)
        assert book.record([gone]) == 1
        assert faces(book) == [("a", "s4")]
        known = book.known_image(EP, "g", "a", "s4")
        assert known is not None and known.write_log_id == 2**64 - 1
        assert known.recorded_at == (T0.replace(minute=T0.minute + 1)).isoformat()
        assert book.known_image(EP, "g", "a", "s1") is None
        assert book.known_image("other:1", "g", "a", "s4") is None
        stats = {s.group_id: s for s in book.stats()}
        assert stats["g"].faces == 1 and stats["g"].uids == 1
        assert stats["g"].events == {"enrolled": 3, "updated": 1, "missing_in_service": 1}


def test_known_rows_trusts_path_size_and_mtime(pg_url: str, tmp_path: Path) -> None:
    p = _files(tmp_path / "img", 4)
    with open_ledger(pg_url) as book:
        book.record([_known_entry("u0", "g", p[0], 0), _known_entry("u1", "g", p[1], 1),
                     _known_entry("u2", "g", p[2], 2)])
        os.utime(p[2], ns=(1, 1))  # touched since: read again, and its sha differs
        m = open_manifest(_manifest(tmp_path / "m.csv", [
            ("u0", "img/p0.jpg", "g"), ("u1", "img/p1.jpg", "g"),
            ("u2", "img/p2.jpg", "g"), ("u3", "img/p3.jpg", "g")]))
        found = list(known_rows(m, book, EP, skip=np.zeros(m.num_rows, dtype=bool)))
        assert sorted(r for chunk in found for r in chunk.rows.tolist()) == [0, 1]
        face = book.known_image(EP, "g", "u0", "sha-p0.jpg")
        assert face is not None
        book.refresh_stat(face, "/elsewhere/p0.jpg", 7, 9)
        moved = book.known_image(EP, "g", "u0", "sha-p0.jpg")
        assert moved is not None and (moved.image_path, moved.image_size) == (
            "/elsewhere/p0.jpg", 7)


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


def _writer(url: str, run: str, n: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _WRITER, url, run, str(n)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)


def test_two_hosts_write_at_once_and_a_killed_one_loses_nothing_committed(pg_url: str) -> None:
    procs = [_writer(pg_url, run, 200) for run in ("A", "B")]
    killed = _writer(pg_url, "K", 1_000_000)
    assert killed.stdout is not None and killed.stdout.readline().strip() == "ready"
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    deadline = time.monotonic() + 60
    with connect(pg_url) as conn:
        while time.monotonic() < deadline and conn.execute(
                "SELECT count(*) FROM ledger_events WHERE run_id='K'").fetchone()[0] < 20:
            time.sleep(0.1)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    with open_ledger(pg_url) as book:
        (stats,) = book.stats()
        assert stats.faces == stats.events["enrolled"] >= 420  # 200 + 200 + >= 20
        assert len(list(book.faces("e", "g", "A_7"))) == 1


async def test_enroll_with_a_postgresql_ledger_skips_known_rows_next_time(
    double: ProtocolDouble, pg_url: str, tmp_path: Path  # noqa: F811
) -> None:
    from PIL import Image

    from pipeline.enroll.job import EnrollConfig, run_enroll

    for i in range(3):
        Image.new("RGB", (240, 300), (180, 140 + i, 120)).save(tmp_path / f"f{i}.jpg")
    manifest = tmp_path / "m.csv"
    manifest.write_text("uid,image\n" + "".join(f"u{i},f{i}.jpg\n" for i in range(3)))
    secret_url = pg_url.replace("postgresql://postgres@", "postgresql://postgres:pw@")

    def config(run: str) -> EnrollConfig:
        return EnrollConfig(manifest=manifest, settings=double.settings(), group="g",
                            run_dir=tmp_path / run, ledger=pg_url)

    first = await run_enroll(config("night1"))
    assert first.counts == {"enrolled": 3}
    second = await run_enroll(config("night2"))
    assert second.counts == {"skipped_known": 3} and len(double.calls("add")) == 3
    with open_ledger(pg_url) as book:
        (stats,) = book.stats()
    assert stats.faces == 3 and stats.events == {"enrolled": 3}
    recorded = EnrollConfig(manifest=manifest, settings=double.settings(), group="g",
                            ledger=secret_url).options()["ledger"]
    # No password at all in run.json, not "***": libpq would send "***" rather than read
    # PGPASSWORD or ~/.pgpass, and a resume could never log in.
    assert recorded == pg_url
    from pipeline.enroll.config import config_options

    older = secret_url.replace(":pw@", ":***@")  # as runs recorded it before
    assert config_options({"ledger": older})["ledger"] == pg_url


def test_run_json_urls_lose_their_password_entirely() -> None:
    from pipeline.postgres import without_password

    assert without_password("postgresql://u:s3@db:5433/f?sslmode=require") == \
        "postgresql://u@db:5433/f?sslmode=require"
    assert without_password("postgresql://u:s3@[::1]:5432/f") == "postgresql://u@[::1]:5432/f"
    assert without_password("postgresql://u@/f?host=/run/pg") == "postgresql://u@/f?host=/run/pg"
    assert without_password("runs/ledger.sqlite3") == "runs/ledger.sqlite3"
