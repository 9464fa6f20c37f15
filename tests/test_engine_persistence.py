"""The faceset survives a restart and a kill -9; the served process shuts down cleanly."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from support.engine_http import Api, b64

from pipeline.engine.server import EngineServer
from pipeline.engine.store import Store

pytestmark = pytest.mark.dlib
ROOT = Path(__file__).resolve().parent.parent


class _Remote:
    """What :class:`Api` needs from a server: url and credentials."""

    def __init__(self, url: str) -> None:
        from pipeline.client.config import ENGINE_DEMO_API_KEY, ENGINE_DEMO_SECRET_KEY

        self.url, self.api_key, self.secret_key = url, ENGINE_DEMO_API_KEY, ENGINE_DEMO_SECRET_KEY


def _start(command: list[str], data_dir: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "FACEFLOW_API_KEY": "", "FACEFLOW_SECRET_KEY": ""}
    proc = subprocess.Popen(command + ["--port", "0", "--data-dir", str(data_dir)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line.startswith("faceflow engine listening on http://127.0.0.1:"), line
    return proc, line.rsplit(" ", 1)[1]


async def test_restart_keeps_faceset_and_tokens(tmp_path: Path, samples_dir: Path) -> None:
    image, probe = b64(samples_dir / "obama_01.jpg"), b64(samples_dir / "obama_02.jpg")
    with EngineServer(tmp_path) as first:
        async with Api(first) as api:
            await api.call("faceset/user/add", uid="obama", user_info="B", group_id="keep",
                           image=image)
            token = api.token
    with EngineServer(tmp_path) as second:
        assert second.store.counts()["faces"] == 1
        async with Api(second) as api:
            found = await api.call("identify", group_id="keep", image=probe, token=token)
    assert found["result"][0]["uid"] == "obama" and found["result"][0]["scores"][0] >= 80


@pytest.mark.slow
async def test_kill_9_loses_no_acknowledged_write(tmp_path: Path, samples_dir: Path) -> None:
    images = [b64(samples_dir / n) for n in ("obama_01.jpg", "biden_01.jpg", "astronaut.png")]
    proc, url = _start([sys.executable, "-m", "pipeline.engine"], tmp_path)
    try:
        async with Api(_Remote(url)) as api:
            acked = []
            for i, image in enumerate(images * 2):
                reply = await api.call("faceset/user/add", uid=f"u{i}", user_info="x",
                                       group_id="crash", image=image)
                if "error_code" not in reply:
                    acked.append(f"u{i}")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and len(acked) == 6
    with sqlite3.connect(tmp_path / "faceset.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store = Store(tmp_path / "faceset.sqlite3")
    try:
        assert sorted(m.uid for m in store.group_users("crash")) == sorted(acked)
        assert store.counts()["faces"] == 6
    finally:
        store.close()


@pytest.mark.slow
def test_cli_serve_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    faceflow = str(Path(sys.executable).parent / "faceflow")
    proc, _ = _start([faceflow, "engine", "serve"], tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr


def test_demo_credentials_when_env_is_unset() -> None:
    from pipeline.client.config import ENGINE_DEMO_API_KEY
    from pipeline.engine.server import credentials_from_env

    assert credentials_from_env({})[0] == ENGINE_DEMO_API_KEY
    assert credentials_from_env({"FACEFLOW_API_KEY": "k", "FACEFLOW_SECRET_KEY": "s"}) == (
        "k", "s")


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(p) for p in text]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_model_processes_exit_when_the_engine_is_killed(tmp_path: Path) -> None:
    import time

    proc, _ = _start([sys.executable, "-m", "pipeline.engine"], tmp_path)
    workers = _children(proc.pid)
    assert workers, "the engine runs its models in child processes"
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.2)
    assert not [p for p in workers if _alive(p)], "orphaned model processes"
