"""jobs/exits.py: the one table from stop reasons to exit codes, and config errors -> exit 2."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from jobs.exits import (
    EXIT_CONFIG,
    STOP_EXITS,
    config_errors,
    exit_code,
)
from pipeline.api.errors import ConfigError, ManifestError
from pipeline.frame import StopReason


@pytest.mark.parametrize(
    ("stop", "failed", "code"),
    [(None, 0, 0), (None, 3, 1), ("quota", 0, 3), ("budget", 2, 3), ("auth", 5, 4),
     ("interrupted", 1, 130), ("credentials", 0, 2), ("disk", 4, 6)],
    ids=["ok", "failed-rows", "quota", "budget", "auth", "interrupted", "credentials", "disk"],
)
def test_exit_code(stop: str | None, failed: int, code: int) -> None:
    assert exit_code(stop, failed) == code


def test_every_stop_reason_has_an_exit_code() -> None:
    assert set(STOP_EXITS) == set(StopReason)
    assert all(code not in (0, 1) for code in STOP_EXITS.values())
    # 2 means "nothing was sent": only credentials refused as the session opened, or an
    # endpoint that is not the service at all (unreachable when the session opened).
    assert {r for r, code in STOP_EXITS.items() if code == EXIT_CONFIG} == {
        StopReason.CREDENTIALS, StopReason.UNREACHABLE}


@pytest.mark.parametrize("error", [ConfigError("--qps must be above 0"),
                                   ManifestError("m.csv", "no uid column", 1)],
                         ids=["config", "manifest"])
def test_config_errors_exit_2_with_the_message_alone(error: ConfigError, tmp_path: Path
                                                     ) -> None:
    @click.command()
    def cmd() -> None:
        with config_errors():
            raise error

    out = CliRunner().invoke(cmd, [])
    assert out.exit_code == EXIT_CONFIG
    assert str(error) in out.output and "Traceback" not in out.output
