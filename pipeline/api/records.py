"""Typed records the client returns: one per interface of the reference.

Every result carries ``log_id`` (the service's request id) and ``attempts``
(how many times the client sent the request, retries and token refreshes
included). Field names, units and ranges follow ``baidu-face-v2.md`` §3:
pixels for boxes and points, degrees for angles, 0-100 for similarity scores
(0-1 for person verify), 0-1 for occlusion and blur, 0-255 for illumination.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OCCLUSION_PARTS = ("left_eye", "right_eye", "nose", "mouth", "left_cheek", "right_cheek", "chin")


@dataclass(frozen=True, slots=True)
class Box:
    """A face box in pixels of the original image."""

    left: float
    top: float
    width: float
    height: float


@dataclass(frozen=True, slots=True)
class Point:
    x: float
    y: float


@dataclass(frozen=True, slots=True)
class Qualities:
    """``qualities`` of a detect reply. ``completeness``: 1 = face fully inside, 0 = cut."""

    occlusion: dict[str, float]
    blur: float
    illumination: float
    completeness: float
    type: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Face:
    """One face of a detect (or faceverify) reply."""

    location: Box
    face_probability: float
    rotation_angle: float
    yaw: float
    pitch: float
    roll: float
    landmark: tuple[Point, ...] = ()
    landmark72: tuple[Point, ...] = ()
    qualities: Qualities | None = None
    faceliveness: float | None = None
    #: Any other fields the service sent (age, gender...), kept as they came.
    extra: dict[str, Any] = field(default_factory=dict)
    #: v3: the face's face_token (60 min from detect; empty under v2).
    face_token: str = ""

    @property
    def area(self) -> float:
        return self.location.width * self.location.height


@dataclass(frozen=True, slots=True)
class DetectResult:
    faces: tuple[Face, ...]
    log_id: int | None
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class MatchPair:
    index_i: int
    index_j: int
    score: float


@dataclass(frozen=True, slots=True)
class MatchResult:
    pairs: tuple[MatchPair, ...]
    log_id: int | None
    attempts: int = 1
    ext_info: Any = None


@dataclass(frozen=True, slots=True)
class Candidate:
    """A user returned by identify / multi-identify, best score first."""

    group_id: str
    uid: str
    user_info: str
    scores: tuple[float, ...]
    #: multi-identify only: where the probe face is.
    position: Box | None = None

    @property
    def best(self) -> float:
        return max(self.scores) if self.scores else 0.0


@dataclass(frozen=True, slots=True)
class IdentifyResult:
    candidates: tuple[Candidate, ...]
    log_id: int | None
    attempts: int = 1
    ext_info: Any = None


@dataclass(frozen=True, slots=True)
class VerifyResult:
    scores: tuple[float, ...]
    log_id: int | None
    attempts: int = 1
    ext_info: Any = None


@dataclass(frozen=True, slots=True)
class WriteResult:
    """Reply of user add / update / delete and group adduser / deleteuser."""

    log_id: int | None
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class UserRecord:
    uid: str
    user_info: str
    group_id: str


@dataclass(frozen=True, slots=True)
class UserResult:
    """user get: one record per group the uid is in."""

    records: tuple[UserRecord, ...]
    log_id: int | None
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class GroupListResult:
    group_ids: tuple[str, ...]
    log_id: int | None
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class GroupUser:
    uid: str
    user_info: str


@dataclass(frozen=True, slots=True)
class GroupUsersResult:
    users: tuple[GroupUser, ...]
    log_id: int | None
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class PersonVerifyResult:
    """person verify: ``score`` is 0-1 (threshold 0.8), unlike every other score."""

    score: float
    log_id: int | None
    attempts: int = 1
    ext_info: Any = None
