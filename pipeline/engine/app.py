"""The engine's aiohttp application: token endpoint, the face interfaces, admin endpoints.

The v2 interfaces live under ``/rest/2.0/face/v2/`` (interfaces.py) and the v3 ones under
``/rest/2.0/face/v3/`` (v3.py), beside each other on one faceset; the v3 specifics of
this file (envelope, gateway shape, JSON bodies) are in :func:`_v3_call`.

Order of work for a face call (``POST /rest/2.0/face/v2/<path>``):

1. a fresh random uint64 ``log_id`` (on every reply, errors included);
2. the token: ``access_token`` missing or unknown -> 110, expired -> 111;
3. emulation (QPS 18, quota 17, injected faults; emulation.py) - before any work;
4. the form body (``client_max_size`` 25 MiB; larger -> 216103 param too long, as JSON
   on every endpoint, the token and admin ones included);
5. the interface (interfaces.py); API errors are HTTP 200 JSON (contract §1.5). With the
   shared PostgreSQL store the interface and the token lookup run on the engine's store
   threads (:meth:`EngineState.run`), so a slow query never stalls the loop.

Anything unexpected becomes 216401 ``internal error`` as JSON, never a traceback. Unknown
paths answer HTTP 200 with 216102 ``service not support: unknown path ...`` and a log_id.

``/oauth/2.0/token`` (GET or POST, ``grant_type=client_credentials``, ``client_id``,
``client_secret``) issues tokens that expire after ``token_ttl`` seconds (tokens are
stored in SQLite, so they survive a restart). Bad credentials: HTTP 401
``{"error": "invalid_client", "error_description": "unknown client id"}``.

``/admin/emulation`` (GET shows, POST JSON merges) and ``/admin/stats`` answer only to
loopback peers; others get HTTP 403.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from pipeline.api.errors import GATEWAY_CODES, V3_ERROR_TABLE, error_message
from pipeline.engine.interfaces import INTERFACES, Params, Reply
from pipeline.engine.params import Failure
from pipeline.engine.scoring import scoring_model
from pipeline.engine.state import EngineState
from pipeline.engine.v3 import V3_INTERFACES

log = logging.getLogger("faceflow.engine")

API_PREFIX = "/rest/2.0/face/v2/"
V3_PREFIX = "/rest/2.0/face/v3/"
V3_REQUEST_LIMIT = 10 * 2**20  # "the whole request below 10M" (v3 contract §5)
#: v2 codes raised by shared code (image decoding, the model pool) or configured as
#: faults, as v3 answers them; any other v2 code becomes 222302 "system error".
V2_TO_V3 = {216200: 222203, 216201: 222203, 216202: 222013, 216402: 222202,
            216401: 222302, 216400: 222302, 216500: 222302, 216300: 222302}
CLIENT_MAX_SIZE = 25 * 2**20
SCOPE = "public brain_all_scope vis-faceverify_faceverify_v2 brain_face_match"


STATE: web.AppKey[EngineState] = web.AppKey("state", EngineState)


def new_log_id() -> int:
    """A random uint64 request id (64 random bits: collisions are negligible)."""
    return secrets.randbits(64)


def is_loopback(remote: str | None) -> bool:
    """True when the peer address is a loopback address (127.0.0.0/8, ::1)."""
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote.split("%")[0]).is_loopback
    except ValueError:
        return False


def create_app(state: EngineState) -> web.Application:
    """The aiohttp application for ``state`` (its pool must be started by the caller)."""
    app = web.Application(client_max_size=CLIENT_MAX_SIZE, middlewares=[_scored, _safety])
    app[STATE] = state
    app.router.add_route("*", "/oauth/2.0/token", _token)
    for name, (path, handler) in INTERFACES.items():
        app.router.add_post(API_PREFIX + path, _face_call(name, handler))
    for name, (path, handler, array) in V3_INTERFACES.items():
        app.router.add_post(V3_PREFIX + path, _v3_call(name, handler, array))
    app.router.add_route("*", "/admin/emulation", _admin_emulation)
    app.router.add_get("/admin/stats", _admin_stats)
    app.router.add_route("*", "/{tail:.*}", _unknown_path)
    return app


def _error_reply(code: int, message: str, log_id: int | None = None) -> web.Response:
    body = {"error_code": code, "error_msg": message, "log_id": log_id or new_log_id()}
    return web.json_response(body)


@web.middleware
async def _scored(request: web.Request, handler: Callable[[web.Request], Awaitable]):
    # Scores of this request follow the engine's model (scoring.py: one curve per model).
    with scoring_model(request.app[STATE].config.model):
        return await handler(request)


@web.middleware
async def _safety(request: web.Request, handler: Callable[[web.Request], Awaitable]):
    if request.path.startswith(V3_PREFIX):
        return await _v3_safety(request, handler)
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed:
        return _error_reply(216102, f"service not support: use POST for {request.path}")
    except web.HTTPRequestEntityTooLarge:
        # The token and admin endpoints read their own bodies; aiohttp's 413 is plain
        # text, and every reply of the engine is JSON (contract §1.5).
        too_long = Failure(216103, "the request body is over 25M")
        return _error_reply(too_long.code, too_long.message)
    except web.HTTPException:
        raise
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unexpected error on %s", request.path)
        return _error_reply(216401, "internal error")


def _face_call(name: str, handler: Callable[[EngineState, Params], Awaitable[Reply]]):
    async def call(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        log_id = new_log_id()
        state.calls[name] += 1
        state.request_bytes[name] += request.content_length or 0
        try:
            early = await _gate(request, state, name)
            if early is not None:
                return early
            params = await _form(request)
            reply = await state.run(lambda: handler(state, params))
        except Failure as failure:
            state.errors[str(failure.code)] += 1
            return _error_reply(failure.code, failure.message, log_id)
        return web.json_response({**reply, "log_id": log_id})

    return call


async def _gate(request: web.Request, state: EngineState, name: str) -> web.StreamResponse | None:
    """Token check, then emulation; returns a reply to send instead of doing the work."""
    await _check_token(state, request.query.get("access_token", ""))
    verdict = state.emulation.admit(name)
    if verdict.kind == "error":
        raise Failure(int(verdict.code or 0))
    if verdict.kind == "slow":
        await asyncio.sleep(verdict.delay)
    elif verdict.kind == "http500":
        state.errors["http500"] += 1
        return web.Response(status=500, text="500 Internal Server Error (injected)")
    elif verdict.kind == "drop":
        state.errors["drop"] += 1
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError  # nothing more to send on a dropped connection
    return None


async def _check_token(state: EngineState, token: str) -> None:
    expires = await state.call(state.store.token_expiry, token) if token else None
    if expires is None:
        raise Failure(110)
    if expires <= state.now():
        raise Failure(111)


async def _form(request: web.Request) -> dict[str, str]:
    try:
        form = await request.post()
    except web.HTTPRequestEntityTooLarge:
        raise Failure(216103, "the request body is over 25M") from None
    except (ValueError, UnicodeDecodeError):
        raise Failure(216100, "the body is not a form-encoded request") from None
    return {key: value for key, value in form.items() if isinstance(value, str)}


# -- v3 -----------------------------------------------------------------------------------


def new_v3_log_id() -> int:
    """A random log_id in [10^12, 2^63): clients meet values above 2^53 (v3 contract §1.5)."""
    return 10**12 + secrets.randbelow(2**63 - 10**12)


def v3_error_reply(code: int, message: str, log_id: int | None = None,
                   now: float | None = None) -> web.Response:
    """Gateway codes: only error_code and error_msg; others the envelope, result null."""
    if code in GATEWAY_CODES:
        return web.json_response({"error_code": code, "error_msg": message})
    return web.json_response({
        "error_code": code, "error_msg": message, "log_id": log_id or new_v3_log_id(),
        "timestamp": int(now if now is not None else time.time()), "cached": 0,
        "result": None})


def _as_v3(failure: Failure) -> Failure:
    if failure.code in V3_ERROR_TABLE:
        return failure
    code = V2_TO_V3.get(failure.code, 222302)
    detail = failure.message.partition(": ")[2]
    return Failure(code, detail)


async def _v3_safety(request: web.Request, handler: Callable[[web.Request], Awaitable]):
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed:
        return v3_error_reply(3, f"{error_message(3)}: use POST for {request.path}")
    except web.HTTPRequestEntityTooLarge:
        return v3_error_reply(222013, f"{error_message(222013)}: the request is over 10M")
    except web.HTTPException:
        raise
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unexpected error on %s", request.path)
        return v3_error_reply(222302, error_message(222302))


def _v3_call(name: str, handler: Callable[[EngineState, Any], Awaitable[Any]], array: bool):
    """One v3 interface: token, emulation, body, handler, envelope (v3 contract §1.5)."""
    interface = f"v3/{name}"

    async def call(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE]
        log_id = new_v3_log_id()
        arrived = state.now()
        state.calls[interface] += 1
        state.request_bytes[interface] += request.content_length or 0
        try:
            early = await _gate(request, state, interface)
            if early is not None:
                return early
            body = await _v3_body(request, array)
            result = await state.run(lambda: handler(state, body))
        except Failure as failure:
            failure = _as_v3(failure)
            state.errors[str(failure.code)] += 1
            return v3_error_reply(failure.code, failure.message, log_id, arrived)
        return web.json_response({"error_code": 0, "error_msg": "SUCCESS", "log_id": log_id,
                                  "timestamp": int(arrived), "cached": 0, "result": result})

    return call


async def _v3_body(request: web.Request, array: bool) -> object:
    """JSON (object, or array for match/faceverify) or a form body on object paths."""
    raw = await request.read()
    if len(raw) > V3_REQUEST_LIMIT:
        raise Failure(222013, "the request is over 10M")
    if request.content_type == "application/x-www-form-urlencoded" and not array:
        form = await request.post()
        return {key: value for key, value in form.items() if isinstance(value, str)}
    try:
        body = json.loads(raw) if raw else {}
    except (ValueError, UnicodeDecodeError):
        raise Failure(222001, "the body is not JSON") from None
    if array:
        return body  # the handler checks the array's shape (222208)
    if not isinstance(body, dict):
        raise Failure(222001, "send a JSON object")
    return body


async def _token(request: web.Request) -> web.Response:
    state = request.app[STATE]
    args: dict[str, str] = dict(request.query)
    if request.method == "POST":
        args.update({k: v for k, v in (await request.post()).items() if isinstance(v, str)})
    if args.get("grant_type") != "client_credentials":
        return web.json_response({"error": "unsupported_grant_type",
                                  "error_description": "unsupported grant type"}, status=400)
    if not _same(args.get("client_id", ""), state.config.api_key):
        return web.json_response({"error": "invalid_client",
                                  "error_description": "unknown client id"}, status=401)
    if not _same(args.get("client_secret", ""), state.config.secret_key):
        return web.json_response({"error": "invalid_client",
                                  "error_description": "Client authentication failed"}, status=401)
    ttl = state.config.token_ttl
    token = f"24.{secrets.token_hex(16)}.{int(ttl)}.{int(state.now())}-faceflow"
    await state.call(state.store.put_token, token, state.now() + ttl)
    return web.json_response({
        "refresh_token": f"25.{secrets.token_hex(16)}.315360000.{int(state.now())}-faceflow",
        "expires_in": max(1, int(ttl)),
        "session_key": secrets.token_hex(24),
        "access_token": token,
        "scope": SCOPE,
        "session_secret": secrets.token_hex(16),
    })


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _loopback_only(request: web.Request) -> None:
    if not is_loopback(request.remote):
        raise web.HTTPForbidden(text="admin endpoints answer loopback peers only")


async def _admin_emulation(request: web.Request) -> web.Response:
    _loopback_only(request)
    state = request.app[STATE]
    if request.method == "POST":
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ValueError("send a JSON object")
            state.emulation.configure(changes)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
    elif request.method != "GET":
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "POST"])
    return web.json_response(state.emulation.config.as_json())


async def _admin_stats(request: web.Request) -> web.Response:
    _loopback_only(request)
    state = request.app[STATE]
    return web.json_response(await state.call(state.stats))


async def _unknown_path(request: web.Request) -> web.Response:
    if request.path.startswith(V3_PREFIX):
        return v3_error_reply(3, f"{error_message(3)}: {request.path}")
    return _error_reply(216102, f"service not support: unknown path {request.path}")
