"""Runs that are not finished (issue 17, item 8): report reads the journal and says the run
is in progress; rerun points to the resume command instead of "nothing to rerun"."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner
from support.doubles import ProtocolDouble, double  # noqa: F401
from test_resume_settings import _cli, _interrupted_run

from jobs.cli import main
from pipeline.runs.outcomes import OUTCOME_SCHEMA, make_outcome
from pipeline.runs.rundir import ManifestRef, RunDir, RunInfo


def _outcome(row: int, status: str) -> object:
    now = datetime.now(UTC)
    return make_outcome(run_id="r", row=row, line=row + 2, uid=f"u{row}", group_id="g",
                        image=f"{row}.jpg", status=status, started_at=now, finished_at=now)


def test_report_on_a_run_in_progress_counts_its_journal(tmp_path: Path) -> None:
    rundir = RunDir(tmp_path / "run")
    rundir.write_info(RunInfo("r", "enroll", datetime.now(UTC).isoformat(),
                              ManifestRef(str(tmp_path / "m.csv"), "sha256:x", 10)))
    rundir.hold()  # this process is the session running
    try:
        store = rundir.open_store(OUTCOME_SCHEMA, 10, flush_rows=3)
        for row, status in enumerate(["enrolled"] * 3 + ["no_face", "enrolled"]):
            store.append(_outcome(row, status))  # 3 in a part, 2 only in the journal
        out = CliRunner().invoke(main, ["report", str(rundir.path), "--json"])
        assert out.exit_code == 0, out.output
        data = json.loads(out.stdout)
        assert data["rows"] == 5 and data["remaining"] == 5
        assert data["counts"] == {"enrolled": 4, "no_face": 1}
        assert data["state"].startswith("in progress (pid ")
        text = CliRunner().invoke(main, ["report", str(rundir.path)]).stdout
        assert "in progress (pid" in text and "5 of 10 rows have an outcome" in text
        store.close()
    finally:
        rundir.release()
    after = json.loads(CliRunner().invoke(main, ["report", str(rundir.path), "--json"]).stdout)
    assert after["state"] == "not finished" and after["rows"] == 5


async def test_rerun_of_an_interrupted_run_points_to_resume(double: ProtocolDouble,  # noqa: F811
                                                             tmp_path: Path) -> None:
    manifest, run = await _interrupted_run(double, tmp_path)
    code, text = await _cli(double, "rerun", str(run), "--all")
    assert code == 2, text
    assert "is stopped (interrupted)" in text and "of 6 rows have an outcome" in text
    assert f"faceflow enroll {manifest} --run-dir {run} --resume" in text
    assert "Nothing to rerun" not in text
