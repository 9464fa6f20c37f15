"""Reconcile's pure parts: schemas agree with their records; compare(); the options.
(On the engine: tests/test_ledger_engine.py.)"""

from __future__ import annotations

import pytest

from pipeline.api.errors import ConfigError
from pipeline.client.config import Secret, Settings
from pipeline.ledger.base import KnownFace
from pipeline.ledger.reconcile import (
    PLAN_SCHEMA,
    RECONCILE_SCHEMA,
    PlanRow,
    ReconcileConfig,
    ReconcileRecord,
    compare,
)


@pytest.mark.parametrize(("schema", "record"), [(PLAN_SCHEMA, PlanRow),
                                                (RECONCILE_SCHEMA, ReconcileRecord)],
                         ids=["plan", "reconcile"])
def test_schema_matches_record(schema, record) -> None:
    assert list(schema.names) == list(record.__dataclass_fields__)


def _face(uid: str, sha: str, at: str, path: str) -> KnownFace:
    return KnownFace("e", "g", uid, sha, path, 1, 1, f"info {uid}", 1, None, None, "r", 0,
                     "enrolled", at)


def test_compare_orders_missing_then_unknown_then_common_with_the_latest_photo() -> None:
    faces = [_face("b", "s1", "2026-01-01", "/b1.jpg"), _face("b", "s2", "2026-02-01", "/b2.jpg"),
             _face("a", "s3", "2026-01-01", "/a.jpg"), _face("z", "s4", "2026-01-01", "/z.jpg")]
    service = {"a": "info a", "c": "made elsewhere"}
    plan = compare(service, faces)
    assert [(p.row, p.uid, p.kind) for p in plan] == [
        (0, "b", "missing_in_service"), (1, "z", "missing_in_service"),
        (2, "c", "unknown_to_ledger")]
    assert (plan[0].ledger_faces, plan[0].ledger_image) == (2, "/b2.jpg")
    assert plan[2].service_user_info == "made elsewhere" and plan[2].ledger_faces == 0
    checked = compare(service, faces, check_faces=True)
    assert [(p.uid, p.kind) for p in checked[3:]] == [("a", "faces_differ")]
    assert compare({"a": "x"}, [_face("a", "s", "t", "/a.jpg")]) == []


@pytest.mark.parametrize(("changes", "message"), [
    ({"group": "a,b"}, "--group 'a,b'"),
    ({"page_size": 1001}, "--page-size 1001"),
    ({"delete_unknown": True}, "--confirm-delete-group g"),
    ({"delete_unknown": True, "confirm_group": "other"}, "--confirm-delete-group g"),
], ids=["two-groups", "page-size", "delete-unconfirmed", "delete-wrong-group"])
def test_bad_options_are_config_errors(changes: dict, message: str) -> None:
    settings = Settings(api_key=Secret("ak"), secret_key=Secret("sk"))
    args = {"group": "g", "ledger": "l.sqlite", "settings": settings, **changes}
    with pytest.raises(ConfigError, match=message.replace("'", ".")):
        ReconcileConfig(**args)
