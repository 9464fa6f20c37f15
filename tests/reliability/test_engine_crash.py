"""kill -9 the engine under a running `faceflow enroll`, restart it on the same data dir.

The engine runs as ``python -m pipeline.engine`` on a port picked here and passed both
times, so the restarted engine is where the job expects it. While it is down the job's
calls fail (refused or dropped connections: SDK108) and are retried with back-off; the
restarted engine answers them, and the job finishes with every row enrolled once.
The SQLite files the dead engine left (copied before the restart) are checked: sound
(PRAGMA integrity_check) and holding every write it acknowledged.

A second test kills one model process (not the engine) under a run with 8 rows in
flight: the engine replaces its pool once, answers the calls that were in the dead pool
with 216401, and the job's retries finish every row.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from support.reliability import (
    FACEFLOW,
    alive,
    children_of,
    free_port,
    member_manifest,
    model_workers,
    outcomes_on_disk,
    read_parts,
    start_engine,
)

from pipeline.engine.store import Store
from pipeline.runs.outcomes import SUCCESS_STATUSES

pytestmark = [pytest.mark.slow, pytest.mark.dlib]

ROWS = 20
GROUP = "rel_engine_crash"
API_KEY, SECRET_KEY = "ak-engine-crash", "sk-engine-crash"


def _records_on_disk(run_dir: Path) -> list[dict[str, Any]]:
    """The outcome records an enroll has written so far (journal lines and parts)."""
    records = read_parts(run_dir)[["row", "uid", "status"]].to_dict("records")
    for seg in run_dir.glob("journal/*.jsonl"):
        try:
            lines = seg.read_text(encoding="utf-8").splitlines(keepends=True)
        except FileNotFoundError:
            continue
        records += [json.loads(line) for line in lines if line.endswith("\n")]
    return records


def _snapshot(data_dir: Path, folder: Path) -> Path:
    """Copy the engine's SQLite files (database, WAL, shared memory) as they are now."""
    folder.mkdir()
    for path in data_dir.glob("faceset.sqlite3*"):
        shutil.copy2(path, folder / path.name)
    return folder / "faceset.sqlite3"


def _wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_engine_killed_mid_run_restarts_intact_and_the_job_completes(
    photos: list[Path], tmp_path: Path
) -> None:
    env = {**os.environ, "FACEFLOW_API_KEY": API_KEY, "FACEFLOW_SECRET_KEY": SECRET_KEY}
    port, data_dir = free_port(), tmp_path / "engine-data"
    engine, url = start_engine(port, data_dir, env=env)
    manifest = member_manifest(tmp_path / "m.csv", photos[:ROWS], "ec")
    run_dir = tmp_path / "run"
    job = subprocess.Popen(
        [FACEFLOW, "enroll", str(manifest), "--group", GROUP, "--run-dir", str(run_dir),
         "--qps", "4", "--concurrency", "4", "--flush-rows", "4"],
        env={**env, "FACEFLOW_ENDPOINT": url}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: outcomes_on_disk(run_dir) >= 5, 120, "no outcome before the kill")
        workers = children_of(engine.pid)
        engine.send_signal(signal.SIGKILL)
        engine.wait(timeout=30)
        # Every "enrolled" on disk now was acknowledged by the dead engine. Its files are
        # copied as it left them, and it is restarted at once: the job's calls wait
        # through the downtime on their retry budget (~7.5 s).
        acknowledged = {r["uid"] for r in _records_on_disk(run_dir) if r["status"] == "enrolled"}
        left = _snapshot(data_dir, tmp_path / "left-behind")
        engine, _ = start_engine(port, data_dir, env=env)  # same port, same data

        store = Store(left)  # opening it replays the WAL the dead engine left
        try:
            assert store.integrity_check() == "ok"
            lost = [uid for uid in acknowledged if len(store.faces_of(GROUP, uid)) != 1]
            assert not lost, f"acknowledged writes missing after kill -9: {lost}"
        finally:
            store.close()
        assert len(acknowledged) < ROWS  # the job was still going
        _wait_for(lambda: not any(alive(p) for p in workers), 15,
                  f"model processes {workers} outlived the killed engine")
        out, err = job.communicate(timeout=180)
    finally:
        for proc in (job, engine):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)

    assert job.returncode == 0, out + err  # completed by retrying, no failed rows
    df = read_parts(run_dir)
    assert df["row"].tolist() == list(range(ROWS))
    assert set(df["status"]) <= SUCCESS_STATUSES
    assert (df["attempts"] > 2).any()  # some rows needed more than detect + add
    store = Store(data_dir / "faceset.sqlite3")
    try:
        assert store.integrity_check() == "ok"
        assert store.counts()["faces"] == ROWS  # == the rows acknowledged, none twice
        assert all(len(store.faces_of(GROUP, f"ec_{i}")) == 1 for i in range(ROWS))
    finally:
        store.close()
    print(f"\nacknowledged before the kill: {len(acknowledged)}; "
          f"after restart: {df['status'].value_counts().to_dict()}")


def test_a_model_process_killed_mid_run_is_replaced_once_and_the_job_completes(
    photos: list[Path], tmp_path: Path
) -> None:
    env = {**os.environ, "FACEFLOW_API_KEY": API_KEY, "FACEFLOW_SECRET_KEY": SECRET_KEY}
    log = tmp_path / "engine.log"
    engine, url = start_engine(free_port(), tmp_path / "data", "--workers", "2", env=env,
                               log=log)
    rows = 24
    manifest = member_manifest(tmp_path / "m.csv", photos[:rows], "mw")
    run_dir = tmp_path / "run"
    job = subprocess.Popen(
        [FACEFLOW, "enroll", str(manifest), "--group", GROUP, "--run-dir", str(run_dir),
         "--concurrency", "8"], env={**env, "FACEFLOW_ENDPOINT": url},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: outcomes_on_disk(run_dir) >= 4, 120, "no outcome before the kill")
        before = model_workers(engine.pid)
        os.kill(before[0], signal.SIGKILL)
        out, err = job.communicate(timeout=180)
        after = model_workers(engine.pid)
    finally:
        for proc in (job, engine):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
    assert job.returncode == 0, out + err
    df = read_parts(run_dir)
    assert df["row"].tolist() == list(range(rows)) and set(df["status"]) <= SUCCESS_STATUSES
    assert len(before) == len(after) == 2 and not set(before) & set(after)  # a new pool
    restarts = log.read_text().count("restarting the pool")
    assert restarts == 1, f"{restarts} pool restarts for one dead model process"
