"""Resume keeps the run's settings (issue 17, item 1): the printed resume command reuses
run.json's options and quality gate; an option given again that differs is refused with
the list of differences, or applied with --change-options and recorded in run.json."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from support.doubles import API_KEY, SECRET_KEY, ProtocolDouble, delay, double  # noqa: F401
from test_enroll_failures_csv import _manifest, _photo

from pipeline.enroll.job import EnrollConfig, run_enroll

ROOT = Path(__file__).resolve().parent.parent


async def _cli(double: ProtocolDouble, *args: str) -> tuple[int, str]:  # noqa: F811
    env = {"FACEFLOW_ENDPOINT": double.url, "FACEFLOW_API_KEY": API_KEY,
           "FACEFLOW_SECRET_KEY": SECRET_KEY, "PATH": "/usr/bin:/bin"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from jobs.cli import main; main()", *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode() + err.decode()


async def _interrupted_run(double: ProtocolDouble, tmp_path: Path) -> tuple[Path, Path]:  # noqa: F811
    _photo(tmp_path / "a.jpg")
    manifest = _manifest(tmp_path / "m.csv", [("a.jpg", f"u{i}") for i in range(6)])
    run = tmp_path / "run"
    double.script("detect", delay(30))  # the first row hangs: interrupt it
    stop = asyncio.Event()

    async def interrupt() -> None:
        while not double.calls("detect"):
            await asyncio.sleep(0.01)
        stop.set()

    task = asyncio.create_task(interrupt())
    result = await run_enroll(EnrollConfig(
        manifest=manifest, settings=double.settings(), group="g", mode="upsert", qps=3.0,
        threshold_overrides={"yaw": "40"}, largest_face=True, concurrency=2, run_dir=run,
        outage_after=45.0, outage_wait=90.0),
        stop=stop)
    await task
    assert result.stop_reason == "interrupted"
    return manifest, run


async def test_the_printed_resume_command_keeps_the_runs_settings(
        double: ProtocolDouble, tmp_path: Path) -> None:  # noqa: F811
    manifest, run = await _interrupted_run(double, tmp_path)
    before = json.loads((run / "run.json").read_text())
    code, text = await _cli(double, "enroll", str(manifest), "--run-dir", str(run), "--resume")
    assert code == 0, text
    after = json.loads((run / "run.json").read_text())
    assert after["options"] == before["options"]
    assert after["options"]["qps"] == 3 and after["options"]["largest_face"] is True
    assert after["options"]["concurrency"] == 2 and after["options"]["mode"] == "upsert"
    assert (after["options"]["outage_after"], after["options"]["outage_wait"]) == (45, 90)
    assert after["thresholds"] == before["thresholds"] and after["thresholds"]["yaw_max"] == 40
    assert after["sessions"] == 2 and after["option_changes"] == []
    # upsert (the run's mode) sends update with action_type=replace, never add
    assert double.calls("add") == [] and len(double.calls("update")) == 6


async def test_differing_options_are_refused_with_the_list(double: ProtocolDouble,  # noqa: F811
                                                           tmp_path: Path) -> None:
    manifest, run = await _interrupted_run(double, tmp_path)
    before = (run / "run.json").read_text()
    code, text = await _cli(double, "enroll", str(manifest), "--run-dir", str(run), "--qps", "5",
                            "--threshold", "yaw=20", "--mode", "add")
    assert code == 2, text
    assert "--qps: 3 in the run, 5 now" in text and "--mode: upsert in the run, add now" in text
    assert "threshold yaw_max: 40 in the run, 20 now" in text and "--change-options" in text
    assert "Traceback" not in text
    assert (run / "run.json").read_text() == before  # nothing changed, nothing sent
    assert len(double.calls("detect")) == 1

    code, text = await _cli(double, "enroll", str(manifest), "--run-dir", str(run), "--qps", "5",
                            "--change-options")
    assert code == 0, text
    info = json.loads((run / "run.json").read_text())
    assert info["options"]["qps"] == 5 and info["thresholds"]["yaw_max"] == 40
    assert [c["changes"] for c in info["option_changes"]] == [["--qps: 3 in the run, 5 now"]]
    assert info["option_changes"][0]["session"] == 2


async def test_a_mistyped_qps_name_is_refused_before_anything_is_created(
        double: ProtocolDouble, tmp_path: Path) -> None:  # noqa: F811
    _photo(tmp_path / "a.jpg")
    manifest = _manifest(tmp_path / "m.csv", [("a.jpg", "u1")])
    code, text = await _cli(double, "enroll", str(manifest), "--group", "g", "--qps", "detct=10",
                            "--run-dir", str(tmp_path / "run"))
    assert code == 2 and "unknown interface 'detct'" in text and "Traceback" not in text
    assert not (tmp_path / "run").exists()
    assert double.token_fetches == 0
