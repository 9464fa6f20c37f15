"""Every enroll option is checked before anything is created (issue 17, item 6): a bad
value is exit 2 with one line, and neither the run directory nor run.json exists."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from jobs.cli import main

ENV = {"FACEFLOW_ENDPOINT": "http://127.0.0.1:9", "FACEFLOW_API_KEY": "k",
       "FACEFLOW_SECRET_KEY": "s"}


@pytest.mark.parametrize(("args", "needle"), [
    (["--qps", "detct=10"], "unknown interface 'detct'"),
    (["--qps", "detect=0"], "must be"),
    (["--threshold", "yawn=10"], "yawn"),
    (["--thresholds", "missing.toml"], "missing.toml"),
    (["--images-root", "no-such-dir"], "--images-root"),
    (["--encoding", "klingon"], "unknown encoding"),
    (["--delimiter", ";;"], "one character"),
    (["--concurrency", "0"], "--concurrency"),
], ids=["qps-name", "qps-zero", "threshold-key", "thresholds-file", "images-root",
        "encoding", "delimiter", "concurrency"])
def test_bad_option_creates_nothing(tmp_path: Path, args: list[str], needle: str,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.csv").write_text("image,uid\na.jpg,u1\n")
    out = CliRunner().invoke(main, ["enroll", "m.csv", "--group", "g", "--run-dir", "run",
                                    *args], env=ENV)
    assert out.exit_code == 2, out.output
    assert needle in out.output and "Traceback" not in out.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()
