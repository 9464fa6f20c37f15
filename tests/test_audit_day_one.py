"""Audit rough edges a new user met (issue 17), on the audit protocol double."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.audit_double import FaceDouble, descriptors, png, variant

from jobs.exits import exit_code_of
from pipeline.audit.job import AuditConfig, audit, read_findings, resume_config
from pipeline.client.config import Secret, Settings

GROUP = "staff"


def _settings(double: FaceDouble) -> Settings:
    return Settings(endpoint=double.url, api_key=Secret("ak-audit-1"),
                    secret_key=Secret("sk-audit-2"))


@pytest.fixture
def double() -> Any:
    with FaceDouble(buckets=True) as d:
        yield d


def _before_enroll_manifest(double: FaceDouble, tmp_path: Path) -> Path:
    people = descriptors(6, 9)
    double.register(png(0, 0), people[0], 0)
    double.enroll(GROUP, "alice", people[0], user_info="Alice in the library", bucket=0)
    photos = tmp_path / "new"
    photos.mkdir()
    made = {"a2.png": (png(0, 1), variant(people[0], 5), 0),
            "b1.png": (png(1, 0), people[1], 1), "b2.png": (png(1, 1), variant(people[1], 6), 1),
            "c1.png": (png(2, 0), people[2], 2)}
    for name, (data, vec, person) in made.items():
        (photos / name).write_bytes(data)
        double.register(data, vec, person)
    manifest = tmp_path / "new.csv"
    manifest.write_text("image,uid,user_info\nnew/a2.png,alice_new,Alice N\nnew/b1.png,bob,Bob\n"
                        "new/b2.png,bobby,Bobby\nnew/c1.png,carol,Carol\n")
    return manifest


def test_resumed_before_enroll_does_not_add_the_scratch_users_again(
        double: FaceDouble, tmp_path: Path) -> None:
    manifest = _before_enroll_manifest(double, tmp_path)
    config = AuditConfig(settings=_settings(double), groups=(GROUP,), manifest=manifest,
                         run_dir=tmp_path / "pre", before_enroll=True, scratch_settle_s=0,
                         concurrency=1)
    double.quota_after = {"add": 2}  # the third add is refused (17): the fill stops
    first = audit(config)
    assert first.stop_reason == "quota" and double.calls["add"] == 3
    double.quota_after = {}
    again = audit(resume_config(config.run_dir, _settings(double)))  # type: ignore[arg-type]
    assert exit_code_of(again) == 0
    # Two photos were in the scratch group already: only the other two are added now.
    assert double.calls["add"] == 3 + 2
    kinds = {(f.kind, f.uid_a, f.uid_b) for f in read_findings(again.run_dir)}
    assert ("same_person_multiple_uids", "bob", "bobby") in kinds or \
           ("same_person_multiple_uids", "bobby", "bob") in kinds


def test_photos_from_a_run_directory_carry_their_user_info(double: FaceDouble,
                                                           tmp_path: Path) -> None:
    import hashlib
    import json

    from support.audit_double import enroll_run

    people = descriptors(4, 5)
    rows = [("p0", png(0, 0), people[0], 0), ("p1", png(1, 0), people[1], 1),
            ("p1_again", png(1, 1), variant(people[1], 2), 1)]
    run, _ = enroll_run(tmp_path, GROUP, rows, double, write_files=True)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("image,uid,user_info\n" + "".join(
        f"photos/enroll_{k:06d}.png,{uid},{info}\n"
        for k, (uid, info) in enumerate([("p0", "张三"), ("p1", "李四"), ("p1_again", "")])),
        encoding="utf-8")
    info = json.loads((run / "run.json").read_text())
    info["manifest"]["fingerprint"] = "sha256:" + hashlib.sha256(manifest.read_bytes()).hexdigest()
    info["options"] = {"group": GROUP}
    (run / "run.json").write_text(json.dumps(info))
    result = audit(AuditConfig(settings=_settings(double), groups=(GROUP,), run_dirs=(run,),
                               run_dir=tmp_path / "audit"))
    found = [(f.kind, f.uid_a, f.user_info_a, f.uid_b, f.user_info_b)
             for f in read_findings(result.run_dir)]
    # The cell, else the uid (what enroll sends for an empty user_info); was None.
    assert found == [("same_person_multiple_uids", "p1", "李四", "p1_again", "p1_again")]


def test_before_enroll_counts_unconfirmed_apart_and_says_1_finding(double: FaceDouble,
                                                                   tmp_path: Path) -> None:
    from click.testing import CliRunner

    from jobs.cli import main

    manifest = _before_enroll_manifest(double, tmp_path)
    env = {"FACEFLOW_ENDPOINT": double.url, "FACEFLOW_API_KEY": "ak-audit-1",
           "FACEFLOW_SECRET_KEY": "sk-audit-2"}
    out = CliRunner().invoke(main, ["audit", "--manifest", str(manifest), "--group", GROUP,
                                    "--before-enroll", "--settle-seconds", "0", "--run-dir",
                                    str(tmp_path / "pre")], env=env)
    assert out.exit_code == 0, out.output
    # alice_new ~ alice (library, identify only) and bob ~ bobby (both photos known).
    assert "2 findings (1 unconfirmed) in 2 clusters" in out.stdout
    assert "     1  same person under several uids, confirmed by match" in out.stdout
    assert "     1  same person under several uids, unconfirmed (identify only" in out.stdout
    page = (tmp_path / "pre" / "report.html").read_text(encoding="utf-8")
    assert "<b>1</b>unconfirmed (identify only)" in page
    report = CliRunner().invoke(main, ["report", str(tmp_path / "pre")])
    assert "2 findings" in report.stdout


def test_one_finding_is_singular(double: FaceDouble, tmp_path: Path) -> None:
    from click.testing import CliRunner
    from support.audit_double import enroll_run

    from jobs.cli import main

    people = descriptors(3, 4)
    rows = [("p0", png(0, 0), people[0], 0), ("p0_copy", png(0, 0), people[0], 0)]
    run, _ = enroll_run(tmp_path, GROUP, rows, double, write_files=True)
    env = {"FACEFLOW_ENDPOINT": double.url, "FACEFLOW_API_KEY": "ak-audit-1",
           "FACEFLOW_SECRET_KEY": "sk-audit-2"}
    out = CliRunner().invoke(main, ["audit", str(run), "--group", GROUP, "--run-dir",
                                    str(tmp_path / "a")], env=env)
    assert out.exit_code == 0, out.output
    assert "1 finding in 1 cluster;" in out.stdout
    page = (tmp_path / "a" / "report.html").read_text(encoding="utf-8")
    assert "<b>1</b>finding</div>" in page and "<b>1</b>cluster</div>" in page
    report = CliRunner().invoke(main, ["report", str(tmp_path / "a")])
    assert ": 1 finding" in report.stdout and "1 findings" not in report.stdout


def test_audit_reads_a_gbk_manifest_with_encoding(double: FaceDouble, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from jobs.cli import main

    manifest = _before_enroll_manifest(double, tmp_path)
    gbk = tmp_path / "gbk.csv"
    gbk.write_bytes(manifest.read_text().replace("Bob,", "鲍勃,").replace("Bob\n", "鲍勃\n")
                    .replace(",", ";").encode("gbk"))
    env = {"FACEFLOW_ENDPOINT": double.url, "FACEFLOW_API_KEY": "ak-audit-1",
           "FACEFLOW_SECRET_KEY": "sk-audit-2"}
    args = ["audit", "--manifest", str(gbk), "--group", GROUP, "--before-enroll",
            "--settle-seconds", "0", "--run-dir", str(tmp_path / "pre")]
    refused = CliRunner().invoke(main, args, env=env)
    assert refused.exit_code == 2 and "--encoding gb18030" in refused.output
    assert not (tmp_path / "pre").exists()
    done = CliRunner().invoke(main, [*args, "--encoding", "gbk"], env=env)
    assert done.exit_code == 0, done.output
    assert "2 findings (1 unconfirmed)" in done.stdout
    page = (tmp_path / "pre" / "report.html").read_text(encoding="utf-8")
    assert "鲍勃" in page or "Bobby" in page
