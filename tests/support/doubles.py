"""A protocol double of the Baidu Face API v2: a real aiohttp server on 127.0.0.1:0.

It speaks the wire format of the contract (form-encoded POSTs, token query, JSON
replies) and answers what a test scripts, so the client meets every documented
error, delay and failure without the dlib engine. Use it through the ``double``
fixture (import it: ``from doubles import double  # noqa: F401``) or directly::

    async with ProtocolDouble() as double:
        settings = double.settings(read_timeout=0.5)        # endpoint + test credentials
        double.script("detect", error(18), error(18))        # then the default reply
        double.script("add", error(216100, "already add"))
        double.script("detect", http(500, "<html>oops</html>"), DROP, delay(2.0))
        ...
        assert double.token_fetches == 1
        assert double.calls("detect")[0].form["max_face_num"] == "10"

API
    ``url``                      base URL (``http://127.0.0.1:<port>``)
    ``settings(**overrides)``    :class:`Settings` pointing here with API_KEY/SECRET_KEY
    ``script(name, *replies)``   queue replies for an interface (canonical name such as
                                 ``"detect"``, ``"add"``, ``"group_add"``, or the HTTP path);
                                 each request takes the next one, then defaults resume
    ``script_token(*replies)``   the same for ``GET /oauth/2.0/token``
    ``default(name, reply)``     replace an interface's default success reply (a dict or
                                 a callable ``(Received) -> dict``)
    ``token_expires_in``         seconds put in token replies (default 2592000; None omits)
    ``token_scope``              the ``scope`` of token replies (contains brain_all_scope)
    ``token_fetches``            token requests answered so far
    ``revoke_tokens(code=110)``  every token issued so far is answered ``code`` (110/111)
    ``qps_limit[name] = q``      at most q accepted calls per sliding 1-s window, else 18
    ``quota(name, q, shape)``    a quota of q calls/s counted as ``shape`` ("bucket",
                                 "fixed" calendar seconds or "sliding", see
                                 pipeline/engine/windows.py); over it: 18
    ``storm(rates, seed)``       each admitted call draws a fault: rates per kind, e.g.
                                 ``{"18": .2, "4": .05, "http500": .02, "hang": .05}``
                                 ("hang": never answered; the client must time out)
    ``go_down(mode)``            the service is gone: "refuse" (nothing listens on the
                                 port), "drop" (connections closed unanswered) or "503";
                                 ``come_back()`` ends it (same port)
    ``requests``                 every API request received, as :class:`Received`
    ``last_log_id``              the ``log_id`` of the latest API reply
    ``calls(name)``              the requests of one interface

Replies (:class:`Reply`): a plain dict is sent as JSON with HTTP 200; ``error(code,
msg=None)`` is the documented error JSON (msg from the error table); ``http(status,
text)`` a raw non-JSON body; ``delay(seconds, then=None)`` waits first (longer than
the client's read timeout = a timeout); ``DROP`` closes the connection unanswered.
Token replies: ``token_error()`` (401 invalid_client), or any Reply/dict.

Controlled time: :class:`VirtualClockLoop` is an event loop whose clock jumps to the
next timer instead of waiting (``run_virtual(make_coro)`` runs a coroutine on one),
so rate-limiter tests measure exact rates in virtual seconds. It does no real I/O
waits, so do not start servers on it.

Every JSON reply carries a fresh ``log_id``. Wrong credentials on the token endpoint
get HTTP 401 ``{"error": "invalid_client", ...}`` as the real service.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import selectors
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import pytest
from aiohttp import web

from pipeline.api.errors import ERROR_TABLE
from pipeline.client.config import Secret, Settings
from pipeline.client.faceclient import PATHS
from pipeline.engine.windows import QuotaWindow, SlidingWindow, make_window

API_KEY = "double-api-key-3f9a"
SECRET_KEY = "double-secret-key-7c21"
TOKEN_PATH = "/oauth/2.0/token"
_NAMES = {path: name for name, path in PATHS.items()}


@dataclass(frozen=True)
class Reply:
    """One scripted answer: JSON (``body``) or raw ``text``, after ``delay`` seconds."""

    body: Any = None
    status: int = 200
    text: str | None = None
    delay: float = 0.0
    drop: bool = False


DROP = Reply(drop=True)


def error(code: int | str, msg: str | None = None, status: int = 200) -> Reply:
    """The documented error reply for ``code`` (message from the error table)."""
    message = msg if msg is not None else ERROR_TABLE[code][1]
    return Reply({"error_code": code, "error_msg": message}, status=status)


def http(status: int, text: str = "<html><body>Bad Gateway</body></html>") -> Reply:
    """A non-JSON body with ``status``."""
    return Reply(status=status, text=text)


def delay(seconds: float, then: Reply | dict[str, Any] | None = None) -> Reply:
    """Wait ``seconds``, then answer ``then`` (default: the interface's default reply)."""
    base = then if isinstance(then, Reply) else Reply(then)
    return Reply(base.body, base.status, base.text, seconds, base.drop)


def token_error() -> Reply:
    """What the real token endpoint answers to unknown credentials."""
    return Reply({"error": "invalid_client", "error_description": "unknown client id"}, 401)


@dataclass(frozen=True)
class Received:
    """One API request as the double saw it (the token is kept: it is the double's own)."""

    path: str
    name: str | None  # canonical interface name, None for unknown paths
    form: dict[str, str]
    query: dict[str, str]  # without access_token
    token: str | None
    body: bytes
    content_type: str
    at: float  # loop time


@dataclass
class _State:
    scripts: dict[str, deque[Reply]] = field(default_factory=lambda: defaultdict(deque))
    token_script: deque[Reply] = field(default_factory=deque)
    defaults: dict[str, Any] = field(default_factory=dict)
    tokens: dict[str, int | None] = field(default_factory=dict)  # token -> revoked with code
    windows: dict[str, QuotaWindow] = field(default_factory=dict)


class ProtocolDouble:
    """The server; see the module docstring for its API."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[Received] = []
        self.token_fetches = 0
        self.last_log_id: int | None = None
        self.token_expires_in: int | None = 2592000
        self.token_scope = "public brain_all_scope vis-faceverify_faceverify"
        self.qps_limit: dict[str, float] = {}
        self.down: str | None = None
        self.storm_counts: dict[str, int] = defaultdict(int)
        self._storm: tuple[dict[str, float], random.Random] | None = None
        self._site: web.TCPSite | None = None
        self._port = 0
        self._state = _State()
        self._log_ids = itertools.count(1_000_001)
        self._token_ids = itertools.count(1)
        self._runner: web.AppRunner | None = None

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> ProtocolDouble:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_get(TOKEN_PATH, self._token)
        app.router.add_post("/{tail:.*}", self._api)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.2,
                                     access_log=None)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await self._site.start()
        self._port = self._site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{self._port}"
        return self

    async def go_down(self, mode: str = "refuse") -> None:
        """The service is gone until :meth:`come_back` (see the module docstring)."""
        if mode not in ("refuse", "drop", "503"):
            raise ValueError(f"unknown outage mode {mode!r}")
        self.down = mode
        if mode == "refuse" and self._site is not None:
            await self._site.stop()  # the listening socket closes: connections are refused
            self._site = None

    async def come_back(self) -> None:
        if self.down == "refuse":
            assert self._runner is not None
            self._site = web.TCPSite(self._runner, "127.0.0.1", self._port)
            await self._site.start()
        self.down = None

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> ProtocolDouble:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- scripting --------------------------------------------------------------------

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {"endpoint": self.url, "api_key": Secret(API_KEY),
                                  "secret_key": Secret(SECRET_KEY), "read_timeout": 5.0,
                                  "connect_timeout": 2.0}
        values.update(overrides)
        return Settings(**values)

    def script(self, name: str, *replies: Reply | dict[str, Any]) -> None:
        queue = self._state.scripts[_name(name)]
        queue.extend(r if isinstance(r, Reply) else Reply(r) for r in replies)

    def script_token(self, *replies: Reply | dict[str, Any]) -> None:
        self._state.token_script.extend(r if isinstance(r, Reply) else Reply(r) for r in replies)

    def default(self, name: str, reply: dict[str, Any] | Callable[[Received], dict]) -> None:
        self._state.defaults[_name(name)] = reply

    def quota(self, name: str, q: float, shape: str = "sliding") -> None:
        """Admit at most ``q`` calls/s to ``name``, counted as ``shape``; others get 18."""
        self._state.windows[_name(name)] = make_window(shape, q)

    def storm(self, rates: dict[str, float], seed: int = 1) -> None:
        """Admitted calls draw a fault at these rates (codes, "http500", "hang")."""
        self._storm = (dict(rates), random.Random(seed))

    def revoke_tokens(self, code: int = 110) -> None:
        for tok in self._state.tokens:
            self._state.tokens[tok] = code

    def calls(self, name: str) -> list[Received]:
        key = _name(name)
        return [r for r in self.requests if r.name == key or r.path == key]

    # -- handlers ---------------------------------------------------------------------

    async def _outage(self, request: web.Request) -> web.StreamResponse | None:
        """While down: drop the connection or answer 503 (refuse needs no handler)."""
        if self.down is None:
            return None
        if self.down == "503":
            return web.Response(status=503, text="<html>Service Unavailable</html>",
                                content_type="text/html")
        return await self._answer(request, DROP, None)

    async def _token(self, request: web.Request) -> web.StreamResponse:
        gone = await self._outage(request)
        if gone is not None:
            return gone
        self.token_fetches += 1
        if self._state.token_script:
            return await self._answer(request, self._state.token_script.popleft(), None)
        q = request.query
        if (q.get("grant_type") != "client_credentials" or q.get("client_id") != API_KEY
                or q.get("client_secret") != SECRET_KEY):
            return await self._answer(request, token_error(), None)
        token = f"24.double{next(self._token_ids)}.{int(time.time())}.tok"
        self._state.tokens[token] = None
        body: dict[str, Any] = {"access_token": token, "scope": self.token_scope,
                                "refresh_token": "25.refresh", "session_key": "sk",
                                "session_secret": "ss"}
        if self.token_expires_in is not None:
            body["expires_in"] = self.token_expires_in
        return web.json_response(body)

    async def _api(self, request: web.Request) -> web.StreamResponse:
        gone = await self._outage(request)
        if gone is not None:
            return gone
        raw = await request.read()
        received = _received(request, raw)
        self.requests.append(received)
        revoked = self._state.tokens.get(received.token or "", 110)
        if revoked is not None:
            return await self._answer(request, error(revoked), received)
        key = received.name or received.path
        if self._state.scripts.get(key):
            return await self._answer(request, self._state.scripts[key].popleft(), received)
        if self._over_limit(key, asyncio.get_running_loop().time()):
            return await self._answer(request, error(18), received)
        return await self._answer(request, self._storm_reply(), received)

    def _over_limit(self, key: str, now: float) -> bool:
        window = self._state.windows.get(key)
        if window is None and key in self.qps_limit:
            window = self._state.windows[key] = SlidingWindow(self.qps_limit[key])
        return window is not None and not window.admit(now)

    def _storm_reply(self) -> Reply:
        if self._storm is None:
            return Reply()
        rates, rng = self._storm
        draw = rng.random()
        for kind, rate in rates.items():
            if draw < rate:
                self.storm_counts[kind] += 1
                if kind == "hang":
                    return delay(3600.0)  # never answered: the client times out
                if kind == "http500":
                    return http(500, "<html>Internal Server Error</html>")
                return error(int(kind))
            draw -= rate
        return Reply()

    async def _answer(self, request: web.Request, reply: Reply,
                      received: Received | None) -> web.StreamResponse:
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.drop:
            assert request.transport is not None
            request.transport.abort()  # no status line, no body: a dropped connection
            return web.Response()
        if reply.text is not None:
            return web.Response(status=reply.status, text=reply.text, content_type="text/html")
        body = reply.body if reply.body is not None else self._default_body(received)
        if isinstance(body, dict) and received is not None:
            body = {"log_id": next(self._log_ids), **body}
            self.last_log_id = body["log_id"]
        return web.Response(status=reply.status, text=json.dumps(body),
                            content_type="application/json")

    def _default_body(self, received: Received | None) -> dict[str, Any]:
        assert received is not None
        custom = self._state.defaults.get(received.name or received.path)
        if custom is not None:
            return custom(received) if callable(custom) else dict(custom)
        return default_reply(received)


def _name(name: str) -> str:
    if name.startswith("/"):
        return _NAMES.get(name, name)
    from pipeline.client.ratelimit import canonical_interface  # noqa: PLC0415

    return canonical_interface(name)


def _received(request: web.Request, raw: bytes) -> Received:
    query = {k: v for k, v in request.query.items() if k != "access_token"}
    return Received(
        path=request.path, name=_NAMES.get(request.path),
        form=dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True)),
        query=query, token=request.query.get("access_token"), body=raw,
        content_type=request.headers.get("Content-Type", ""),
        at=asyncio.get_running_loop().time(),
    )


# -- documented success replies (contract §3 examples) ----------------------------------

FACE = {
    "location": {"left": 117, "top": 131, "width": 172, "height": 170},
    "face_probability": 1, "rotation_angle": 2, "yaw": -0.34859421849251,
    "pitch": 2.3033397197723, "roll": 1.9135693311691,
    "qualities": {
        "occlusion": {"left_eye": 0, "right_eye": 0, "nose": 0, "mouth": 0,
                      "left_cheek": 0.0064102564938366, "right_cheek": 0.0057411273010075,
                      "chin": 0},
        "blur": 1.1886881756684e-10, "illumination": 141, "completeness": 1,
        "type": {"human": 0.99935841560364, "cartoon": 0.00064159056637436},
    },
}
_CANDIDATE = {"group_id": "test1", "uid": "u333333", "user_info": "Test User",
              "scores": [99.3, 83.4]}
_POSITION = {"left": 726.99188232422, "top": 288.37701416016, "width": 44, "height": 42,
             "degree": -4, "prob": 0.91117089986801}


def default_reply(received: Received) -> dict[str, Any]:
    """The documented success body for ``received``'s interface (without ``log_id``)."""
    name = received.name
    if name in ("detect", "faceverify"):
        return {"result_num": 1, "result": [FACE]}
    if name == "match":
        n = len(received.form.get("images", "").split(","))
        pairs = [{"index_i": i, "index_j": j, "score": 44.3}
                 for i in range(n) for j in range(i + 1, n)]
        return {"result_num": len(pairs), "result": pairs}
    if name == "identify":
        return {"result_num": 1, "result": [_CANDIDATE]}
    if name == "multi_identify":
        return {"result_num": 1, "result": [{**_CANDIDATE, "scores": [99.3],
                                             "position": _POSITION}]}
    if name == "verify":
        return {"result_num": 2, "result": [99.3, 83.6]}
    if name == "get":
        return {"result_num": 2, "result": [
            {"uid": received.form.get("uid", ""), "user_info": "info 1", "group_id": "grep1"},
            {"uid": received.form.get("uid", ""), "user_info": "info 2", "group_id": "grep2"}]}
    if name == "group_list":
        return {"result_num": 2, "result": ["grp1", "grp2"]}
    if name == "group_users":
        return {"result_num": 2, "result": [{"uid": "uid1", "user_info": "user info 1"},
                                            {"uid": "uid2", "user_info": "user info 2"}]}
    if name == "person_verify":
        return {"result": 0.03419, "ext_info": {"faceliveness": 0.834963}}
    return {}  # write interfaces: log_id only


@pytest.fixture
async def double() -> AsyncIterator[ProtocolDouble]:
    """A started :class:`ProtocolDouble` in the test's event loop."""
    async with ProtocolDouble() as server:
        yield server


# -- a controlled clock -------------------------------------------------------------

T = TypeVar("T")


class _FastForwardSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """Polls without blocking; where the loop would sleep until a timer, jumps the clock."""

    loop: VirtualClockLoop

    def select(self, timeout: float | None = None) -> list[Any]:
        events = super().select(0)
        if timeout is None:  # no timer at all: only real I/O can wake the loop
            return events or super().select(None)
        # Each loop pass costs 1 us, as on a real machine; without it a timer due a few
        # ulps from now (the limiter's float arithmetic) would spin the loop forever.
        self.loop.now += 1e-6 if events else max(timeout, 1e-6)
        return events


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose ``time()`` starts at 0 and advances only to the next timer."""

    def __init__(self) -> None:
        self.now = 0.0
        selector = _FastForwardSelector()
        super().__init__(selector)
        selector.loop = self

    def time(self) -> float:
        return self.now


def run_virtual(make: Callable[[], Awaitable[T]]) -> T:
    """Run ``make()`` to completion on a fresh :class:`VirtualClockLoop`."""
    loop = VirtualClockLoop()
    try:
        return loop.run_until_complete(make())  # type: ignore[arg-type]
    finally:
        loop.close()
