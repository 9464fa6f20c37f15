"""`faceflow demo-scale` (what `make demo-scale` runs), small: PostgreSQL, two engine
replicas, two enroll shards on one QPS budget, merge."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from jobs.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.dlib]


def test_demo_scale_enrolls_through_two_replicas_and_merges(tmp_path: Path,
                                                           pg_server: str) -> None:
    # pg_server: skips, with the reason, where no PostgreSQL can be started.
    result = CliRunner().invoke(main, ["demo-scale", "--folder", str(tmp_path),
                                       "--rows", "6", "--qps", "5"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "merged 2 shards" in out and "6 rows, enrolled 6" in out
    assert out.count("sees 6 users") == 2 and "both replicas see every enrolled user" in out
    assert "calls/s together (budget 5/s for the account)" in out
    (folder,) = tmp_path.glob("demo-scale-*")
    assert (folder / "runs" / "run.json").exists() and (folder / "runs" / "report.html").exists()
