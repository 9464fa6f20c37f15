"""No credential and no access token ends up anywhere a run writes or prints.

An engine with a distinctive API key and secret, short tokens (and a clock jump mid-run,
so calls meet 111 and refresh) and injected errors (so retries are logged) serves a
`faceflow -vv enroll` with good and bad rows, then `report --html --json` and `audit`.
Every access token the engine issued is read from its own database. None of the
secrets may appear in: the -vv logs and output, any file of the run and audit
directories (Parquet read column by column: its pages are compressed), the text of the
exceptions the library raises for bad credentials and a dead endpoint, or log records.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.reliability import FACEFLOW, engine_env, free_port, outcomes_on_disk, write_manifest

from pipeline.api.errors import ApiError, UnreachableError
from pipeline.client.config import Settings
from pipeline.client.faceclient import FaceClient
from pipeline.client.retry import RetryPolicy

pytestmark = [pytest.mark.slow, pytest.mark.dlib]

API_KEY = "AK-leakcheck-7Qx93fZp"
SECRET_KEY = "SK-leakcheck-Lm42vR8d"
GROUP = "rel_secrets"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from pipeline.engine.server import EngineServer  # noqa: PLC0415

    faults = {"216500": 0.1, "18": 0.1, "http500": 0.05}
    with EngineServer(tmp_path_factory.mktemp("secrets-engine"), api_key=API_KEY,
                      secret_key=SECRET_KEY, token_ttl=3, faults=faults, seed=11) as srv:
        yield srv


def _issued_tokens(server: Any) -> list[str]:
    db = sqlite3.connect(f"file:{server.data_dir / 'faceset.sqlite3'}?mode=ro", uri=True)
    try:
        return [row[0] for row in db.execute("SELECT token FROM tokens")]
    finally:
        db.close()


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)


def _texts_of(path: Path) -> Iterator[str]:
    """What a file says: every string cell of a Parquet file, else its bytes as text."""
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        yield from table.schema.names
        yield str(table.schema.metadata or "")
        for column in table.columns:
            if pa.types.is_string(column.type) or pa.types.is_list(column.type):
                yield from _strings(column.to_pylist())
    else:
        yield path.read_bytes().decode("utf-8", errors="replace")


def _leaks(texts: dict[str, str | Iterator[str]], secrets: list[str]) -> list[str]:
    found = []
    for where, text in texts.items():
        for piece in [text] if isinstance(text, str) else text:
            found += [f"{secret[:12]}... in {where}" for secret in secrets if secret in piece]
    return found


def _jump_clock_after_first_outcomes(server: Any, run_dir: Path) -> threading.Thread:
    """Expire every token once two outcomes are on disk: the next calls meet 111."""
    def jump() -> None:
        deadline = time.monotonic() + 60
        while outcomes_on_disk(run_dir) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        server.advance_clock(60)

    thread = threading.Thread(target=jump, daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def outputs(server: Any, photos: list[Path], samples_dir: Path,
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run enroll, report and audit; every text they printed, and their folders."""
    folder = tmp_path_factory.mktemp("secrets")
    (folder / "notes.jpg").write_bytes(b"not a photo\n")
    rows = [(f"s{i}", str(p), f"member {i}") for i, p in enumerate(photos[:6])]
    rows += [("s_missing", "nowhere.jpg", "i"), ("s_text", "notes.jpg", "i"),
             ("bad uid", str(photos[0]), "i"), ("s_cat", str(samples_dir / "no_face_cat.png"),
                                               "i")]
    manifest = write_manifest(folder / "m.csv", rows)
    run_dir, audit_dir = folder / "run", folder / "audit"
    env = engine_env(server)
    jumper = _jump_clock_after_first_outcomes(server, run_dir)
    printed: dict[str, str] = {}
    commands = {
        # --qps 4: the run outlasts the clock jump, so later calls meet expired tokens
        "enroll": ["-vv", "enroll", str(manifest), "--group", GROUP, "--run-dir", str(run_dir),
                   "--concurrency", "3", "--qps", "4"],
        "report": ["-vv", "report", str(run_dir), "--json", "--html",
                   str(run_dir / "report.html")],
        "audit": ["-vv", "audit", str(run_dir), "--group", GROUP, "--run-dir", str(audit_dir)],
    }
    codes = {}
    for name, args in commands.items():
        done = subprocess.run([FACEFLOW, *args], env=env, capture_output=True, text=True,
                              timeout=300)
        printed[f"{name} stdout"], printed[f"{name} stderr"] = done.stdout, done.stderr
        codes[name] = done.returncode
        if name == "enroll":
            jumper.join(timeout=60)
    return {"printed": printed, "codes": codes, "dirs": [run_dir, audit_dir],
            "tokens": _issued_tokens(server)}


def test_the_runs_did_their_work(server: Any, outputs: dict[str, Any]) -> None:
    assert outputs["codes"]["enroll"] == 1, outputs["printed"]["enroll stderr"][-2000:]
    assert outputs["codes"]["report"] == 0 and outputs["codes"]["audit"] in (0, 1)
    assert "DEBUG" in outputs["printed"]["enroll stderr"]  # -vv really logged
    assert "retry" in outputs["printed"]["enroll stderr"]  # and the storm was logged
    assert len(outputs["tokens"]) >= 3  # tokens were renewed during the runs
    assert server.state.errors["111"] >= 1  # and refused once expired by the clock jump


def test_no_secret_or_token_in_logs_output_or_files(outputs: dict[str, Any]) -> None:
    secrets = [API_KEY, SECRET_KEY, *outputs["tokens"]]
    texts: dict[str, Any] = dict(outputs["printed"])
    files = [p for d in outputs["dirs"] for p in d.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"run.json", "failures.csv", "report.html", "findings.parquet"} <= names, names
    texts.update({str(p): list(_texts_of(p)) for p in files})
    # The scan reads what Parquet holds (zstd pages): the outcome uids are seen.
    parquet = [t for where, t in texts.items() if "/outcomes/" in where]
    assert parquet and any("s_missing" in cell for cells in parquet for cell in cells)
    assert not _leaks(texts, secrets)


def test_exception_text_holds_no_secret(server: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = Settings(endpoint=server.url, api_key=API_KEY, secret_key=SECRET_KEY + "x")
    dead = Settings(endpoint=f"http://127.0.0.1:{free_port()}", api_key=API_KEY,
                    secret_key=SECRET_KEY, connect_timeout=1)
    errors: list[BaseException] = []

    async def open_with(settings: Settings) -> None:
        try:
            async with FaceClient(settings, retry=RetryPolicy(max_attempts=1)):
                pass
        except (ApiError, UnreachableError) as exc:
            errors.append(exc)

    for settings in (wrong, dead):
        asyncio.run(open_with(settings))
    assert [type(e).__name__ for e in errors] == ["AuthError", "UnreachableError"]
    texts = {f"{type(e).__name__}": f"{e!s} {e!r} {e.args} {e.__cause__!r} {e.__context__!r}"
             for e in errors}
    texts["settings"] = f"{wrong!r} {wrong!s} {wrong.public()}"
    texts["log records"] = "\n".join(r.getMessage() for r in caplog.records)
    assert not _leaks(texts, [API_KEY, SECRET_KEY, SECRET_KEY + "x",
                              *_issued_tokens(server)])
