"""The async client of the Baidu Face API v3 (``/rest/2.0/face/v3/...``, v3 contract).

::

    async with FaceClientV3(settings, qps={"detect": 10, "add": 5}) as client:
        found = await client.detect(jpeg_bytes, face_field=["quality"])
        token = found.faces[0].face_token
        await client.add_user(token, "staff", "u_42", user_info="Ada")   # FACE_TOKEN

An ``image`` argument is either the picture's bytes (sent as ``BASE64``) or a str, a
face_token (sent as ``FACE_TOKEN``). Every call goes through the same machinery as the
v2 client (a :class:`~pipeline.client.faceclient.FaceClient` opened with
``protocol="v3"``): the rate limiter, the token cache and its refresh on 110/111, the
retry policy, the stats and ``on_call`` hook; only the bodies (JSON: objects, and arrays
for match/faceverify), the paths, the reply envelope and the error table
(:data:`~pipeline.api.errors.V3_ERROR_TABLE`) differ. Arguments are checked against
v3's limits before sending (:mod:`pipeline.api.validate_v3`): a bad one raises
:class:`~pipeline.api.errors.InvalidInputError` with ``attempts=0``.

Numbers go as JSON integers; ``match_threshold`` is always sent (default 80), so the
service's default never matters (contract §2.5).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from pipeline.api import validate_v3 as v
from pipeline.api.errors import FaceNotFoundError, InvalidInputError
from pipeline.api.records import (
    DetectResult,
    Face,
    GroupListResult,
    PersonVerifyResult,
    Qualities,
    UserRecord,
    UserResult,
    WriteResult,
)
from pipeline.api.records_v3 import (
    FaceEntry,
    FaceListResult,
    FaceverifyResult,
    FaceWriteResult,
    GroupUserIdsResult,
    MatchV3Result,
    MultiSearchFace,
    MultiSearchResult,
    SearchResult,
    SearchUser,
)
from pipeline.api.replies import as_box as _box
from pipeline.api.replies import as_dicts as _dicts
from pipeline.api.replies import as_list as _list
from pipeline.api.replies import as_num as _num
from pipeline.api.replies import as_points as _points
from pipeline.client.config import Settings
from pipeline.client.faceclient import CallRecord, FaceClient, log_id
from pipeline.client.transport import b64encode

_V3 = "/rest/2.0/face/v3"
#: interface name (limiter lane, stats key) -> HTTP path (v3 contract §1.2).
PATHS: dict[str, str] = {
    "detect": f"{_V3}/detect",
    "match": f"{_V3}/match",
    "search": f"{_V3}/search",
    "multi_search": f"{_V3}/multi-search",
    "add": f"{_V3}/faceset/user/add",
    "update": f"{_V3}/faceset/user/update",
    "face_delete": f"{_V3}/faceset/face/delete",
    "get": f"{_V3}/faceset/user/get",
    "face_list": f"{_V3}/faceset/face/getlist",
    "group_users": f"{_V3}/faceset/group/getusers",
    "user_copy": f"{_V3}/faceset/user/copy",
    "delete": f"{_V3}/faceset/user/delete",
    "group_create": f"{_V3}/faceset/group/add",
    "group_remove": f"{_V3}/faceset/group/delete",
    "group_list": f"{_V3}/faceset/group/getlist",
    "person_verify": f"{_V3}/person/verify",
    "idmatch": f"{_V3}/person/idmatch",
    "faceverify": f"{_V3}/faceverify",
}

Image = bytes | str  # picture bytes (BASE64) or a face_token (FACE_TOKEN)


class FaceClientV3:
    """Async client for the Face API v3; ``async with FaceClientV3(...) as client``.

    Keyword arguments are those of :class:`~pipeline.client.faceclient.FaceClient`
    (``qps``, ``retry``, ``connection_limit``, ``limiter``, ``aimd``, ``clock``,
    ``on_call``). ``stats``, ``limiter`` and ``retry`` are the core client's.
    """

    protocol = "v3"

    def __init__(self, settings: Settings, **options: Any) -> None:
        self._core = FaceClient(settings, protocol="v3", **options)
        self.settings = settings
        self.stats = self._core.stats
        self.limiter = self._core.limiter
        self.retry = self._core.retry
        self.health = self._core.health  # the outage state (pause, probe, give up)

    @property
    def on_call(self) -> Callable[[CallRecord], None] | None:
        return self._core.on_call

    @on_call.setter
    def on_call(self, hook: Callable[[CallRecord], None] | None) -> None:
        self._core.on_call = hook

    def __repr__(self) -> str:
        return f"<FaceClientV3 endpoint={self.settings.endpoint!r}>"

    async def __aenter__(self) -> FaceClientV3:
        await self._core.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._core.aclose()

    async def aclose(self) -> None:
        await self._core.aclose()

    async def _call(self, interface: str, body: dict[str, Any] | list[dict[str, Any]]
                    ) -> tuple[dict[str, Any], int]:
        """Send ``body``, a JSON object (or an array of them: match, faceverify)."""
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        return await self._core._request_body(interface, data, PATHS[interface])

    # -- detection and comparison -------------------------------------------------------

    async def detect(self, image: Image, *, face_field: Sequence[str] = (),
                     max_face_num: int = 1, face_type: str | None = None,
                     liveness_control: str | None = None) -> DetectResult:
        """Faces in ``image``, largest first, each with its 60-min ``face_token``.

        ``face_field`` among the contract's names (quality, landmark, ...). A picture
        without a face gives an empty ``faces`` (the service answers 222202), as v2's
        detect did, so callers read "no face" one way for both protocols.
        """
        body = _image(image)
        fields = _fields(face_field)
        if fields:
            body["face_field"] = fields
        if _int("max_face_num", max_face_num, 1, v.DETECT_FACE_MAX) != 1:
            body["max_face_num"] = max_face_num
        _options(body, face_type=face_type, liveness_control=liveness_control)
        try:
            reply, attempts = await self._call("detect", body)
        except FaceNotFoundError as exc:
            return DetectResult((), exc.log_id, exc.attempts)
        faces = tuple(parse_face(f) for f in _dicts(_result(reply).get("face_list")))
        return DetectResult(faces, log_id(reply), attempts)

    async def match(self, first: Image, second: Image, *,
                    quality_control: str | None = None) -> MatchV3Result:
        """Similarity (0-100) of the two pictures' faces; the body is a JSON array."""
        items = []
        for image in (first, second):
            item = _image(image)
            _options(item, quality_control=quality_control)
            items.append(item)
        reply, attempts = await self._call("match", items)
        result = _result(reply)
        tokens = tuple(str(f.get("face_token", "")) for f in _dicts(result.get("face_list")))
        return MatchV3Result(_num(result.get("score")), tokens, log_id(reply), attempts)

    async def search(self, image: Image, group_id_list: str | Sequence[str], *,
                     max_user_num: int = 1, match_threshold: int = 80,
                     user_id: str | None = None, quality_control: str | None = None,
                     liveness_control: str | None = None) -> SearchResult:
        """1:N search in up to 10 groups; users scoring >= ``match_threshold`` (0-100),
        best first. Nobody above it raises :class:`~pipeline.api.errors.NoMatchError`."""
        body = {**_image(image), "group_id_list": _groups(group_id_list),
                "max_user_num": _int("max_user_num", max_user_num, 1, v.SEARCH_USER_MAX),
                "match_threshold": _int("match_threshold", match_threshold, 0, 100)}
        if user_id is not None:
            body["user_id"] = _id("user_id", user_id)
        _options(body, quality_control=quality_control, liveness_control=liveness_control)
        reply, attempts = await self._call("search", body)
        result = _result(reply)
        return SearchResult(str(result.get("face_token", "")), _users(result),
                            log_id(reply), attempts)

    async def multi_search(self, image: Image, group_id_list: str | Sequence[str], *,
                           max_face_num: int = 1, max_user_num: int = 1,
                           match_threshold: int = 80, quality_control: str | None = None
                           ) -> MultiSearchResult:
        """M:N search: up to ``max_face_num`` (1-10) faces, ``max_user_num`` (1-20) each."""
        body = {**_image(image), "group_id_list": _groups(group_id_list),
                "max_face_num": _int("max_face_num", max_face_num, 1, v.MULTI_FACE_MAX),
                "max_user_num": _int("max_user_num", max_user_num, 1, v.MULTI_USER_MAX),
                "match_threshold": _int("match_threshold", match_threshold, 0, 100)}
        _options(body, quality_control=quality_control)
        reply, attempts = await self._call("multi_search", body)
        faces = tuple(MultiSearchFace(str(f.get("face_token", "")), _box(f.get("location")),
                                      _users(f))
                      for f in _dicts(_result(reply).get("face_list")))
        return MultiSearchResult(faces, log_id(reply), attempts)

    # -- the face library ------------------------------------------------------------------

    async def add_user(self, image: Image, group_id: str, user_id: str, *,
                       user_info: str | None = None, action_type: str | None = None,
                       quality_control: str | None = None,
                       liveness_control: str | None = None) -> FaceWriteResult:
        """Register the face for ``user_id`` in one group (created as needed).

        ``action_type``: APPEND (the default) or REPLACE (all the user's faces in the
        group). 223105 (face already in the group) raises ImageExistsError; a 21st
        face raises FaceLimitError.
        """
        return await self._register("add", image, group_id, user_id, user_info, action_type,
                                    ("APPEND", "REPLACE"), quality_control, liveness_control)

    async def update_user(self, image: Image, group_id: str, user_id: str, *,
                          user_info: str | None = None, action_type: str | None = None,
                          quality_control: str | None = None,
                          liveness_control: str | None = None) -> FaceWriteResult:
        """Replace the user's faces in the group; ``action_type`` UPDATE (default: an
        unknown user raises UserNotFoundError) or REPLACE (registers it instead)."""
        return await self._register("update", image, group_id, user_id, user_info,
                                    action_type, ("UPDATE", "REPLACE"), quality_control,
                                    liveness_control)

    async def _register(self, interface: str, image: Image, group_id: str, user_id: str,
                        user_info: str | None, action_type: str | None,
                        actions: tuple[str, ...], quality_control: str | None,
                        liveness_control: str | None) -> FaceWriteResult:
        body = {**_image(image), "group_id": _id("group_id", group_id),
                "user_id": _id("user_id", user_id)}
        if user_info is not None:
            _check("user_info", v.check_user_info(user_info))
            body["user_info"] = user_info
        if action_type is not None:
            if action_type not in actions:
                _invalid(f"action_type must be one of {', '.join(actions)} "
                         f"(got {action_type!r})")
            body["action_type"] = action_type
        _options(body, quality_control=quality_control, liveness_control=liveness_control)
        reply, attempts = await self._call(interface, body)
        result = _result(reply)
        return FaceWriteResult(str(result.get("face_token", "")), _box(result.get("location")),
                               log_id(reply), attempts)

    async def face_delete(self, user_id: str, group_id: str, face_token: str) -> WriteResult:
        """Delete one registered face (the user's last face removes the user)."""
        _check("face_token", v.check_face_token(face_token))
        return await self._write("face_delete", {"user_id": _id("user_id", user_id),
                                                 "group_id": _id("group_id", group_id),
                                                 "face_token": face_token})

    async def get_user(self, user_id: str, group_id: str = v.ALL_GROUPS) -> UserResult:
        """One record per group the user is in (``@ALL``, the default) or in ``group_id``."""
        body = {"user_id": _id("user_id", user_id),
                "group_id": _id("group_id", group_id, allow_all=True)}
        reply, attempts = await self._call("get", body)
        records = tuple(UserRecord(user_id, str(u.get("user_info", "")),
                                   str(u.get("group_id", "")))
                        for u in _dicts(_result(reply).get("user_list")))
        return UserResult(records, log_id(reply), attempts)

    async def face_getlist(self, user_id: str, group_id: str) -> FaceListResult:
        """The user's registered faces in the group, oldest first."""
        reply, attempts = await self._call("face_list", {"user_id": _id("user_id", user_id),
                                                         "group_id": _id("group_id", group_id)})
        faces = tuple(FaceEntry(str(f.get("face_token", "")), str(f.get("ctime", "")))
                      for f in _dicts(_result(reply).get("face_list")))
        return FaceListResult(faces, log_id(reply), attempts)

    async def get_group_users(self, group_id: str, *, start: int = 0, length: int = 100
                              ) -> GroupUserIdsResult:
        """User ids of the group from index ``start``, at most ``length`` (1-1000)."""
        body = {"group_id": _id("group_id", group_id), **_page(start, length)}
        reply, attempts = await self._call("group_users", body)
        ids = tuple(str(u) for u in _list(_result(reply).get("user_id_list")))
        return GroupUserIdsResult(ids, log_id(reply), attempts)

    async def user_copy(self, user_id: str, src_group_id: str, dst_group_id: str
                        ) -> WriteResult:
        """Copy the user (info and faces) into an existing group."""
        return await self._write("user_copy", {
            "user_id": _id("user_id", user_id), "src_group_id": _id("src_group_id", src_group_id),
            "dst_group_id": _id("dst_group_id", dst_group_id)})

    async def delete_user(self, group_id: str, user_id: str) -> WriteResult:
        """Remove the user from ``group_id`` (``@ALL``: from every group)."""
        return await self._write("delete", {
            "group_id": _id("group_id", group_id, allow_all=True),
            "user_id": _id("user_id", user_id)})

    async def group_add(self, group_id: str) -> WriteResult:
        """Create an empty group (GroupExistsError when it exists)."""
        return await self._write("group_create", {"group_id": _id("group_id", group_id)})

    async def group_delete(self, group_id: str) -> WriteResult:
        """Delete a group with its users and faces (GroupNotFoundError when missing)."""
        return await self._write("group_remove", {"group_id": _id("group_id", group_id)})

    async def get_group_list(self, *, start: int = 0, length: int = 100) -> GroupListResult:
        """Group ids from index ``start``, at most ``length`` (1-1000)."""
        reply, attempts = await self._call("group_list", _page(start, length))
        ids = tuple(str(g) for g in _list(_result(reply).get("group_id_list")))
        return GroupListResult(ids, log_id(reply), attempts)

    async def _write(self, interface: str, body: dict[str, Any]) -> WriteResult:
        reply, attempts = await self._call(interface, body)
        return WriteResult(log_id(reply), attempts)

    # -- identity and liveness -------------------------------------------------------------

    async def person_verify(self, image: Image, id_card_number: str, name: str, *,
                            quality_control: str | None = None,
                            liveness_control: str | None = None) -> PersonVerifyResult:
        """The face against the ID-card photo: ``score`` 0-100, threshold 80 (v2: 0-1)."""
        body = {**_image(image), "id_card_number": _text("id_card_number", id_card_number),
                "name": _text("name", name)}
        _options(body, quality_control=quality_control, liveness_control=liveness_control)
        reply, attempts = await self._call("person_verify", body)
        return PersonVerifyResult(_num(_result(reply).get("score")), log_id(reply), attempts)

    async def person_idmatch(self, id_card_number: str, name: str) -> WriteResult:
        """ID number against name: success when they match (mismatch: 222351)."""
        return await self._write("idmatch", {
            "id_card_number": _text("id_card_number", id_card_number),
            "name": _text("name", name)})

    async def faceverify(self, images: Sequence[Image], *, face_field: Sequence[str] = ()
                         ) -> FaceverifyResult:
        """Online single-picture liveness of 1+ pictures (a JSON array)."""
        if not images:
            _invalid("faceverify needs at least one picture")
        items = []
        for image in images:
            item = _image(image)
            if face_field:
                item["face_field"] = _fields(face_field)
            items.append(item)
        reply, attempts = await self._call("faceverify", items)
        result = _result(reply)
        raw = result.get("thresholds")
        thresholds = {str(k): _num(val) for k, val in raw.items()} if isinstance(raw, dict) else {}
        scores = tuple((str(f.get("face_token", "")),
                        _num((f.get("liveness") or {}).get("livemapscore")))
                       for f in _dicts(result.get("face_list")))
        return FaceverifyResult(_num(result.get("face_liveness")), thresholds, scores,
                                log_id(reply), attempts)


# -- arguments (raise InvalidInputError before sending) ----------------------------------


def _invalid(message: str) -> NoReturn:
    raise InvalidInputError(None, message, attempts=0)


def _check(name: str, reason: str | None) -> None:
    if reason is not None:
        _invalid(f"{name}: {v.REASON_TEXT.get(reason, reason)} ({reason})")


def _image(image: Image) -> dict[str, Any]:
    if isinstance(image, str):
        _check("image", v.check_face_token(image))
        return {"image": image, "image_type": "FACE_TOKEN"}
    if not isinstance(image, (bytes, bytearray, memoryview)):
        _invalid(f"image must be picture bytes or a face_token str, not {type(image).__name__}")
    data = bytes(image)
    _check("image", v.check_image(data))
    return {"image": b64encode(data).decode("ascii"), "image_type": "BASE64"}


def _id(name: str, value: str, allow_all: bool = False) -> str:
    if not isinstance(value, str):
        _invalid(f"{name} must be a string, not {type(value).__name__}")
    _check(name, v.check_id(value, allow_all))
    return value


def _groups(groups: str | Sequence[str]) -> str:
    items = groups.split(",") if isinstance(groups, str) else list(groups)
    if not all(isinstance(g, str) for g in items):
        _invalid("group_id_list must be a string or a list of strings")
    _check("group_id_list", v.check_group_list(items))
    return ",".join(items)


def _text(name: str, value: str) -> str:
    if not isinstance(value, str) or not value.strip():
        _invalid(f"{name} must be a non-empty string")
    return value


def _int(name: str, value: int, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _invalid(f"{name} must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        _invalid(f"{name} must be from {low} to {high} (got {value})")
    return value


def _page(start: int, length: int) -> dict[str, int]:
    return {"start": _int("start", start, 0, 2**31),
            "length": _int("length", length, 1, v.PAGE_LENGTH_MAX)}


def _fields(face_field: str | Sequence[str]) -> str:
    items = face_field.split(",") if isinstance(face_field, str) else list(face_field)
    unknown = [f for f in items if f.strip() not in v.FACE_FIELDS]
    if unknown:
        _invalid(f"face_field: {unknown[0]!r} is not one of {', '.join(sorted(v.FACE_FIELDS))}")
    return ",".join(f.strip() for f in items)


def _options(body: dict[str, Any], **levels: str | None) -> None:
    for name, value in levels.items():
        if value is None:
            continue
        if name == "face_type":
            body[name] = _text(name, value)
            continue
        _check(name, v.check_level(value))
        body[name] = value


# -- replies (pure, tolerant) ------------------------------------------------------------


def _result(reply: Mapping[str, Any]) -> dict[str, Any]:
    result = reply.get("result")
    return result if isinstance(result, dict) else {}


def _users(raw: Mapping[str, Any]) -> tuple[SearchUser, ...]:
    return tuple(SearchUser(str(u.get("group_id", "")), str(u.get("user_id", "")),
                            str(u.get("user_info", "")), _num(u.get("score")))
                 for u in _dicts(raw.get("user_list")))


def _qualities(raw: object) -> Qualities | None:
    """v3 ``quality``; ``chin_contour`` (and the tables' ``chin``) read as ``chin``."""
    if not isinstance(raw, dict):
        return None
    occ = raw.get("occlusion")
    occ = occ if isinstance(occ, dict) else {}
    occlusion = {("chin" if k in ("chin_contour", "chin") else str(k)): _num(val)
                 for k, val in occ.items()}
    return Qualities(occlusion=occlusion, blur=_num(raw.get("blur")),
                     illumination=_num(raw.get("illumination")),
                     completeness=_num(raw.get("completeness")))


_FACE_KEYS = frozenset({"face_token", "location", "face_probability", "angle", "angel",
                        "landmark", "landmark72", "quality", "liveness"})


def parse_face(raw: Mapping[str, Any]) -> Face:
    """One ``face_list`` item of detect: pose from ``angle`` (or the tables' ``angel``),
    ``rotation`` as ``rotation_angle``, the token in ``face_token``; other fields kept."""
    angle = raw.get("angle")
    angle = angle if isinstance(angle, dict) else raw.get("angel")
    angle = angle if isinstance(angle, dict) else {}
    location = raw.get("location")
    location = location if isinstance(location, dict) else {}
    live = raw.get("liveness")
    return Face(
        location=_box(location), face_probability=_num(raw.get("face_probability")),
        rotation_angle=_num(location.get("rotation")), yaw=_num(angle.get("yaw")),
        pitch=_num(angle.get("pitch")), roll=_num(angle.get("roll")),
        landmark=_points(raw.get("landmark")), landmark72=_points(raw.get("landmark72")),
        qualities=_qualities(raw.get("quality")),
        faceliveness=_num(live.get("livemapscore")) if isinstance(live, dict) else None,
        extra={k: val for k, val in raw.items() if k not in _FACE_KEYS},
        face_token=str(raw.get("face_token", "")),
    )


