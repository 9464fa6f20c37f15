"""How a run went, for people who would rather look than read (issue 17): per-second
call counts in timeline.parquet (from the client's hook) drawn as an inline SVG, rejected
thumbnails in row order with their failed checks, "3 of 9 shown", and -vv call lines."""

from __future__ import annotations

import asyncio
import csv
import re
import sys
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
from PIL import Image
from support.doubles import API_KEY, FACE, SECRET_KEY, ProtocolDouble, double, error  # noqa: F401

from pipeline.enroll.job import EnrollConfig, run_enroll
from pipeline.enroll.report import render_html
from pipeline.runs.timeline import TIMELINE_FILE, read_timeline

ROOT = Path(__file__).resolve().parent.parent


def _photos(folder: Path, n: int, name: str = "p{}.jpg") -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        path = folder / name.format(i)
        img = Image.new("RGB", (400, 400), (100 + i, 90, 80))
        exif = Image.Exif()
        exif[0x0112] = 1  # an orientation tag: PIL logs its EXIF parsing at DEBUG
        img.save(path, "JPEG", exif=exif)
        names.append(str(path.relative_to(folder.parent)))
    return names


def _manifest(path: Path, images: list[str]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "uid"])
        writer.writerows((image, f"u{i}") for i, image in enumerate(images))
    return path


def _turned(_: Any) -> dict[str, Any]:
    return {"result_num": 1, "result": [{**FACE, "yaw": 27.14}]}


async def test_timeline_counts_calls_per_second_per_interface(double: ProtocolDouble,  # noqa: F811
                                                              tmp_path: Path) -> None:
    manifest = _manifest(tmp_path / "m.csv", _photos(tmp_path / "photos", 5))
    double.script("detect", error(18))
    config = EnrollConfig(manifest=manifest, settings=double.settings(), group="g",
                          run_dir=tmp_path / "run")
    await run_enroll(config)
    table = read_timeline(tmp_path / "run")
    totals = {(i, k): pc.sum(pc.filter(table[k], pc.equal(table["interface"], i))).as_py()
              for i in ("detect", "add") for k in ("accepted", "rate_limited")}
    assert totals == {("detect", "accepted"): 5, ("detect", "rate_limited"): 1,
                      ("add", "accepted"): 5, ("add", "rate_limited"): 0}
    assert len(double.calls("detect")) == 6  # what the server saw
    await run_enroll(config)  # nothing to do: the counts stay those of the run
    again = read_timeline(tmp_path / "run")
    assert pc.sum(again["accepted"]).as_py() == 10


async def test_page_draws_the_timeline_and_rejected_rows_with_their_checks(
        double: ProtocolDouble, tmp_path: Path) -> None:  # noqa: F811
    long = "照片_" + "很长的名字" * 12 + "_{}.jpg"
    manifest = _manifest(tmp_path / "m.csv", _photos(tmp_path / "张三的照片", 9, long))
    double.default("detect", _turned)
    config = EnrollConfig(manifest=manifest, settings=double.settings(), group="g",
                          run_dir=tmp_path / "run", concurrency=4)
    await run_enroll(config)
    assert (tmp_path / "run" / TIMELINE_FILE).exists()
    html = render_html(tmp_path / "run")
    timeline = html[html.index('id="timeline"'):]
    assert timeline.index("<svg") < timeline.index("</svg>")
    assert "rejected_quality: pose_yaw" in html and "3 of 9 shown" in html
    assert "show 6 more" in html
    assert html.count("yaw 27.1 ≥ 20") == 9  # every drawn row says which check failed
    rows = [int(n) for n in re.findall(r"<figcaption>row (\d+) ", html)]
    assert rows == list(range(9))  # row order, whatever order the rows finished in
    assert "Noto Sans CJK SC" in html and "overflow-wrap: anywhere" in html


async def test_vv_prints_one_line_per_call_and_no_third_party_debug(
        double: ProtocolDouble, tmp_path: Path) -> None:  # noqa: F811
    manifest = _manifest(tmp_path / "m.csv", _photos(tmp_path / "photos", 2))
    double.script("detect", error(18))
    env = {"FACEFLOW_ENDPOINT": double.url, "FACEFLOW_API_KEY": API_KEY,
           "FACEFLOW_SECRET_KEY": SECRET_KEY, "PATH": "/usr/bin:/bin"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from jobs.cli import main; main()", "-vv", "enroll",
        str(manifest), "--group", "g", "--run-dir", str(tmp_path / "run"),
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 120)
    text = err.decode()
    assert proc.returncode == 0, text[-2000:]
    calls = re.findall(r"faceflow\.client: (\w+) HTTP (\d+) error_code (\S+) \d+ ms "
                       r"attempt (\d) log_id (\d+)", text)
    assert sorted((c[0], c[2], c[3]) for c in calls) == [
        ("add", "-", "1"), ("add", "-", "1"), ("detect", "-", "1"), ("detect", "-", "2"),
        ("detect", "18", "1")]
    assert " PIL" not in text and "asyncio" not in text
    tokens = {r.token for r in double.requests if r.token}
    assert tokens and not any(t in text for t in tokens)
