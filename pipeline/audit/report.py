"""The audit's ``report.html``: one self-contained page, no external URL.

A summary, then one card per finding with its two photos side by side (small
base64 JPEG thumbnails, at most :data:`THUMB_PX` px), its confidence, the score and
the kind (and for "same person" findings the margin over the next uid and how many
photos of both uids agree); a few lines of inline JavaScript filter the cards by kind
or confidence and sort them by confidence, score or cluster. The page extends
``templates/base.html`` (the enrollment report's stylesheet) with
``templates/audit.html``. Jinja2 autoescapes everything: uids, user_info and paths
come from users' files and are untrusted.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from pipeline import __version__
from pipeline.audit.clusters import CLUSTER_SCHEMA, Cluster
from pipeline.audit.findings import CONFIDENCES, KINDS, AuditImage, Finding, table_records
from pipeline.audit.outputs import CLUSTERS_FILE, read_findings
from pipeline.audit.plan import PLAN_FILE, read_plan
from pipeline.enroll.report import thumbnail
from pipeline.runs.rundir import RunDir

REPORT_FILE = "report.html"

#: Longest side of a thumbnail, pixels.
THUMB_PX = 160
#: Cards drawn at most; the rest are counted (findings.parquet has them all). Keeps the
#: page small enough to open (about 10 kB per card).
MAX_CARDS = 1000

#: Colour class of each confidence (base.html's palette): act on high, check medium.
CONFIDENCE_CLASS = {"high": "bad", "medium": "warn", "low": "meta"}

KIND_LABELS = {
    "same_person_multiple_uids": "same person, several uids",
    "multiple_people_one_uid": "several people, one uid",
    "exact_copy": "exact copy",
}


@dataclass(frozen=True, slots=True)
class Photo:
    """One side of a card: ``data_url`` is None when the file cannot be read any more."""

    uid: str
    image: str | None
    user_info: str | None
    data_url: str | None


@dataclass(frozen=True, slots=True)
class Card:
    finding: Finding
    label: str
    a: Photo
    b: Photo


def render_audit_html(run_dir: Path | str) -> str:
    """The report page of the audit in ``run_dir`` as one HTML string."""
    from jinja2 import Environment, PackageLoader, select_autoescape  # noqa: PLC0415

    rundir = RunDir(run_dir)
    info = rundir.read_info()
    plan = read_plan(rundir) if (rundir.path / PLAN_FILE).exists() else []
    findings = read_findings(rundir.path)
    clusters: list[Cluster] = table_records(
        pq.read_table(rundir.path / CLUSTERS_FILE, schema=CLUSTER_SCHEMA), Cluster)
    env = Environment(loader=PackageLoader("pipeline", "templates"),
                      autoescape=select_autoescape(["html"]))
    counts = Counter(f.kind for f in findings)
    levels = Counter(f.confidence for f in findings)
    return env.get_template("audit.html").render(
        confidence_counts=[(level, levels.get(level, 0)) for level in CONFIDENCES],
        confidence_rank={level: i for i, level in enumerate(CONFIDENCES)},
        confidence_class=CONFIDENCE_CLASS,
        info=info, plan_size=len(plan), probes=sum(p.probe for p in plan),
        counts=[(k, KIND_LABELS[k], counts.get(k, 0)) for k in KINDS],
        cards=cards(plan, findings[:MAX_CARDS]), hidden=max(0, len(findings) - MAX_CARDS),
        total=len(findings), unconfirmed=sum(not f.confirmed for f in findings),
        clusters=clusters, version=__version__)


def write_audit_report(run_dir: Path | str) -> Path:
    """Render and write ``<run_dir>/report.html`` (temporary file, then rename)."""
    path = Path(run_dir) / REPORT_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_audit_html(run_dir), encoding="utf-8")
    os.replace(tmp, path)
    return path


def cards(plan: list[AuditImage], findings: list[Finding]) -> list[Card]:
    """One card per finding; each photo is read and shrunk once however often it appears."""
    thumbs: dict[int, str | None] = {}

    def photo(row: int | None, uid: str, image: str | None, info: str | None) -> Photo:
        if row is None or row >= len(plan):
            return Photo(uid, image, info, None)
        if row not in thumbs:
            thumbs[row] = thumbnail(Path(plan[row].path), THUMB_PX, quality=75)
        return Photo(uid, image, info, thumbs[row])

    return [Card(f, KIND_LABELS[f.kind],
                 photo(f.row_a, f.uid_a, f.image_a, f.user_info_a),
                 photo(f.row_b, f.uid_b, f.image_b, f.user_info_b)) for f in findings]
