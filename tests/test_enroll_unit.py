"""The pure deciding parts of the enroll runner (no server, no files)."""

from __future__ import annotations

import pytest

from pipeline.api import errors as E
from pipeline.api.errors import ConfigError
from pipeline.enroll.gate import FaceChoice
from pipeline.enroll.job import (
    EnrollConfig,
    RowDecision,
    classify_error,
    decide_face,
    success_status,
)


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        (216616, "image exist", RowDecision("already_enrolled")),
        (216402, "face not found", RowDecision("no_face", ("no_face",))),
        (216612, "user not exist", RowDecision("failed", ("user_not_found",))),
        (216611, "user not exist", RowDecision("failed", ("user_not_found",))),
        (216500, "unknown error", RowDecision("failed", ("retries_exhausted",), retryable=True)),
        (18, "Open api qps request limit reached",
         RowDecision("failed", ("retries_exhausted",), retryable=True)),
        ("SDK108", "timeout", RowDecision("failed", ("retries_exhausted",), retryable=True)),
        (216201, "image format error", RowDecision("invalid_input", ("refused_by_service",))),
        (216618, "no user in group", RowDecision("failed", ("library_state",))),
        (999999, "something new", RowDecision("failed", ("api_error",))),
    ],
    ids=lambda v: str(v) if not isinstance(v, RowDecision) else v.status,
)
def test_classify_error(code: int | str, message: str, expected: RowDecision) -> None:
    assert classify_error(E.make_error(code, message, 7)) == expected


def test_decide_face() -> None:
    assert decide_face(FaceChoice("ok", None, None, ())) is None
    assert decide_face(FaceChoice("multiple_faces", None, None, ("multiple_faces",))) == \
        RowDecision("multiple_faces", ("multiple_faces",))
    rejected = FaceChoice("rejected_quality", None, None, ("blur", "pose_yaw"))
    assert decide_face(rejected) == RowDecision("rejected_quality", ("blur", "pose_yaw"))


def test_success_status_by_action() -> None:
    assert [success_status(a) for a in ("add", "update", "upsert")] == \
        ["enrolled", "updated", "updated"]


def test_config_refuses_bad_values(tmp_path) -> None:
    from pipeline.client.config import Secret, Settings

    s = Settings(endpoint="http://127.0.0.1:1", api_key=Secret("k"), secret_key=Secret("s"))
    with pytest.raises(ConfigError, match="--mode"):
        EnrollConfig(manifest=tmp_path / "m.csv", settings=s, mode="merge")
    with pytest.raises(ConfigError, match="concurrency"):
        EnrollConfig(manifest=tmp_path / "m.csv", settings=s, concurrency=0)
    opts = EnrollConfig(manifest=tmp_path / "m.csv", settings=s, qps={"detect": 2}).options()
    assert opts["qps"] == {"detect": 2} and "api_key" not in str(opts)
