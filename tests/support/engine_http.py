"""Plain-aiohttp helper for the engine tests: fetch a token, POST a face call, encode images."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image

from pipeline import variants

API = "/rest/2.0/face/v2/"


def b64(data: bytes | Image.Image | Path) -> str:
    """Base64 text of file bytes, a PIL image (as JPEG) or a file path."""
    if isinstance(data, Path):
        data = data.read_bytes()
    if isinstance(data, Image.Image):
        data = variants.to_bytes(data, "JPEG")
    return base64.b64encode(data).decode()


class Api:
    """One aiohttp session against a running engine, with a token fetched on first use."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.session = aiohttp.ClientSession()
        self.token: str | None = None

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def get_token(self, client_id: str | None = None, client_secret: str | None = None):
        """(HTTP status, JSON body) of a token request; a granted token becomes the default."""
        params = {"grant_type": "client_credentials",
                  "client_id": self.server.api_key if client_id is None else client_id,
                  "client_secret": self.server.secret_key if client_secret is None
                  else client_secret}
        async with self.session.get(self.server.url + "/oauth/2.0/token", params=params) as r:
            body = await r.json()
        if r.status == 200:
            self.token = body["access_token"]
        return r.status, body

    async def call(self, path: str, token: str | None = None, **fields: str) -> dict[str, Any]:
        """POST a face interface (form-encoded, like the SDK) and return the JSON reply."""
        if token is None:
            if self.token is None:
                self.token = (await self.get_token())[1]["access_token"]
            token = self.token
        params = {"access_token": token} if token else {}
        async with self.session.post(self.server.url + API + path, params=params,
                                     data=fields) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()
