"""The pure deciding parts of the enroll job: what a row's checks, its call's error and
the quality gate's choice mean for the row (a :class:`RowDecision`). No I/O, no call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.api.errors import (
    ApiError,
    FaceLimitError,
    FaceNotFoundError,
    ImageExistsError,
    InvalidInputError,
    RejectedError,
    RetryableError,
    StateError,
    UserNotFoundError,
)
from pipeline.runs.reasons import Status, reason_text

if TYPE_CHECKING:
    from pipeline.enroll.gate import FaceChoice
    from pipeline.runs.manifest import ManifestRow

MODES = ("add", "update", "upsert")


@dataclass(frozen=True, slots=True)
class RowDecision:
    """What one stage decided for a row: a terminal status with reasons, or go on."""

    status: str
    reasons: tuple[str, ...] = ()
    retryable: bool = False
    message: str | None = None


def check_row(row: ManifestRow, duplicate_of: int | None, api: str = "v2") -> RowDecision | None:
    """The checks that need no call: None when the row may go on, else ``invalid_input``.

    ``api="v3"`` adds v3's rules: uid and group_id at most 48 bytes, one group per row.
    """
    from pipeline.api import validate  # noqa: PLC0415

    if duplicate_of is not None:
        return RowDecision(Status.INVALID_INPUT, ("duplicate_row",),
                       message=f"same uid and image as row {duplicate_of}; kept the first")
    problems = [
        None if row.image.strip() else "image_missing",
        validate.check_uid(row.uid),
        validate.check_user_info(row.user_info),
        validate.check_group_ids(row.group_id),
        None if row.action in MODES else "bad_action",
    ]
    if api == "v3":
        problems += _v3_row_problems(row)
    reasons = tuple(dict.fromkeys(p for p in problems if p))
    if not reasons:
        return None
    own = {"bad_action": f"action {row.action!r} is not one of {', '.join(MODES)}",
           # the protocol's own sentence is about one call; a row says what to do
           "group_id_multiple": "v3 writes to one group per row; split the row per group"}
    texts = [own.get(r) or reason_text(r) for r in reasons]
    return RowDecision(Status.INVALID_INPUT, reasons, message="; ".join(texts))


def _v3_row_problems(row: ManifestRow) -> list[str | None]:
    from pipeline.api import validate_v3  # noqa: PLC0415

    groups = row.group_id.split(",")
    return [
        "group_id_multiple" if len(groups) > 1 else None,
        "uid_too_long_v3" if validate_v3.check_id(row.uid) == "id_too_long" else None,
        "group_id_too_long_v3" if any(validate_v3.check_id(g) == "id_too_long"
                                      for g in groups) else None,
    ]


def classify_error(exc: ApiError) -> RowDecision:
    """The outcome of a row whose call failed (quota and auth errors never get here)."""
    if isinstance(exc, ImageExistsError):
        return RowDecision(Status.ALREADY_ENROLLED)
    if isinstance(exc, FaceLimitError):  # v3: 20 faces per user and group
        return RowDecision(Status.FAILED, ("face_limit",))
    if isinstance(exc, RejectedError):  # v3 --server-quality refused the face
        return RowDecision(Status.REJECTED_QUALITY, ("server_quality",))
    if isinstance(exc, FaceNotFoundError):
        return RowDecision(Status.NO_FACE, ("no_face",))
    if isinstance(exc, UserNotFoundError):
        return RowDecision(Status.FAILED, ("user_not_found",))
    if isinstance(exc, RetryableError):
        return RowDecision(Status.FAILED, ("retries_exhausted",), retryable=True)
    if isinstance(exc, InvalidInputError):
        return RowDecision(Status.INVALID_INPUT, ("refused_by_service",))
    if isinstance(exc, StateError):
        return RowDecision(Status.FAILED, ("library_state",))
    return RowDecision(Status.FAILED, ("api_error",))


def decide_face(choice: FaceChoice) -> RowDecision | None:
    """None when the quality gate chose a face to register, else the row's verdict."""
    if choice.status == "ok":
        return None
    reasons = tuple(choice.reasons) or (choice.status,)
    return RowDecision(choice.status, reasons)


def success_status(action: str) -> Status:
    return Status.ENROLLED if action == "add" else Status.UPDATED
