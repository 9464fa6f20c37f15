"""benchmarks/resume_finished.py at a tiny size: the finished run it builds resumes to
exit 1 with every failed row in failures.csv, and the unchanged rerun leaves it alone."""

from __future__ import annotations

from pathlib import Path

from benchmarks import resume_finished


def test_built_run_resumes_and_failures_csv_is_kept(tmp_path: Path) -> None:
    manifest, run = resume_finished.build(tmp_path, 50)
    assert resume_finished.run_command(manifest, run)[2] == 1
    failures = (run / "failures.csv").read_text(encoding="utf-8").splitlines()
    assert len(failures) == 1 + 25 and failures[1].startswith("u1,")
    before = (run / "failures.csv").stat().st_mtime_ns
    assert resume_finished.run_command(manifest, run)[2] == 1
    assert (run / "failures.csv").stat().st_mtime_ns == before
