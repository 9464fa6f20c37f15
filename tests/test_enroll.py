"""End to end: `faceflow enroll` / `rerun` / `report` against the real engine on 127.0.0.1.

One engine for the module; each test uses its own group so their faces never mix.
Images: the public-domain samples and Pillow-made variants written into tmp_path.
"""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from jobs.cli import main
from jobs.exits import exit_code_of
from pipeline import variants as v
from pipeline.client.config import Secret, Settings
from pipeline.enroll.job import EnrollConfig, EnrollObserver, run_enroll
from pipeline.runs.manifest import open_manifest
from pipeline.runs.outcomes import SUCCESS_STATUSES

pytestmark = pytest.mark.dlib


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from pipeline.engine.server import EngineServer

    with EngineServer(tmp_path_factory.mktemp("engine"), api_key="ak-TEST-7f3a9c",
                      secret_key="sk-TEST-b41e02", workers=2) as srv:
        yield srv


def _env(srv: Any) -> dict[str, str]:
    return {"FACEFLOW_ENDPOINT": srv.url, "FACEFLOW_API_KEY": srv.api_key,
            "FACEFLOW_SECRET_KEY": srv.secret_key}


def _settings(srv: Any) -> Settings:
    return Settings(endpoint=srv.url, api_key=Secret(srv.api_key),
                    secret_key=Secret(srv.secret_key))


def _write_manifest(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["uid", "image", "user_info"])
        writer.writerows(rows)
    return path


def _outcomes(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "outcomes").sort_values("row").reset_index(drop=True)


def _faces(srv: Any, group: str, uid: str) -> list[str]:
    return [f.sha256 for f in srv.store.faces_of(group, uid)]


# -- the main run: every kind of row -----------------------------------------------------------

#: uid -> (status, a reason that must be among the row's reasons, or None)
EXPECTED: dict[str, tuple[str, str | None]] = {
    "obama": ("enrolled", None),
    "biden": ("enrolled", None),
    "blurred": ("rejected_quality", "blur"),
    "dark": ("rejected_quality", "illumination"),
    "two_faces": ("multiple_faces", "multiple_faces"),
    "cat": ("no_face", "no_face"),
    "corrupt": ("invalid_input", "image_corrupt"),
    "text": ("invalid_input", "image_format"),
    "empty": ("invalid_input", "file_empty"),
    "missing": ("invalid_input", "file_missing"),
    "too_big": ("invalid_input", "file_too_large"),
    "bad uid!": ("invalid_input", "uid_charset"),
    "long_info": ("invalid_input", "user_info_too_long"),
    "no_info": ("enrolled", None),  # an empty user_info is sent as the uid
    "obama#dup": ("invalid_input", "duplicate_row"),
}


def _build_main_manifest(folder: Path, samples: Path) -> Path:
    obama = Image.open(samples / "obama_01.jpg").convert("RGB")  # passes the gate as is
    biden = Image.open(samples / "biden_01.jpg").convert("RGB")
    made = {
        "blurred.jpg": v.to_bytes(v.blurred(obama, 8)),
        "dark.jpg": v.to_bytes(v.darkened(obama, 0.08)),
        "two.jpg": v.to_bytes(v.two_faces(obama, biden)),
        "corrupt.jpg": v.corrupt_jpeg_bytes(v.to_bytes(obama)),
        "text.jpg": v.text_as_jpg(),
        "empty.jpg": b"",
        "big.jpg": b"\xff\xd8\xff" + b"\0" * (10 * 2**20 + 1),
    }
    for name, data in made.items():
        (folder / name).write_bytes(data)
    obama1 = str(samples / "obama_01.jpg")
    rows = [
        ("obama", obama1, "Barack"), ("biden", str(samples / "biden_01.jpg"), "Joe"),
        ("blurred", "blurred.jpg", "i"), ("dark", "dark.jpg", "i"), ("two_faces", "two.jpg", "i"),
        ("cat", str(samples / "no_face_cat.png"), "i"), ("corrupt", "corrupt.jpg", "i"),
        ("text", "text.jpg", "i"), ("empty", "empty.jpg", "i"), ("missing", "nowhere.jpg", "i"),
        ("too_big", "big.jpg", "i"), ("bad uid!", obama1, "i"), ("long_info", obama1, "x" * 300),
        ("no_info", obama1, ""),
        ("obama", obama1, "the same row again"),
    ]
    return _write_manifest(folder / "members.csv", rows)


@pytest.fixture(scope="module")
def main_run(server: Any, samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("main")
    manifest = _build_main_manifest(folder, samples_dir)
    run_dir = folder / "run"
    before = server.store.counts()["faces"]
    result = CliRunner().invoke(main, ["enroll", str(manifest), "--group", "main",
                                       "--run-dir", str(run_dir), "--concurrency", "4"],
                                env=_env(server))
    return {"result": result, "manifest": manifest, "run_dir": run_dir, "folder": folder,
            "faces_added": server.store.counts()["faces"] - before}


def test_every_row_gets_exactly_one_outcome_with_the_right_status(main_run: dict) -> None:
    result = main_run["result"]
    assert result.exit_code == 1, result.output  # done, with rows that did not succeed
    df = _outcomes(main_run["run_dir"])
    assert df["row"].tolist() == list(range(len(EXPECTED)))
    uids = list(EXPECTED)
    for i, rec in df.iterrows():
        status, reason = EXPECTED[uids[i]]
        assert rec["status"] == status, (uids[i], rec["status"], rec["reasons"], rec["error_msg"])
        if reason:
            assert reason in list(rec["reasons"]), (uids[i], rec["reasons"])
        if status == "invalid_input":
            assert rec["error_msg"], uids[i]  # a clear sentence, not just a slug


def test_good_rows_are_in_the_faceset_and_nothing_else(server: Any, main_run: dict) -> None:
    assert len(_faces(server, "main", "obama")) == 1
    assert len(_faces(server, "main", "biden")) == 1
    assert len(_faces(server, "main", "no_info")) == 1
    assert server.store.membership("main", "no_info").user_info == "no_info"
    assert main_run["faces_added"] == 3
    df = _outcomes(main_run["run_dir"])
    good = df[df["status"] == "enrolled"]
    assert good["detect_log_id"].notna().all() and good["write_log_id"].notna().all()
    assert (good["attempts"] >= 2).all()
    assert good["face_width"].gt(0).all() and good["blur"].notna().all()
    checked = df[df["status"] == "invalid_input"]
    assert (checked["attempts"] == 0).all()  # refused before any call


def test_outcomes_readable_by_pandas_and_duckdb(main_run: dict) -> None:
    parts = str(main_run["run_dir"] / "outcomes" / "*.parquet")
    counts = dict(duckdb.sql(f"SELECT status, count(*) FROM '{parts}' GROUP BY status").fetchall())
    assert counts["enrolled"] == 3 and sum(counts.values()) == len(EXPECTED)
    df = _outcomes(main_run["run_dir"])
    assert str(df["finished_at"].dt.tz) == "UTC"


def test_failures_csv_is_a_valid_manifest_of_the_failed_rows(main_run: dict,
                                                             tmp_path: Path) -> None:
    failures = main_run["run_dir"] / "failures.csv"
    # Read from another folder: the image paths must be absolute.
    moved = tmp_path / "elsewhere.csv"
    moved.write_bytes(failures.read_bytes())
    manifest = open_manifest(moved, default_group="main")
    not_ok = sum(1 for s, _ in EXPECTED.values() if s not in SUCCESS_STATUSES)
    assert manifest.num_rows == not_ok
    rows = [r for batch in manifest.batches() for r in batch]
    assert all(Path(r.image).is_absolute() for r in rows)
    by_uid = {r.uid: r.columns for r in rows}
    assert by_uid["blurred"]["status"] == "rejected_quality"
    assert "blur" in by_uid["blurred"]["reason"].split(";")
    assert by_uid["long_info"]["user_info"] == "x" * 300  # original columns kept


def test_run_json_records_the_run_without_secrets(server: Any, main_run: dict) -> None:
    info = json.loads((main_run["run_dir"] / "run.json").read_text())
    assert info["manifest"]["num_rows"] == len(EXPECTED)
    assert info["manifest"]["fingerprint"].startswith("sha256:")
    assert info["exit_code"] == 1 and info["finished_at"] and info["counts"]["enrolled"] == 3
    assert info["settings"]["endpoint"] == server.url and info["options"]["group"] == "main"
    secrets = (server.api_key, server.secret_key)
    for path in main_run["run_dir"].rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(s.encode() in data for s in secrets), path
    assert not any(s in main_run["result"].output for s in secrets)


def test_same_command_again_resumes_and_sends_nothing(server: Any, main_run: dict) -> None:
    before = server.store.counts()
    again = CliRunner().invoke(main, ["enroll", str(main_run["manifest"]), "--group", "main",
                                      "--run-dir", str(main_run["run_dir"])], env=_env(server))
    assert again.exit_code == 1, again.output
    assert "Resuming run" in again.output and f"{len(EXPECTED)} of {len(EXPECTED)}" in again.output
    assert server.store.counts() == before
    assert len(_outcomes(main_run["run_dir"])) == len(EXPECTED)


def test_report_of_the_run(main_run: dict, tmp_path: Path) -> None:
    out = CliRunner().invoke(main, ["report", str(main_run["run_dir"]), "--json",
                                    "--html", str(tmp_path / "r.html")])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["counts"]["enrolled"] == 3 and data["rows"] == len(EXPECTED)
    assert data["latency"]["p50"] > 0 and data["attempts_total"] >= 6
    html = (tmp_path / "r.html").read_text()
    assert "rejected_quality: blur" in html and "data:image/jpeg;base64," in html


def test_rerun_all_makes_a_linked_run_of_the_failed_rows(server: Any, main_run: dict) -> None:
    new_dir = main_run["folder"] / "rerun"
    out = CliRunner().invoke(main, ["rerun", str(main_run["run_dir"]), "--all",
                                    "--run-dir", str(new_dir)], env=_env(server))
    assert out.exit_code == 1, out.output
    old = json.loads((main_run["run_dir"] / "run.json").read_text())
    new = json.loads((new_dir / "run.json").read_text())
    assert new["parent_run_id"] == old["run_id"] and new["options"]["group"] == "main"
    df = _outcomes(new_dir)
    assert len(df) == sum(1 for s, _ in EXPECTED.values() if s not in SUCCESS_STATUSES)
    by_uid = dict(zip(df["uid"], df["status"], strict=True))
    assert by_uid["blurred"] == "rejected_quality" and by_uid["missing"] == "invalid_input"
    # The duplicate row has no first row in the rerun: sent again, the service says
    # the image is there already. Nothing is enrolled twice.
    assert by_uid["obama"] == "already_enrolled"
    assert len(_faces(server, "main", "obama")) == 1


def test_rerun_default_takes_only_retryable_failures(server: Any, main_run: dict) -> None:
    out = CliRunner().invoke(main, ["rerun", str(main_run["run_dir"])], env=_env(server))
    assert out.exit_code == 0 and "Nothing to rerun" in out.output


# -- refusing a run dir -------------------------------------------------------------------------


def test_resume_refuses_a_dir_without_a_run_or_of_another_manifest(
    server: Any, main_run: dict, tmp_path: Path, samples_dir: Path
) -> None:
    other = _write_manifest(tmp_path / "other.csv", [("x", str(samples_dir / "obama_01.jpg"), "")])
    empty = tmp_path / "empty"
    empty.mkdir()
    out = CliRunner().invoke(main, ["enroll", str(other), "--group", "g", "--run-dir",
                                    str(empty), "--resume"], env=_env(server))
    assert out.exit_code == 2 and "holds no run" in out.output
    out = CliRunner().invoke(main, ["enroll", str(other), "--group", "g", "--run-dir",
                                    str(main_run["run_dir"])], env=_env(server))
    assert out.exit_code == 2 and "manifest differs" in out.output


def test_missing_column_stops_before_any_call(server: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("uid,picture\nu1,a.jpg\n")
    before = server.store.counts()
    out = CliRunner().invoke(main, ["enroll", str(bad), "--group", "g",
                                    "--run-dir", str(tmp_path / "r")], env=_env(server))
    assert out.exit_code == 2 and "image" in out.output
    assert not (tmp_path / "r").exists() and server.store.counts() == before


# -- stopping and resuming ----------------------------------------------------------------------


class _StopAfter(EnrollObserver):
    def __init__(self, n: int, event: asyncio.Event) -> None:
        self.n, self.event, self.seen = n, event, 0

    def row_done(self, outcome: Any, progress: Any) -> None:
        self.seen += 1
        if self.seen >= self.n:
            self.event.set()


def _four_faces(folder: Path, samples: Path) -> Path:
    """Four rows that pass the gate: the two frontal samples and their mirror images."""
    rows = []
    for i, name in enumerate(["obama_01.jpg", "biden_01.jpg"]):
        rows.append((f"u{i}", str(samples / name), "member"))
        mirrored = folder / f"mirrored_{name}"
        Image.open(samples / name).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored)
        rows.append((f"u{i + 2}", str(mirrored), "member"))
    return _write_manifest(folder / "four.csv", rows)


async def test_interrupted_run_resumes_to_one_outcome_per_row(
    server: Any, tmp_path: Path, samples_dir: Path
) -> None:
    manifest = _four_faces(tmp_path, samples_dir)
    config = EnrollConfig(manifest=manifest, settings=_settings(server), group="resume1",
                          run_dir=tmp_path / "run", concurrency=2, flush_rows=1)
    stop = asyncio.Event()
    first = await run_enroll(config, observer=_StopAfter(1, stop), stop=stop)
    assert exit_code_of(first) == 130 and first.stop_reason == "interrupted"
    assert 1 <= sum(first.counts.values()) < 4 and first.remaining >= 1
    second = await run_enroll(config)
    assert second.resumed and exit_code_of(second) == 0 and second.remaining == 0
    df = _outcomes(tmp_path / "run")
    assert df["row"].tolist() == [0, 1, 2, 3]
    assert set(df["status"]) <= {"enrolled", "already_enrolled"}
    for uid in ("u0", "u1", "u2", "u3"):
        assert len(_faces(server, "resume1", uid)) == 1  # nothing enrolled twice


def test_quota_stops_cleanly_exit_3_and_resume_finishes(
    server: Any, tmp_path: Path, samples_dir: Path
) -> None:
    manifest = _four_faces(tmp_path, samples_dir)
    args = ["enroll", str(manifest), "--group", "quota", "--run-dir", str(tmp_path / "run"),
            "--concurrency", "1"]
    server.configure_emulation(daily_quota=2, reset=True)  # per interface and day
    try:
        first = CliRunner().invoke(main, args, env=_env(server))
    finally:
        server.configure_emulation(daily_quota=None, reset=True)
    assert first.exit_code == 3, first.output
    assert "quota" in first.output and "--resume" in first.output
    assert _outcomes(tmp_path / "run")["status"].tolist() == ["enrolled", "enrolled"]
    second = CliRunner().invoke(main, args, env=_env(server))
    assert second.exit_code == 0, second.output
    assert _outcomes(tmp_path / "run")["status"].tolist() == ["enrolled"] * 4


async def test_retryable_failures_then_rerun_from_the_failures(
    server: Any, tmp_path: Path, samples_dir: Path
) -> None:
    from pipeline.client.faceclient import FaceClient
    from pipeline.client.retry import RetryPolicy

    fast = RetryPolicy(max_attempts=2, initial_wait=0.01, max_wait=0.02, jitter=0)
    manifest = _four_faces(tmp_path, samples_dir)
    config = EnrollConfig(manifest=manifest, settings=_settings(server), group="flaky",
                          run_dir=tmp_path / "run", concurrency=2)
    server.configure_emulation(faults={"216500": 1.0}, seed=1)
    try:
        first = await run_enroll(config, client_factory=lambda s, q: FaceClient(s, retry=fast))
    finally:
        server.configure_emulation(faults={})
    assert exit_code_of(first) == 1 and first.counts == {"failed": 4}
    df = _outcomes(tmp_path / "run")
    assert df["retryable"].all() and set(df["error_code"]) == {"216500"}
    assert (df["attempts"] == 2).all() and list(df["reasons"].map(list)) == [
        ["retries_exhausted"]] * 4
    new_dir = tmp_path / "rerun"
    out = await asyncio.to_thread(CliRunner().invoke, main, [
        "rerun", str(tmp_path / "run"), "--run-dir", str(new_dir)], env=_env(server))
    assert out.exit_code == 0, out.output
    assert _outcomes(new_dir)["status"].tolist() == ["enrolled"] * 4
    assert json.loads((new_dir / "run.json").read_text())["parent_run_id"] == first.run_id


def test_images_root_confines_image_paths(server: Any, samples_dir: Path, tmp_path: Path) -> None:
    inside = tmp_path / "photos"
    inside.mkdir()
    (inside / "obama.jpg").write_bytes((samples_dir / "obama_01.jpg").read_bytes())
    manifest = tmp_path / "photos" / "m.csv"
    manifest.write_text("uid,image,user_info\n"
                        "inside,obama.jpg,i\n"
                        f"outside,{samples_dir / 'biden_01.jpg'},i\n"
                        "escape,../../etc/passwd,i\n", encoding="utf-8")
    run_dir = tmp_path / "run"
    out = CliRunner().invoke(main, ["enroll", str(manifest), "--group", "confined",
                                    "--images-root", str(inside), "--run-dir", str(run_dir)],
                             env=_env(server))
    assert out.exit_code == 1, out.output
    df = _outcomes(run_dir).set_index("uid")
    assert df.loc["inside", "status"] == "enrolled"
    for uid in ("outside", "escape"):
        assert df.loc[uid, "status"] == "invalid_input"
        assert list(df.loc[uid, "reasons"]) == ["outside_manifest_dir"]
        assert df.loc[uid, "attempts"] == 0
    info = json.loads((run_dir / "run.json").read_text())
    assert info["options"]["images_root"] == str(inside)
