"""Wrong keys (issue 17, item 4): refused before the first call is exit 2 ("nothing was
sent", as the README says); refused mid-run is exit 4."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from support.doubles import API_KEY, ProtocolDouble, double, token_error  # noqa: F401
from test_enroll_failures_csv import _manifest, _photo

from jobs.exits import exit_code_of
from pipeline.enroll.job import EnrollConfig, EnrollObserver, run_enroll

ROOT = Path(__file__).resolve().parent.parent


async def test_wrong_keys_exit_2_before_any_call(double: ProtocolDouble,  # noqa: F811
                                                 tmp_path: Path) -> None:
    _photo(tmp_path / "a.jpg")
    manifest = _manifest(tmp_path / "m.csv", [("a.jpg", "u1"), ("a.jpg", "u2")])
    env = {"FACEFLOW_ENDPOINT": double.url, "FACEFLOW_API_KEY": API_KEY,
           "FACEFLOW_SECRET_KEY": "not-the-secret", "PATH": "/usr/bin:/bin"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from jobs.cli import main; main()", "enroll", str(manifest),
        "--group", "g", "--run-dir", str(tmp_path / "run"), cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode() + err.decode()
    assert proc.returncode == 2, text
    assert "Stopping (credentials): [invalid_client] the token endpoint refused" in text
    assert "nothing was sent" in text and "not-the-secret" not in text
    assert double.requests == []  # no API call at all


async def test_keys_refused_mid_run_exit_4(double: ProtocolDouble,  # noqa: F811
                                           tmp_path: Path) -> None:
    _photo(tmp_path / "a.jpg")
    manifest = _manifest(tmp_path / "m.csv", [("a.jpg", f"u{i}") for i in range(5)])

    class RevokeAfterFirst(EnrollObserver):
        def row_done(self, outcome: Any, progress: Any) -> None:
            if progress.done == 1:
                double.revoke_tokens(110)
                double.script_token(token_error(), token_error())

    result = await run_enroll(EnrollConfig(manifest=manifest, settings=double.settings(),
                                           group="g", run_dir=tmp_path / "run", concurrency=1),
                              observer=RevokeAfterFirst())
    assert (result.stop_reason, exit_code_of(result)) == ("auth", 4)
    assert result.counts.get("enrolled") == 1
