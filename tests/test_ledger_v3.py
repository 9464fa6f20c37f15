"""The ledger, the duplicate block, reconcile and rerun on ``--api v3`` (real engine)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner

from jobs.cli import main

pytestmark = pytest.mark.dlib
GROUP = "ledger_v3"


def _env(engine: Any, ledger: Path) -> dict[str, str]:
    return {"FACEFLOW_ENDPOINT": engine.url, "FACEFLOW_API_KEY": engine.api_key,
            "FACEFLOW_SECRET_KEY": engine.secret_key, "FACEFLOW_API": "v3",
            "FACEFLOW_LEDGER": str(ledger)}


def _enroll(engine: Any, ledger: Path, manifest: Path, run_dir: Path, *args: str):
    result = CliRunner().invoke(main, ["enroll", str(manifest), "--group", GROUP, "--run-dir",
                                       str(run_dir), *args], env=_env(engine, ledger))
    outcomes = pd.read_parquet(run_dir / "outcomes")
    return result, dict(zip(outcomes.uid, outcomes.status, strict=True))


def test_ledger_duplicate_block_reconcile_on_v3(engine, samples_dir: Path, tmp_path: Path):
    for name in ("obama_01.jpg", "obama_02.jpg", "biden_01.jpg"):
        shutil.copy(samples_dir / name, tmp_path / name)
    ledger = tmp_path / "ledger.sqlite"
    first = tmp_path / "a.csv"
    first.write_text("uid,image\nalice,obama_01.jpg\n")
    result, status = _enroll(engine, ledger, first, tmp_path / "run1")
    assert result.exit_code == 0 and status == {"alice": "enrolled"}, result.output
    second = tmp_path / "b.csv"
    second.write_text("uid,image\nbob,obama_02.jpg\ncarol,biden_01.jpg\n")
    result, status = _enroll(engine, ledger, second, tmp_path / "run2", "--threshold",
                             "yaw=35", "--block-duplicates")
    assert status == {"bob": "duplicate_suspect", "carol": "enrolled"}, result.output
    # night two: what the ledger holds is not sent again
    result, status = _enroll(engine, ledger, first, tmp_path / "run3")
    assert status == {"alice": "skipped_known"}, result.output
    check = CliRunner().invoke(main, ["reconcile", "--group", GROUP, "--ledger", str(ledger),
                                      "--run-dir", str(tmp_path / "rec"), "--check-faces"],
                               env=_env(engine, ledger))
    assert check.exit_code == 0, check.output  # in sync; each face verified on v3
    # a rerun of the blocked row keeps the run's protocol (from its run.json)
    rerun = CliRunner().invoke(main, ["rerun", str(tmp_path / "run2"), "--all", "--run-dir",
                                      str(tmp_path / "rerun")],
                               env={**_env(engine, ledger), "FACEFLOW_API": ""})
    info = (tmp_path / "rerun" / "run.json").read_text()
    assert '"api": "v3"' in info, rerun.output
