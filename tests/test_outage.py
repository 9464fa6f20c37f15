"""Outages stop a run, they do not fail it (issue 12): the enroll job against a protocol
double that goes away mid-run. The double runs in its own thread and event loop, so the
job (in-process or through the CLI) is a real client on 127.0.0.1. Outcomes asserted,
never timings.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import socket
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image
from support.doubles import API_KEY, SECRET_KEY, ProtocolDouble, http

from jobs.cli import main
from pipeline.enroll.job import EnrollConfig, run_enroll

ROWS = 24


class ThreadedDouble:
    """A :class:`ProtocolDouble` serving from a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.double = ProtocolDouble()

    def call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def __enter__(self) -> ThreadedDouble:
        self.thread.start()
        self.call(self.double.start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.call(self.double.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def down_after(self, seconds: float, back_after: float | None = None) -> None:
        """Go away ``seconds`` from now (connections refused); back ``back_after`` later."""
        async def outage() -> None:
            await asyncio.sleep(seconds)
            await self.double.go_down("refuse")
            if back_after is not None:
                await asyncio.sleep(back_after)
                await self.double.come_back()

        asyncio.run_coroutine_threadsafe(outage(), self.loop)


@pytest.fixture
def served() -> Iterator[ThreadedDouble]:
    with ThreadedDouble() as server:
        yield server


def manifest(folder: Path, rows: int = ROWS) -> Path:
    photo = folder / "face.jpg"
    Image.new("RGB", (320, 320), (160, 130, 110)).save(photo, quality=90)
    path = folder / "m.csv"
    path.write_text("uid,image\n" + "".join(f"u{i},face.jpg\n" for i in range(rows)))
    return path


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again on exit: nothing listens there


def outcomes(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "outcomes").sort_values("row").reset_index(drop=True)


def test_an_outage_mid_run_pauses_and_the_run_resumes_by_itself(
        served: ThreadedDouble, tmp_path: Path) -> None:
    config = EnrollConfig(manifest=manifest(tmp_path), settings=served.double.settings(),
                          group="g", qps=8, concurrency=4, run_dir=tmp_path / "run",
                          outage_after=0.5, outage_wait=60)
    served.down_after(0.8, back_after=4.0)
    result = asyncio.run(run_enroll(config))
    assert result.stop_reason is None and result.remaining == 0
    df = outcomes(tmp_path / "run")
    assert df["row"].tolist() == list(range(ROWS))
    assert set(df["status"]) == {"enrolled"}  # no row failed because of the outage
    waited = [c["outage"] for c in df["attempts_by_cause"] if c]
    assert sum(waited) > 0  # some calls met the outage and waited it out


def test_an_outage_that_lasts_exits_5_and_the_printed_command_finishes(
        served: ThreadedDouble, tmp_path: Path) -> None:
    env = {"FACEFLOW_ENDPOINT": served.double.url, "FACEFLOW_API_KEY": API_KEY,
           "FACEFLOW_SECRET_KEY": SECRET_KEY}
    path, run_dir = manifest(tmp_path), tmp_path / "run"
    served.down_after(0.8)  # and it stays away
    first = CliRunner().invoke(main, ["enroll", str(path), "--group", "g", "--qps", "8",
                                      "--concurrency", "4", "--run-dir", str(run_dir),
                                      "--outage-after", "0.5", "--outage-wait", "1"], env=env)
    assert first.exit_code == 5, first.output
    info = json.loads((run_dir / "run.json").read_text())
    assert (info["exit_code"], info["stop_reason"]) == (5, "outage")
    done = outcomes(run_dir) if (run_dir / "outcomes").exists() else pd.DataFrame()
    assert len(done) < ROWS and set(done.get("status", [])) <= {"enrolled"}
    command = re.search(r"^\s*(faceflow enroll .*--resume)\s*$", first.output, re.M)
    assert command is not None, first.output
    served.call(served.double.come_back())
    argv = shlex.split(command.group(1))[1:]
    second = CliRunner().invoke(main, argv, env=env)
    assert second.exit_code == 0, second.output
    df = outcomes(run_dir)
    assert df["row"].tolist() == list(range(ROWS)) and set(df["status"]) == {"enrolled"}


#: RFC 6761: names under .invalid never resolve (a real resolver failure, no network used)
NO_SUCH_HOST = "faceflow-test.invalid"


def resolver_answers(seconds: float = 3.0) -> bool:
    """Does this machine's resolver say 'no such name' for NO_SUCH_HOST within ``seconds``?
    (On a machine without DNS the lookup may hang until the resolver gives up.)"""
    done = threading.Event()

    def lookup() -> None:
        try:
            socket.getaddrinfo(NO_SUCH_HOST, 80)
        except OSError:
            done.set()

    threading.Thread(target=lookup, daemon=True).start()
    return done.wait(seconds)


@pytest.mark.parametrize("kind", ["refused", "dns", "tls", "wrong-path", "html"])
def test_an_endpoint_that_is_not_the_service_is_one_line_and_exit_2(
        served: ThreadedDouble, tmp_path: Path, kind: str) -> None:
    """What the user sees is the error line alone (no run header before it), exit 2."""
    if kind == "dns" and not resolver_answers():
        pytest.skip("this machine's resolver does not answer (no DNS): the lookup would hang")
    url = served.double.url
    if kind == "html":  # a web server at the endpoint: its token path answers an HTML page
        served.double.script_token(http(200, "<html><body>It works!</body></html>"))
    endpoint = {"refused": f"http://127.0.0.1:{closed_port()}", "dns": f"http://{NO_SUCH_HOST}",
                "tls": url.replace("http://", "https://"), "wrong-path": url + "/wrong",
                "html": url}[kind]
    env = {"FACEFLOW_ENDPOINT": endpoint, "FACEFLOW_API_KEY": API_KEY,
           "FACEFLOW_SECRET_KEY": SECRET_KEY}
    out = CliRunner().invoke(main, ["enroll", str(manifest(tmp_path)), "--group", "g",
                                    "--run-dir", str(tmp_path / "run")], env=env)
    assert out.exit_code == 2, out.output
    lines = [line for line in out.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), out.output
    assert endpoint in lines[0]
    cause = {"refused": "connection refused", "dns": "host name not resolved",
             "tls": "TLS handshake failed", "wrong-path": "answered HTTP 40",
             "html": "not JSON"}[kind]
    assert cause in lines[0]
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (info["exit_code"], info["stop_reason"]) == (2, "unreachable")
    parts = tmp_path / "run" / "outcomes"
    assert not parts.exists() or len(pd.read_parquet(parts)) == 0  # no row got an outcome


async def test_the_runner_pauses_on_ready_and_stops_when_it_says_outage() -> None:
    from pipeline.frame import Runner, StopReason, StopRun

    ran: list[int] = []
    calls = 0

    async def ready() -> None:  # the service is gone for good after three items
        nonlocal calls
        calls += 1
        if calls > 3:
            raise StopRun(StopReason.OUTAGE, "the service has not answered for 360 s")

    async def work(item: int) -> None:
        ran.append(item)

    stopped = await Runner(2, ready=ready).run(range(10), work)
    assert stopped is not None and stopped.reason == StopReason.OUTAGE
    assert ran == [0, 1, 2]  # items not started are left for resume
