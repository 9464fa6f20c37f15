"""kill -9 at any moment, then resume: exactly one outcome per row, no image enrolled twice."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-c", "import sys; from jobs.cli import main; main(sys.argv[1:])"]

pytestmark = [pytest.mark.slow, pytest.mark.dlib]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from pipeline.engine.server import EngineServer

    with EngineServer(tmp_path_factory.mktemp("engine"), workers=2) as srv:
        yield srv


def _manifest(folder: Path, samples: Path, n: int) -> Path:
    """``n`` rows, each its own uid and its own image bytes (re-encodings of two frontal faces)."""
    faces = [Image.open(samples / name).convert("RGB") for name in ("obama_01.jpg", "biden_01.jpg")]
    rows = []
    for i in range(n):
        img = faces[i % 2]
        if (i // 2) % 2:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        path = folder / f"face_{i}.jpg"
        img.save(path, quality=80 + i % 15, subsampling=i % 3)  # distinct bytes per row
        rows.append((f"member_{i}", path.name, f"member {i}"))
    with open(folder / "m.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([("uid", "image", "user_info"), *rows])
    return folder / "m.csv"


def _journaled(run_dir: Path) -> int:
    lines = sum(p.read_bytes().count(b"\n") for p in run_dir.glob("journal/*.jsonl"))
    return lines + len(list(run_dir.glob("outcomes/part-*.parquet")))


def _kill_after(cmd: list[str], env: dict[str, str], run_dir: Path, outcomes: int) -> int:
    """Start ``cmd``, SIGKILL it once ``outcomes`` records are on disk; the exit status."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if _journaled(run_dir) >= outcomes:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    return proc.wait(timeout=60)


def test_kill_9_twice_then_resume(server: Any, tmp_path: Path, samples_dir: Path) -> None:
    n = 10
    manifest = _manifest(tmp_path, samples_dir, n)
    run_dir = tmp_path / "run"
    env = {**os.environ, "FACEFLOW_ENDPOINT": server.url, "FACEFLOW_API_KEY": server.api_key,
           "FACEFLOW_SECRET_KEY": server.secret_key}
    # --qps 3 spreads the run over a few seconds so the kills land mid-run.
    cmd = [*CLI, "enroll", str(manifest), "--group", "crash", "--run-dir", str(run_dir),
           "--qps", "3", "--concurrency", "3", "--flush-rows", "3"]
    assert _kill_after(cmd, env, run_dir, 2) == -signal.SIGKILL
    assert _kill_after(cmd, env, run_dir, 5) in (-signal.SIGKILL, 0)
    final = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    df = pd.read_parquet(run_dir / "outcomes")
    assert sorted(df["row"]) == list(range(n))  # exactly one outcome per row
    assert set(df["status"]) <= {"enrolled", "already_enrolled"}
    for i in range(n):
        assert len(server.store.faces_of("crash", f"member_{i}")) == 1  # never twice
    assert not list(run_dir.glob("journal/*.jsonl")) and not list(run_dir.rglob("*.tmp"))
