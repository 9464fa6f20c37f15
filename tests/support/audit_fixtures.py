"""Builds a finished audit directory without any service, for report and Chromium tests.

The photos are generated shapes (no real people); the probe records are written as
an audit session would have left them, then findings, clusters and report.html are
produced by the real pipeline functions.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from PIL import Image, ImageDraw

from pipeline.audit.findings import PLAN_SCHEMA, AuditImage, ProbeRecord, records_table
from pipeline.audit.outputs import write_findings
from pipeline.audit.plan import PLAN_FILE, file_sha256
from pipeline.audit.report import write_audit_report
from pipeline.client.config import Settings
from pipeline.runs.rundir import ManifestRef, RunDir, RunInfo, write_table_atomic

HOSTILE_UID = 'x"><script>document.title="pwned"</script>'
HOSTILE_INFO = '<img src="x" onerror="document.title=1">'
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def shape_photo(path: Path, seed: int, size: int = 400) -> Path:
    """A colourful synthetic picture (no face), different for every seed."""
    img = Image.new("RGB", (size, size), ((seed * 67) % 256, (seed * 131) % 256, 180))
    draw = ImageDraw.Draw(img)
    for i in range(6):
        box = (20 + i * 30 + seed % 20, 30 + i * 25, 200 + i * 30, 220 + i * 25 + seed % 30)
        draw.ellipse(box, fill=((seed * 40 + i * 50) % 256, (i * 90) % 256, (seed * 7) % 256))
    img.save(path, quality=90)
    return path


def _probe(row: int, uid: str, cands: tuple[tuple[str, float], ...] = (),
           match: tuple[str, int, float] | None = None,
           ref: tuple[int, float] | None = None) -> ProbeRecord:
    m = [match] if match else []
    return ProbeRecord(
        "audit-fixture", row, uid, "checked", None, None, None, 1000 + row,
        tuple(c[0] for c in cands), ("staff",) * len(cands), tuple(c[1] for c in cands),
        tuple(HOSTILE_INFO if c[0] == HOSTILE_UID else "" for c in cands),
        tuple(x[0] for x in m), tuple(x[1] for x in m), tuple(x[2] for x in m),
        tuple(2000 + row for _ in m), ref[0] if ref else None, ref[1] if ref else None,
        3000 + row if ref else None, 1 + len(m) + (ref is not None), 1, NOW, NOW)


def build_audit_dir(root: Path) -> Path:
    """An audit dir with 3 findings (one of each kind), a hostile uid and user_info."""
    photos = root / "photos"
    photos.mkdir(parents=True)
    paths = [shape_photo(photos / f"p{i}.jpg", i) for i in range(5)]
    copy = photos / "p0_copy.jpg"
    copy.write_bytes(paths[0].read_bytes())
    rows = [("alice", paths[0], None), (HOSTILE_UID, paths[1], HOSTILE_INFO),
            ("bob", paths[2], None), ("bob", paths[3], None), ("carol", paths[4], None),
            ("alice_copy", copy, None)]
    plan = [AuditImage(i, uid, "staff", p.name, str(p), file_sha256(p), info, "fixture", i + 2)
            for i, (uid, p, info) in enumerate(rows)]
    records = {
        0: _probe(0, "alice", (("alice", 99.0), (HOSTILE_UID, 91.0)), (HOSTILE_UID, 1, 88.4)),
        1: _probe(1, HOSTILE_UID, ((HOSTILE_UID, 99.0),)),
        2: _probe(2, "bob", (("bob", 99.0),)),
        3: _probe(3, "bob", (("bob", 98.0),), ref=(2, 23.5)),
        4: _probe(4, "carol", (("carol", 99.0),)),
        5: _probe(5, "alice_copy", (("alice_copy", 99.0),)),
    }
    run_dir = root / "audit"
    rundir = RunDir(run_dir)
    settings = Settings(endpoint="http://127.0.0.1:1", api_key=_secret(), secret_key=_secret())
    rundir.write_info(RunInfo(
        run_id="audit-fixture", job="audit", created_at=NOW.isoformat(),
        manifest=ManifestRef(str(root), "sha256:0", len(plan)), settings=settings.public(),
        options={"groups": ["staff"], "threshold": 80.0, "top_k": 5, "before_enroll": False}))
    write_table_atomic(run_dir / PLAN_FILE, records_table(plan, PLAN_SCHEMA))
    write_findings(rundir, plan, records, 80.0, "audit-fixture")
    write_audit_report(run_dir)
    return run_dir


def _secret() -> object:
    from pipeline.client.config import Secret  # noqa: PLC0415

    return Secret("fixture-secret-value")
