"""Ctrl-C and SIGTERM on a real `faceflow enroll` process: exit 130, outcomes kept, resume.

The library-level stop is covered in test_enroll.py; this drives the console script
the way cron or a person at the terminal does.
"""

from __future__ import annotations

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

FACEFLOW = str(Path(sys.executable).parent / "faceflow")


def _manifest(folder: Path, samples: Path, rows: int) -> Path:
    """``rows`` rows that pass the gate: the frontal samples, mirrored and shifted."""
    lines = ["uid,image,user_info"]
    for i in range(rows):
        name = ["obama_01.jpg", "biden_01.jpg"][i % 2]
        img = Image.open(samples / name).convert("RGB")
        if i // 2 % 2:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        # A distinct file per row (a 1-px shift) so every row is a new image.
        img = img.crop((i // 4, 0, img.width, img.height))
        img.save(folder / f"r{i}.jpg", quality=92)
        lines.append(f"sig{i},r{i}.jpg,member {i}")
    path = folder / "m.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _journal_lines(run_dir: Path) -> int:
    parts = run_dir / "outcomes"
    flushed = len(list(parts.glob("*.parquet"))) if parts.exists() else 0
    journal = run_dir / "journal"
    pending = sum(len(p.read_text().splitlines()) for p in journal.glob("*.jsonl")) \
        if journal.exists() else 0
    return flushed + pending


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_signal_stops_cleanly_and_resume_finishes(engine: Any, tmp_path: Path,
                                                  samples_dir: Path, sig: int) -> None:
    manifest = _manifest(tmp_path, samples_dir, 8)
    run_dir = tmp_path / "run"
    env = {**os.environ, "FACEFLOW_ENDPOINT": engine.url, "FACEFLOW_API_KEY": engine.api_key,
           "FACEFLOW_SECRET_KEY": engine.secret_key}
    group = f"signals_{sig}"
    cmd = [FACEFLOW, "enroll", str(manifest), "--group", group, "--run-dir", str(run_dir),
           "--qps", "2", "--concurrency", "1", "--flush-rows", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while _journal_lines(run_dir) < 1 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err
    assert "--resume" in out + err  # tells the operator how to finish
    first = pd.read_parquet(run_dir / "outcomes")
    assert 1 <= len(first) < 8

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    df = pd.read_parquet(run_dir / "outcomes").sort_values("row")
    assert df["row"].tolist() == list(range(8))  # exactly one outcome per row
    assert set(df["status"]) <= {"enrolled", "already_enrolled"}
    for i in range(8):
        assert len(engine.store.faces_of(group, f"sig{i}")) == 1  # nothing enrolled twice
