"""Local faults a new operations team meets (issue 17): read-only and full disks, paths
that cannot be written. Each is one line naming the path and the cause, with a
documented exit code, never a traceback.

Read-only and full file systems are real tmpfs mounts (we run as root in CI); the tests
that need one skip when mounting is not allowed here.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.doubles import ProtocolDouble, double  # noqa: F401
from test_enroll_failures_csv import _manifest

from jobs.cli import main
from pipeline.enroll.job import EnrollConfig, run_enroll


def _mount(folder: Path, *options: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs",
                           str(folder)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """An empty read-only file system."""
    folder = tmp_path / "ro"
    _mount(folder, "size=1m", "ro")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


async def _finished_run(double: ProtocolDouble, tmp_path: Path) -> Path:  # noqa: F811
    manifest = _manifest(tmp_path / "m.csv", [("missing.jpg", "u1")])
    await run_enroll(EnrollConfig(manifest=manifest, settings=double.settings(), group="g",
                                  run_dir=tmp_path / "run"))
    return tmp_path / "run"


async def test_report_html_to_a_path_that_cannot_be_written(
        double: ProtocolDouble, tmp_path: Path, read_only: Path) -> None:  # noqa: F811
    run = await _finished_run(double, tmp_path)
    for target, cause in ((read_only / "r.html", "Read-only file system"),
                          (tmp_path / "no" / "such" / "r.html", "No such file or directory")):
        out = CliRunner().invoke(main, ["report", str(run), "--json", "--html", str(target)])
        assert out.exit_code == 2, out.output
        assert f"cannot write the HTML report to {target}: {cause}" in out.stderr
        assert "Traceback" not in out.output


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 96 KiB file system: a few hundred outcomes fill it."""
    folder = tmp_path / "small"
    _mount(folder, "size=96k")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


async def test_a_read_only_run_dir_is_one_line_exit_2(double: ProtocolDouble,  # noqa: F811
                                                      tmp_path: Path, read_only: Path) -> None:
    from test_resume_settings import _cli

    manifest = _manifest(tmp_path / "m.csv", [("missing.jpg", "u1")])
    code, text = await _cli(double, "enroll", str(manifest), "--group", "g", "--run-dir",
                            str(read_only / "run"))
    assert code == 2, text
    assert f"{read_only / 'run'}: cannot use it as the run directory: Read-only file " \
           "system" in text
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1
    assert double.token_fetches == 0


async def test_a_full_disk_stops_at_the_first_error_and_the_command_finishes_later(
        double: ProtocolDouble, tmp_path: Path, small_disk: Path) -> None:  # noqa: F811
    import duckdb
    from test_enroll_failures_csv import _photo
    from test_resume_settings import _cli

    _photo(tmp_path / "a.jpg")
    rows = 600
    manifest = _manifest(tmp_path / "m.csv", [("a.jpg", f"u{i}") for i in range(rows)])
    run = small_disk / "run"
    code, text = await _cli(double, "enroll", str(manifest), "--group", "g", "--run-dir",
                            str(run))
    assert code == 6, text[-3000:]
    assert "Stopping (disk): cannot write" in text and "No space left on device" in text
    assert "Traceback" not in text and "Task exception" not in text
    hint = f"faceflow enroll {manifest} --run-dir {run} --resume"
    assert hint in text
    sent = len(double.calls("add"))
    assert 0 < sent < rows  # stopped early, not after every row

    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    code, text = await _cli(double, *hint.split()[1:])
    assert code == 0, text[-3000:]
    done = duckdb.sql(f"select row, count(*) n from '{run}/outcomes/*.parquet' group by row")
    counts = dict(done.fetchall())
    assert sorted(counts) == list(range(rows)) and set(counts.values()) == {1}


def test_an_audit_on_a_full_disk_stops_with_exit_6_and_resumes(tmp_path: Path,
                                                               small_disk: Path) -> None:
    from support.audit_double import FaceDouble, descriptors, enroll_run, png

    people = descriptors(400, 2)
    rows = [(f"p{i:03d}", png(i, 0), people[i], i) for i in range(400)]
    env = {"FACEFLOW_API_KEY": "a", "FACEFLOW_SECRET_KEY": "b"}
    with FaceDouble(buckets=True) as face_double:
        env["FACEFLOW_ENDPOINT"] = face_double.url
        run, _ = enroll_run(tmp_path, "staff", rows, face_double, write_files=True)
        args = ["audit", str(run), "--group", "staff", "--run-dir", str(small_disk / "a")]
        out = CliRunner().invoke(main, args, env=env)
        assert out.exit_code == 6, out.output[-2000:]
        assert "Stopping (disk): cannot write" in out.output
        assert "No space left on device" in out.output and "Traceback" not in out.output
        subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
        again = CliRunner().invoke(main, ["audit", "--run-dir", str(small_disk / "a")], env=env)
    assert again.exit_code == 0, again.output[-2000:]
    assert "400/400 probes checked" in again.stdout
