"""The audit on ``--api v3`` against the real engine: the planted cases of
test_audit_engine.py are found through search and two-picture matches, and
``--before-enroll`` works through a v3 scratch group."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from jobs.cli import main
from jobs.exits import exit_code_of
from pipeline.api.errors import ConfigError
from pipeline.audit.findings import EXACT_COPY, MULTIPLE_PEOPLE, SAME_PERSON
from pipeline.audit.job import AuditConfig, audit, read_findings, resume_config
from pipeline.client.config import Secret, Settings
from pipeline.enroll.job import EnrollConfig, enroll
from pipeline.runs.outcomes import SUCCESS_STATUSES

pytestmark = pytest.mark.dlib
GROUP = "audit_v3"


def _settings(engine: Any) -> Settings:
    return Settings(endpoint=engine.url, api_key=Secret(engine.api_key),
                    secret_key=Secret(engine.secret_key))


def _manifest(folder: Path, rows: list[tuple[str, str]]) -> Path:
    path = folder / "members.csv"
    path.write_text("uid,image,user_info\n" + "".join(f"{u},{i},info of {u}\n" for u, i in rows))
    return path


@pytest.fixture(scope="module")
def enrolled(engine: Any, samples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("audit_v3")
    shutil.copyfile(samples_dir / "biden_01.jpg", folder / "biden_copy.jpg")
    s = samples_dir
    manifest = _manifest(folder, [
        ("obama_a", str(s / "obama_01.jpg")), ("obama_a", str(s / "obama_03.jpg")),
        ("obama_b", str(s / "obama_02.jpg")), ("mixed", str(s / "biden_01.jpg")),
        ("mixed", str(s / "astronaut.png")), ("biden_copy", "biden_copy.jpg")])
    loose = {"yaw": "45", "pitch": "45", "min_face_size": "60"}
    result = enroll(EnrollConfig(manifest=manifest, settings=_settings(engine), group=GROUP,
                                 run_dir=folder / "enroll", concurrency=1,
                                 threshold_overrides=loose, api="v3"))
    assert result.counts and set(result.counts) <= SUCCESS_STATUSES, result.counts
    # v3: biden_copy's picture is mixed's (the same face_token in the group): 223105
    assert result.counts.get("already_enrolled") == 1
    return folder / "enroll"


def test_v3_audit_finds_the_planted_cases(engine: Any, enrolled: Path, tmp_path: Path) -> None:
    env = {"FACEFLOW_ENDPOINT": engine.url, "FACEFLOW_API_KEY": engine.api_key,
           "FACEFLOW_SECRET_KEY": engine.secret_key, "FACEFLOW_API": "v3"}
    run_dir = tmp_path / "audit"
    done = CliRunner().invoke(main, ["audit", str(enrolled), "--group", GROUP,
                                     "--run-dir", str(run_dir)], env=env)
    assert done.exit_code == 0, done.output
    got = {(f.kind, tuple(sorted((f.uid_a, f.uid_b)))) for f in read_findings(run_dir)}
    assert got == {(SAME_PERSON, ("obama_a", "obama_b")),
                   (MULTIPLE_PEOPLE, ("mixed", "mixed")),
                   (EXACT_COPY, ("biden_copy", "mixed"))}
    same = next(f for f in read_findings(run_dir) if f.kind == SAME_PERSON)
    assert same.confirmed and same.score is not None and same.score >= 80
    # the audit keeps its protocol on resume
    assert resume_config(run_dir, _settings(engine)).api == "v3"
    with pytest.raises(ConfigError, match="api"):
        audit(AuditConfig(settings=_settings(engine), groups=(GROUP,), run_dirs=(enrolled,),
                          run_dir=run_dir))


def test_v3_before_enroll(engine: Any, enrolled: Path, samples_dir: Path,
                          tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, [("new_obama", str(samples_dir / "obama_02_rgba.png")),
                                    ("astro", str(samples_dir / "astronaut.png"))])
    before = engine.store.counts()
    result = audit(AuditConfig(settings=_settings(engine), groups=(GROUP,),
                               run_dirs=(enrolled,), manifest=manifest, before_enroll=True,
                               scratch_settle_s=0, run_dir=tmp_path / "pre", api="v3"))
    assert exit_code_of(result) == 0
    got = {(f.kind, tuple(sorted((f.uid_a, f.uid_b)))) for f in read_findings(tmp_path / "pre")}
    assert (SAME_PERSON, ("new_obama", "obama_b")) in got
    assert (EXACT_COPY, ("astro", "mixed")) in got
    assert engine.store.counts() == before
    scratch = [g for g in engine.store.group_ids(0, 1000) if "__audit_" in g]
    assert scratch == []  # v3 groups outlive their users: the scratch group was deleted
