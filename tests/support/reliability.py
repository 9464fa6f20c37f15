"""Helpers of the reliability suite: small face photos, manifests, subprocesses, run dirs.

Photos: crops of the two frontal samples (obama_01, biden_01) around the face, 280x308 px,
so the face is ~130 px (it passes the quality gate's 100 px) and detect takes ~50 ms.
Each photo gets its own bytes (mirror, a 1-px shift, a JPEG quality) so every row is a
new image. Nothing here is written outside the folders the tests pass in.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.runs.outcomes import OUTCOME_SCHEMA

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
FACEFLOW = str(VENV_BIN / "faceflow")
LISTENING = re.compile(r"faceflow engine listening on (http://[\d.]+:(\d+))")

#: Face boxes (left, top, width, height) the engine's HOG detector finds in the samples.
FACE_BOXES = {"obama_01.jpg": (364, 152, 240, 240), "biden_01.jpg": (418, 241, 323, 322)}
PHOTO_SIZE = (280, 308)


def face_crop(samples: Path, name: str) -> Image.Image:
    """The sample ``name`` cropped around its face (2.2 face widths) at :data:`PHOTO_SIZE`."""
    left, top, width, height = FACE_BOXES[name]
    cx, cy, half = left + width / 2, top + height / 2, width * 1.1
    img = Image.open(samples / name).convert("RGB")
    box = (int(cx - half), int(cy - half * 1.1), int(cx + half), int(cy + half * 1.1))
    return img.crop(box).resize(PHOTO_SIZE, Image.Resampling.LANCZOS)


def face_photos(samples: Path, folder: Path, n: int, prefix: str = "face") -> list[Path]:
    """``n`` JPEGs that pass the quality gate, each with its own bytes, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    crops = [face_crop(samples, name) for name in FACE_BOXES]
    paths = []
    for i in range(n):
        img = crops[i % 2]
        if (i // 2) % 2:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        shift = (i // 4) % 8  # a few pixels of shift: new bytes, the same face
        img = img.crop((shift, 0, img.width, img.height)).resize(PHOTO_SIZE)
        path = folder / f"{prefix}_{i:03d}.jpg"
        img.save(path, quality=85 + i % 11)
        paths.append(path)
    return paths


def write_manifest(path: Path, rows: Iterable[Sequence[str]],
                   header: Sequence[str] = ("uid", "image", "user_info")) -> Path:
    """A CSV manifest (UTF-8, ``\\n`` line ends) of ``rows`` under ``header``."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def member_manifest(path: Path, photos: Sequence[Path], uid_prefix: str) -> Path:
    """One row per photo: uid ``<prefix>_<i>``, the photo's absolute path, a user_info."""
    rows = [(f"{uid_prefix}_{i}", str(p), f"member {i}") for i, p in enumerate(photos)]
    return write_manifest(path, rows)


def engine_env(server: Any, **extra: str) -> dict[str, str]:
    """The environment for a ``faceflow`` subprocess talking to ``server``."""
    return {**os.environ, "FACEFLOW_ENDPOINT": server.url, "FACEFLOW_API_KEY": server.api_key,
            "FACEFLOW_SECRET_KEY": server.secret_key, **extra}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- run directories -----------------------------------------------------------------------


def outcomes_on_disk(run_dir: Path) -> int:
    """Terminal records a (possibly running) enroll has on disk: complete journal lines
    plus the rows of the Parquet parts. Parts appear by rename, so each is whole."""
    lines = 0
    for seg in run_dir.glob("journal/*.jsonl"):
        try:
            lines += seg.read_bytes().count(b"\n")
        except FileNotFoundError:  # flushed into a part and deleted meanwhile
            pass
    rows = 0
    for part in run_dir.glob("outcomes/part-*.parquet"):
        try:
            rows += pq.ParquetFile(part).metadata.num_rows
        except FileNotFoundError:
            pass
    return lines + rows


def read_parts(run_dir: Path) -> pd.DataFrame:
    """Every Parquet part, each read on its own with the outcome schema, as one frame."""
    parts = sorted((run_dir / "outcomes").glob("part-*.parquet"))
    tables = []
    for part in parts:
        table = pq.read_table(part)
        assert table.schema.equals(OUTCOME_SCHEMA, check_metadata=False), part
        tables.append(table)
    if not tables:
        return OUTCOME_SCHEMA.empty_table().to_pandas()
    return pa.concat_tables(tables).to_pandas().sort_values("row").reset_index(drop=True)


def run_info(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "run.json").read_text(encoding="utf-8"))


def faces_per_uid(store: Any, group: str) -> Counter[str]:
    """uid -> number of faces stored for it in ``group`` (engine side)."""
    counts: Counter[str] = Counter()
    start = 0
    while True:
        users = store.group_users(group, start, 1000)
        for member in users:
            counts[member.uid] = len(store.faces_of(group, member.uid))
        if len(users) < 1000:
            return counts
        start += 1000


# -- subprocesses --------------------------------------------------------------------------


def kill_when(proc: subprocess.Popen, ready: Any, timeout: float = 120.0) -> bool:
    """SIGKILL ``proc`` once ``ready()`` is true; True if it was still running then."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            if proc.poll() is not None:
                break
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            return True
        time.sleep(0.01)
    proc.wait(timeout=timeout)
    return False


def start_engine(port: int, data_dir: Path, *extra: str, env: dict[str, str] | None = None,
                 log: Path | None = None) -> tuple[subprocess.Popen, str]:
    """``python -m pipeline.engine`` on 127.0.0.1:``port``; (process, URL) once it listens.

    ``log``: a file that receives the engine's stderr (appended), else it is discarded.
    """
    cmd = [sys.executable, "-m", "pipeline.engine", "--port", str(port),
           "--data-dir", str(data_dir), *extra]
    stderr = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=stderr, text=True)
    finally:
        if log is not None:
            stderr.close()  # the child holds its own copy
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the engine has bound (or died)
    match = LISTENING.search(line)
    if match is None:
        proc.kill()
        raise AssertionError(f"the engine did not start: {line!r}")
    return proc, match.group(1)


def children_of(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (Linux /proc)."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        out += [int(p) for p in task.read_text().split()]
    return out


def model_workers(engine_pid: int) -> list[int]:
    """The engine's model processes (spawned pool workers, not multiprocessing's tracker)."""
    out = []
    for pid in children_of(engine_pid):
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
        except FileNotFoundError:
            pass
    return out


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
