"""The async client of the Baidu Face API v2 (and of the local engine, which speaks it).

::

    async with FaceClient(settings, qps={"detect": 10, "add": 5}) as client:
        found = await client.detect(jpeg_bytes, face_fields=["qualities"])
        await client.add_user("u_42", "Ada", "staff", jpeg_bytes)

One coroutine per interface of the reference (contract §3); each returns a frozen
record of :mod:`pipeline.api.records` carrying ``log_id`` and ``attempts`` (requests
sent for the call: retries and the resend after a token refresh included).

What happens to a call, in order:

1. **validate** (:mod:`pipeline.api.validate`): a bad argument raises
   :class:`~pipeline.api.errors.InvalidInputError` (``code=None``, ``attempts=0``) whose
   message names the argument and the rule; nothing is sent.
2. **encode** once: form fields, images as standard base64 (match: joined by ``,``).
3. **send** under the retry policy (:mod:`pipeline.client.retry`, budgets by cause):
   each send first waits for the interface's governor (:mod:`pipeline.client.ratelimit`),
   which hears of every reply (4/18 or not) to find the quota. Faults while the service
   answers nobody wait for it (:mod:`pipeline.client.health`) instead of spending the
   budget. A 110/111 reply refreshes the token and resends once per call, outside the
   retry budget; a second one raises AuthError.
4. **parse** the reply into the record (tolerant: float landmarks, the
   ``expression_probablity`` spelling, unknown fields kept in ``Face.extra``).

Errors are the classes of :mod:`pipeline.api.errors`; each carries ``code``, ``message``,
``log_id`` and ``attempts`` (an :class:`~pipeline.client.retry.Attempts`: sends in all,
and the failed ones by cause). An endpoint that cannot be reached when the client opens
(refused, no DNS, TLS to a plain port, a path that answers 404 or HTML) raises
:class:`~pipeline.api.errors.UnreachableError` within seconds. Authentication is token
mode only (see :mod:`pipeline.client.transport`; no ``bce-auth-v1`` signing). Logs go to
``logging.getLogger("faceflow.client")`` and name the path, never the URL.
A client is opened once: after ``close`` it cannot be reopened (as httpx).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from pipeline.api import validate as v
from pipeline.api.errors import (
    TOKEN_CODES,
    ApiError,
    InvalidInputError,
    NoPermissionError,
    TransientError,
    UnreachableError,
    parse_log_id,
    reply_code,
)
from pipeline.api.records import (
    Candidate,
    DetectResult,
    Face,
    GroupListResult,
    GroupUser,
    GroupUsersResult,
    IdentifyResult,
    MatchPair,
    MatchResult,
    PersonVerifyResult,
    Qualities,
    UserRecord,
    UserResult,
    VerifyResult,
    WriteResult,
)
from pipeline.api.replies import as_box as _box
from pipeline.api.replies import as_dicts as _dicts
from pipeline.api.replies import as_list as _list
from pipeline.api.replies import as_num as _num
from pipeline.api.replies import as_points as _points
from pipeline.client.config import Settings
from pipeline.client.health import Health
from pipeline.client.ratelimit import Aimd, RateLimiter, Ticket
from pipeline.client.retry import CAUSES, FAULT, OUTAGE, RATE_LIMIT, Attempts, RetryPolicy
from pipeline.client.transport import Transport, b64encode, check_reply, encode_form

if TYPE_CHECKING:
    from pipeline.client.budget import Budget

log = logging.getLogger("faceflow.client")

#: Added to error 6 on a v2 path: a v3-only application gets 6 there (v3 contract §1.2).
V3_HINT = (" (the application seems to hold v3 permission only: try --api v3 or "
           "FACEFLOW_API=v3, in a new run: a run keeps its protocol)")

_V2 = "/rest/2.0/face/v2"
#: canonical interface name -> HTTP path (contract §1.2).
PATHS: dict[str, str] = {
    "detect": f"{_V2}/detect",
    "match": f"{_V2}/match",
    "identify": f"{_V2}/identify",
    "verify": f"{_V2}/verify",
    "multi_identify": f"{_V2}/multi-identify",
    "add": f"{_V2}/faceset/user/add",
    "update": f"{_V2}/faceset/user/update",
    "delete": f"{_V2}/faceset/user/delete",
    "get": f"{_V2}/faceset/user/get",
    "group_list": f"{_V2}/faceset/group/getlist",
    "group_users": f"{_V2}/faceset/group/getusers",
    "group_add": f"{_V2}/faceset/group/adduser",
    "group_delete": f"{_V2}/faceset/group/deleteuser",
    "person_verify": f"{_V2}/person/verify",
    "faceverify": f"{_V2}/faceverify",
}

_IMAGE_LIVENESS = frozenset({"faceliveness,faceliveness", ",faceliveness", "faceliveness,"})
_MATCH_TYPES = frozenset({"7", "12", "13"})

Fields = list[tuple[str, "str | bytes"]]


@dataclass(slots=True)
class ClientStats:
    """Counters of one client, for reports and benchmarks (mutable; read them, don't set).

    ``calls``: requests sent per canonical interface (retries and resends included).
    ``errors``: failed sends per error code (retried ones included).
    ``retries``: sleeps before a retry. ``token_fetches``: token requests sent.
    ``token_refreshes``: resends after a 110/111. ``outage_waits``: failed sends that
    waited for the service instead of spending their budget.
    """

    calls: Counter[str] = field(default_factory=Counter)
    errors: Counter[int | str] = field(default_factory=Counter)
    retries: int = 0
    token_fetches: int = 0
    token_refreshes: int = 0
    outage_waits: int = 0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (error codes as strings)."""
        return {"calls": dict(self.calls), "errors": {str(k): n for k, n in self.errors.items()},
                "retries": self.retries, "token_fetches": self.token_fetches,
                "token_refreshes": self.token_refreshes, "outage_waits": self.outage_waits}


#: Call kinds of :class:`CallRecord`: accepted, rejected by a rate limit (4, 18), timed
#: out (SDK108), any other error.
CALL_KINDS = ("accepted", "rate_limited", "timeout", "error")
_RATE_CODES = frozenset({4, 18, "4", "18"})


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One request as sent (each retry and resend is its own), for ``on_call`` hooks.

    ``at``: wall-clock seconds (``time.time()``) when it ended; ``ms``: how long the
    request took, limiter wait excluded; ``http_status``: None when no reply came;
    ``error_code``: None for an accepted call; ``attempt``: 1-based send of the call.
    Never holds the token or the request body.
    """

    interface: str
    at: float
    ms: float
    http_status: int | None
    error_code: str | None
    attempt: int
    log_id: int | None
    kind: str  # one of CALL_KINDS


def _call_record(call: _Call, started: float, status: int | None, code: object,
                 lid: int | None) -> CallRecord:
    code_text = None if code in (None, 0, "0") else str(code)
    if code_text is None and status is not None and status >= 500:
        code_text = f"HTTP{status}"
    kind = ("accepted" if code_text is None else "rate_limited" if code in _RATE_CODES
            else "timeout" if code_text == "SDK108" else "error")
    return CallRecord(call.interface, time.time(), (time.perf_counter() - started) * 1e3,
                      status, code_text, call.sent, lid, kind)


class _Call:
    """The state of one client call across its sends."""

    __slots__ = ("interface", "path", "body", "sent", "refreshed", "causes")

    def __init__(self, interface: str, body: bytes, path: str | None = None) -> None:
        self.interface, self.body = interface, body
        self.path = PATHS[interface] if path is None else path
        self.causes = dict.fromkeys(CAUSES, 0)
        self.sent = 0
        self.refreshed = False


class _EncodedImages:
    """The base64 text of the last few images a client checked, by object identity.

    Enrolling sends each image twice (detect, then user add); this saves the second
    check and encoding (~1 ms for a 300 KB photo). Holding the image itself keeps
    its ``id`` from being reused while cached; only immutable ``bytes`` qualify.
    """

    __slots__ = ("_items",)

    def __init__(self, size: int = 8) -> None:
        self._items: deque[tuple[bytes, bytes]] = deque(maxlen=size)

    def get(self, image: object) -> bytes | None:
        for obj, encoded in self._items:
            if obj is image:
                return encoded
        return None

    def put(self, image: object, encoded: bytes) -> None:
        if type(image) is bytes:
            self._items.append((image, encoded))


_UNOPENED, _OPEN, _CLOSED = "unopened", "open", "closed"


class FaceClient:
    """Async client for the Face API v2; use as ``async with FaceClient(...) as client``.

    ``qps``: per-interface rate limit (see :class:`~pipeline.client.ratelimit.RateLimiter`;
    None = unlimited until the service says 18). ``retry``: the policy (default
    :class:`RetryPolicy()`). ``connection_limit``: open connections at most.
    ``limiter``: share one :class:`RateLimiter` between clients of a process, or the
    shared QPS budget (:class:`~pipeline.client.budget.Budget`) that stands in for one
    (overrides ``qps``/``aimd``). ``health``: the outage state (default
    :class:`~pipeline.client.health.Health()`: pause after 60 s of silence, give up
    300 s later). ``clock``: monotonic seconds for the token cache.
    Entering fetches the first token, so bad credentials fail at once (AuthError) and
    an endpoint that is not the service fails within seconds (UnreachableError).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        qps: float | Mapping[str, float] | None = None,
        retry: RetryPolicy | None = None,
        connection_limit: int = 32,
        limiter: RateLimiter | Budget | None = None,
        aimd: Aimd | None = None,
        health: Health | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_call: Callable[[CallRecord], None] | None = None,
        protocol: str = "v2",
    ) -> None:
        self.settings = settings
        #: "v2" (this class's methods), or "v3": the wire and error table that
        #: :class:`pipeline.client.v3.FaceClientV3` sends its calls through.
        self.protocol = protocol
        self.stats = ClientStats()
        #: Called with a :class:`CallRecord` after every request (e.g. a run's timeline).
        self.on_call = on_call
        self.limiter = limiter or RateLimiter(qps, aimd=aimd)
        self.retry = retry or RetryPolicy()
        self.health = health or Health()
        self._transport = Transport(settings, connection_limit=connection_limit, clock=clock,
                                    on_token_fetch=self._count_token_fetch, protocol=protocol)
        self._state = _UNOPENED
        self._encoded = _EncodedImages()

    def __repr__(self) -> str:
        return f"<FaceClient endpoint={self.settings.endpoint!r} state={self._state}>"

    def _image(self, image: bytes, max_b64: int = v.IMAGE_B64_MAX) -> bytes:
        """Checked ``image`` as base64 text, encoded once for repeated calls (detect, add)."""
        encoded = self._encoded.get(image)
        if encoded is None:
            encoded = _checked_b64(image, max_b64)
            self._encoded.put(image, encoded)
        elif len(encoded) > max_b64:  # format and size checked before; only the limit varies
            _check("image", "image_too_large")
        return encoded

    def _count_token_fetch(self) -> None:
        self.stats.token_fetches += 1

    # -- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> FaceClient:
        if self._state != _UNOPENED:
            raise RuntimeError("a FaceClient can be opened only once; make a new one")
        self._state = _OPEN
        await self._transport.open()
        try:
            await self._first_token()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session; the client cannot be used (or reopened) afterwards."""
        if self._state != _CLOSED:
            self._state = _CLOSED
            await self._transport.close()

    # -- the call machinery -----------------------------------------------------------

    async def _first_token(self) -> None:
        """The first token, or UnreachableError within seconds when the endpoint is not
        the service (nothing listens, no DNS, TLS to a plain port, a path that answers
        404 or HTML). Bad credentials still raise AuthError."""
        endpoint = self.settings.endpoint
        for tries in range(1, OPEN_TRIES + 1):
            try:
                await self._token()
                self.health.answered()
                return
            except TransientError as exc:
                log.info("token request to %s failed (try %d of %d)", endpoint, tries,
                         OPEN_TRIES, exc_info=exc)  # -v shows where
                status = _http_status(exc)
                if status is not None and status < 500:
                    raise UnreachableError(
                        endpoint, f"the token request was answered HTTP {status} "
                        f"({exc.message.removeprefix('token request: ')})",
                        "is --endpoint the service's base URL?") from None
                if tries == OPEN_TRIES:
                    cause = getattr(exc, "cause", None) or exc.message
                    raise UnreachableError(endpoint, cause, _UNREACHABLE_HINT) from None
                self._on_retry(exc, 0.5 * tries, "token")
                await self.retry.sleep(0.5 * tries)

    async def _request(self, interface: str, fields: Fields) -> tuple[dict[str, Any], int]:
        """Send one call under the retry policy; (reply, sends made as Attempts)."""
        return await self._request_body(interface, encode_form(fields))

    async def _request_body(self, interface: str, body: bytes, path: str | None = None
                            ) -> tuple[dict[str, Any], int]:
        """Send an encoded ``body`` to ``path`` (default: the interface's v2 path) under
        the governor, token and retry policy; (reply, sends made as Attempts)."""
        if self._state != _OPEN:
            raise RuntimeError(f"the FaceClient is {self._state}; use 'async with FaceClient()'")
        call = _Call(interface, body, path)
        try:
            reply = await self.retry.run(
                lambda: self._attempt(call), health=self.health, counts=call.causes,
                on_retry=lambda exc, pause, _: self._on_retry(exc, pause, interface))
        except ApiError as exc:
            exc.attempts = _attempts(call)
            raise
        return reply, _attempts(call)

    async def _token(self) -> str:
        try:
            return await self._transport.token()
        except ApiError as exc:
            self.stats.errors[exc.code if exc.code is not None else "client"] += 1
            raise

    async def _attempt(self, call: _Call) -> dict[str, Any]:
        token, status, reply = await self._send(call)
        if _is_token_error(reply) and not call.refreshed:
            # Once per call and outside the retry budget (contract §1.3).
            call.refreshed = True
            self.stats.token_refreshes += 1
            self.stats.errors[reply_code(reply) or "client"] += 1
            self._transport.invalidate(token)
            token, status, reply = await self._send(call)
        error = check_reply(reply, status, self._transport.scrub, self.protocol)
        if isinstance(error, NoPermissionError) and self.protocol == "v2":
            error.message += V3_HINT
        if error is not None:
            self._count_error(call, error)
            raise error
        return reply

    async def _send(self, call: _Call) -> tuple[str, int, dict[str, Any]]:
        """Wait for the governor, then take the token, then POST: (token, status, reply).

        The token is taken after the wait: a call may queue longer than a short-lived
        token lives, and an expired one would cost a refresh, then a second 111 (AuthError).
        The governor and the outage state hear of the reply (a fault reports nothing).
        """
        ticket = await self.limiter.acquire(call.interface)
        token = await self._token()
        call.sent += 1
        self.stats.calls[call.interface] += 1
        started = time.perf_counter()
        try:
            status, reply = await self._transport.post(call.path, call.body, token)
        except ApiError as exc:
            exc.attempts = call.sent
            self._count_error(call, exc)
            self._record(_call_record(call, started, None, exc.code, exc.log_id))
            raise
        if status < 500:
            self.health.answered()
            self._report(call.interface, ticket, _is_rate_limit(reply))
        self._record(_call_record(call, started, status, reply.get("error_code"),
                                  log_id(reply)))
        return token, status, reply

    def _record(self, record: CallRecord) -> None:
        """The -vv line of one request (never the token) and the ``on_call`` hook."""
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s HTTP %s error_code %s %.0f ms attempt %d log_id %s", record.interface,
                      record.http_status or "-", record.error_code or "-", record.ms,
                      record.attempt, record.log_id or "-")
        if self.on_call is not None:
            self.on_call(record)

    def _report(self, interface: str, ticket: Ticket | None, limited: bool) -> None:
        """Tell the governor how the call of ``ticket`` was answered. A stand-in limiter
        (the shared QPS budget, pipeline/client/budget.py) has the same two methods and
        passes the ticket on to the process's governor for the interfaces it leaves to it;
        its ticket is None for the others, whose answers it has no use for."""
        if limited:
            self.limiter.on_limited(interface, ticket)
        elif ticket is not None:
            self.limiter.on_answered(interface, ticket)

    def _count_error(self, call: _Call, error: ApiError) -> None:
        error.attempts = call.sent
        self.stats.errors[error.code if error.code is not None else "client"] += 1

    def _on_retry(self, exc: ApiError, pause: float, interface: str) -> None:
        self.stats.retries += 1
        # str(ApiError) is "[code] message, log_id N": our words and the scrubbed error_msg
        log.info("%s: retry after %s; sleeping %.2f s", interface, exc, pause)

    # -- detection ------------------------------------------------------------------

    async def detect(self, image: bytes, *, max_face_num: int = 1,
                     face_fields: Sequence[str] = ()) -> DetectResult:
        """Faces in ``image`` (jpg/png/bmp bytes), largest first as the service sends them.

        ``max_face_num`` >= 1 (default 1); ``face_fields`` among age, beauty,
        expression, faceshape, gender, glasses, landmark, qualities.
        """
        return await self._faces("detect", image, max_face_num, face_fields, v.DETECT_FIELDS)

    async def faceverify(self, image: bytes, *, max_face_num: int = 1,
                         face_fields: Sequence[str] = ()) -> DetectResult:
        """Online liveness: faces with ``faceliveness`` when asked (fields: qualities,
        faceliveness)."""
        return await self._faces("faceverify", image, max_face_num, face_fields,
                                 v.FACEVERIFY_FIELDS)

    async def _faces(self, interface: str, image: bytes, max_face_num: int,
                     face_fields: Sequence[str], allowed: frozenset[str]) -> DetectResult:
        fields: Fields = [("image", self._image(image))]
        if _int_arg("max_face_num", max_face_num, 1) != 1:
            fields.append(("max_face_num", str(max_face_num)))
        if face_fields:
            fields.append(("face_fields", _fields_arg("face_fields", face_fields, allowed)))
        reply, attempts = await self._request(interface, fields)
        return DetectResult(parse_faces(reply), log_id(reply), attempts)

    # -- comparison and search --------------------------------------------------------

    async def match(self, images: Sequence[bytes], *, ext_fields: str | None = None,
                    image_liveness: str | None = None, types: str | None = None
                    ) -> MatchResult:
        """Similarity (0-100) of each pair of ``images`` (>= 2; indexes 0-based in order)."""
        images = list(images)
        _check("images", v.check_match_images(images))
        fields: Fields = [("images", b",".join(b64encode(img) for img in images))]
        if ext_fields:
            fields.append(("ext_fields",
                           _fields_arg("ext_fields", ext_fields, frozenset({"qualities"}))))
        if image_liveness:
            if image_liveness not in _IMAGE_LIVENESS:
                _invalid("image_liveness must be one of " + ", ".join(sorted(_IMAGE_LIVENESS)))
            fields.append(("image_liveness", image_liveness))
        if types:
            fields.append(("types", _types_arg(types, len(images))))
        reply, attempts = await self._request("match", fields)
        return MatchResult(parse_pairs(reply), log_id(reply), attempts, reply.get("ext_info"))

    async def identify(self, group_id: str | Sequence[str], image: bytes, *,
                       user_top_num: int = 1, ext_fields: str | None = None) -> IdentifyResult:
        """1:N search of ``image`` in the groups; at most ``user_top_num`` (1-5) users."""
        fields: Fields = [("group_id", _groups_arg(group_id)), ("image", self._image(image))]
        if _int_arg("user_top_num", user_top_num, 1, v.IDENTIFY_USER_TOP_MAX) != 1:
            fields.append(("user_top_num", str(user_top_num)))
        _liveness_ext(fields, ext_fields)
        reply, attempts = await self._request("identify", fields)
        return IdentifyResult(parse_candidates(reply), log_id(reply), attempts,
                              reply.get("ext_info"))

    async def verify(self, uid: str, group_id: str | Sequence[str], image: bytes, *,
                     top_num: int = 1, ext_fields: str | None = None) -> VerifyResult:
        """1:1 check of ``image`` against ``uid``: up to ``top_num`` scores (0-100)."""
        fields: Fields = [("uid", _uid(uid)), ("group_id", _groups_arg(group_id)),
                          ("image", self._image(image))]
        if _int_arg("top_num", top_num, 1) != 1:
            fields.append(("top_num", str(top_num)))
        _liveness_ext(fields, ext_fields)
        reply, attempts = await self._request("verify", fields)
        scores = tuple(_num(s) for s in _list(reply.get("result")))
        return VerifyResult(scores, log_id(reply), attempts, reply.get("ext_info"))

    async def multi_identify(self, group_id: str | Sequence[str], image: bytes, *,
                             detect_top_num: int = 1, user_top_num: int = 1,
                             ext_fields: str | None = None) -> IdentifyResult:
        """M:N: up to ``detect_top_num`` (1-10) faces, ``user_top_num`` (1-20) users each.

        Each candidate's ``position`` is the probe face's box.
        """
        fields: Fields = [("group_id", _groups_arg(group_id)), ("image", self._image(image))]
        if _int_arg("detect_top_num", detect_top_num, 1, v.MULTI_DETECT_TOP_MAX) != 1:
            fields.append(("detect_top_num", str(detect_top_num)))
        if _int_arg("user_top_num", user_top_num, 1, v.MULTI_USER_TOP_MAX) != 1:
            fields.append(("user_top_num", str(user_top_num)))
        _liveness_ext(fields, ext_fields)
        reply, attempts = await self._request("multi_identify", fields)
        return IdentifyResult(parse_candidates(reply), log_id(reply), attempts,
                              reply.get("ext_info"))

    # -- the face library -------------------------------------------------------------

    async def add_user(self, uid: str, user_info: str, group_id: str | Sequence[str],
                       image: bytes, *, action_type: str | None = None) -> WriteResult:
        """Register ``image`` for ``uid`` in the groups (created as needed).

        ``action_type``: None (the service's default, append), "append" or "replace"
        (replace all the uid's images). Image up to 10 MiB once encoded.
        """
        fields: Fields = [("uid", _uid(uid)), ("user_info", _user_info(user_info)),
                          ("group_id", _groups_arg(group_id)),
                          ("image", self._image(image, v.ADD_IMAGE_B64_MAX))]
        _action(fields, action_type, v.ADD_ACTIONS)
        return await self._write("add", fields)

    async def update_user(self, uid: str, user_info: str, group_id: str, image: bytes, *,
                          action_type: str | None = None) -> WriteResult:
        """Replace all images of ``uid`` in ``group_id`` (one id); ``action_type="replace"``
        registers an unknown uid instead of failing with 216612."""
        fields: Fields = [("uid", _uid(uid)), ("user_info", _user_info(user_info)),
                          ("group_id", _group_arg("group_id", group_id)),
                          ("image", self._image(image))]
        _action(fields, action_type, v.UPDATE_ACTIONS)
        return await self._write("update", fields)

    async def delete_user(self, uid: str, *, group_id: str | None = None) -> WriteResult:
        """Delete ``uid`` from every group, or only from ``group_id``."""
        fields: Fields = [("uid", _uid(uid))]
        if group_id is not None:
            fields.append(("group_id", _group_arg("group_id", group_id)))
        return await self._write("delete", fields)

    async def get_user(self, uid: str, *, group_id: str | None = None) -> UserResult:
        """One record per group ``uid`` is in (or only ``group_id``'s)."""
        fields: Fields = [("uid", _uid(uid))]
        if group_id is not None:
            fields.append(("group_id", _group_arg("group_id", group_id)))
        reply, attempts = await self._request("get", fields)
        return UserResult(parse_user_records(reply), log_id(reply), attempts)

    async def get_group_list(self, *, start: int = 0, num: int = 100) -> GroupListResult:
        """Group ids from index ``start`` (>= 0), at most ``num`` (1-1000)."""
        fields = _page(start, num)
        reply, attempts = await self._request("group_list", fields)
        ids = tuple(str(g) for g in _list(reply.get("result")))
        return GroupListResult(ids, log_id(reply), attempts)

    async def get_group_users(self, group_id: str, *, start: int = 0, num: int = 100
                              ) -> GroupUsersResult:
        """Users of ``group_id`` from index ``start`` (>= 0), at most ``num`` (1-1000)."""
        fields: Fields = [("group_id", _group_arg("group_id", group_id)), *_page(start, num)]
        reply, attempts = await self._request("group_users", fields)
        users = tuple(GroupUser(str(u.get("uid", "")), str(u.get("user_info", "")))
                      for u in _dicts(reply.get("result")))
        return GroupUsersResult(users, log_id(reply), attempts)

    async def add_group_user(self, src_group_id: str, group_id: str | Sequence[str],
                             uid: str) -> WriteResult:
        """Copy ``uid`` from ``src_group_id`` into the groups; 216100 "already add" raises
        AlreadyInGroupError."""
        fields: Fields = [("src_group_id", _group_arg("src_group_id", src_group_id)),
                          ("group_id", _groups_arg(group_id)), ("uid", _uid(uid))]
        return await self._write("group_add", fields)

    async def delete_group_user(self, group_id: str | Sequence[str], uid: str) -> WriteResult:
        """Remove ``uid`` from the groups; 216619 if that would leave it in none."""
        fields: Fields = [("group_id", _groups_arg(group_id)), ("uid", _uid(uid))]
        return await self._write("group_delete", fields)

    async def _write(self, interface: str, fields: Fields) -> WriteResult:
        reply, attempts = await self._request(interface, fields)
        return WriteResult(log_id(reply), attempts)

    # -- identity ---------------------------------------------------------------------

    async def person_verify(
        self, image: bytes, id_card_number: str, name: str, *, quality: bool = False,
        quality_conf: Mapping[str, Any] | None = None, faceliveness: bool = False,
        faceliveness_conf: Mapping[str, Any] | None = None, ext_fields: str | None = None,
    ) -> PersonVerifyResult:
        """Compare ``image`` with the ID-card photo; ``score`` is 0-1 (threshold 0.8).

        ``quality`` / ``faceliveness`` switch the checks on (sent as ``use``); their
        ``*_conf`` mappings are sent as JSON objects.
        """
        if not isinstance(id_card_number, str) or not id_card_number.strip():
            _invalid("id_card_number must be a non-empty string")
        if not isinstance(name, str) or not name.strip():
            _invalid("name must be a non-empty string")
        fields: Fields = [("image", self._image(image)), ("id_card_number", id_card_number),
                          ("name", name)]
        _person_options(fields, quality, quality_conf, faceliveness, faceliveness_conf)
        if ext_fields:
            fields.append(("ext_fields", _fields_arg(
                "ext_fields", ext_fields, frozenset({"faceliveness", "qualities"}))))
        reply, attempts = await self._request("person_verify", fields)
        ext = reply.get("ext_info")
        if isinstance(ext, str):  # typed "string" in the seed, an object in its example
            try:
                ext = json.loads(ext)
            except ValueError:
                pass
        return PersonVerifyResult(_num(reply.get("result")), log_id(reply), attempts, ext)


OPEN_TRIES = 3
_UNREACHABLE_HINT = "check --endpoint, and that the service or engine is running"


def _attempts(call: _Call) -> Attempts:
    c = call.causes
    return Attempts(call.sent, c[RATE_LIMIT], c[FAULT], c[OUTAGE])


def _http_status(exc: ApiError) -> int | None:
    """The HTTP status of a reply that was not the service's JSON (code "HTTPnnn")."""
    code = exc.code
    if isinstance(code, str) and code.startswith("HTTP") and code[4:].isdigit():
        return int(code[4:])
    return None


def _is_rate_limit(reply: Mapping[str, Any]) -> bool:
    return reply_code(reply) in (4, 18)


def _is_token_error(reply: Mapping[str, Any]) -> bool:
    return reply_code(reply) in TOKEN_CODES


# -- argument checks (raise InvalidInputError before anything is sent) ------------------


def _invalid(message: str) -> NoReturn:
    raise InvalidInputError(None, message, attempts=0)


def _check(name: str, reason: str | None) -> None:
    if reason is not None:
        _invalid(f"{name}: {v.REASON_TEXT.get(reason, reason)} ({reason})")


def _checked_b64(image: bytes, max_b64: int = v.IMAGE_B64_MAX) -> bytes:
    """Checked ``image`` as base64 bytes."""
    if not isinstance(image, (bytes, bytearray, memoryview)):
        _invalid(f"image must be bytes, not {type(image).__name__}")
    data = image if isinstance(image, bytes) else bytes(image)
    _check("image", v.check_image(data, max_b64_bytes=max_b64))
    return b64encode(data)


def _uid(uid: str) -> str:
    if not isinstance(uid, str):
        _invalid(f"uid must be a string, not {type(uid).__name__}")
    _check("uid", v.check_uid(uid))
    return uid


def _user_info(user_info: str) -> str:
    if not isinstance(user_info, str):
        _invalid(f"user_info must be a string, not {type(user_info).__name__}")
    _check("user_info", v.check_user_info(user_info))
    return user_info


def _groups_arg(group_id: str | Sequence[str]) -> str:
    if not isinstance(group_id, str) and not all(isinstance(g, str) for g in group_id):
        _invalid("group_id must be a string or a list of strings")
    joined = v.join_group_ids(group_id)
    _check("group_id", v.check_group_ids(joined))
    return joined


def _group_arg(name: str, group_id: str) -> str:
    if not isinstance(group_id, str):
        _invalid(f"{name} must be one group id (a string)")
    _check(name, v.check_group_id(group_id))
    return group_id


def _int_arg(name: str, value: int, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _invalid(f"{name} must be an integer, not {type(value).__name__}")
    if value < lo or (hi is not None and value > hi):
        rule = f"from {lo} to {hi}" if hi is not None else f"at least {lo}"
        _invalid(f"{name} must be {rule} (got {value})")
    return value


def _page(start: int, num: int) -> Fields:
    fields: Fields = []
    if _int_arg("start", start, 0) != 0:
        fields.append(("start", str(start)))
    if _int_arg("num", num, 1, v.PAGE_NUM_MAX) != 100:
        fields.append(("num", str(num)))
    return fields


def _fields_arg(name: str, value: str | Sequence[str], allowed: frozenset[str]) -> str:
    bad = v.check_fields(value, allowed)
    if bad is not None:
        _invalid(f"{name}: {bad!r} is not one of {', '.join(sorted(allowed))}")
    return value if isinstance(value, str) else ",".join(value)


def _liveness_ext(fields: Fields, ext_fields: str | None) -> None:
    if ext_fields:
        fields.append(("ext_fields",
                       _fields_arg("ext_fields", ext_fields, frozenset({"faceliveness"}))))


def _action(fields: Fields, action_type: str | None, allowed: frozenset[str]) -> None:
    if action_type is None:
        return
    if action_type not in allowed:
        _invalid(f"action_type must be one of {', '.join(sorted(allowed))} "
                 f"(got {action_type!r})")
    fields.append(("action_type", action_type))


def _types_arg(types: str, count: int) -> str:
    items = types.split(",")
    if len(items) != count or any(t.strip() not in _MATCH_TYPES for t in items):
        _invalid(f"types must give one of 7, 12, 13 per image, comma-separated "
                 f"({count} images; got {types!r})")
    return types


def _person_options(fields: Fields, quality: bool, quality_conf: Mapping[str, Any] | None,
                    faceliveness: bool, faceliveness_conf: Mapping[str, Any] | None) -> None:
    for name, on, conf in (("quality", quality, quality_conf),
                           ("faceliveness", faceliveness, faceliveness_conf)):
        if on:
            fields.append((name, "use"))
        if conf is not None:
            if not isinstance(conf, Mapping):
                _invalid(f"{name}_conf must be a mapping of thresholds")
            fields.append((f"{name}_conf", json.dumps(dict(conf), separators=(",", ":"))))


# -- reply parsing (pure, tolerant) ---------------------------------------------------


def log_id(reply: Mapping[str, Any]) -> int | None:
    """The reply's ``log_id`` as an int, or None when absent or not a whole number."""
    return parse_log_id(reply.get("log_id"))


def _qualities(raw: object) -> Qualities | None:
    if not isinstance(raw, dict):
        return None
    occ, kind = raw.get("occlusion"), raw.get("type")
    occ = occ if isinstance(occ, dict) else {}
    kind = kind if isinstance(kind, dict) else {}
    return Qualities(
        occlusion={str(k): _num(val) for k, val in occ.items()},
        blur=_num(raw.get("blur")), illumination=_num(raw.get("illumination")),
        completeness=_num(raw.get("completeness")),
        type={str(k): _num(val) for k, val in kind.items()},
    )


_FACE_KEYS = frozenset({"location", "face_probability", "rotation_angle", "yaw", "pitch",
                        "roll", "landmark", "landmark72", "qualities", "faceliveness"})


def parse_face(raw: Mapping[str, Any]) -> Face:
    """One element of a detect/faceverify ``result``; unknown fields go to ``extra``."""
    extra = {k: val for k, val in raw.items() if k not in _FACE_KEYS}
    if "expression_probablity" in extra:  # the seed example's spelling
        extra.setdefault("expression_probability", extra.pop("expression_probablity"))
    live = raw.get("faceliveness")
    return Face(
        location=_box(raw.get("location")), face_probability=_num(raw.get("face_probability")),
        rotation_angle=_num(raw.get("rotation_angle")), yaw=_num(raw.get("yaw")),
        pitch=_num(raw.get("pitch")), roll=_num(raw.get("roll")),
        landmark=_points(raw.get("landmark")), landmark72=_points(raw.get("landmark72")),
        qualities=_qualities(raw.get("qualities")),
        faceliveness=None if live is None else _num(live), extra=extra,
    )


def parse_faces(reply: Mapping[str, Any]) -> tuple[Face, ...]:
    return tuple(parse_face(raw) for raw in _dicts(reply.get("result")))


def parse_pairs(reply: Mapping[str, Any]) -> tuple[MatchPair, ...]:
    return tuple(MatchPair(int(_num(p.get("index_i"))), int(_num(p.get("index_j"))),
                           _num(p.get("score")))
                 for p in _dicts(reply.get("result")))


def parse_candidates(reply: Mapping[str, Any]) -> tuple[Candidate, ...]:
    """identify / multi-identify results; ``position`` only when the reply has one."""
    return tuple(
        Candidate(
            group_id=str(c.get("group_id", "")), uid=str(c.get("uid", "")),
            user_info=str(c.get("user_info", "")),
            scores=tuple(_num(s) for s in _list(c.get("scores"))),
            position=_box(c["position"]) if isinstance(c.get("position"), dict) else None,
        )
        for c in _dicts(reply.get("result"))
    )


def parse_user_records(reply: Mapping[str, Any]) -> tuple[UserRecord, ...]:
    """user get, in either shape: one record per group (``group_id``) or a ``groups`` list."""
    records: list[UserRecord] = []
    for raw in _dicts(reply.get("result")):
        uid, info = str(raw.get("uid", "")), str(raw.get("user_info", ""))
        if isinstance(raw.get("groups"), list):
            records.extend(UserRecord(uid, info, str(g)) for g in raw["groups"])
        else:
            records.append(UserRecord(uid, info, str(raw.get("group_id", ""))))
    return tuple(records)
