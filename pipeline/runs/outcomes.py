"""The enrollment outcome: one frozen record per manifest row, and its one Parquet schema.

Every row of a manifest ends with exactly one terminal :class:`Outcome`. Its
``status`` is one of :data:`STATUSES`; the three in :data:`SUCCESS_STATUSES`
mean the face is in the library. ``reasons`` are short slugs (``blur``,
``duplicate_row``, ``user_not_found``...) that say why a row is not a success;
``error_code``/``error_msg`` carry what the service answered (``error_code`` is
a string because the SDK's own timeout code is ``"SDK108"``).

Units: quality metrics as the service reports them (blur and occlusion 0-1,
illumination 0-255, angles in degrees, completeness 0/1), the face box in
pixels of the image as sent, timestamps in UTC with microsecond precision.
``attempts`` counts every HTTP request sent for the row (detect and write,
retries and token refreshes included); ``attempts_by_cause`` counts the failed ones by
cause: ``rate_limit`` (answered 4/18: waited its turn), ``fault`` (timeouts, dropped
connections, 5xx, transient codes: these spend the row's retry budget) and ``outage``
(faults while the service answered nobody: waited for it, budget untouched). None for
a row that sent nothing, or whose client does not count causes.

``duplicate_*`` describe what ``--block-duplicates`` found for a
``duplicate_suspect`` row: the other uid and its group, the similarity (0-100,
the ``match`` score when it confirmed, else identify's), and the two calls'
log ids.

:data:`OUTCOME_SCHEMA` is the only schema outcome Parquet files are written
with; ``tests/test_outcomes.py`` checks that it and :class:`Outcome` agree.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import pyarrow as pa

from pipeline.runs.reasons import STATUSES, SUCCESS_STATUSES, Status  # noqa: F401 - re-exported

#: The quality metric columns, in schema order (same names as QualityMetrics,
#: with ``occlusion_`` in front of each face part).
METRIC_FIELDS = (
    "blur",
    "illumination",
    "completeness",
    "yaw",
    "pitch",
    "roll",
    "occlusion_left_eye",
    "occlusion_right_eye",
    "occlusion_nose",
    "occlusion_mouth",
    "occlusion_left_cheek",
    "occlusion_right_cheek",
    "occlusion_chin",
    "face_probability",
)
BOX_FIELDS = ("face_left", "face_top", "face_width", "face_height")

_TS = pa.timestamp("us", tz="UTC")
#: Failed sends of a row by cause (see the module docstring).
ATTEMPT_CAUSES = pa.struct([pa.field("rate_limit", pa.int32()), pa.field("fault", pa.int32()),
                            pa.field("outage", pa.int32())])

OUTCOME_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("line", pa.int64()),
        pa.field("uid", pa.string()),
        pa.field("group_id", pa.string()),
        pa.field("image", pa.string()),
        pa.field("image_sha256", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reasons", pa.list_(pa.string()), nullable=False),
        pa.field("retryable", pa.bool_(), nullable=False),
        *[pa.field(name, pa.float64()) for name in METRIC_FIELDS],
        *[pa.field(name, pa.float64()) for name in BOX_FIELDS],
        pa.field("face_count", pa.int32()),
        pa.field("transformed", pa.list_(pa.string()), nullable=False),
        pa.field("error_code", pa.string()),
        pa.field("error_msg", pa.string()),
        pa.field("detect_log_id", pa.uint64()),
        pa.field("write_log_id", pa.uint64()),
        pa.field("attempts", pa.int32(), nullable=False),
        pa.field("attempts_by_cause", ATTEMPT_CAUSES),
        pa.field("duplicate_uid", pa.string()),
        pa.field("duplicate_group_id", pa.string()),
        pa.field("duplicate_score", pa.float64()),
        pa.field("identify_log_id", pa.uint64()),
        pa.field("match_log_id", pa.uint64()),
        pa.field("started_at", _TS, nullable=False),
        pa.field("finished_at", _TS, nullable=False),
    ],
    metadata={"faceflow.record": "pipeline.outcomes.Outcome"},
)


@dataclass(frozen=True, slots=True)
class Outcome:
    """The terminal result of one manifest row (see the module docstring for units).

    ``row`` is the 0-based data row of the manifest, ``line`` the 1-based line
    of the file it came from (None for Parquet manifests). ``image`` is the
    path as written in the manifest; ``image_sha256`` the hex digest of the
    file's bytes (None when it could not be read).
    """

    run_id: str
    row: int
    line: int | None
    uid: str | None
    group_id: str | None
    image: str | None
    image_sha256: str | None
    status: str
    reasons: tuple[str, ...]
    retryable: bool
    blur: float | None
    illumination: float | None
    completeness: float | None
    yaw: float | None
    pitch: float | None
    roll: float | None
    occlusion_left_eye: float | None
    occlusion_right_eye: float | None
    occlusion_nose: float | None
    occlusion_mouth: float | None
    occlusion_left_cheek: float | None
    occlusion_right_cheek: float | None
    occlusion_chin: float | None
    face_probability: float | None
    face_left: float | None
    face_top: float | None
    face_width: float | None
    face_height: float | None
    face_count: int | None
    transformed: tuple[str, ...]
    error_code: str | None
    error_msg: str | None
    detect_log_id: int | None
    write_log_id: int | None
    attempts: int
    attempts_by_cause: dict[str, int] | None
    duplicate_uid: str | None
    duplicate_group_id: str | None
    duplicate_score: float | None
    identify_log_id: int | None
    match_log_id: int | None
    started_at: datetime
    finished_at: datetime

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}; expected one of {STATUSES}")
        if self.started_at.tzinfo is None or self.finished_at.tzinfo is None:
            raise ValueError("Outcome timestamps must be timezone-aware (UTC)")

    @property
    def succeeded(self) -> bool:
        return self.status in SUCCESS_STATUSES


#: Field names of Outcome, in declaration order (== schema order).
OUTCOME_FIELDS = tuple(f.name for f in fields(Outcome))

_EMPTY: dict[str, Any] = {name: None for name in OUTCOME_FIELDS}
_EMPTY.update(reasons=(), transformed=(), retryable=False, attempts=0)


def make_outcome(**values: Any) -> Outcome:
    """An Outcome with every field not given left empty (None, (), False, 0).

    ``run_id``, ``row``, ``status``, ``started_at`` and ``finished_at`` must be given.
    """
    unknown = set(values) - set(OUTCOME_FIELDS)
    if unknown:
        raise TypeError(f"unknown Outcome fields: {sorted(unknown)}")
    return Outcome(**{**_EMPTY, **values})
