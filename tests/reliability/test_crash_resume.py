"""kill -9 a real `faceflow enroll` a dozen times across one run, resuming each time.

tests/test_enroll_crash.py kills twice at fixed points; this goes through a whole run of
40 rows with kills at seeded points: some a few outcomes into a session (so they land
while rows are in flight, between an add reaching the engine and its outcome being
journaled, or while a Parquet part is being written: --flush-rows 3), some a seeded
delay after the start (token fetch, first calls). Afterwards every manifest row has
exactly one terminal outcome, no uid holds its face twice in the engine, and every
Parquet part reads on its own.
"""

from __future__ import annotations

import random
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from support.reliability import (
    FACEFLOW,
    engine_env,
    faces_per_uid,
    kill_when,
    member_manifest,
    outcomes_on_disk,
    read_parts,
    run_info,
)

from pipeline.runs.outcomes import SUCCESS_STATUSES

pytestmark = [pytest.mark.slow, pytest.mark.dlib]

ROWS = 40
KILLS = 12
SEED = 20240517
GROUP = "rel_crash"


def _kill_point(rng: random.Random, run_dir: Path, session: int) -> tuple[str, Any]:
    """The seeded kill condition of one session: (description, ready()).

    Most sessions die a seeded moment after outcome ~``ROWS * (session + 1) / (KILLS + 1)``
    reaches the disk, which spreads the kills over the whole run; one in four dies a seeded
    delay after its start instead.
    """
    started = time.monotonic()
    if rng.random() < 0.25:
        delay = rng.uniform(0.3, 2.5)
        return f"{delay:.2f} s after start", lambda: time.monotonic() - started >= delay
    spread = round(ROWS * (session + 1) / (KILLS + 1)) + rng.randint(-1, 1)
    target = max(outcomes_on_disk(run_dir) + 1, spread)
    extra = rng.uniform(0.0, 0.25)  # past the journal write: mid-call, mid-flush...
    reached: list[float] = []

    def ready() -> bool:
        if not reached and outcomes_on_disk(run_dir) >= target:
            reached.append(time.monotonic())
        return bool(reached) and time.monotonic() - reached[0] >= extra

    return f"outcome {target} + {extra:.2f} s", ready


def test_twelve_kills_then_resume_lose_nothing_and_enroll_nothing_twice(
    rel_engine: Any, photos: list[Path], tmp_path: Path
) -> None:
    manifest = member_manifest(tmp_path / "m.csv", photos[:ROWS], "crash")
    run_dir = tmp_path / "run"
    env = engine_env(rel_engine)
    # --qps 4 (per interface) stretches 40 rows over ~10 s of calls so kills land mid-run.
    cmd = [FACEFLOW, "enroll", str(manifest), "--group", GROUP, "--run-dir", str(run_dir),
           "--qps", "4", "--concurrency", "4", "--flush-rows", "3"]
    rng = random.Random(SEED)
    kills: list[str] = []
    sessions = 0
    for session in range(KILLS):
        what, ready = _kill_point(rng, run_dir, session)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        sessions += 1
        if kill_when(proc, ready):
            kills.append(f"{what}: {outcomes_on_disk(run_dir)} on disk")
        read_parts(run_dir)  # every part written so far reads on its own
    assert len(kills) >= 10, kills  # the kills landed while the run was going on

    final = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    sessions += 1
    assert final.returncode == 0, final.stdout + final.stderr
    assert "Resuming run" in final.stderr

    df = read_parts(run_dir)
    assert df["row"].tolist() == list(range(ROWS))  # exactly one outcome per row
    assert set(df["status"]) <= SUCCESS_STATUSES, df["status"].value_counts()
    assert (df["attempts"] >= 2).all()  # a detect and a write each
    faces = faces_per_uid(rel_engine.store, GROUP)
    assert faces == {f"crash_{i}": 1 for i in range(ROWS)}  # every face once, none twice
    assert not list(run_dir.glob("journal/*.jsonl")) and not list(run_dir.rglob("*.tmp"))
    info = run_info(run_dir)
    # A session killed before it opened the run dir never counted itself.
    assert 2 <= info["sessions"] <= sessions and info["exit_code"] == 0
    assert sum(info["counts"].values()) == ROWS
    print(f"\n{len(kills)} kills: " + "; ".join(kills))
    print(f"statuses after resume: {df['status'].value_counts().to_dict()}")


def test_a_second_enroll_on_a_run_dir_in_use_is_refused(
    rel_engine: Any, photos: list[Path], tmp_path: Path
) -> None:
    """An overlapping cron start must not run the same rows: its parts would take the
    same numbers as the first process's and replace them (outcomes lost, and the rows
    the first enrolled recorded as already_enrolled by the second)."""
    rows, group = 16, "rel_twin"
    manifest = member_manifest(tmp_path / "m.csv", photos[ROWS:ROWS + rows], "twin")
    run_dir = tmp_path / "run"
    env = engine_env(rel_engine)
    cmd = [FACEFLOW, "enroll", str(manifest), "--group", group, "--run-dir", str(run_dir),
           "--qps", "4", "--concurrency", "2", "--flush-rows", "2"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while outcomes_on_disk(run_dir) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    finally:
        _, first_err = first.communicate(timeout=300)
    assert second.returncode == 2, second.stderr
    assert "in use by another faceflow process" in second.stderr
    assert first.returncode == 0, first_err
    df = read_parts(run_dir)
    assert df["row"].tolist() == list(range(rows))
    assert set(df["status"]) == {"enrolled"}  # the first process's own outcomes, all kept
    assert faces_per_uid(rel_engine.store, group) == {f"twin_{i}": 1 for i in range(rows)}
