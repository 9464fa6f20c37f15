"""Offline re-gating on a run directory made by hand (the engine test is in
tests/test_ledger_engine.py): verdicts before/after, the files, the refusals."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner

from jobs.cli import main
from pipeline.enroll.gate import Thresholds
from pipeline.enroll.regate import REGATE_SCHEMA, RegateRow, regate
from pipeline.runs.manifest import open_manifest
from pipeline.runs.outcomes import OUTCOME_SCHEMA, make_outcome
from pipeline.runs.rundir import ManifestRef, RunDir, RunInfo

T0 = datetime(2026, 11, 25, 1, 2, 3, tzinfo=UTC)
GOOD = dict(blur=0.1, illumination=120.0, completeness=1.0, yaw=1.0, pitch=2.0, roll=3.0,
            occlusion_left_eye=0.0, occlusion_right_eye=0.0, occlusion_nose=0.0,
            occlusion_mouth=0.0, occlusion_left_cheek=0.0, occlusion_right_cheek=0.0,
            occlusion_chin=0.0, face_probability=1.0, face_left=10.0, face_top=10.0,
            face_width=150.0, face_height=150.0, face_count=1)
NO_QUALITIES = {k: v for k, v in GOOD.items() if k in ("yaw", "pitch", "roll", "face_left",
                                                      "face_top", "face_width", "face_height",
                                                      "face_probability", "face_count")}
#: uid -> (status, reasons, stored gate inputs)
ROWS: dict[str, tuple[str, tuple[str, ...], dict[str, Any]]] = {
    "good": ("enrolled", (), GOOD),
    "blurry": ("rejected_quality", ("blur",), {**GOOD, "blur": 0.75}),
    "small": ("rejected_quality", ("face_too_small",),
              {**GOOD, "face_width": 90.0, "face_height": 95.0}),
    "cat": ("no_face", ("no_face",), {"face_count": 0}),
    "noq": ("rejected_quality", ("no_qualities",), NO_QUALITIES),
    "soft": ("enrolled", (), {**GOOD, "blur": 0.65}),
}


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["uid", "image", "user_info"])
        for uid in ROWS:
            (tmp_path / "img" / f"{uid}.jpg").write_bytes(uid.encode())
            w.writerow([uid, f"img/{uid}.jpg", f"info {uid}"])
    m = open_manifest(manifest, default_group="staff")
    rd = RunDir(tmp_path / "run")
    rd.write_info(RunInfo(run_id="run", job="enroll", created_at=T0.isoformat(),
                          manifest=ManifestRef(str(manifest), m.fingerprint, m.num_rows),
                          options={"group": "staff", "mode": "add"},
                          thresholds=Thresholds().to_dict()))
    store = rd.open_store(OUTCOME_SCHEMA, m.num_rows)
    for row, (uid, (status, reasons, values)) in enumerate(ROWS.items()):
        store.append(make_outcome(run_id="run", row=row, line=row + 2, uid=uid,
                                  group_id="staff", image=f"img/{uid}.jpg", status=status,
                                  reasons=reasons, started_at=T0, finished_at=T0, **values))
    store.close()
    return rd.path


def _verdicts(out: Path) -> dict[str, tuple[str, str, str]]:
    df = pd.read_parquet(out / "regate.parquet")
    return {r.uid: (r.old_verdict, r.new_verdict, r.change) for r in df.itertuples()}


def test_schema_matches_record() -> None:
    assert list(REGATE_SCHEMA.names) == list(RegateRow.__dataclass_fields__)


def test_looser_blur_and_face_size_pass_more_rows(run_dir: Path) -> None:
    result = regate(run_dir, overrides={"blur": "0.8", "min_face_size": "80"})
    assert _verdicts(run_dir) == {
        "good": ("pass", "pass", "same"), "blurry": ("fail", "pass", "newly_passing"),
        "small": ("fail", "pass", "newly_passing"), "cat": ("not_judged", "not_judged", "same"),
        "noq": ("fail", "fail", "same"), "soft": ("pass", "pass", "same")}
    assert result.verdicts == {"pass": (2, 4), "fail": (3, 1), "not_judged": (1, 1)}
    assert result.reasons == {"face_too_small": (1, 0), "no_qualities": (1, 1), "blur": (1, 0)}
    assert result.changes == {"newly_passing": 2, "newly_failing": 0, "same": 4}
    with open(run_dir / "regate-manifest.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["uid"] for r in rows] == ["good", "blurry", "small", "soft"]
    assert rows[1]["group_id"] == "staff" and rows[1]["user_info"] == "info blurry"
    assert Path(rows[1]["image"]).is_absolute() and Path(rows[1]["image"]).exists()
    summary = json.loads((run_dir / "regate.json").read_text())
    assert summary["thresholds_after"]["blur_max"] == 0.8
    assert summary["thresholds_after"]["min_face_width"] == 80
    assert summary["thresholds_before"]["blur_max"] == 0.7


def test_stricter_blur_fails_enrolled_rows_and_writes_elsewhere(run_dir: Path,
                                                               tmp_path: Path) -> None:
    toml = tmp_path / "strict.toml"
    toml.write_text("blur = 0.6\n")
    out = tmp_path / "strict"
    result = regate(run_dir, thresholds_file=toml, out_dir=out)
    assert _verdicts(out)["soft"] == ("pass", "fail", "newly_failing")
    assert result.changes["newly_failing"] == 1 and result.manifest_rows == 1
    assert not (run_dir / "regate.parquet").exists()


def test_cli_prints_before_and_after_per_reason(run_dir: Path) -> None:
    result = CliRunner().invoke(main, ["regate", str(run_dir), "--threshold", "blur=0.8"])
    assert result.exit_code == 0, result.output
    assert "newly passing 1, newly failing 0 (no request was sent)" in result.output
    blur = next(line for line in result.output.splitlines() if "fails blur" in line)
    assert blur.split()[-2:] == ["1", "0"]


@pytest.mark.parametrize(("args", "message"), [
    ([], "give --thresholds FILE or at least one --threshold"),
    (["--threshold", "sharpness=1"], "unknown threshold 'sharpness'"),
    (["--threshold", "blur=lots"], "not a number"),
], ids=["nothing", "unknown-key", "not-a-number"])
def test_bad_options_exit_2_and_write_nothing(run_dir: Path, args: list[str],
                                              message: str) -> None:
    result = CliRunner().invoke(main, ["regate", str(run_dir), *args])
    assert result.exit_code == 2 and message in result.output
    assert not (run_dir / "regate.parquet").exists()


def test_changed_manifest_is_refused(run_dir: Path) -> None:
    manifest = Path(RunDir(run_dir).read_info().manifest.path)
    manifest.write_text(manifest.read_text() + "extra,img/good.jpg,x\n")
    result = CliRunner().invoke(main, ["regate", str(run_dir), "--threshold", "blur=0.8"])
    assert result.exit_code == 2 and "changed since run run" in result.output
