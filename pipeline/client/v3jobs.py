"""The job-facing calls on v3: what enroll and audit call, answered with v2-shaped records.

The jobs call ``detect``, ``add_user``, ``update_user``, ``delete_user``, ``identify``
and ``match`` with the arguments and records of :class:`~pipeline.client.faceclient.FaceClient`;
:class:`V3JobApi` answers the same calls over :class:`~pipeline.client.v3.FaceClientV3`,
so the jobs branch on the protocol only where the semantics differ. What it does:

* **detect** asks for ``face_field=quality`` (``qualities`` under v2) and keeps the
  largest face's ``face_token`` for the picture (by object identity, as the job passes
  the same bytes to detect and then to the write).
* **add_user / update_user** send that token (``image_type=FACE_TOKEN``), so the
  picture's bytes go up once; a token the service no longer knows (222209: detect
  tokens live 60 min) is answered by sending the picture (``BASE64``) once more. Modes:
  v2 append -> user/add APPEND, update -> user/update UPDATE, replace (upsert) ->
  user/update REPLACE. ``quality_control`` (``--server-quality``) goes with the write.
  ``token_writes`` / ``base64_writes`` / ``token_fallbacks`` count what was sent.
* **identify** is v3 search (``max_user_num`` = ``user_top_num``, ``match_threshold``
  0 so every candidate comes back, as v2 identify); "nobody above the threshold"
  (222207) is no candidates; a listed group that does not exist (223100) is searched
  around, one group at a time, and when none exists it is v2's "empty group"
  (:class:`~pipeline.api.errors.EmptyGroupError`).
* **match** of N pictures is N-1 v3 matches of picture 0 against each other one (v3
  compares exactly two), as pairs (0, j).
* **verify** (one uid) is search with ``user_id``: one score per group, not per face.
* **delete_user** without a group deletes from ``@ALL``; **delete_group** (v3 only:
  groups outlive their users) removes the audit's scratch group.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from pipeline.api.errors import (
    EmptyGroupError,
    FaceTokenError,
    GroupNotFoundError,
    InvalidInputError,
    NoMatchError,
)
from pipeline.api.records import (
    Candidate,
    DetectResult,
    GroupListResult,
    GroupUser,
    GroupUsersResult,
    IdentifyResult,
    MatchPair,
    MatchResult,
    UserResult,
    VerifyResult,
    WriteResult,
)
from pipeline.api.records_v3 import FaceWriteResult
from pipeline.client.config import Settings
from pipeline.client.faceclient import CallRecord
from pipeline.client.v3 import FaceClientV3, Image

_ACTIONS = {"append": "APPEND", "replace": "REPLACE"}


class _Register(Protocol):
    """:meth:`FaceClientV3.add_user` or :meth:`FaceClientV3.update_user`."""

    async def __call__(self, image: Image, group_id: str, user_id: str, *,
                       user_info: str | None = None, action_type: str | None = None,
                       quality_control: str | None = None,
                       liveness_control: str | None = None) -> FaceWriteResult: ...


class _Tokens:
    """face_tokens of the last pictures detected, by object identity (the picture is held
    so its id cannot be reused while cached)."""

    __slots__ = ("_items",)

    def __init__(self, size: int = 512) -> None:
        self._items: deque[tuple[bytes, str]] = deque(maxlen=size)

    def put(self, image: bytes, token: str) -> None:
        if token:
            self._items.append((image, token))

    def take(self, image: bytes) -> str | None:
        for i, (obj, token) in enumerate(self._items):
            if obj is image:
                del self._items[i]
                return token
        return None


class V3JobApi:
    """The jobs' calls over v3 (see the module docstring); an async context manager.

    ``server_quality``: None, or LOW/NORMAL/HIGH sent as ``quality_control`` with each
    write. Other keyword arguments go to :class:`FaceClientV3`.
    """

    protocol = "v3"

    def __init__(self, settings: Settings, *, server_quality: str | None = None,
                 **options: Any) -> None:
        self.client = FaceClientV3(settings, **options)
        self.settings, self.stats, self.limiter = settings, self.client.stats, self.client.limiter
        self.health = self.client.health
        self.server_quality = server_quality
        self.token_writes = self.base64_writes = self.token_fallbacks = 0
        self._tokens = _Tokens()

    @property
    def on_call(self) -> Callable[[CallRecord], None] | None:
        return self.client.on_call

    @on_call.setter
    def on_call(self, hook: Callable[[CallRecord], None] | None) -> None:
        self.client.on_call = hook

    async def __aenter__(self) -> V3JobApi:
        await self.client.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.client.aclose()

    # -- enroll --------------------------------------------------------------------------

    async def detect(self, image: bytes, *, max_face_num: int = 1,
                     face_fields: Sequence[str] = ()) -> DetectResult:
        fields = ["quality" if f == "qualities" else f for f in face_fields]
        result = await self.client.detect(image, face_field=fields, max_face_num=max_face_num)
        if result.faces:
            self._tokens.put(image, result.faces[0].face_token)
        return result

    async def add_user(self, uid: str, user_info: str, group_id: str | Sequence[str],
                       image: bytes, *, action_type: str | None = None) -> WriteResult:
        action = _ACTIONS[action_type or "append"]
        return await self._write(self.client.add_user, image, _one_group(group_id), uid,
                                 user_info, action)

    async def update_user(self, uid: str, user_info: str, group_id: str, image: bytes, *,
                          action_type: str | None = None) -> WriteResult:
        action = "REPLACE" if action_type == "replace" else "UPDATE"
        return await self._write(self.client.update_user, image, group_id, uid, user_info,
                                 action)

    async def _write(self, call: _Register, image: bytes, group: str, uid: str, info: str,
                     action: str) -> WriteResult:
        token = self._tokens.take(image)
        spent = 0
        if token is not None:
            try:
                result = await call(token, group, uid, user_info=info, action_type=action,
                                    quality_control=self.server_quality)
                self.token_writes += 1
                return WriteResult(result.log_id, result.attempts)
            except FaceTokenError as exc:  # expired (60 min) or unknown: send the picture
                self.token_fallbacks += 1
                spent = exc.attempts
        result = await call(image, group, uid, user_info=info, action_type=action,
                            quality_control=self.server_quality)
        self.base64_writes += 1
        return WriteResult(result.log_id, result.attempts + spent)

    async def delete_user(self, uid: str, *, group_id: str | None = None) -> WriteResult:
        return await self.client.delete_user(group_id or "@ALL", uid)

    # -- reading the library back ---------------------------------------------------------

    async def get_user(self, uid: str, *, group_id: str | None = None) -> UserResult:
        """One record per group ``uid`` is in (``@ALL``), or only ``group_id``'s."""
        return await self.client.get_user(uid, group_id or "@ALL")

    async def get_group_list(self, *, start: int = 0, num: int = 100) -> GroupListResult:
        return await self.client.get_group_list(start=start, length=num)

    async def get_group_users(self, group_id: str, *, start: int = 0, num: int = 100
                              ) -> GroupUsersResult:
        """Users of the group. v3 lists ids only: ``user_info`` is empty here (one
        ``get_user`` per user reads it, at one call each)."""
        found = await self.client.get_group_users(group_id, start=start, length=num)
        users = tuple(GroupUser(uid, "") for uid in found.user_ids)
        return GroupUsersResult(users, found.log_id, found.attempts)

    async def delete_group(self, group_id: str) -> WriteResult:
        """v3 only: delete a group (the audit's emptied scratch group)."""
        return await self.client.group_delete(group_id)

    # -- audit ---------------------------------------------------------------------------

    async def identify(self, group_id: str | Sequence[str], image: bytes, *,
                       user_top_num: int = 1, ext_fields: str | None = None) -> IdentifyResult:
        _v2_only("ext_fields", ext_fields)
        groups = group_id.split(",") if isinstance(group_id, str) else list(group_id)
        try:
            return await self._search(groups, image, user_top_num)
        except GroupNotFoundError as exc:
            if len(groups) == 1:
                raise EmptyGroupError(exc.code, exc.message, exc.log_id, exc.attempts) from exc
            spent = exc.attempts
        merged: list[Candidate] = []
        log_id = None
        for group in groups:  # search around the missing group(s)
            try:
                part = await self._search([group], image, user_top_num)
            except GroupNotFoundError as exc:
                spent += exc.attempts
                continue
            spent += part.attempts
            merged += part.candidates
            log_id = part.log_id
        if log_id is None and not merged:
            raise EmptyGroupError(223100, "none of the groups exists", None, spent)
        merged.sort(key=lambda c: -c.best)
        return IdentifyResult(tuple(merged[:user_top_num]), log_id, spent)

    async def _search(self, groups: list[str], image: bytes, top: int) -> IdentifyResult:
        try:
            found = await self.client.search(image, groups, max_user_num=top,
                                             match_threshold=0)
        except NoMatchError as exc:
            return IdentifyResult((), exc.log_id, exc.attempts)
        candidates = tuple(Candidate(u.group_id, u.user_id, u.user_info, (u.score,))
                           for u in found.users)
        return IdentifyResult(candidates, found.log_id, found.attempts)

    async def verify(self, uid: str, group_id: str | Sequence[str], image: bytes, *,
                     top_num: int = 1, ext_fields: str | None = None) -> VerifyResult:
        """v3 search restricted to ``user_id``: one score (0-100) per listed group that
        holds the uid (its best face there; v2 gave one per face), best first."""
        _v2_only("ext_fields", ext_fields)
        groups = group_id.split(",") if isinstance(group_id, str) else list(group_id)
        try:
            found = await self.client.search(image, groups, user_id=uid,
                                             max_user_num=min(50, max(1, len(groups))),
                                             match_threshold=0)
        except NoMatchError as exc:
            return VerifyResult((), exc.log_id, exc.attempts)
        scores = sorted((u.score for u in found.users), reverse=True)[:top_num]
        return VerifyResult(tuple(scores), found.log_id, found.attempts)

    async def match(self, images: Sequence[bytes], *, ext_fields: str | None = None,
                    image_liveness: str | None = None, types: str | None = None
                    ) -> MatchResult:
        for name, value in (("ext_fields", ext_fields), ("image_liveness", image_liveness),
                            ("types", types)):
            _v2_only(name, value)
        if len(images) < 2:
            raise InvalidInputError(None, "match needs at least 2 images", attempts=0)
        pairs, attempts, log_id = [], 0, None
        for j, other in enumerate(images[1:], start=1):
            result = await self.client.match(images[0], other)
            pairs.append(MatchPair(0, j, result.score))
            attempts += result.attempts
            log_id = result.log_id
        return MatchResult(tuple(pairs), log_id, attempts)


def _one_group(group_id: str | Sequence[str]) -> str:
    # v3 writes take one group; the jobs check rows before this (group_id_multiple).
    return group_id if isinstance(group_id, str) else ",".join(group_id)


def _v2_only(name: str, value: str | None) -> None:
    if value:
        raise InvalidInputError(None, f"{name} is a v2 option; v3 has no equivalent the "
                                "faceflow jobs use", attempts=0)
