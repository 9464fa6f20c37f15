"""failures.csv and per-row input problems met on day one (issue 17), on the protocol double."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
from PIL import Image
from support.doubles import ProtocolDouble, double  # noqa: F401

from jobs.exits import exit_code_of
from pipeline.enroll.job import EnrollConfig, run_enroll


def _photo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), (120, 100, 90)).save(path, "JPEG")
    return path


def _manifest(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["photo_note", "image", "uid"])  # image is not the first column
        writer.writerows([("", image, uid) for image, uid in rows])
    return path


def _outcomes(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "outcomes").sort_values("row").reset_index(drop=True)


def _failures(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "failures.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


async def test_an_empty_image_cell_is_image_missing_and_stays_empty(
        double: ProtocolDouble, tmp_path: Path) -> None:  # noqa: F811
    _photo(tmp_path / "photos" / "a.jpg")
    manifest = _manifest(tmp_path / "m.csv", [("", "u1"), ("", "bad uid!"),
                                              ("photos/missing.jpg", "u3")])
    config = EnrollConfig(manifest=manifest, settings=double.settings(), group="g",
                          run_dir=tmp_path / "run")
    result = await run_enroll(config)
    out = _outcomes(tmp_path / "run")
    assert list(out["status"]) == ["invalid_input"] * 3
    assert list(out.loc[0, "reasons"]) == ["image_missing"]
    assert set(out.loc[1, "reasons"]) == {"image_missing", "uid_charset"}
    assert double.calls("detect") == []
    failures = _failures(tmp_path / "run")
    assert [f["image"] for f in failures[:2]] == ["", ""]  # not the manifest's folder
    assert [f["photo_note"] for f in failures] == ["", "", ""]
    assert failures[2]["image"] == str(tmp_path / "photos" / "missing.jpg")
    assert exit_code_of(result) == 1


async def test_an_absolute_windows_path_gets_a_hint(double: ProtocolDouble,  # noqa: F811
                                                    tmp_path: Path) -> None:
    _photo(tmp_path / "photos" / "a.jpg")
    manifest = _manifest(tmp_path / "m.csv", [("C:\\photos\\a.jpg", "u1"),
                                              ("photos\\a.jpg", "u2")])
    config = EnrollConfig(manifest=manifest, settings=double.settings(), group="g",
                          run_dir=tmp_path / "run")
    await run_enroll(config)
    out = _outcomes(tmp_path / "run")
    assert list(out.loc[0, "reasons"]) == ["file_missing"]
    assert "Windows path" in out.loc[0, "error_msg"]
    assert out.loc[1, "status"] == "enrolled"  # backslashes of a relative path are separators


async def test_failures_csv_is_written_only_when_the_outcomes_changed(
        double: ProtocolDouble, tmp_path: Path) -> None:  # noqa: F811
    manifest = _manifest(tmp_path / "m.csv", [("missing.jpg", "u1"), ("", "u2")])
    run = tmp_path / "run"
    config = EnrollConfig(manifest=manifest, settings=double.settings(), group="g", run_dir=run)
    await run_enroll(config)
    first = (run / "failures.csv").stat()
    assert json.loads((run / "run.json").read_text())["failures_for"] == 2
    await run_enroll(config)  # a resume with nothing to do
    again = (run / "failures.csv").stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    (run / "failures.csv").unlink()  # gone: written again
    await run_enroll(config)
    assert len(_failures(run)) == 2
