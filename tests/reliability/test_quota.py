"""The daily quota (17) runs out mid-run: a clean stop (exit 3) that says what to do, and
the printed resume command, run the next (engine) day, finishes the rest.

tests/test_enroll.py covers a quota stop in-process with one row in flight; here a real
`faceflow enroll` process meets it with four rows in flight, and the test follows the
advice the job printed, word for word.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.reliability import (
    FACEFLOW,
    engine_env,
    faces_per_uid,
    member_manifest,
    read_parts,
    run_info,
)

from pipeline.runs.outcomes import SUCCESS_STATUSES

pytestmark = [pytest.mark.slow, pytest.mark.dlib]

ROWS = 12
QUOTA = 8  # calls per interface and day: detect runs out at the 9th row
GROUP = "rel_quota"
DAY = 86_400.0


def _resume_command(output: str) -> list[str]:
    """The command the job told the operator to run (its indented line)."""
    match = re.search(r"^\s+(faceflow enroll .*--resume.*)$", output, re.MULTILINE)
    assert match, f"no resume command in:\n{output}"
    argv = shlex.split(match.group(1))
    return [FACEFLOW, *argv[1:]]


def test_quota_stops_cleanly_and_the_printed_resume_finishes_next_day(
    rel_engine: Any, photos: list[Path], tmp_path: Path
) -> None:
    manifest = member_manifest(tmp_path / "m.csv", photos[:ROWS], "quota")
    run_dir = tmp_path / "run"
    env = engine_env(rel_engine)
    cmd = [FACEFLOW, "enroll", str(manifest), "--group", GROUP, "--run-dir", str(run_dir),
           "--concurrency", "4"]
    rel_engine.configure_emulation(daily_quota=QUOTA, reset=True)
    try:
        first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert first.returncode == 3, first.stdout + first.stderr
        said = first.stdout + first.stderr
        assert "quota is used up (error 17/19)" in said and "then resume" in said
        assert "Traceback" not in said
        done = read_parts(run_dir)
        assert 1 <= len(done) <= QUOTA < ROWS
        assert set(done["status"]) <= SUCCESS_STATUSES  # the row that met 17 has no outcome
        info = run_info(run_dir)
        assert info["stop_reason"] == "quota" and info["exit_code"] == 3

        rel_engine.advance_clock(DAY)  # the quota resets at the engine's midnight
        second = subprocess.run(_resume_command(said), env=env, capture_output=True,
                                text=True, timeout=300)
    finally:
        rel_engine.configure_emulation(daily_quota=None, reset=True)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"{len(done)} of {ROWS} rows already have an outcome" in second.stderr
    df = read_parts(run_dir)
    assert df["row"].tolist() == list(range(ROWS))  # exactly one outcome per row
    assert set(df["status"]) <= SUCCESS_STATUSES
    assert faces_per_uid(rel_engine.store, GROUP) == {f"quota_{i}": 1 for i in range(ROWS)}
    assert run_info(run_dir)["stop_reason"] is None
