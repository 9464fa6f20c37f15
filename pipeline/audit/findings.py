"""The audit's records and its deciding part: probe records -> findings and clusters (pure).

Three records travel between the audit's stages, each with its one declared
pyarrow schema next to it (``tests/test_audit_clusters.py`` checks they agree):

* :class:`AuditImage` (``plan.parquet``): one known photo, the unit of probing;
* :class:`ProbeRecord` (``outcomes/part-*.parquet``): what one probe's calls answered;
* :class:`Finding` (``findings.parquet``): one finding, of a kind in :data:`KINDS`.

:func:`derive_findings` turns the plan and the latest probe record of each row into
findings and clusters (:mod:`pipeline.audit.clusters`) without any I/O, so every rule
(thresholds, de-duplication, exact copies, confidence) is testable on made-up records.

Confidence (:data:`CONFIDENCES`), because an operations team acts on a finding (merging
or deleting a member) and a false one costs more than a missed one:

* ``same_person_multiple_uids`` is ``high`` only when all of these hold: the best match
  score is >= ``high_score`` (90 by default, the engine's modelled false-accept rate of
  1e-5, against 1e-4 at 80); the **margin** -- that uid's identify score minus the best
  score of any other uid that is not itself confirmed as the same person -- is >=
  :data:`HIGH_MARGIN` points (a lookalike tends to have rivals close behind); and every
  checked photo of *both* uids points at the other uid (each photo's probe confirmed
  it, against every known photo sent, all >= ``threshold``). Otherwise a confirmed
  finding is ``medium``, and a candidate with no known photo to confirm against is
  ``low``.
* ``exact_copy`` (the same bytes) is ``high``.
* ``multiple_people_one_uid`` is ``high`` below :data:`MULTI_HIGH_BELOW` (a distance at
  which same-person pairs of distinct photos practically never fall), else ``medium``.

Findings are numbered in confidence order (high first), then by cluster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from pipeline.audit.clusters import Cluster, components

KINDS = ("same_person_multiple_uids", "multiple_people_one_uid", "exact_copy")
SAME_PERSON, MULTIPLE_PEOPLE, EXACT_COPY = KINDS
CONFIDENCES = ("high", "medium", "low")
HIGH, MEDIUM, LOW = CONFIDENCES
#: Same-person score for ``high`` (0-100): the engine's modelled false-accept rate 1e-5.
HIGH_SCORE = 90.0
#: Points by which the uid must lead the best rival uid in the probe's identify.
HIGH_MARGIN = 10.0
#: A reference match below this score (modelled impostor share 99 %) is a ``high``
#: "several people, one uid" finding.
MULTI_HIGH_BELOW = 60.0
_TS = pa.timestamp("us", tz="UTC")


# -- records and their schemas ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditImage:
    """One known photo. ``row`` is its 0-based place in the plan (the probe key).

    ``image`` is the path as written in the source, ``path`` the resolved one;
    ``sha256`` the hex digest of the file's bytes (None when unreadable at planning).
    ``source`` is the run directory or manifest it came from, ``line`` its 1-based
    manifest line (None for run outcomes). ``probe`` False: a photo that is only
    used to confirm matches (run-directory photos of a ``before_enroll`` audit).
    """

    row: int
    uid: str
    group_id: str
    image: str
    path: str
    sha256: str | None
    user_info: str | None
    source: str
    line: int | None
    probe: bool = True


PLAN_SCHEMA = pa.schema(
    [
        pa.field("row", pa.int64(), nullable=False),
        pa.field("uid", pa.string(), nullable=False),
        pa.field("group_id", pa.string(), nullable=False),
        pa.field("image", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("sha256", pa.string()),
        pa.field("user_info", pa.string()),
        pa.field("source", pa.string(), nullable=False),
        pa.field("line", pa.int64()),
        pa.field("probe", pa.bool_(), nullable=False),
    ],
    metadata={"faceflow.record": "pipeline.audit.AuditImage"},
)


@dataclass(frozen=True, slots=True)
class ProbeRecord:
    """What one probe found: the terminal record of plan row ``row`` in ``outcomes/``.

    ``status`` is ``checked`` or ``failed`` (then ``reason``, ``error_code`` and
    ``error_msg`` say why). ``cand_*`` are identify's candidates in reply order
    (uid after mapping scratch uids back, group, best score 0-100, user_info).
    ``match_*`` are the confirmations of every other uid that scored >= threshold
    and has a known photo: one entry per photo of that uid sent with the probe (up to
    ``confirm_photos``, one match call): its plan row, the probe-vs-photo score and the
    call's log id (None when identical bytes made the call needless; then one entry).
    Records written before confidence existed hold only the best photo per uid.
    ``ref_row``/``ref_score``/``ref_log_id``: the match against the uid's reference
    photo (all None for the reference itself). ``calls`` counts the requests this
    probe made (identify + matches), ``attempts`` the HTTP sends (retries included).
    """

    run_id: str
    row: int
    uid: str
    status: str
    reason: str | None
    error_code: str | None
    error_msg: str | None
    identify_log_id: int | None
    cand_uids: tuple[str, ...]
    cand_groups: tuple[str, ...]
    cand_scores: tuple[float, ...]
    cand_infos: tuple[str, ...]
    match_uids: tuple[str, ...]
    match_rows: tuple[int, ...]
    match_scores: tuple[float, ...]
    match_log_ids: tuple[int | None, ...]
    ref_row: int | None
    ref_score: float | None
    ref_log_id: int | None
    calls: int
    attempts: int
    started_at: datetime
    finished_at: datetime


PROBE_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("uid", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string()),
        pa.field("error_code", pa.string()),
        pa.field("error_msg", pa.string()),
        pa.field("identify_log_id", pa.uint64()),
        pa.field("cand_uids", pa.list_(pa.string()), nullable=False),
        pa.field("cand_groups", pa.list_(pa.string()), nullable=False),
        pa.field("cand_scores", pa.list_(pa.float64()), nullable=False),
        pa.field("cand_infos", pa.list_(pa.string()), nullable=False),
        pa.field("match_uids", pa.list_(pa.string()), nullable=False),
        pa.field("match_rows", pa.list_(pa.int64()), nullable=False),
        pa.field("match_scores", pa.list_(pa.float64()), nullable=False),
        pa.field("match_log_ids", pa.list_(pa.uint64()), nullable=False),
        pa.field("ref_row", pa.int64()),
        pa.field("ref_score", pa.float64()),
        pa.field("ref_log_id", pa.uint64()),
        pa.field("calls", pa.int32(), nullable=False),
        pa.field("attempts", pa.int32(), nullable=False),
        pa.field("started_at", _TS, nullable=False),
        pa.field("finished_at", _TS, nullable=False),
    ],
    metadata={"faceflow.record": "pipeline.audit.ProbeRecord"},
)


@dataclass(frozen=True, slots=True)
class Finding:
    """One finding (see the module docstring for the kinds).

    ``finding`` is 1-based in file order (cluster, kind, uid_a, uid_b). ``uid_a`` /
    ``image_a`` is the probe side (the reference photo for ``multiple_people_one_uid``,
    where ``uid_b == uid_a``); ``row_a``/``row_b`` are plan rows. ``score`` is the
    match score 0-100 (None for exact copies; the identify score when
    ``confirmed`` is False because no photo of ``uid_b`` is known, then ``image_b``
    is None). ``log_ids`` holds every service log id behind the finding.

    ``confidence`` is one of :data:`CONFIDENCES` (see the module docstring).
    ``margin``: identify score of ``uid_b`` minus the best other unconfirmed uid's (None
    for other kinds). ``photos_checked``: probed photos of both uids; ``photos_agreeing``:
    those whose probe confirmed the other uid; ``lowest_score``: the lowest
    probe-vs-photo score between the two uids (None when no photo pair was scored).
    """

    run_id: str
    finding: int
    kind: str
    cluster: int
    uid_a: str
    uid_b: str
    group_id: str | None
    row_a: int
    row_b: int | None
    image_a: str
    image_b: str | None
    sha256_a: str | None
    sha256_b: str | None
    user_info_a: str | None
    user_info_b: str | None
    score: float | None
    identify_score: float | None
    confirmed: bool
    identify_log_id: int | None
    match_log_id: int | None
    log_ids: tuple[int, ...]
    confidence: str
    margin: float | None
    photos_checked: int
    photos_agreeing: int
    lowest_score: float | None
    found_at: datetime

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown finding kind {self.kind!r}; expected one of {KINDS}")
        if self.confidence not in CONFIDENCES:
            raise ValueError(f"unknown confidence {self.confidence!r}; expected {CONFIDENCES}")


FINDING_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("finding", pa.int64(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("cluster", pa.int64(), nullable=False),
        pa.field("uid_a", pa.string(), nullable=False),
        pa.field("uid_b", pa.string(), nullable=False),
        pa.field("group_id", pa.string()),
        pa.field("row_a", pa.int64(), nullable=False),
        pa.field("row_b", pa.int64()),
        pa.field("image_a", pa.string(), nullable=False),
        pa.field("image_b", pa.string()),
        pa.field("sha256_a", pa.string()),
        pa.field("sha256_b", pa.string()),
        pa.field("user_info_a", pa.string()),
        pa.field("user_info_b", pa.string()),
        pa.field("score", pa.float64()),
        pa.field("identify_score", pa.float64()),
        pa.field("confirmed", pa.bool_(), nullable=False),
        pa.field("identify_log_id", pa.uint64()),
        pa.field("match_log_id", pa.uint64()),
        pa.field("log_ids", pa.list_(pa.uint64()), nullable=False),
        pa.field("confidence", pa.string(), nullable=False),
        pa.field("margin", pa.float64()),
        pa.field("photos_checked", pa.int32(), nullable=False),
        pa.field("photos_agreeing", pa.int32(), nullable=False),
        pa.field("lowest_score", pa.float64()),
        pa.field("found_at", _TS, nullable=False),
    ],
    metadata={"faceflow.record": "pipeline.audit.Finding"},
)


def records_table(records: Sequence[Any], schema: pa.Schema) -> pa.Table:
    """Frozen records -> a ``schema`` table (tuples become lists, datetimes stay aware)."""
    rows = [{f.name: getattr(r, f.name) for f in schema} for r in records]
    for row in rows:
        for key, value in row.items():
            if isinstance(value, tuple):
                row[key] = list(value)
    return pa.Table.from_pylist(rows, schema=schema)


def table_records(table: pa.Table, cls: type[Any]) -> list[Any]:
    """A table written by :func:`records_table` (or a record store) -> frozen records."""
    names = [f.name for f in fields(cls)]
    out = []
    for row in table.to_pylist():
        values = {n: tuple(v) if isinstance(v, list) else v for n, v in row.items() if n in names}
        out.append(cls(**values))
    return out


# -- deciding: probe records -> findings and clusters (pure) ------------------------------


def derive_findings(
    plan: Sequence[AuditImage],
    probes: Mapping[int, ProbeRecord],
    threshold: float,
    run_id: str,
    found_at: datetime,
    high_score: float = HIGH_SCORE,
) -> tuple[list[Finding], list[Cluster]]:
    """Every finding and the clusters that hold them, from the plan and checked probes.

    ``probes`` maps plan row -> its latest record (failed ones add nothing). A uid
    pair is reported once: exact copies first, then the best confirmed match, then
    (no photo known) the best identify score. Findings are sorted by confidence
    (:data:`CONFIDENCES` order), cluster, kind (:data:`KINDS` order), uid_a, uid_b
    and numbered from 1. ``high_score`` (at least ``threshold``): see the module docstring.
    """
    checked = [p for _, p in sorted(probes.items()) if p.status == "checked"]
    exact, edges = exact_copies(plan)
    same, same_edges = _same_person(plan, checked, threshold, _shared_bytes(plan))
    multi, ref_edges = _multiple_people(plan, checked, threshold)
    bound = max(high_score, threshold)
    drafts = [replace(f, confidence=_confidence(f, threshold, bound))
              for f in exact + same + multi]
    comps = components(len(plan), [*edges, *same_edges, *ref_edges])
    clusters, cluster_of = _number_clusters(plan, comps, drafts)
    placed = [replace(f, cluster=cluster_of[f.row_a], run_id=run_id, found_at=found_at)
              for f in drafts]
    placed.sort(key=lambda f: (CONFIDENCES.index(f.confidence), f.cluster,
                               KINDS.index(f.kind), f.uid_a, f.uid_b, f.row_a))
    return [replace(f, finding=i) for i, f in enumerate(placed, 1)], clusters


def exact_copies(plan: Sequence[AuditImage]) -> tuple[list[Finding], list[tuple[int, int]]]:
    """Same bytes under different uids, with no API call: (findings, same-bytes edges).

    Per sha256, the first photo is the anchor; each other uid holding those bytes
    gives one finding against it (a star, so k uids cost k-1 findings, not k^2).
    Copies among photos that are not probed (the library side of a before-enroll
    audit) are not this audit's business and give no finding.
    """
    by_sha: dict[str, list[AuditImage]] = {}
    for img in plan:
        if img.sha256:
            by_sha.setdefault(img.sha256, []).append(img)
    findings: list[Finding] = []
    edges: list[tuple[int, int]] = []
    for images in by_sha.values():
        anchor, seen = images[0], {images[0].uid}
        for img in images[1:]:
            edges.append((anchor.row, img.row))
            if img.uid not in seen and (img.probe or anchor.probe):
                seen.add(img.uid)
                findings.append(_draft(EXACT_COPY, anchor, img, anchor.group_id))
    return findings, edges


def _shared_bytes(plan: Sequence[AuditImage]) -> dict[str, set[str]]:
    """uid -> the sha256 of its photos that some other uid holds too."""
    holders: dict[str, set[str]] = {}
    for img in plan:
        if img.sha256:
            holders.setdefault(img.sha256, set()).add(img.uid)
    out: dict[str, set[str]] = {}
    for sha, uids in holders.items():
        if len(uids) > 1:
            for uid in uids:
                out.setdefault(uid, set()).add(sha)
    return out


def _same_person(
    plan: Sequence[AuditImage], checked: Sequence[ProbeRecord], threshold: float,
    shared: Mapping[str, set[str]],
) -> tuple[list[Finding], list[tuple[int, int]]]:
    best: dict[frozenset[str], Finding] = {}
    edges: list[tuple[int, int]] = []
    by_uid: dict[str, list[ProbeRecord]] = {}
    for rec in checked:
        by_uid.setdefault(rec.uid, []).append(rec)
        probe = plan[rec.row]
        for draft in _confirmed(plan, rec, probe, threshold) + _unconfirmed(rec, probe, threshold):
            if draft.confirmed and draft.row_b is not None:
                edges.append((draft.row_a, draft.row_b))
            key = _pair(draft)
            if shared.get(draft.uid_a, set()) & shared.get(draft.uid_b, set()):
                continue  # the same bytes: reported as an exact copy (or not this audit's)
            if _better(draft, best.get(key)):
                best[key] = replace(draft, margin=_margin(rec, draft.uid_b, threshold))
    return [_with_evidence(f, by_uid, threshold) for f in best.values()], edges


def _margin(rec: ProbeRecord, uid_b: str, threshold: float) -> float | None:
    """``uid_b``'s identify score minus the best rival's in ``rec`` (0 when none is listed).

    Rivals are the other candidates, minus the probe's own uid and the uids this probe
    confirmed as the same person (three uids of one person do not eat each other's margin).
    """
    scores = dict(zip(reversed(rec.cand_uids), reversed(rec.cand_scores), strict=True))
    if uid_b not in scores:
        return None
    confirmed = {u for u, s in zip(rec.match_uids, rec.match_scores, strict=True)
                 if s >= threshold}
    rivals = [s for u, s in scores.items() if u not in (rec.uid, uid_b) and u not in confirmed]
    return round(scores[uid_b] - max(rivals, default=0.0), 4)


def _with_evidence(f: Finding, by_uid: Mapping[str, list[ProbeRecord]],
                   threshold: float) -> Finding:
    """Count the checked photos of both uids that point at the other, and the lowest
    probe-vs-photo score between them."""
    checked = agreeing = 0
    scores: list[float] = []
    for uid, other in ((f.uid_a, f.uid_b), (f.uid_b, f.uid_a)):
        for rec in by_uid.get(uid, ()):
            mine = [s for u, s in zip(rec.match_uids, rec.match_scores, strict=True)
                    if u == other]
            checked += 1
            agreeing += bool(mine) and max(mine) >= threshold
            scores += mine
    return replace(f, photos_checked=checked, photos_agreeing=agreeing,
                   lowest_score=min(scores) if scores else None)


def _confidence(f: Finding, threshold: float, high_score: float) -> str:
    """The finding's confidence (rules in the module docstring)."""
    if f.kind == EXACT_COPY:
        return HIGH
    if f.kind == MULTIPLE_PEOPLE:
        return HIGH if f.score is not None and f.score < MULTI_HIGH_BELOW else MEDIUM
    if not f.confirmed:
        return LOW
    strong = (f.score or 0.0) >= high_score and f.margin is not None and f.margin >= HIGH_MARGIN
    unanimous = (f.photos_agreeing == f.photos_checked
                 and f.lowest_score is not None and f.lowest_score >= threshold)
    return HIGH if strong and unanimous else MEDIUM


def _confirmed(
    plan: Sequence[AuditImage], rec: ProbeRecord, probe: AuditImage, threshold: float
) -> list[Finding]:
    out = []
    for uid, row, score, log_id in zip(rec.match_uids, rec.match_rows, rec.match_scores,
                                        rec.match_log_ids, strict=True):
        if score < threshold:
            continue
        group, ident, info = _candidate(rec, uid)
        out.append(_draft(SAME_PERSON, probe, plan[row], group, score=score,
                          identify_score=ident, identify_log_id=rec.identify_log_id,
                          match_log_id=log_id, user_info_b=info or plan[row].user_info))
    return out


def _unconfirmed(rec: ProbeRecord, probe: AuditImage, threshold: float) -> list[Finding]:
    """Candidates over the threshold with no known photo to confirm against."""
    matched = set(rec.match_uids)
    out = []
    for uid, group, score, info in zip(rec.cand_uids, rec.cand_groups, rec.cand_scores,
                                       rec.cand_infos, strict=True):
        if uid == probe.uid or uid in matched or score < threshold:
            continue
        matched.add(uid)
        out.append(replace(
            _draft(SAME_PERSON, probe, None, group, score=score, identify_score=score,
                   identify_log_id=rec.identify_log_id, user_info_b=info),
            uid_b=uid, confirmed=False))
    return out


def _multiple_people(
    plan: Sequence[AuditImage], checked: Sequence[ProbeRecord], threshold: float
) -> tuple[list[Finding], list[tuple[int, int]]]:
    findings: list[Finding] = []
    edges: list[tuple[int, int]] = []
    for rec in checked:
        if rec.ref_row is None or rec.ref_score is None:
            continue
        if rec.ref_score >= threshold:
            edges.append((rec.ref_row, rec.row))
            continue
        ref, img = plan[rec.ref_row], plan[rec.row]
        findings.append(_draft(MULTIPLE_PEOPLE, ref, img, img.group_id, score=rec.ref_score,
                               match_log_id=rec.ref_log_id))
    return findings, edges


def _draft(
    kind: str, a: AuditImage, b: AuditImage | None, group: str | None, **values: Any
) -> Finding:
    """A finding before numbering and clustering (run_id, finding, cluster filled later)."""
    base: dict[str, Any] = dict(
        run_id="", finding=0, kind=kind, cluster=0, uid_a=a.uid, uid_b=b.uid if b else "",
        group_id=group or None, row_a=a.row, row_b=b.row if b else None, image_a=a.image,
        image_b=b.image if b else None, sha256_a=a.sha256, sha256_b=b.sha256 if b else None,
        user_info_a=a.user_info, user_info_b=b.user_info if b else None, score=None,
        identify_score=None, confirmed=True, identify_log_id=None, match_log_id=None,
        confidence=MEDIUM, margin=None, photos_checked=0, photos_agreeing=0, lowest_score=None,
        found_at=_EPOCH_PLACEHOLDER)
    base.update(values)
    ids = (base["identify_log_id"], base["match_log_id"])
    base["log_ids"] = tuple(i for i in ids if i is not None)
    return Finding(**base)


_EPOCH_PLACEHOLDER = datetime(1970, 1, 1, tzinfo=UTC)


def _candidate(rec: ProbeRecord, uid: str) -> tuple[str | None, float | None, str | None]:
    """(group, identify score, user_info) of candidate ``uid`` in a probe record."""
    for c_uid, group, score, info in zip(rec.cand_uids, rec.cand_groups, rec.cand_scores,
                                         rec.cand_infos, strict=True):
        if c_uid == uid:
            return group, score, info
    return None, None, None


def _pair(f: Finding) -> frozenset[str]:
    return frozenset((f.uid_a, f.uid_b))


def _better(new: Finding, old: Finding | None) -> bool:
    """Confirmed beats unconfirmed; then the higher score; a tie keeps the first."""
    if old is None:
        return True
    if new.confirmed != old.confirmed:
        return new.confirmed
    return (new.score or 0.0) > (old.score or 0.0)


def _number_clusters(
    plan: Sequence[AuditImage], comps: list[list[int]], drafts: Sequence[Finding]
) -> tuple[list[Cluster], dict[int, int]]:
    """Number the components that hold a finding 1.. (by smallest row); row -> number."""
    comp_of = {row: i for i, members in enumerate(comps) for row in members}
    touched = {comp_of[f.row_a] for f in drafts}
    touched |= {comp_of[f.row_b] for f in drafts if f.row_b is not None}
    number = {c: n for n, c in enumerate(sorted(touched), 1)}  # comps are ordered by min row
    extra: dict[int, list[str]] = {}
    for f in drafts:
        if not f.confirmed:
            extra.setdefault(comp_of[f.row_a], []).append(f.uid_b)
    clusters = []
    for comp, n in number.items():
        members = comps[comp]
        uids = tuple(dict.fromkeys([plan[r].uid for r in members] + extra.get(comp, [])))
        clusters.append(Cluster(n, uids, tuple(plan[r].image for r in members), len(uids)))
    cluster_of = {row: number[comp_of[row]] for row in comp_of if comp_of[row] in number}
    return sorted(clusters, key=lambda c: c.cluster), cluster_of


def latest_probes(table: pa.Table) -> dict[int, ProbeRecord]:
    """plan row -> its last probe record (records in part order; a retry replaces a failure)."""
    return {rec.row: rec for rec in table_records(table, ProbeRecord)}
