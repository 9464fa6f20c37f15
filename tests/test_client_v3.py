"""FaceClientV3 over real HTTP: against the v3 protocol double (wire format, error table,
gateway shape, retries) and against the engine (every v3 interface end to end)."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import pytest
from PIL import Image
from support.v3_double import V3Double, envelope, gateway, v3_error

from pipeline.api import errors as E
from pipeline.api.errors import V3_ERROR_TABLE
from pipeline.client.config import Secret, Settings
from pipeline.client.faceclient import FaceClient
from pipeline.client.retry import RetryPolicy
from pipeline.client.v3 import FaceClientV3
from pipeline.engine.server import EngineServer


async def no_sleep(_: float) -> None:
    return None


FAST = RetryPolicy(max_attempts=3, sleep=no_sleep)


def jpeg(size: tuple[int, int] = (64, 64)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (120, 90, 60)).save(out, "JPEG")
    return out.getvalue()


FACE = {"face_token": "a" * 32, "face_probability": 0.99,
        "location": {"left": 1.5, "top": 2, "width": 30, "height": 31, "rotation": -3},
        "angle": {"yaw": 1, "pitch": 2, "roll": 3},
        "quality": {"occlusion": {"left_eye": 0, "chin_contour": 0.4}, "blur": 0.1,
                    "illumination": 120, "completeness": 1}}


async def test_wire_format_json_bodies_and_query():
    async with V3Double() as double:
        double.script("detect", envelope({"face_num": 1, "face_list": [FACE]}))
        async with FaceClientV3(double.settings(), retry=FAST) as client:
            found = await client.detect(jpeg(), face_field=["quality"], max_face_num=2)
            await client.match(jpeg(), "b" * 32)
            await client.add_user("c" * 32, "g1", "u1", user_info="Ada")
        face = found.faces[0]
        assert face.face_token == "a" * 32 and face.rotation_angle == -3 and face.roll == 3
        assert face.qualities is not None and face.qualities.occlusion["chin"] == 0.4
        assert found.log_id is not None and found.log_id > 2**53  # exact 64-bit int
        detect, match, add = double.requests
        assert detect.content_type == "application/json"
        assert detect.query["aipVersion"] == "4.15.13" and detect.query["access_token"]
        assert detect.body["image_type"] == "BASE64" and detect.body["max_face_num"] == 2
        assert detect.body["face_field"] == "quality"
        assert isinstance(match.body, list) and len(match.body) == 2
        assert match.body[1] == {"image": "b" * 32, "image_type": "FACE_TOKEN"}
        assert add.body == {"image": "c" * 32, "image_type": "FACE_TOKEN", "group_id": "g1",
                            "user_id": "u1", "user_info": "Ada"}


async def test_search_sends_threshold_and_parses_users():
    users = [{"group_id": "g", "user_id": "u", "user_info": "", "score": 97.5}]
    async with V3Double() as double:
        double.script("search", envelope({"face_token": "f" * 32, "user_list": users}))
        async with FaceClientV3(double.settings(), retry=FAST) as client:
            found = await client.search(jpeg(), ["g", "h"], max_user_num=3)
        assert found.users[0].user_id == "u" and found.users[0].score == 97.5
        body = double.calls("search")[0].body
        assert body["group_id_list"] == "g,h" and body["match_threshold"] == 80


@pytest.mark.parametrize(("code", "cls"), [
    (222202, E.FaceNotFoundError), (222207, E.NoMatchError), (222209, E.FaceTokenError),
    (222210, E.FaceLimitError), (223100, E.GroupNotFoundError), (223101, E.GroupExistsError),
    (223102, E.AlreadyInGroupError), (223103, E.UserNotFoundError),
    (223105, E.ImageExistsError), (223106, E.FaceMissingError),
    (223111, E.GroupNotFoundError), (223114, E.RejectedError), (223121, E.RejectedError),
    (223120, E.RejectedError), (222001, E.InvalidInputError), (222351, E.InvalidInputError),
    (17, E.QuotaError), (19, E.QuotaError), (6, E.NoPermissionError), (3, E.InvalidInputError),
    (13, E.AuthError), (15, E.AuthError), (14, E.AuthError),
], ids=str)
async def test_error_codes_map_to_the_tree(code, cls):
    reply = gateway(code) if code < 1000 else v3_error(code)
    async with V3Double() as double:
        double.script("add", reply)
        async with FaceClientV3(double.settings(), retry=FAST) as client:
            with pytest.raises(cls) as caught:
                await client.add_user(jpeg(), "g", "u")
    assert caught.value.code == code and caught.value.attempts == 1


def test_unknown_codes_and_the_limit_message():
    assert E.make_error(222950, "busy", api="v3").__class__ is E.TransientError
    assert E.make_error(229999, "?", api="v3").__class__ is E.InvalidInputError
    limit = E.make_error(223999, "the number of user's faces is beyond the limit", api="v3")
    assert isinstance(limit, E.FaceLimitError)
    assert all(isinstance(k, (int, str)) for k in V3_ERROR_TABLE)


@pytest.mark.parametrize("code", [1, 2, 4, 18, 222302, 222901], ids=str)
async def test_retryable_codes_are_retried(code):
    reply = gateway(code) if code < 1000 else v3_error(code)
    async with V3Double() as double:
        double.script("group_list", reply, envelope({"group_id_list": ["a"]}))
        async with FaceClientV3(double.settings(), retry=FAST) as client:
            groups = await client.get_group_list()
        assert groups.group_ids == ("a",) and groups.attempts == 2


async def test_token_refresh_on_110_in_the_gateway_shape():
    async with V3Double() as double:
        double.script("group_list", gateway(110))
        async with FaceClientV3(double.settings(), retry=FAST) as client:
            result = await client.get_group_list()
        assert result.attempts == 2 and double.token_fetches == 2


async def test_no_face_is_an_empty_detect():
    async with V3Double() as double:
        double.script("detect", v3_error(222202))
        async with FaceClientV3(double.settings(), retry=FAST) as client:
            found = await client.detect(jpeg())
        assert found.faces == () and found.attempts == 1


@pytest.mark.parametrize(("call", "word"), [
    (lambda c: c.add_user(jpeg(), "g" * 49, "u"), "group_id"),
    (lambda c: c.add_user(jpeg(), "a,b", "u"), "group_id"),
    (lambda c: c.search(jpeg(), [f"g{i}" for i in range(11)]), "group_id_list"),
    (lambda c: c.detect(jpeg((1921, 100))), "image"),
    (lambda c: c.detect(b"not an image"), "image"),
    (lambda c: c.add_user(jpeg(), "g", "u", quality_control="MAX"), "quality_control"),
    (lambda c: c.add_user(jpeg(), "g", "u", action_type="UPDATE"), "action_type"),
    (lambda c: c.detect("not a token!"), "image"),
    (lambda c: c.add_user(jpeg(), "g", "u", user_info="x" * 257), "user_info"),
], ids=["id48", "one-group", "ten-groups", "1920", "format", "level", "action", "token",
        "info"])
async def test_arguments_are_refused_before_sending(call, word):
    async with V3Double() as double:
        async with FaceClientV3(double.settings(), retry=FAST) as client:
            with pytest.raises(E.InvalidInputError) as caught:
                await call(client)
        assert double.requests == [] and caught.value.attempts == 0
        assert word in str(caught.value)


async def test_v2_error_6_suggests_v3(double_v2_six):
    with pytest.raises(E.NoPermissionError) as caught:
        await double_v2_six()
    assert "--api v3" in str(caught.value)


@pytest.fixture
def double_v2_six():
    from support.doubles import ProtocolDouble, error  # noqa: PLC0415

    async def run() -> None:
        async with ProtocolDouble() as double:
            double.script("detect", error(6, "no permission to access data"))
            async with FaceClient(double.settings(), retry=FAST) as client:
                await client.detect(jpeg())

    return run


# -- against the engine ------------------------------------------------------------------


def _settings(engine: EngineServer) -> Settings:
    return Settings(endpoint=engine.url, api_key=Secret(engine.api_key),
                    secret_key=Secret(engine.secret_key))


@pytest.mark.dlib
async def test_every_interface_against_the_engine(engine, samples_dir: Path):
    obama = (samples_dir / "obama_01.jpg").read_bytes()
    obama2 = (samples_dir / "obama_02.jpg").read_bytes()
    g, g2 = "c3_" + uuid.uuid4().hex[:8], "c3_" + uuid.uuid4().hex[:8]
    who = "o_" + uuid.uuid4().hex[:8]  # unique: the session's engine holds other tests' users
    async with FaceClientV3(_settings(engine)) as client:
        found = await client.detect(obama, face_field=["quality", "landmark"])
        token = found.faces[0].face_token
        assert len(found.faces[0].landmark) == 4 and found.faces[0].qualities is not None
        added = await client.add_user(token, g, who, user_info="Barack")
        assert added.face_token == token
        with pytest.raises(E.ImageExistsError):
            await client.add_user(obama, g, "other")
        second = await client.add_user(obama2, g, who)
        listed = await client.face_getlist(who, g)
        assert [f.face_token for f in listed.faces] == [token, second.face_token]
        hit = await client.search(obama2, g, max_user_num=5)
        assert hit.users[0].user_id == who and hit.users[0].score >= 80
        multi = await client.multi_search(obama, g)
        assert multi.faces[0].users[0].user_id == who
        assert (await client.match(obama, obama2)).score >= 80
        assert (await client.get_user(who)).records[0].user_info == "Barack"
        assert (await client.get_group_users(g)).user_ids == (who,)
        await client.group_add(g2)
        with pytest.raises(E.GroupExistsError):
            await client.group_add(g2)
        await client.user_copy(who, g, g2)
        assert g2 in (await client.get_group_list(length=1000)).group_ids
        await client.update_user(obama, g2, who)
        assert len((await client.face_getlist(who, g2)).faces) == 1
        await client.face_delete(who, g, second.face_token)
        await client.delete_user(g, who)
        with pytest.raises(E.UserNotFoundError):
            await client.get_user(who, g)
        await client.group_delete(g2)
        with pytest.raises(E.GroupNotFoundError):
            await client.get_group_users(g2)
        with pytest.raises(E.InvalidInputError):
            await client.person_idmatch("11010519491231002X", "nobody")
        from pipeline.engine.store import Person  # noqa: PLC0415

        number = "11010519491231002X"
        held = engine.call_in_loop(lambda: engine.state.face_tokens.get(token))
        engine.store.put_person(Person(number, "client test", held.descriptor, held.sha256))
        assert (await client.person_verify(obama2, number, "client test")).score >= 80
        assert (await client.person_idmatch(number, "client test")).log_id is not None
        with pytest.raises(E.InvalidInputError) as unsupported:
            await client.faceverify([obama])
        assert unsupported.value.code == 3
        assert client.stats.calls["detect"] == 1


@pytest.mark.dlib
async def test_job_api_reads_the_library_back(engine, samples_dir: Path):
    from pipeline.client.v3jobs import V3JobApi  # noqa: PLC0415
    from pipeline.frame.faceapi import FaceApi  # noqa: PLC0415

    obama = (samples_dir / "obama_01.jpg").read_bytes()
    g = "j3_" + uuid.uuid4().hex[:8]
    uid = "u_" + uuid.uuid4().hex[:8]
    async with V3JobApi(_settings(engine)) as api:
        assert isinstance(api, FaceApi)
        await api.detect(obama, face_fields=("qualities",))
        await api.add_user(uid, "Barack", g, obama, action_type="append")
        assert api.token_writes == 1
        assert [(r.uid, r.user_info, r.group_id) for r in (await api.get_user(uid)).records] \
            == [(uid, "Barack", g)]
        assert g in (await api.get_group_list(num=1000)).group_ids
        assert [u.uid for u in (await api.get_group_users(g)).users] == [uid]
        verified = await api.verify(uid, g, obama)
        assert len(verified.scores) == 1 and verified.scores[0] >= 80
        found = await api.identify([g], obama, user_top_num=3)
        assert found.candidates[0].uid == uid
        pairs = (await api.match([obama, obama, obama])).pairs
        assert [(p.index_i, p.index_j) for p in pairs] == [(0, 1), (0, 2)]
        with pytest.raises(E.InvalidInputError):
            await api.match([obama, obama], types="7,7")
        await api.delete_user(uid)
        with pytest.raises(E.UserNotFoundError):
            await api.get_user(uid)


def test_v3_search_is_paced_by_the_identify_limit():
    from pipeline.client.ratelimit import RateLimiter, canonical_interface  # noqa: PLC0415

    assert canonical_interface("search") == "identify"
    assert canonical_interface("multi-search") == "multi_identify"
    limiter = RateLimiter({"identify": 3, "face_delete": 1})
    assert limiter.ceiling("search") == 3 and limiter.ceiling("face_delete") == 1


async def test_faceverify_and_multi_search_replies_parse():
    live = {"thresholds": {"frr_1e-4": 0.05, "frr_1e-3": 0.3, "frr_1e-2": 0.9},
            "face_liveness": 0.97,
            "face_list": [{"face_token": "t" * 32, "liveness": {"livemapscore": 0.97}}]}
    multi = {"face_num": 1, "face_list": [{
        "face_token": "m" * 32, "location": {"left": 31.9, "top": 120.3, "width": 87,
                                             "height": 85, "rotation": -5},
        "user_list": [{"group_id": "g", "user_id": "u", "user_info": "i", "score": 69.8}]}]}
    async with V3Double() as double:
        double.script("faceverify", envelope(live))
        double.script("multi_search", envelope(multi))
        async with FaceClientV3(double.settings(), retry=FAST) as client:
            verified = await client.faceverify([jpeg(), "a" * 32], face_field=["quality"])
            found = await client.multi_search(jpeg(), "g", max_face_num=3)
        body = double.calls("faceverify")[0].body
        assert isinstance(body, list) and [i["image_type"] for i in body] == ["BASE64",
                                                                              "FACE_TOKEN"]
        assert body[0]["face_field"] == "quality"
        assert verified.face_liveness == 0.97 and verified.thresholds["frr_1e-3"] == 0.3
        assert verified.livemapscores == (("t" * 32, 0.97),)
        face = found.faces[0]
        assert face.location.left == 31.9 and face.users[0].score == 69.8
        assert double.calls("multi_search")[0].body["max_face_num"] == 3
