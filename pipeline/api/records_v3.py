"""Typed records of the v3 client (v3 contract §3), beside the v2 ones in records.py.

Where a v3 reply carries what a v2 record already holds, the v2 record is reused
(:class:`~pipeline.api.records.DetectResult` with :class:`~pipeline.api.records.Face`,
now carrying ``face_token``; ``WriteResult``, ``UserRecord``/``UserResult``,
``GroupListResult``, ``PersonVerifyResult``) so jobs read both protocols alike. Every
result carries ``log_id`` (a 64-bit integer: v3 ids exceed 2^53) and ``attempts``.
Scores are 0-100 everywhere in v3 (person verify included); liveness scores 0-1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.api.records import Box


@dataclass(frozen=True, slots=True)
class MatchV3Result:
    """match: one ``score`` (0-100) of the two pictures and their face_tokens, in order."""

    score: float
    face_tokens: tuple[str, ...]
    log_id: int | None
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class SearchUser:
    """A user found by search / multi-search: its best face's score (0-100)."""

    group_id: str
    user_id: str
    user_info: str
    score: float


@dataclass(frozen=True, slots=True)
class SearchResult:
    """search: the probe's face_token (60 min) and the users, best first."""

    face_token: str
    users: tuple[SearchUser, ...]
    log_id: int | None
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class MultiSearchFace:
    face_token: str
    location: Box
    users: tuple[SearchUser, ...]


@dataclass(frozen=True, slots=True)
class MultiSearchResult:
    faces: tuple[MultiSearchFace, ...]
    log_id: int | None
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class FaceWriteResult:
    """user add / update: the registered face's permanent face_token and its box."""

    face_token: str
    location: Box
    log_id: int | None
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class FaceEntry:
    """face getlist: a registered face and its creation time ("YYYY-MM-DD HH:MM:SS")."""

    face_token: str
    ctime: str


@dataclass(frozen=True, slots=True)
class FaceListResult:
    faces: tuple[FaceEntry, ...]
    log_id: int | None
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class GroupUserIdsResult:
    """group getusers: user ids only (v2 returned uid + user_info)."""

    user_ids: tuple[str, ...]
    log_id: int | None
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class FaceverifyResult:
    """faceverify: ``face_liveness`` (0-1, the highest picture's), the reply's thresholds
    (``frr_1e-4`` ...) and per-picture ``livemapscore`` by face_token."""

    face_liveness: float
    thresholds: dict[str, float] = field(default_factory=dict)
    livemapscores: tuple[tuple[str, float], ...] = ()
    log_id: int | None = None
    attempts: int = 1
