"""A protocol double of the Baidu Face API v3: a real aiohttp server on 127.0.0.1:0.

It answers ``GET /oauth/2.0/token`` and every v3 path with what a test scripts (JSON
dicts sent as HTTP 200), else a success envelope with an empty result, and records each
request: its query, content type and decoded JSON body. ``envelope(result)`` builds a
success reply, ``v3_error(code)`` a service error (the full envelope, ``result: null``),
``gateway(code)`` the two-field gateway shape. Log ids are above 2^53.

    async with V3Double() as double:
        double.script("detect", gateway(18), envelope({...}))
        async with FaceClientV3(double.settings()) as client: ...
        assert double.requests[0].query["aipVersion"] == "4.15.13"
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from pipeline.api.errors import V3_ERROR_TABLE
from pipeline.client.config import Secret, Settings
from pipeline.client.v3 import PATHS

API_KEY = "v3-double-api-key-1b2c"
SECRET_KEY = "v3-double-secret-key-9d8e"
_NAMES = {path: name for name, path in PATHS.items()}
_LOG_IDS = itertools.count(2**60 + 12345)


def envelope(result: Any = None) -> dict[str, Any]:
    return {"error_code": 0, "error_msg": "SUCCESS", "log_id": next(_LOG_IDS),
            "timestamp": 1700000000, "cached": 0, "result": result}


def v3_error(code: int, message: str | None = None) -> dict[str, Any]:
    return {"error_code": code, "error_msg": message or V3_ERROR_TABLE[code][1],
            "log_id": next(_LOG_IDS), "timestamp": 1700000000, "cached": 0, "result": None}


def gateway(code: int) -> dict[str, Any]:
    return {"error_code": code, "error_msg": V3_ERROR_TABLE[code][1]}


@dataclass(frozen=True)
class Received:
    name: str
    query: dict[str, str]
    content_type: str
    body: Any


class V3Double:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.token_fetches = 0
        self._scripts: dict[str, deque[dict[str, Any]]] = defaultdict(deque)
        self._runner: web.AppRunner | None = None
        self.url = ""

    def script(self, name: str, *replies: dict[str, Any]) -> None:
        self._scripts[name].extend(replies)

    def settings(self, **overrides: Any) -> Settings:
        return Settings(endpoint=self.url, api_key=Secret(API_KEY),
                        secret_key=Secret(SECRET_KEY), **overrides)

    def calls(self, name: str) -> list[Received]:
        return [r for r in self.requests if r.name == name]

    async def __aenter__(self) -> V3Double:
        app = web.Application()
        app.router.add_get("/oauth/2.0/token", self._token)
        app.router.add_post("/{tail:.*}", self._call)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _token(self, request: web.Request) -> web.Response:
        self.token_fetches += 1
        return web.json_response({"access_token": f"24.v3double.{self.token_fetches}",
                                  "expires_in": 2592000, "scope": "public brain_all_scope"})

    async def _call(self, request: web.Request) -> web.Response:
        name = _NAMES.get(request.path, request.path)
        raw = await request.read()
        self.requests.append(Received(name, dict(request.query), request.content_type,
                                      json.loads(raw) if raw else None))
        queue = self._scripts.get(name)
        return web.json_response(queue.popleft() if queue else envelope(None))
