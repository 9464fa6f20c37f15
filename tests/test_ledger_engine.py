"""The ledger, regate and the duplicate block end to end on the real engine (127.0.0.1).

One engine for the module; each test uses its own group. Photos are copies of the
public-domain samples written into tmp_path (the ledger keys rows by path and stat).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

from jobs.cli import main
from pipeline import variants as v
from pipeline.enroll.report import render_html
from pipeline.ledger import endpoint_key, open_ledger

pytestmark = pytest.mark.dlib


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from pipeline.engine.server import EngineServer

    with EngineServer(tmp_path_factory.mktemp("engine"), workers=1) as srv:
        yield srv


def _env(srv: Any, ledger: Path | None = None) -> dict[str, str]:
    env = {"FACEFLOW_ENDPOINT": srv.url, "FACEFLOW_API_KEY": srv.api_key,
           "FACEFLOW_SECRET_KEY": srv.secret_key}
    if ledger is not None:
        env["FACEFLOW_LEDGER"] = str(ledger)
    return env


def _calls(srv: Any) -> dict[str, int]:
    return dict(srv.state.stats()["calls"])


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: n - before.get(k, 0) for k, n in after.items() if n - before.get(k, 0)}


def _manifest(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["uid", "image", "user_info"])
        w.writerows((uid, image, f"member {uid}") for uid, image in rows)
    return path


def _photos(folder: Path, samples: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("obama_01.jpg", "obama_02.jpg", "biden_01.jpg", "astronaut.png"):
        shutil.copy(samples / name, folder / name)
    obama = Image.open(samples / "obama_01.jpg").convert("RGB")
    (folder / "obama_small.jpg").write_bytes(v.to_bytes(obama.resize((700, 875))))


def _enroll(srv: Any, manifest: Path, run_dir: Path, *args: str, ledger: Path | None = None
            ) -> tuple[Any, pd.DataFrame]:
    result = CliRunner().invoke(main, ["enroll", str(manifest), "--run-dir", str(run_dir),
                                       "--concurrency", "2", *args], env=_env(srv, ledger))
    df = pd.read_parquet(run_dir / "outcomes").sort_values("row").reset_index(drop=True)
    return result, df


def _status(df: pd.DataFrame) -> dict[str, str]:
    return dict(zip(df.uid, df.status, strict=True))


# -- the nightly increment ---------------------------------------------------------------


def test_night_two_sends_only_the_new_rows(server: Any, samples_dir: Path,
                                           tmp_path: Path) -> None:
    _photos(tmp_path / "img", samples_dir)
    ledger = tmp_path / "ledger.sqlite"
    night1 = _manifest(tmp_path / "n1.csv", [("alice", "img/obama_01.jpg"),
                                             ("bob", "img/biden_01.jpg")])
    result, first = _enroll(server, night1, tmp_path / "run1", "--group", "nightly",
                            ledger=ledger)
    assert result.exit_code == 0, result.output
    assert _status(first) == {"alice": "enrolled", "bob": "enrolled"}

    night2 = _manifest(tmp_path / "n2.csv", [("alice", "img/obama_01.jpg"),
                                             ("bob", "img/biden_01.jpg"),
                                             ("carol", "img/obama_small.jpg")])
    before = _calls(server)
    result, second = _enroll(server, night2, tmp_path / "run2", "--group", "nightly",
                             ledger=ledger)
    assert result.exit_code == 0, result.output
    assert _delta(_calls(server), before) == {"detect": 1, "user_add": 1}  # carol only
    assert _status(second) == {"alice": "skipped_known", "bob": "skipped_known",
                               "carol": "enrolled"}
    skipped = second[second.status == "skipped_known"]
    assert (skipped.attempts == 0).all()
    assert skipped.write_log_id.tolist() == first.write_log_id.tolist()  # from the ledger
    assert "2 rows are enrolled already" in result.output
    assert "<b>2</b>known to the ledger, not sent (skipped_known)" in render_html(tmp_path / "run2")

    # A touched file is read and hashed once (same bytes: still known, no call) and its
    # new stat remembered; a known uid with a new photo follows --mode (add appends).
    os.utime(tmp_path / "img" / "obama_01.jpg")
    night3 = _manifest(tmp_path / "n3.csv", [("alice", "img/obama_01.jpg"),
                                             ("bob", "img/biden_01.jpg"),
                                             ("bob", "img/astronaut.png")])
    before = _calls(server)
    result, third = _enroll(server, night3, tmp_path / "run3", "--group", "nightly",
                            "--threshold", "min_face_size=80", ledger=ledger)
    assert result.exit_code == 0, result.output
    assert third.status.tolist() == ["skipped_known", "skipped_known", "enrolled"]
    assert _delta(_calls(server), before) == {"detect": 1, "user_add": 1}
    assert len(server.store.faces_of("nightly", "bob")) == 2
    with open_ledger(str(ledger)) as book:
        alice = next(iter(book.faces(endpoint_key(server.url), "nightly", "alice")))
        bob = list(book.faces(endpoint_key(server.url), "nightly", "bob"))
    assert alice.image_mtime_ns == os.stat(tmp_path / "img" / "obama_01.jpg").st_mtime_ns
    assert len(bob) == 2 and {b.user_info for b in bob} == {"member bob"}


def test_ledger_import_of_old_runs_then_skips_them(server: Any, samples_dir: Path,
                                                   tmp_path: Path) -> None:
    _photos(tmp_path / "img", samples_dir)
    manifest = _manifest(tmp_path / "m.csv", [("dave", "img/biden_01.jpg")])
    result, _ = _enroll(server, manifest, tmp_path / "old", "--group", "imported")
    assert result.exit_code == 0, result.output
    ledger = tmp_path / "l.sqlite"
    for _ in range(2):  # idempotent
        imported = CliRunner().invoke(main, ["ledger", "import", str(tmp_path / "old"),
                                             "--ledger", str(ledger)])
        assert imported.exit_code == 0, imported.output
    assert "1 successful rows, 0 new ledger entries" in imported.output
    before = _calls(server)
    result, df = _enroll(server, manifest, tmp_path / "new", "--group", "imported",
                         ledger=ledger)
    assert result.exit_code == 0 and df.status.tolist() == ["skipped_known"]
    assert _delta(_calls(server), before) == {}  # hashed locally, nothing sent


# -- offline regate ---------------------------------------------------------------------


def test_regate_sends_nothing_and_its_manifest_enrolls_exactly_the_newly_passing_rows(
        server: Any, samples_dir: Path, tmp_path: Path) -> None:
    _photos(tmp_path / "img", samples_dir)
    ledger = tmp_path / "ledger.sqlite"
    manifest = _manifest(tmp_path / "m.csv", [("alice", "img/obama_01.jpg"),
                                              ("eve", "img/astronaut.png"),
                                              ("frank", "img/obama_02.jpg")])
    run = tmp_path / "run"
    result, df = _enroll(server, manifest, run, "--group", "regate", ledger=ledger)
    assert _status(df) == {"alice": "enrolled", "eve": "rejected_quality",
                           "frank": "rejected_quality"}
    assert df.set_index("uid").loc["eve", "reasons"].tolist() == ["face_too_small"]

    before = _calls(server)
    regated = CliRunner().invoke(main, ["regate", str(run), "--threshold", "min_face_size=80"],
                                 env=_env(server, ledger))
    assert regated.exit_code == 0, regated.output
    assert _calls(server) == before  # zero requests
    assert "newly passing 1, newly failing 0" in regated.output
    changes = pd.read_parquet(run / "regate.parquet").set_index("uid")["change"].to_dict()
    assert changes == {"alice": "same", "eve": "newly_passing", "frank": "same"}

    result, again = _enroll(server, run / "regate-manifest.csv", tmp_path / "run2",
                            "--threshold", "min_face_size=80", ledger=ledger)
    assert result.exit_code == 0, result.output
    assert _status(again) == {"alice": "skipped_known", "eve": "enrolled"}
    assert _delta(_calls(server), before) == {"detect": 1, "user_add": 1}
    assert len(server.store.faces_of("regate", "eve")) == 1


# -- inline duplicate block ---------------------------------------------------------------


def test_block_duplicates_stops_a_person_enrolled_under_another_uid(
        server: Any, samples_dir: Path, tmp_path: Path) -> None:
    _photos(tmp_path / "img", samples_dir)
    ledger = tmp_path / "ledger.sqlite"
    first = _manifest(tmp_path / "a.csv", [("alice", "img/obama_01.jpg")])
    result, _ = _enroll(server, first, tmp_path / "run1", "--group", "dups", ledger=ledger)
    assert result.exit_code == 0, result.output
    # the same person (another photo) as bob, and someone else as carol
    second = _manifest(tmp_path / "b.csv", [("bob", "img/obama_02.jpg"),
                                            ("carol", "img/biden_01.jpg")])
    before = _calls(server)
    result, df = _enroll(server, second, tmp_path / "run2", "--group", "dups",
                         "--threshold", "yaw=35", "--block-duplicates", ledger=ledger)
    assert result.exit_code == 1, result.output  # a blocked row is not a success
    assert _status(df) == {"bob": "duplicate_suspect", "carol": "enrolled"}
    bob = df.set_index("uid").loc["bob"]
    assert (bob.duplicate_uid, bob.duplicate_group_id) == ("alice", "dups")
    assert bob.duplicate_score >= 80 and list(bob.reasons) == ["duplicate_of_other_uid"]
    assert pd.notna(bob.identify_log_id) and pd.notna(bob.match_log_id)
    assert bob.write_log_id is None or pd.isna(bob.write_log_id)
    assert server.store.membership("dups", "bob") is None
    assert _delta(_calls(server), before) == {"detect": 2, "identify": 2, "match": 1,
                                              "user_add": 1}
    failures = (tmp_path / "run2" / "failures.csv").read_text()
    assert "bob" in failures and "duplicate_suspect" in failures
    page = render_html(tmp_path / "run2")
    card = page.split('id="duplicates"')[1]
    assert "bob (dups)" in card and "alice (dups)" in card and f"{bob.duplicate_score:.1f}" in card
    exact = pq.read_table(tmp_path / "run2" / "outcomes").to_pylist()  # uint64 kept exact
    ids = next((r["identify_log_id"], r["match_log_id"]) for r in exact if r["uid"] == "bob")
    assert all(str(i) in card for i in ids)


def test_block_duplicates_without_a_ledger_reports_the_identify_score(
        server: Any, samples_dir: Path, tmp_path: Path) -> None:
    _photos(tmp_path / "img", samples_dir)
    first = _manifest(tmp_path / "a.csv", [("alice", "img/obama_01.jpg")])
    assert _enroll(server, first, tmp_path / "run1", "--group", "dups2")[0].exit_code == 0
    second = _manifest(tmp_path / "b.csv", [("bob", "img/obama_small.jpg")])
    result, df = _enroll(server, second, tmp_path / "run2", "--group", "dups2",
                         "--block-duplicates", "--duplicate-score", "70")
    bob = df.iloc[0]
    assert bob.status == "duplicate_suspect" and bob.duplicate_uid == "alice"
    assert list(bob.reasons) == ["duplicate_of_other_uid", "not_confirmed"]
    assert pd.isna(bob.match_log_id) and "not confirmed by match" in bob.error_msg


# -- reconcile ---------------------------------------------------------------------------


async def _outside(srv: Any, action: str, uid: str, group: str, image: Path | None = None
                   ) -> None:
    """Change the faceset behind faceflow's back (another tool using the same app)."""
    from pipeline.client import FaceClient
    from pipeline.client.config import Secret, Settings

    settings = Settings(endpoint=srv.url, api_key=Secret(srv.api_key),
                        secret_key=Secret(srv.secret_key))
    async with FaceClient(settings) as client:
        if action == "delete":
            await client.delete_user(uid, group_id=group)
        else:
            assert image is not None
            await client.add_user(uid, "added elsewhere", group, image.read_bytes())


def _reconcile(srv: Any, ledger: Path, run_dir: Path, *args: str) -> tuple[Any, pd.DataFrame]:
    result = CliRunner().invoke(main, ["reconcile", "--group", "recon", "--ledger", str(ledger),
                                       "--run-dir", str(run_dir), "--page-size", "2", *args],
                                env=_env(srv))
    path = run_dir / "reconcile.parquet"
    df = pd.read_parquet(path) if path.exists() else pd.DataFrame()
    return result, df


def test_reconcile_finds_deleted_and_foreign_users_and_the_repair_restores(
        server: Any, samples_dir: Path, tmp_path: Path) -> None:
    import asyncio

    _photos(tmp_path / "img", samples_dir)
    ledger = tmp_path / "ledger.sqlite"
    manifest = _manifest(tmp_path / "m.csv", [("rc_alice", "img/obama_01.jpg"),
                                              ("rc_bob", "img/biden_01.jpg"),
                                              ("rc_carol", "img/obama_small.jpg")])
    result, _ = _enroll(server, manifest, tmp_path / "run", "--group", "recon", ledger=ledger)
    assert result.exit_code == 0, result.output
    asyncio.run(_outside(server, "delete", "rc_bob", "recon"))
    asyncio.run(_outside(server, "add", "rc_dave", "recon",
                         tmp_path / "img" / "astronaut.png"))

    # The quota runs out after the first page: the reconcile stops (exit 3) and resumes.
    server.configure_emulation(daily_quota=1, reset=True)
    try:
        stopped, _ = _reconcile(server, ledger, tmp_path / "rec1")
    finally:
        server.configure_emulation(daily_quota=None, reset=True)
    assert stopped.exit_code == 3, stopped.output
    before = _calls(server)
    result, df = _reconcile(server, ledger, tmp_path / "rec1")
    assert result.exit_code == 1, result.output  # differences found
    assert json.loads((tmp_path / "rec1" / "run.json").read_text())["exit_code"] == 1
    assert _delta(_calls(server), before) == {"group_getusers": 1, "user_get": 2}
    found = {r.uid: (r.kind, list(r.service_groups), r.action) for r in df.itertuples()}
    assert found == {"rc_bob": ("missing_in_service", [], "reported"),
                     "rc_dave": ("unknown_to_ledger", ["recon"], "reported")}
    assert server.store.membership("recon", "rc_dave") is not None  # nothing deleted
    with open(tmp_path / "rec1" / "repair-manifest.csv", encoding="utf-8") as fh:
        repair = list(csv.DictReader(fh))
    assert [(r["uid"], r["group_id"], r["action"]) for r in repair] == [
        ("rc_bob", "recon", "add")]

    # The repair manifest restores bob (the ledger forgot him, so he is sent, not skipped).
    result, restored = _enroll(server, tmp_path / "rec1" / "repair-manifest.csv",
                               tmp_path / "repair", ledger=ledger)
    assert result.exit_code == 0 and restored.status.tolist() == ["enrolled"], result.output
    assert server.store.membership("recon", "rc_bob").user_info == "member rc_bob"

    # Deleting the unknown uid needs the group typed twice, and is recorded.
    refused, _ = _reconcile(server, ledger, tmp_path / "rec2", "--delete-unknown")
    assert refused.exit_code == 2 and "--confirm-delete-group recon" in refused.output
    result, df = _reconcile(server, ledger, tmp_path / "rec3", "--delete-unknown",
                            "--confirm-delete-group", "recon")
    assert result.exit_code == 1, result.output
    (dave,) = df.itertuples()
    assert (dave.uid, dave.kind, dave.action) == ("rc_dave", "unknown_to_ledger", "deleted")
    assert dave.delete_log_id > 0 and server.store.membership("recon", "rc_dave") is None
    with open_ledger(str(ledger)) as book:
        (stats,) = [s for s in book.stats() if s.group_id == "recon"]
    assert stats.events.get("deleted_unknown") == 1 and stats.uids == 3
    result, df = _reconcile(server, ledger, tmp_path / "rec4", "--check-faces")
    assert result.exit_code == 0, result.output  # in sync; every face verified as ours
    assert set(df.action) == {"cleared"} and len(df) == 3


def test_audit_reads_its_photos_from_the_ledger(server: Any, samples_dir: Path,
                                                 tmp_path: Path) -> None:
    _photos(tmp_path / "img", samples_dir)
    ledger = tmp_path / "ledger.sqlite"
    manifest = _manifest(tmp_path / "m.csv", [("au_alice", "img/obama_01.jpg"),
                                              ("au_bob", "img/obama_small.jpg"),
                                              ("au_carol", "img/biden_01.jpg")])
    result, _ = _enroll(server, manifest, tmp_path / "run", "--group", "aud", ledger=ledger)
    assert result.exit_code == 0, result.output
    audited = CliRunner().invoke(main, ["audit", "--group", "aud", "--run-dir",
                                        str(tmp_path / "audit"), "--no-report"],
                                 env=_env(server, ledger))
    assert audited.exit_code == 0, audited.output
    plan = pd.read_parquet(tmp_path / "audit" / "plan.parquet")
    assert sorted(plan.uid) == ["au_alice", "au_bob", "au_carol"]
    findings = pd.read_parquet(tmp_path / "audit" / "findings.parquet")
    same = findings[findings.kind == "same_person_multiple_uids"]
    pairs = {frozenset((r.uid_a, r.uid_b)) for r in same.itertuples()}
    assert pairs == {frozenset(("au_alice", "au_bob"))}


def test_rerun_keeps_the_runs_ledger(server: Any, samples_dir: Path, tmp_path: Path) -> None:
    _photos(tmp_path / "img", samples_dir)
    ledger = tmp_path / "ledger.sqlite"
    manifest = _manifest(tmp_path / "m.csv", [("rr_eve", "img/astronaut.png")])
    result, df = _enroll(server, manifest, tmp_path / "run", "--group", "rerun", ledger=ledger)
    assert df.status.tolist() == ["rejected_quality"]
    rerun = CliRunner().invoke(main, ["rerun", str(tmp_path / "run"), "--all", "--run-dir",
                                      str(tmp_path / "rerun"), "--threshold",
                                      "min_face_size=80"], env=_env(server))  # no --ledger
    assert rerun.exit_code == 0, rerun.output
    with open_ledger(str(ledger)) as book:
        held = [f.uid for f in book.faces(endpoint_key(server.url), "rerun")]
    assert held == ["rr_eve"]


def test_two_enroll_processes_share_one_ledger(server: Any, samples_dir: Path,
                                               tmp_path: Path) -> None:
    import subprocess
    import sys

    _photos(tmp_path / "img", samples_dir)
    ledger = tmp_path / "ledger.sqlite"
    env = {**os.environ, **_env(server, ledger)}
    procs = []
    for k, group in enumerate(("two_a", "two_b")):
        manifest = _manifest(tmp_path / f"m{k}.csv", [(f"{group}_1", "img/obama_01.jpg"),
                                                      (f"{group}_2", "img/biden_01.jpg")])
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "jobs.cli", "enroll", str(manifest), "--group", group,
             "--run-dir", str(tmp_path / f"run{k}")], env=env, cwd=Path(__file__).parent.parent,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    with open_ledger(str(ledger)) as book:
        stats = {s.group_id: (s.uids, s.faces, s.events) for s in book.stats()}
    assert stats == {g: (2, 2, {"enrolled": 2}) for g in ("two_a", "two_b")}


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_leaves_ledger_and_service_agreeing(
        server: Any, samples_dir: Path, tmp_path: Path) -> None:
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    _photos(tmp_path / "img", samples_dir)
    ledger = tmp_path / "ledger.sqlite"
    uids = [f"k9_{i}" for i in range(6)]
    manifest = _manifest(tmp_path / "m.csv", [(u, "img/obama_01.jpg") for u in uids])
    args = ["enroll", str(manifest), "--group", "killed", "--run-dir", str(tmp_path / "run"),
            "--concurrency", "1"]
    server.configure_emulation(faults={"slow": 1.0}, delay=0.3)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", *args],
                                env={**os.environ, **_env(server, ledger)},
                                cwd=Path(__file__).parent.parent,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # until two successes are in the ledger
            time.sleep(0.1)
            try:
                with sqlite3.connect(ledger) as conn:
                    if conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] >= 2:
                        break
            except sqlite3.Error:
                continue
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        server.configure_emulation(faults={}, reset=True)
    result = CliRunner().invoke(main, args, env=_env(server, ledger))
    assert result.exit_code == 0, result.output
    df = pd.read_parquet(tmp_path / "run" / "outcomes")
    assert sorted(df.uid) == uids and set(df.status) <= {"enrolled", "already_enrolled",
                                                         "skipped_known"}
    with open_ledger(str(ledger)) as book:
        held = sorted(f.uid for f in book.faces(endpoint_key(server.url), "killed"))
    assert held == uids
    assert all(len(server.store.faces_of("killed", u)) == 1 for u in uids)


async def test_reconcile_interrupted_mid_listing_resumes_after_the_saved_pages(
        server: Any, samples_dir: Path, tmp_path: Path) -> None:
    import asyncio

    from pipeline.client.config import Secret, Settings
    from pipeline.frame import StopReason
    from pipeline.ledger.reconcile import PAGES_DIR, ReconcileConfig, run_reconcile

    for i in range(4):
        await _outside(server, "add", f"int_{i}", "interrupted", samples_dir / "obama_01.jpg")
    settings = Settings(endpoint=server.url, api_key=Secret(server.api_key),
                        secret_key=Secret(server.secret_key))
    config = ReconcileConfig(group="interrupted", ledger=str(tmp_path / "l.sqlite"),
                             settings=settings, run_dir=tmp_path / "rec", page_size=1)
    stop = asyncio.Event()
    server.configure_emulation(faults={"slow": 1.0}, delay=0.4)
    try:
        task = asyncio.ensure_future(run_reconcile(config, stop=stop))
        while len(list((tmp_path / "rec" / PAGES_DIR).glob("*.parquet"))) < 1:
            await asyncio.sleep(0.05)
        stop.set()  # Ctrl-C
        first = await task
    finally:
        server.configure_emulation(faults={}, reset=True)
    assert first.stopped is not None and first.stopped.reason == StopReason.INTERRUPTED
    saved = len(list((tmp_path / "rec" / PAGES_DIR).glob("*.parquet")))
    assert 1 <= saved < 5
    before = _calls(server)
    second = await run_reconcile(config)
    assert second.stopped is None and second.counts["unknown_to_ledger"] == 4
    # only the pages not saved yet are read again (4 users, 1 a page: 5 pages in all)
    assert _delta(_calls(server), before)["group_getusers"] == 5 - saved


def test_update_mode_replaces_the_uids_faces_in_the_ledger(server: Any, samples_dir: Path,
                                                           tmp_path: Path) -> None:
    _photos(tmp_path / "img", samples_dir)
    ledger = tmp_path / "ledger.sqlite"
    first = _manifest(tmp_path / "a.csv", [("up_alice", "img/obama_01.jpg")])
    assert _enroll(server, first, tmp_path / "run1", "--group", "upd",
                   ledger=ledger)[0].exit_code == 0
    second = _manifest(tmp_path / "b.csv", [("up_alice", "img/obama_small.jpg")])
    result, df = _enroll(server, second, tmp_path / "run2", "--group", "upd", "--mode",
                         "update", ledger=ledger)
    assert result.exit_code == 0 and df.status.tolist() == ["updated"], result.output
    with open_ledger(str(ledger)) as book:
        held = [f.image_path for f in book.faces(endpoint_key(server.url), "upd", "up_alice")]
    assert held == [str(tmp_path / "img" / "obama_small.jpg")]
    assert len(server.store.faces_of("upd", "up_alice")) == 1
