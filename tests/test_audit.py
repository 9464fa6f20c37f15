"""The audit runner against the protocol double (tests/support/audit_double.py) over real HTTP.

The double counts requests server-side, so call counts here are what reached the
"service". It also answers error 17 on demand, which drives the resume tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from support.audit_double import FaceDouble, Row, descriptors, enroll_run, png, variant

from jobs.cli import main
from jobs.exits import exit_code_of
from pipeline.api.errors import ConfigError
from pipeline.audit.findings import EXACT_COPY, FINDING_SCHEMA, MULTIPLE_PEOPLE, SAME_PERSON
from pipeline.audit.job import AuditConfig, audit, read_findings, resume_config, run_audit
from pipeline.client.config import Secret, Settings

GROUP = "staff"
ROOT = Path(__file__).resolve().parent.parent


def _settings(double: FaceDouble) -> Settings:
    return Settings(endpoint=double.url, api_key=Secret("ak-audit-SECRET1"),
                    secret_key=Secret("sk-audit-SECRET2"))


def _rows(n_people: int, seed: int = 3) -> tuple[list[Row], dict[str, set[tuple[str, str]]]]:
    """n people, one photo each, plus planted cases; returns (rows, expected findings)."""
    people = descriptors(n_people + 10, seed)
    rows: list[Row] = [(f"p{i:03d}", png(i, 0), people[i], i) for i in range(n_people)]
    rows += [
        ("p000", png(0, 3), variant(people[0], 1), 0),  # p000's second photo: not a finding
        ("p001_again", png(1, 1), variant(people[1], 2), 1),  # same person, second uid
        ("p002_copy", rows[2][1], people[2], 2),  # same bytes, second uid
        ("p003", png(n_people, 2), people[n_people], n_people),  # a second person in p003
    ]
    expected = {SAME_PERSON: {("p001", "p001_again")}, EXACT_COPY: {("p002", "p002_copy")},
                MULTIPLE_PEOPLE: {("p003", "p003")}}
    return rows, expected


def _kinds(findings: list[Any]) -> dict[str, set[tuple[str, str]]]:
    out: dict[str, set[tuple[str, str]]] = {}
    for f in findings:
        out.setdefault(f.kind, set()).add(tuple(sorted((f.uid_a, f.uid_b))))  # type: ignore[arg-type]
    return out


@pytest.fixture
def double() -> Any:
    with FaceDouble(buckets=True) as d:
        yield d


def _config(double: FaceDouble, tmp_path: Path, enroll_dir: Path, **kw: Any) -> AuditConfig:
    return AuditConfig(settings=_settings(double), groups=(GROUP,), run_dirs=(enroll_dir,),
                       run_dir=tmp_path / "audit", **kw)


def test_finds_each_kind_with_n_times_k_calls(double: FaceDouble, tmp_path: Path) -> None:
    rows, expected = _rows(40)
    enroll_dir, photos = enroll_run(tmp_path, GROUP, rows, double)
    result = audit(_config(double, tmp_path, enroll_dir, top_k=5),
                   loader=lambda img: photos[img.path])
    assert exit_code_of(result) == 0 and result.failed == 0
    assert _kinds(read_findings(result.run_dir)) == expected
    n = len(rows)
    assert result.probes == n == double.calls["identify"]
    # Matches: p001 <-> p001_again confirmed from both sides (2), p000 and p003 against
    # their reference photos (2). The exact copy needs none (same bytes, score 100).
    assert double.calls["match"] == 4
    assert double.calls["match"] <= n * 5 + n  # the O(n*k) bound, far from n^2
    assert result.calls == {"identify": n, "match": 4}


def test_outputs_are_written_with_the_declared_schema(double: FaceDouble, tmp_path: Path) -> None:
    rows, _ = _rows(10)
    enroll_dir, photos = enroll_run(tmp_path, GROUP, rows, double)
    result = audit(_config(double, tmp_path, enroll_dir), loader=lambda img: photos[img.path])
    table = pq.read_table(result.findings_path)
    assert table.schema.equals(FINDING_SCHEMA, check_metadata=False)
    assert table.num_rows == 3
    clusters = pq.read_table(result.clusters_path).to_pylist()
    assert any(set(c["uids"]) == {"p001", "p001_again"} for c in clusters)
    info = json.loads((result.run_dir / "run.json").read_text())
    # the library records why it stopped; the exit code is the CLI's (jobs/exits.py)
    assert info["job"] == "audit" and info["stop_reason"] is None
    assert info["counts"]["same_person_multiple_uids"] == 1
    for path in result.run_dir.rglob("*"):  # no secret anywhere in the audit's files
        if path.is_file():
            data = path.read_bytes()
            assert b"SECRET1" not in data and b"SECRET2" not in data, path


def test_quota_stop_then_resume_calls_each_probe_once(double: FaceDouble, tmp_path: Path) -> None:
    rows, expected = _rows(30)
    enroll_dir, photos = enroll_run(tmp_path, GROUP, rows, double)
    load = lambda img: photos[img.path]  # noqa: E731
    double.quota_after = {"identify": 12}
    first = audit(_config(double, tmp_path, enroll_dir, concurrency=3), loader=load)
    assert (exit_code_of(first), first.stop_reason) == (3, "quota")
    assert 0 < first.checked <= 12 and first.pending == len(rows) - first.checked
    calls_before = double.calls["identify"]

    double.quota_after = {}
    second = audit(_config(double, tmp_path, enroll_dir, concurrency=3), loader=load)
    assert exit_code_of(second) == 0 and second.resumed
    assert second.already_done == first.checked
    assert double.calls["identify"] - calls_before == len(rows) - first.checked
    assert second.checked == len(rows)
    assert _kinds(read_findings(second.run_dir)) == expected


def test_failed_probe_exits_1_and_is_retried_on_resume(double: FaceDouble,
                                                       tmp_path: Path) -> None:
    rows, _ = _rows(8)
    enroll_dir, _ = enroll_run(tmp_path, GROUP, rows, double, write_files=True)
    victim = tmp_path / "photos" / "enroll_000005.png"
    saved = victim.read_bytes()
    victim.unlink()
    first = audit(_config(double, tmp_path, enroll_dir))
    assert exit_code_of(first) == 1 and first.failed == 1
    victim.write_bytes(saved)
    calls = double.calls["identify"]
    second = audit(_config(double, tmp_path, enroll_dir))
    assert exit_code_of(second) == 0 and second.failed == 0
    assert double.calls["identify"] - calls == 1  # only the failed probe ran again


def test_resume_with_other_options_is_refused(double: FaceDouble, tmp_path: Path) -> None:
    rows, _ = _rows(4)
    enroll_dir, photos = enroll_run(tmp_path, GROUP, rows, double)
    audit(_config(double, tmp_path, enroll_dir), loader=lambda img: photos[img.path])
    with pytest.raises(ConfigError, match="threshold"):
        audit(_config(double, tmp_path, enroll_dir, threshold=70.0))


def test_a_held_audit_directory_is_refused_then_released(double: FaceDouble,
                                                           tmp_path: Path) -> None:
    from pipeline.runs.rundir import RunDir

    rows, _ = _rows(4)
    enroll_dir, photos = enroll_run(tmp_path, GROUP, rows, double)
    config = _config(double, tmp_path, enroll_dir)
    other = RunDir(config.run_dir)
    other.hold()  # an overlapping cron start, as another session would
    try:
        with pytest.raises(ConfigError, match="pid|held|in use"):
            audit(config, loader=lambda img: photos[img.path])
    finally:
        other.release()
    result = audit(config, loader=lambda img: photos[img.path])
    assert exit_code_of(result) == 0
    again = RunDir(config.run_dir)
    again.hold()  # the audit released its hold when it ended
    again.release()


@pytest.mark.parametrize(
    ("kw", "message"),
    [({"groups": ()}, "at least one --group"), ({"groups": ("bad-group",)}, "--group"),
     ({"top_k": 6}, "top-k"), ({"threshold": 101.0}, "threshold"),
     ({"before_enroll": True}, "--manifest")],
    ids=["no-group", "bad-group", "top-k", "threshold", "before-enroll-needs-manifest"],
)
def test_bad_options_are_config_errors(kw: dict[str, Any], message: str) -> None:
    settings = Settings(endpoint="http://127.0.0.1:1", api_key=Secret("a"),
                        secret_key=Secret("b"))
    with pytest.raises(ConfigError, match=message):
        AuditConfig(**{"settings": settings, "groups": ("g",), **kw})


def test_before_enroll_uses_and_deletes_a_scratch_group(double: FaceDouble,
                                                        tmp_path: Path) -> None:
    people = descriptors(6, 9)
    # Already in the library: "alice" (person 0).
    double.register(png(0, 0), people[0], 0)
    double.enroll(GROUP, "alice", people[0], bucket=0)
    photos = tmp_path / "new"
    photos.mkdir()
    made = {"a2.png": (png(0, 1), variant(people[0], 5), 0),  # alice again, new uid
            "b1.png": (png(1, 0), people[1], 1), "b2.png": (png(1, 1), variant(people[1], 6), 1),
            "c1.png": (png(2, 0), people[2], 2)}
    for name, (data, vec, person) in made.items():
        (photos / name).write_bytes(data)
        double.register(data, vec, person)
    manifest = tmp_path / "new.csv"
    manifest.write_text("image,uid,user_info\nnew/a2.png,alice_new,\nnew/b1.png,bob,\n"
                        "new/b2.png,bobby,\nnew/c1.png,carol,\n")
    config = AuditConfig(settings=_settings(double), groups=(GROUP,), manifest=manifest,
                         run_dir=tmp_path / "pre", before_enroll=True, scratch_settle_s=0)
    result = audit(config)
    assert exit_code_of(result) == 0 and result.scratch_left is None
    kinds = _kinds(read_findings(result.run_dir))
    # alice_new matches alice in the library (no photo known: identify only); bob and
    # bobby are one person inside the manifest, found through the scratch group.
    assert kinds == {SAME_PERSON: {("alice", "alice_new"), ("bob", "bobby")}}
    unconfirmed = [f for f in read_findings(result.run_dir) if not f.confirmed]
    assert [(f.uid_a, f.uid_b) for f in unconfirmed] == [("alice_new", "alice")]
    scratch = [g for g in double.groups if "__audit_" in g]
    assert len(scratch) == 1 and double.groups[scratch[0]].uids == []  # emptied
    assert double.groups[GROUP].uids == ["alice"]  # the real group untouched
    assert double.calls["add"] == 4 and double.calls["delete"] == 4
    assert double.calls["identify"] == 4
    again = audit(resume_config(config.run_dir, _settings(double)))  # type: ignore[arg-type]
    assert again.resumed and exit_code_of(again) == 0 and again.calls == {}
    assert double.calls["add"] == 4 and double.calls["identify"] == 4


def test_cli_exit_codes_and_counts(double: FaceDouble, tmp_path: Path) -> None:
    rows, _ = _rows(6)
    enroll_dir, _ = enroll_run(tmp_path, GROUP, rows, double, write_files=True)
    env = {"FACEFLOW_ENDPOINT": double.url, "FACEFLOW_API_KEY": "ak-audit-SECRET1",
           "FACEFLOW_SECRET_KEY": "sk-audit-SECRET2"}
    runner = CliRunner()
    missing = runner.invoke(main, ["audit", str(enroll_dir)], env=env)
    assert missing.exit_code == 2 and "--group" in missing.output
    done = runner.invoke(main, ["audit", str(enroll_dir), "--group", GROUP, "--run-dir",
                                str(tmp_path / "a"), "--top-k", "3"], env=env)
    assert done.exit_code == 0, done.output
    assert "3 findings" in done.output and "SECRET" not in done.output
    again = runner.invoke(main, ["audit", "--run-dir", str(tmp_path / "a")], env=env)
    assert again.exit_code == 0 and "3 findings" in again.output
    assert (tmp_path / "a" / "report.html").exists()


@pytest.mark.slow
def test_killed_audit_resumes_without_calling_finished_probes(double: FaceDouble,
                                                              tmp_path: Path) -> None:
    rows, expected = _rows(60)
    enroll_dir, _ = enroll_run(tmp_path, GROUP, rows, double, write_files=True)
    env = {**os.environ, "FACEFLOW_ENDPOINT": double.url, "FACEFLOW_API_KEY": "ak",
           "FACEFLOW_SECRET_KEY": "sk"}
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-c", "from jobs.cli import main; main()", "audit", str(enroll_dir),
           "--group", GROUP, "--run-dir", str(run_dir), "--qps", "identify=25",
           "--concurrency", "2"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while _journaled(run_dir) < 15 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    done_before = _journaled(run_dir)
    assert 15 <= done_before < len(rows)
    calls_before = double.calls["identify"]
    resumed = subprocess.run(cmd[:-4], env=env, cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert double.calls["identify"] - calls_before == len(rows) - done_before
    assert _kinds(read_findings(run_dir)) == expected


def _journaled(run_dir: Path) -> int:
    """Probe records on disk: complete journal lines plus rows of Parquet parts."""
    lines = 0
    for seg in (run_dir / "journal").glob("seg-*.jsonl"):
        lines += seg.read_bytes().count(b"\n")
    parts = sum(pq.read_metadata(p).num_rows for p in (run_dir / "outcomes").glob("*.parquet"))
    return lines + parts


async def test_interrupt_stops_cleanly(double: FaceDouble, tmp_path: Path) -> None:
    import asyncio

    rows, _ = _rows(30)
    enroll_dir, photos = enroll_run(tmp_path, GROUP, rows, double)
    stop = asyncio.Event()

    class StopAfter5:
        n = 0

        def started(self, start: Any) -> None: ...
        def phase(self, name: str, detail: str) -> None: ...
        def stopping(self, reason: str, message: str) -> None: ...

        def probe_done(self, record: Any, progress: Any) -> None:
            self.n += 1
            if self.n == 5:
                stop.set()

    result = await run_audit(_config(double, tmp_path, enroll_dir, concurrency=1,
                                     qps={"identify": 50}),
                             observer=StopAfter5(), stop=stop,  # type: ignore[arg-type]
                             loader=lambda img: photos[img.path])
    assert (exit_code_of(result), result.stop_reason) == (130, "interrupted")
    assert 5 <= result.checked < len(rows)
