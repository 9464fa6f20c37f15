"""The engine's v3 paths over HTTP: envelope and gateway shapes, bodies, tokens, limits,
quality_control levels, emulation (v3 contract §1.4-§6)."""

from __future__ import annotations

import base64
import io
import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from PIL import Image

from pipeline import variants
from pipeline.engine.qualities import FaceQualities
from pipeline.engine.tokens import FaceTokens, TokenFace
from pipeline.engine.v3 import quality_failure

V3 = "/rest/2.0/face/v3/"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class V3Api:
    """An aiohttp session posting JSON (or form) bodies to the engine's v3 paths."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.session = aiohttp.ClientSession()
        self.token = ""

    async def __aenter__(self) -> V3Api:
        params = {"grant_type": "client_credentials", "client_id": self.server.api_key,
                  "client_secret": self.server.secret_key}
        async with self.session.get(self.server.url + "/oauth/2.0/token", params=params) as r:
            self.token = (await r.json())["access_token"]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def call(self, path: str, body: Any = None, *, token: str | None = None,
                   form: dict[str, str] | None = None) -> dict[str, Any]:
        params = {"access_token": self.token if token is None else token}
        kwargs: dict[str, Any] = {"data": form} if form is not None else {"json": body or {}}
        async with self.session.post(self.server.url + V3 + path, params=params,
                                     **kwargs) as resp:
            assert resp.status == 200
            return json.loads(await resp.read())


@pytest.fixture(scope="module")
def obama(samples_dir: Path) -> bytes:
    return (samples_dir / "obama_01.jpg").read_bytes()


def _group() -> str:
    return "v3_" + uuid.uuid4().hex[:10]


def _qualities(**changes: Any) -> FaceQualities:
    base: dict[str, Any] = {"blur": 0.1, "illumination": 150, "completeness": 1,
                            "occlusion": {p: 0.0 for p in ("left_eye", "right_eye", "nose",
                                                           "mouth", "left_cheek",
                                                           "right_cheek", "chin")}}
    occlusion = {**base["occlusion"], **changes.pop("occlusion", {})}
    return FaceQualities(**{**base, **changes, "occlusion": occlusion})


@pytest.mark.parametrize(("level", "changes", "code"), [
    ("NONE", {"blur": 1.0, "illumination": 0, "completeness": 0}, None),
    ("LOW", {"blur": 0.8, "illumination": 20}, None),  # equality passes
    ("LOW", {"blur": 0.81}, 223114),
    ("NORMAL", {"illumination": 39}, 223115),
    ("NORMAL", {"completeness": 0}, None),
    ("HIGH", {"completeness": 0}, 223116),
    ("HIGH", {"illumination": 99}, 223115),
    ("HIGH", {"occlusion": {"left_eye": 0.21}}, 223121),
    ("NORMAL", {"occlusion": {"chin": 0.61}}, 223125),
    ("NORMAL", {"occlusion": {"mouth": 0.7, "nose": 0.7}}, 223126),  # order: nose first
    ("LOW", {"occlusion": {"mouth": 0.8}}, None),
    ("HIGH", {"blur": 0.3, "illumination": 50}, 223114),  # blur checked before light
], ids=lambda v: str(v))
def test_quality_control_levels(level, changes, code):
    failure = quality_failure(_qualities(**changes), level)
    assert (failure.code if failure else None) == code


def test_face_tokens_expire_on_the_engine_clock():
    clock = [1000.0]
    tokens = FaceTokens(lambda: clock[0], ttl=3600, capacity=2)
    face = TokenFace("a" * 32, "sha", np.zeros(128, np.float32), None, {})
    tokens.put(face)
    clock[0] += 3599
    assert tokens.get(face.token) is face
    clock[0] += 1
    assert tokens.get(face.token) is None
    for name in "bcd":
        tokens.put(TokenFace(name * 32, "sha", np.zeros(128, np.float32), None, {}))
    assert tokens.get("b" * 32) is None and tokens.get("d" * 32) is not None  # capacity


@pytest.mark.dlib
async def test_envelope_gateway_shapes_and_bodies(engine, obama):
    async with V3Api(engine) as api:
        reply = await api.call("detect", {"image": b64(obama), "image_type": "BASE64"})
        assert set(reply) == {"error_code", "error_msg", "log_id", "timestamp", "cached",
                              "result"}
        assert 10**12 <= reply["log_id"] < 2**63
        form = await api.call("detect", form={"image": b64(obama), "image_type": "BASE64",
                                               "max_face_num": "2"})
        assert form["result"]["face_list"][0]["face_token"] == \
            reply["result"]["face_list"][0]["face_token"]
        assert await api.call("detect", {"image": b64(obama), "image_type": "BASE64"},
                              token="nope") == {
            "error_code": 110, "error_msg": "Access token invalid or no longer valid"}
        unknown = await api.call("nothing/here", {})
        assert set(unknown) == {"error_code", "error_msg"} and unknown["error_code"] == 3
        missing = await api.call("detect", {"image_type": "BASE64"})
        assert missing["error_code"] == 222001 and missing["result"] is None
        not_array = await api.call("match", {"image": b64(obama), "image_type": "BASE64"})
        assert not_array["error_code"] == 222208
        big = variants.to_bytes(Image.new("RGB", (2000, 800), "white"))
        assert (await api.call("detect", {"image": b64(big), "image_type": "BASE64"})
                )["error_code"] == 222013
        assert (await api.call("detect", {"image": "***", "image_type": "BASE64"})
                )["error_code"] == 222203
        bad_level = await api.call("search", {"image": b64(obama), "image_type": "BASE64",
                                              "group_id_list": "g", "quality_control": "MAX"})
        assert bad_level["error_code"] in (222019, 223100)


@pytest.mark.dlib
async def test_tokens_live_sixty_minutes(engine, obama):
    g = _group()
    # a picture registered nowhere else in the session (a registered one's token is
    # permanent: the same picture yields the same token)
    mirrored = Image.open(io.BytesIO(obama)).convert("RGB").transpose(
        Image.Transpose.FLIP_LEFT_RIGHT)
    mirrored.putpixel((0, 0), tuple(np.random.default_rng().integers(0, 255, 3).tolist()))
    obama = variants.to_bytes(mirrored, quality=90)
    async with V3Api(engine) as api:
        token = (await api.call("detect", {"image": b64(obama), "image_type": "BASE64"})
                 )["result"]["face_list"][0]["face_token"]
        engine.advance_clock(3601)
        try:
            expired = await api.call("faceset/user/add", {"image": token, "group_id": g,
                                                          "image_type": "FACE_TOKEN",
                                                          "user_id": "u"})
        finally:
            engine.advance_clock(-3601)
        assert expired["error_code"] == 222209
        added = await api.call("faceset/user/add", {"image": b64(obama), "group_id": g,
                                                    "image_type": "BASE64", "user_id": "u"})
        engine.advance_clock(10**6)
        try:  # registration tokens are permanent
            again = await api.call("detect", {"image": added["result"]["face_token"],
                                              "image_type": "FACE_TOKEN"})
        finally:
            engine.advance_clock(-10**6)
        assert again["error_code"] == 0


@pytest.mark.dlib
async def test_twenty_faces_per_user_and_group(engine, obama):
    g = _group()
    rng = np.random.default_rng(7)
    vecs = rng.normal(size=(20, 128)).astype(np.float32)
    engine.seed_faces(g, ["full"] * 20, vecs / np.linalg.norm(vecs, axis=1, keepdims=True))
    async with V3Api(engine) as api:
        body = {"image": b64(obama), "image_type": "BASE64", "group_id": g, "user_id": "full"}
        refused = await api.call("faceset/user/add", body)
        assert refused["error_code"] == 222210
        assert refused["error_msg"].startswith("the number of user's faces is beyond the limit")
        # the allowance is per group, and REPLACE starts the user over
        assert (await api.call("faceset/user/add", {**body, "group_id": _group()})
                )["error_code"] == 0
        assert (await api.call("faceset/user/add", {**body, "action_type": "REPLACE"})
                )["error_code"] == 0
        assert len((await api.call("faceset/face/getlist", {"user_id": "full", "group_id": g})
                    )["result"]["face_list"]) == 1


@pytest.mark.dlib
async def test_quality_control_over_http(engine, obama):
    dark = variants.to_bytes(variants.darkened(Image.open(io.BytesIO(obama)).convert("RGB"),
                                               0.12))
    g = _group()
    async with V3Api(engine) as api:
        body = {"image": b64(dark), "image_type": "BASE64", "group_id": g, "user_id": "d"}
        refused = await api.call("faceset/user/add", {**body, "quality_control": "HIGH"})
        assert 223113 <= refused["error_code"] <= 223127  # a quality rejection
        token = (await api.call("detect", {"image": b64(dark), "image_type": "BASE64",
                                           "face_field": "quality"}))["result"]["face_list"][0]
        assert token["quality"]["illumination"] < 100
        by_token = await api.call("faceset/user/add", {
            "image": token["face_token"], "image_type": "FACE_TOKEN", "group_id": g,
            "user_id": "d", "quality_control": "HIGH"})
        assert by_token["error_code"] == refused["error_code"]  # the token kept qualities
        assert (await api.call("faceset/user/add", body))["error_code"] == 0


@pytest.mark.dlib
async def test_emulation_on_v3_paths(engine, obama):
    # the v2 name's limit applies to the v3 path (its own window), as quota.py configures it
    engine.configure_emulation(qps={"group_getlist": 1}, reset=True)
    try:
        async with V3Api(engine) as api:
            replies = [await api.call("faceset/group/getlist", {}) for _ in range(4)]
            codes = [r.get("error_code") for r in replies]
        assert {"error_code": 18, "error_msg": "Open api qps request limit reached"} in replies
        assert 18 in codes
    finally:
        engine.configure_emulation(qps=None, reset=True)
    engine.configure_emulation(faults={"216400": 1.0}, seed=1)
    try:
        async with V3Api(engine) as api:
            reply = await api.call("faceset/group/getlist", {})
        assert reply["error_code"] == 222302 and reply["result"] is None  # v3's own code
    finally:
        engine.configure_emulation(faults={})
