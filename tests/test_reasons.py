"""pipeline.runs.reasons: one catalogue of statuses and reason slugs, used by every job."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from pipeline.api import errors as E
from pipeline.api import validate
from pipeline.enroll.decide import check_row, classify_error
from pipeline.enroll.gate import Thresholds, reason_texts
from pipeline.runs import reasons
from pipeline.runs.outcomes import OUTCOME_SCHEMA, make_outcome
from pipeline.runs.reasons import REASONS, STATUSES, SUCCESS_STATUSES, Status, reason_text


def test_statuses_are_strings_in_report_order() -> None:
    assert STATUSES[0] == "enrolled" and STATUSES[-1] == "failed"
    assert all(isinstance(s, str) and s == s.value for s in Status)
    assert SUCCESS_STATUSES == {"enrolled", "updated", "already_enrolled", "skipped_known"}
    assert "rejected_quality" not in SUCCESS_STATUSES


def test_a_status_member_is_written_as_its_value() -> None:
    t0 = datetime(2026, 11, 25, tzinfo=UTC)
    rec = make_outcome(run_id="r", row=0, status=Status.NO_FACE, reasons=("no_face",),
                       started_at=t0, finished_at=t0)
    row = {name: getattr(rec, name) for name in OUTCOME_SCHEMA.names}
    table = pa.Table.from_pylist([row], schema=OUTCOME_SCHEMA)
    assert table.column("status").to_pylist() == ["no_face"]


@pytest.mark.parametrize(
    "code", [216616, 222210, 223114, 216402, 216612, 216500, 216201, 216618, 999999],
    ids=lambda c: str(c))
def test_every_reason_a_failed_call_gets_is_in_the_catalogue(code: int) -> None:
    decision = classify_error(E.make_error(code, "x", api="v3" if code >= 222000 else "v2"))
    assert decision.status in STATUSES
    assert all(slug in REASONS for slug in decision.reasons)


def test_quality_image_and_protocol_slugs_are_in_the_catalogue() -> None:
    assert set(reason_texts(Thresholds())) <= set(REASONS)
    assert set(validate.REASON_TEXT) <= set(REASONS)
    assert set(reasons.IMAGE_REASONS) <= set(REASONS)


def test_the_gate_writes_the_bound_in_force_after_the_catalogue_sentence() -> None:
    text = reason_texts(Thresholds(blur_max=0.5))["blur"]
    assert text.startswith(REASONS["blur"]) and "0.5" in text


def test_every_slug_a_row_check_gives_is_in_the_catalogue() -> None:
    from pipeline.runs.manifest import ManifestRow

    row = ManifestRow(row=0, line=2, image="", image_path="", uid="u" * 60, group_id="g",
                      user_info="", action="add", columns={})
    decision = check_row(row, None, api="v3")
    assert decision is not None and decision.status == Status.INVALID_INPUT
    assert decision.reasons and all(slug in REASONS for slug in decision.reasons)


def test_reason_text_falls_back_to_the_slug() -> None:
    assert reason_text("duplicate_row") == REASONS["duplicate_row"]
    assert reason_text("no_such_reason") == "no_such_reason"
