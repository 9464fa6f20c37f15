"""The enroll/rerun/report/demo commands: option parsing and configuration errors (exit 2)."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from jobs.cli import COMMANDS, main
from jobs.enroll import parse_qps, parse_thresholds

CREDS = {"FACEFLOW_API_KEY": "k-123", "FACEFLOW_SECRET_KEY": "s-456",
         "FACEFLOW_ENDPOINT": "http://127.0.0.1:9"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [(None, None), ("5", 5.0), ("0.5", 0.5), ("detect=10,add=2.5", {"detect": 10.0, "add": 2.5}),
     (" detect = 3 ", {"detect": 3.0})],
)
def test_parse_qps(text: str | None, expected: object) -> None:
    assert parse_qps(text) == expected


@pytest.mark.parametrize("text", ["0", "-1", "fast", "detect=", "=3", "detect=0", "a=1,b"])
def test_parse_qps_refuses(text: str) -> None:
    with pytest.raises(click.BadParameter):
        parse_qps(text)


def test_parse_thresholds() -> None:
    assert parse_thresholds(("blur=0.5", "occlusion.mouth = 0.6")) == \
        {"blur": "0.5", "occlusion.mouth": "0.6"}
    with pytest.raises(click.BadParameter, match="KEY=VALUE"):
        parse_thresholds(("blur",))


def test_commands_are_registered() -> None:
    out = CliRunner().invoke(main, ["--help"])
    for name in ("enroll", "rerun", "report", "demo"):
        assert name in COMMANDS and name in out.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--qps", "zero"], "is not a number"),
        (["--qps", "detect=0"], "must be above 0"),
        (["--mode", "merge"], "merge"),
        (["--concurrency", "0"], "concurrency"),
        (["--resume"], "--resume needs --run-dir"),
        (["--threshold", "blur"], "KEY=VALUE"),
    ],
    ids=["qps-text", "qps-zero", "mode", "concurrency", "resume-no-dir", "threshold-form"],
)
def test_bad_options_exit_2_before_any_call(tmp_path: Path, args: list[str], needle: str) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("uid,image,user_info\nu1,a.jpg,x\n")
    out = CliRunner().invoke(main, ["enroll", str(manifest), *args], env=CREDS)
    assert out.exit_code == 2, out.output
    assert needle in out.output
    assert not (Path("runs").exists() and any(p.name == "m.csv" for p in Path("runs").rglob("*")))


def test_missing_credentials_exit_2(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("uid,image,user_info\nu1,a.jpg,x\n")
    env = {"FACEFLOW_API_KEY": "", "FACEFLOW_SECRET_KEY": ""}
    out = CliRunner().invoke(main, ["enroll", str(manifest)], env=env)
    assert out.exit_code == 2 and "credentials" in out.output


def test_rerun_of_a_dir_without_a_run_exit_2(tmp_path: Path) -> None:
    out = CliRunner().invoke(main, ["rerun", str(tmp_path)], env=CREDS)
    assert out.exit_code == 2 and "holds no run" in out.output
