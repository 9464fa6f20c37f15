"""Pure parts of the audit: schemas vs records, union-find, findings and clusters from records."""

from __future__ import annotations

import dataclasses
import types
import typing
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from pipeline.audit import clusters, findings
from pipeline.audit.clusters import CLUSTER_SCHEMA, Cluster, UnionFind, components
from pipeline.audit.findings import (
    EXACT_COPY,
    FINDING_SCHEMA,
    HIGH,
    LOW,
    MEDIUM,
    MULTIPLE_PEOPLE,
    PLAN_SCHEMA,
    PROBE_SCHEMA,
    SAME_PERSON,
    AuditImage,
    Finding,
    ProbeRecord,
    derive_findings,
    records_table,
    table_records,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

_ARROW = {str: (pa.string(),), int: (pa.int64(), pa.int32(), pa.uint64()), float: (pa.float64(),),
          bool: (pa.bool_(),), datetime: (pa.timestamp("us", tz="UTC"),)}


def _check(field_type: object, arrow: pa.DataType) -> tuple[bool, bool]:
    """(types agree, Python side admits None)."""
    args = typing.get_args(field_type)
    if typing.get_origin(field_type) in (types.UnionType, typing.Union):
        inner = [a for a in args if a is not type(None)]
        return _check(inner[0], arrow)[0], True
    if typing.get_origin(field_type) is tuple:
        return pa.types.is_list(arrow) and _check(args[0], arrow.value_type)[0], False
    return arrow in _ARROW[field_type], False  # type: ignore[index]


@pytest.mark.parametrize(
    ("record", "schema"),
    [(AuditImage, PLAN_SCHEMA), (ProbeRecord, PROBE_SCHEMA), (Finding, FINDING_SCHEMA),
     (Cluster, CLUSTER_SCHEMA)],
    ids=["plan", "probe", "finding", "cluster"],
)
def test_schema_agrees_with_record(record: type, schema: pa.Schema) -> None:
    hints = typing.get_type_hints(record, vars(findings) | vars(clusters))
    names = [f.name for f in dataclasses.fields(record)]
    assert names == schema.names
    for name in names:
        same_type, optional = _check(hints[name], schema.field(name).type)
        assert same_type, name
        assert schema.field(name).nullable == optional, name


def test_union_find_joins_and_counts() -> None:
    uf = UnionFind(6)
    assert uf.union(0, 1) and uf.union(1, 2) and uf.union(4, 5)
    assert not uf.union(2, 0)  # already one set
    assert uf.connected(0, 2) and not uf.connected(2, 3)
    assert components(6, [(0, 1), (2, 1), (5, 4)]) == [[0, 1, 2], [3], [4, 5]]


def test_long_chain_stays_flat() -> None:
    n = 100_000
    comps = components(n, ((i, i + 1) for i in range(n - 1)))
    assert len(comps) == 1 and len(comps[0]) == n


def _img(row: int, uid: str, sha: str | None = None, probe: bool = True) -> AuditImage:
    return AuditImage(row, uid, "g", f"{uid}_{row}.jpg", f"/x/{uid}_{row}.jpg",
                      sha or f"sha{row}", None, "src", None, probe)


def _probe(row: int, uid: str, cands: list[tuple[str, float]] = (),  # type: ignore[assignment]
           matches: list[tuple[str, int, float]] = (),  # type: ignore[assignment]
           ref: tuple[int, float] | None = None, status: str = "checked") -> ProbeRecord:
    return ProbeRecord(
        "r", row, uid, status, None, None, None, 100 + row,
        tuple(c[0] for c in cands), ("g",) * len(cands), tuple(c[1] for c in cands),
        ("",) * len(cands), tuple(m[0] for m in matches), tuple(m[1] for m in matches),
        tuple(m[2] for m in matches), tuple(200 + row for _ in matches),
        ref[0] if ref else None, ref[1] if ref else None, 300 + row if ref else None,
        1, 1, NOW, NOW)


def test_findings_of_each_kind_and_their_clusters() -> None:
    plan = [
        _img(0, "alice"), _img(1, "alice2"),  # one person, two uids
        _img(2, "bob"), _img(3, "bob"),  # bob's second photo is someone else
        _img(4, "carol", "same"), _img(5, "carol_copy", "same"),  # same bytes
        _img(6, "dave"),
    ]
    probes = {
        0: _probe(0, "alice", [("alice", 99), ("alice2", 91)], [("alice2", 1, 88.5)]),
        1: _probe(1, "alice2", [("alice2", 99), ("alice", 90)], [("alice", 0, 87.0)]),
        2: _probe(2, "bob", [("bob", 99)]),
        3: _probe(3, "bob", [("bob", 97)], ref=(2, 31.0)),
        4: _probe(4, "carol", [("carol", 99), ("carol_copy", 99)], [("carol_copy", 5, 100.0)]),
        5: _probe(5, "carol_copy", [("carol_copy", 99), ("carol", 99)], [("carol", 4, 100.0)]),
        6: _probe(6, "dave", [("dave", 99), ("alice", 79.9)]),  # below the threshold
    }
    findings, cl = derive_findings(plan, probes, 80.0, "run1", NOW)
    kinds = {(f.kind, f.uid_a, f.uid_b) for f in findings}
    assert kinds == {(SAME_PERSON, "alice", "alice2"), (MULTIPLE_PEOPLE, "bob", "bob"),
                     (EXACT_COPY, "carol", "carol_copy")}
    same = next(f for f in findings if f.kind == SAME_PERSON)
    assert same.score == 88.5 and same.identify_score == 91 and same.log_ids == (100, 200)
    multi = next(f for f in findings if f.kind == MULTIPLE_PEOPLE)
    assert (multi.row_a, multi.row_b, multi.score, multi.match_log_id) == (2, 3, 31.0, 303)
    exact = next(f for f in findings if f.kind == EXACT_COPY)
    assert exact.score is None and exact.sha256_a == exact.sha256_b == "same"
    assert [f.finding for f in findings] == [1, 2, 3]
    assert all(f.run_id == "run1" and f.found_at == NOW for f in findings)
    by_cluster = {c.cluster: c for c in cl}
    assert by_cluster[same.cluster].uids == ("alice", "alice2")
    assert by_cluster[exact.cluster].uids == ("carol", "carol_copy")
    assert len({same.cluster, exact.cluster, multi.cluster}) == 3
    assert all(c.size == len(c.uids) for c in cl)


def test_unconfirmed_candidate_and_failed_probe() -> None:
    plan = [_img(0, "eve"), _img(1, "frank")]
    probes = {0: _probe(0, "eve", [("eve", 99), ("stranger", 93.0)]),
              1: _probe(1, "frank", [("frank", 99), ("eve", 95)], status="failed")}
    findings, cl = derive_findings(plan, probes, 80.0, "r", NOW)
    assert len(findings) == 1
    f = findings[0]
    assert (f.uid_b, f.confirmed, f.score, f.image_b) == ("stranger", False, 93.0, None)
    assert cl[0].uids == ("eve", "stranger")


def test_cluster_merges_a_chain_of_uids() -> None:
    plan = [_img(0, "a"), _img(1, "b"), _img(2, "c")]
    probes = {0: _probe(0, "a", [("b", 90)], [("b", 1, 90.0)]),
              1: _probe(1, "b", [("c", 85)], [("c", 2, 85.0)]),
              2: _probe(2, "c")}
    findings, cl = derive_findings(plan, probes, 80.0, "r", NOW)
    assert len(findings) == 2 and len(cl) == 1
    assert cl[0].uids == ("a", "b", "c") and cl[0].size == 3
    assert {f.cluster for f in findings} == {1}


def test_records_roundtrip_through_arrow() -> None:
    plan = [_img(0, "a"), _img(1, "b", "sha0")]
    findings, _ = derive_findings(plan, {}, 80.0, "r", NOW)
    table = records_table(findings, FINDING_SCHEMA)
    assert table.schema.equals(FINDING_SCHEMA, check_metadata=False)
    assert table_records(table, Finding) == findings


# -- confidence: high only on strong, unanimous, unambiguous evidence ----------------------------


def _same(findings: list[Finding], a: str, b: str) -> Finding:
    return next(f for f in findings if f.kind == SAME_PERSON and {f.uid_a, f.uid_b} == {a, b})


def test_a_duplicate_seen_by_every_photo_is_high_and_ranked_first() -> None:
    plan = [_img(0, "ann"), _img(1, "ann"), _img(2, "ann_dup"), _img(3, "zed"), _img(4, "zed")]
    probes = {
        0: _probe(0, "ann", [("ann", 99), ("ann_dup", 96), ("zed", 45)],
                  [("ann_dup", 2, 95.0)]),
        1: _probe(1, "ann", [("ann", 98), ("ann_dup", 93), ("zed", 50)],
                  [("ann_dup", 2, 92.5)], ref=(0, 97.0)),
        2: _probe(2, "ann_dup", [("ann_dup", 99), ("ann", 95)],
                  [("ann", 0, 95.0), ("ann", 1, 91.0)]),
        3: _probe(3, "zed", [("zed", 99)]),
        4: _probe(4, "zed", [("zed", 97)], ref=(3, 75.0)),  # several people: medium
    }
    findings, _ = derive_findings(plan, probes, 80.0, "r", NOW)
    dup = _same(findings, "ann", "ann_dup")
    assert (dup.confidence, dup.photos_checked, dup.photos_agreeing) == (HIGH, 3, 3)
    assert dup.margin == pytest.approx(96 - 45) and dup.lowest_score == 91.0
    multi = next(f for f in findings if f.kind == MULTIPLE_PEOPLE)
    assert multi.confidence == MEDIUM
    assert [f.confidence for f in findings] == [HIGH, MEDIUM] and findings[0] is not multi


@pytest.mark.parametrize(("case", "probes"), [
    # One photo of the lookalike's uid points at the other uid, its second photo does not.
    ("a second photo disagrees", {
        0: _probe(0, "leo", [("leo", 99), ("leo_look", 93)], [("leo_look", 2, 92.0)]),
        1: _probe(1, "leo", [("leo", 97), ("leo_look", 71)], ref=(0, 95.0)),
        2: _probe(2, "leo_look", [("leo_look", 99), ("leo", 93)], [("leo", 0, 92.0)])}),
    # Every photo agrees, but a third uid is close behind: an ambiguous face.
    ("a rival is close behind", {
        0: _probe(0, "leo", [("leo", 99), ("leo_look", 93), ("max", 88)],
                  [("leo_look", 2, 92.0), ("max", 3, 79.0)]),
        1: _probe(1, "leo", [("leo", 97), ("leo_look", 91), ("max", 86)],
                  [("leo_look", 2, 90.5), ("max", 3, 78.0)], ref=(0, 95.0)),
        2: _probe(2, "leo_look", [("leo_look", 99), ("leo", 93)], [("leo", 0, 92.0)])}),
    # Strong only against one of the uid's photos; another sent photo scores low.
    ("a known photo of the other uid disagrees", {
        0: _probe(0, "leo", [("leo", 99), ("leo_look", 93)],
                  [("leo_look", 2, 92.0), ("leo_look", 4, 66.0)]),
        1: _probe(1, "leo", [("leo", 97), ("leo_look", 92)], [("leo_look", 2, 91.0)],
                  ref=(0, 95.0)),
        2: _probe(2, "leo_look", [("leo_look", 99), ("leo", 93)], [("leo", 0, 92.0)])}),
    # Everything agrees but the score is under the stricter bound.
    ("the score is between 80 and 90", {
        0: _probe(0, "leo", [("leo", 99), ("leo_look", 86)], [("leo_look", 2, 85.0)]),
        1: _probe(1, "leo", [("leo", 97), ("leo_look", 84)], [("leo_look", 2, 83.0)],
                  ref=(0, 95.0)),
        2: _probe(2, "leo_look", [("leo_look", 99), ("leo", 86)], [("leo", 0, 85.0)])}),
], ids=lambda v: v if isinstance(v, str) else "")
def test_lookalike_evidence_is_found_but_never_high(case: str, probes: dict) -> None:
    plan = [_img(0, "leo"), _img(1, "leo"), _img(2, "leo_look"), _img(3, "max"),
            _img(4, "leo_look")]
    probes = {**probes, 3: _probe(3, "max", [("max", 99)]),
              4: _probe(4, "leo_look", [("leo_look", 98)], ref=(2, 90.0))}
    findings, _ = derive_findings(plan, probes, 80.0, "r", NOW)
    f = _same(findings, "leo", "leo_look")
    assert f.confirmed and f.score is not None and f.score >= 80, case
    assert f.confidence == MEDIUM, case


def test_three_uids_of_one_person_do_not_eat_each_others_margin() -> None:
    plan = [_img(0, "a"), _img(1, "b"), _img(2, "c")]
    probes = {
        0: _probe(0, "a", [("a", 99), ("b", 95), ("c", 94)], [("b", 1, 95.0), ("c", 2, 94.0)]),
        1: _probe(1, "b", [("b", 99), ("a", 95), ("c", 94)], [("a", 0, 95.0), ("c", 2, 94.0)]),
        2: _probe(2, "c", [("c", 99), ("a", 94), ("b", 94)], [("a", 0, 94.0), ("b", 1, 94.0)]),
    }
    findings, _ = derive_findings(plan, probes, 80.0, "r", NOW)
    assert len(findings) == 3 and {f.confidence for f in findings} == {HIGH}


def test_identify_only_is_low_exact_copy_high_and_a_very_low_reference_high() -> None:
    plan = [_img(0, "eve"), _img(1, "eve"), _img(2, "copy", "sha0")]
    probes = {0: _probe(0, "eve", [("eve", 99), ("stranger", 97.0)]),
              1: _probe(1, "eve", [("eve", 99)], ref=(0, 20.0)),
              2: _probe(2, "copy", [("copy", 99)])}
    findings, _ = derive_findings(plan, probes, 80.0, "r", NOW)
    levels = {f.kind: f.confidence for f in findings}
    assert levels == {SAME_PERSON: LOW, EXACT_COPY: HIGH, MULTIPLE_PEOPLE: HIGH}
    assert [f.confidence for f in findings] == [HIGH, HIGH, LOW]
