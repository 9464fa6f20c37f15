"""The Outcome record and its one Parquet schema agree, and the record guards its values."""

from __future__ import annotations

import dataclasses
import typing
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from pipeline.runs import outcomes
from pipeline.runs.outcomes import ATTEMPT_CAUSES, OUTCOME_SCHEMA, Outcome, make_outcome

T0 = datetime(2026, 11, 25, 1, 2, 3, tzinfo=UTC)

# Python annotation (with "| None" removed) -> the pyarrow types it may map to.
_COMPATIBLE = {
    "str": {pa.string()},
    "int": {pa.int64(), pa.int32(), pa.uint64()},
    "float": {pa.float64()},
    "bool": {pa.bool_()},
    "datetime": {pa.timestamp("us", tz="UTC")},
    "tuple[str, ...]": {pa.list_(pa.string())},
    "dict[str, int]": {ATTEMPT_CAUSES},  # failed sends by cause: a struct of int32
}


def test_schema_and_record_have_the_same_fields_in_the_same_order() -> None:
    assert [f.name for f in dataclasses.fields(Outcome)] == OUTCOME_SCHEMA.names


@pytest.mark.parametrize("field", dataclasses.fields(Outcome), ids=lambda f: f.name)
def test_each_field_type_matches_its_column(field: dataclasses.Field) -> None:
    hints = typing.get_type_hints(Outcome)
    text = str(field.type).replace(" | None", "")
    column = OUTCOME_SCHEMA.field(field.name)
    assert column.type in _COMPATIBLE[text], (field.name, field.type, column.type)
    optional = type(None) in typing.get_args(hints[field.name])
    # A column that may be null in the record must be nullable in the schema.
    assert column.nullable or not optional


def test_spec_column_types() -> None:
    s = OUTCOME_SCHEMA
    assert s.field("row").type == pa.int64()
    assert s.field("error_code").type == pa.string()  # "SDK108" exists
    assert s.field("detect_log_id").type == pa.uint64()
    assert s.field("attempts").type == pa.int32()
    assert s.field("finished_at").type == pa.timestamp("us", tz="UTC")


def test_make_outcome_fills_empty_fields_and_round_trips_through_arrow() -> None:
    rec = make_outcome(run_id="r", row=3, status="no_face", reasons=("no_face",),
                       started_at=T0, finished_at=T0, detect_log_id=2**63 + 1, attempts=2)
    assert rec.blur is None and rec.transformed == () and rec.retryable is False
    row = {name: getattr(rec, name) for name in OUTCOME_SCHEMA.names}
    table = pa.Table.from_pylist([row], schema=OUTCOME_SCHEMA)
    back = table.to_pylist()[0]
    assert back["detect_log_id"] == 2**63 + 1
    assert back["reasons"] == ["no_face"]
    assert back["started_at"] == T0


def test_unknown_status_and_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown status"):
        make_outcome(run_id="r", row=0, status="ok", started_at=T0, finished_at=T0)
    naive = datetime(2026, 1, 1)
    with pytest.raises(ValueError, match="timezone"):
        make_outcome(run_id="r", row=0, status="failed", started_at=naive, finished_at=naive)
    with pytest.raises(TypeError, match="unknown Outcome fields"):
        make_outcome(run_id="r", row=0, status="failed", started_at=T0, finished_at=T0, x=1)


@pytest.mark.parametrize(
    ("status", "success"),
    [("enrolled", True), ("updated", True), ("already_enrolled", True),
     ("rejected_quality", False), ("invalid_input", False), ("failed", False)],
)
def test_success_statuses(status: str, success: bool) -> None:
    assert (status in outcomes.SUCCESS_STATUSES) is success
    rec = make_outcome(run_id="r", row=0, status=status, started_at=T0, finished_at=T0)
    assert rec.succeeded is success
