"""Stop messages read as one sentence (issue 17): no doubled words, no eaten brackets."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

from rich.console import Console
from support.audit_double import FaceDouble, descriptors, enroll_run, png
from support.doubles import ProtocolDouble, delay, double  # noqa: F401
from test_enroll_failures_csv import _manifest, _photo

from jobs.audit import LineObserver
from jobs.enroll import ConsoleObserver
from pipeline.audit.job import AuditConfig, run_audit
from pipeline.client.config import Secret, Settings
from pipeline.enroll.job import EnrollConfig, EnrollObserver, run_enroll


def _console_line(reason: str, message: str) -> str:
    buf = io.StringIO()
    ConsoleObserver(Console(file=buf, width=300, color_system=None)).stopping(reason, message)
    return buf.getvalue().strip()


def test_service_codes_in_brackets_stay_in_the_stop_line() -> None:
    line = _console_line("auth", "[invalid_client] the token endpoint refused the credentials")
    assert line == ("Stopping (auth): [invalid_client] the token endpoint refused the "
                    "credentials; no new rows start.")


async def test_an_interrupted_enroll_says_interrupted_once(double: ProtocolDouble,  # noqa: F811
                                                           tmp_path: Path) -> None:
    _photo(tmp_path / "a.jpg")
    manifest = _manifest(tmp_path / "m.csv", [("a.jpg", f"u{i}") for i in range(4)])
    double.script("detect", delay(30))
    stop, said = asyncio.Event(), []

    class Watch(EnrollObserver):
        def stopping(self, reason: str, message: str) -> None:
            said.append(_console_line(reason, message))

    async def interrupt() -> None:
        while not double.calls("detect"):
            await asyncio.sleep(0.01)
        stop.set()

    task = asyncio.create_task(interrupt())
    result = await run_enroll(EnrollConfig(manifest=manifest, settings=double.settings(),
                                           group="g", run_dir=tmp_path / "run"),
                              observer=Watch(), stop=stop)
    await task
    assert result.stop_reason == "interrupted"
    assert said == ["Stopping (interrupted): rows in flight are left for resume; no new rows "
                    "start."]


async def test_an_interrupted_audit_says_interrupted_once(tmp_path: Path,
                                                          capsys: Any) -> None:
    people = descriptors(8, 1)
    with FaceDouble(buckets=True) as face_double:
        rows = [(f"p{i}", png(i, 0), people[i], i) for i in range(8)]
        enroll_dir, photos = enroll_run(tmp_path, "staff", rows, face_double)
        stop = asyncio.Event()

        class StopAfter2(LineObserver):
            n = 0

            def probe_done(self, record: Any, progress: Any) -> None:
                self.n += 1
                if self.n == 2:
                    stop.set()

        settings = Settings(endpoint=face_double.url, api_key=Secret("a"), secret_key=Secret("b"))
        result = await run_audit(AuditConfig(settings=settings, groups=("staff",),
                                             run_dirs=(enroll_dir,), run_dir=tmp_path / "a",
                                             concurrency=1, qps={"identify": 20}),
                                 observer=StopAfter2(), stop=stop,
                                 loader=lambda img: photos[img.path])
    assert result.stop_reason == "interrupted"
    err = capsys.readouterr().err
    assert "Stopping (interrupted): probes in flight are left for resume" in err
    assert "interrupted: probes" not in err
