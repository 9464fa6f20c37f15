"""FaceClient against the protocol double: wire format, token, retries, failures, secrets.

The double (tests/support/doubles.py) is a real aiohttp server on 127.0.0.1:0; nothing here
mocks HTTP. Time-dependent parts (token expiry, the retry deadline) run on injected
clocks and sleeps.
"""

from __future__ import annotations

import base64
import io
import logging
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from PIL import Image
from support.doubles import (  # noqa: F401 - `double` is a fixture
    API_KEY,
    DROP,
    FACE,
    SECRET_KEY,
    ProtocolDouble,
    delay,
    double,
    error,
    http,
    token_error,
)

from pipeline.api.errors import (
    AlreadyInGroupError,
    AuthError,
    InvalidInputError,
    QuotaError,
    TransientError,
    UnreachableError,
)
from pipeline.api.records import (
    DetectResult,
    GroupListResult,
    GroupUsersResult,
    IdentifyResult,
    MatchResult,
    PersonVerifyResult,
    UserResult,
    VerifyResult,
    WriteResult,
)
from pipeline.client.config import Secret
from pipeline.client.faceclient import PATHS, FaceClient, parse_face
from pipeline.client.retry import RetryPolicy


async def no_sleep(_seconds: float) -> None:
    return None


FAST = RetryPolicy(max_attempts=3, sleep=no_sleep)


def png(size: tuple[int, int] = (48, 40), noise: bool = False) -> bytes:
    img = Image.new("RGB", size, (90, 120, 150))
    if noise:  # random pixels: the base64 text then holds '+' and '/'
        rng = random.Random(7)
        img.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(size[0] * size[1])])
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


IMG = png()


class Clock:
    """A monotonic clock the test moves by hand (seconds)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def client(double: ProtocolDouble) -> AsyncIterator[FaceClient]:  # noqa: F811
    async with FaceClient(double.settings(), retry=FAST) as c:
        yield c


# -- wire format -----------------------------------------------------------------------


async def test_request_encoding(double: ProtocolDouble, client: FaceClient) -> None:  # noqa: F811
    image = png((40, 40), noise=True)
    encoded = base64.b64encode(image)
    assert b"+" in encoded and b"/" in encoded
    await client.detect(image, max_face_num=10, face_fields=["qualities", "landmark"])
    req = double.calls("detect")[0]
    assert req.path == "/rest/2.0/face/v2/detect"
    assert req.content_type == "application/x-www-form-urlencoded"
    assert req.query == {"aipSdk": "python", "aipVersion": "2_2_2"}
    assert req.token and req.token.startswith("24.double")
    assert req.form == {"image": encoded.decode(), "max_face_num": "10",
                        "face_fields": "qualities,landmark"}
    assert b"+" not in req.body and b"%2B" in req.body and b"%2F" in req.body
    assert base64.b64decode(req.form["image"], validate=True) == image


async def test_match_joins_images_in_order(double: ProtocolDouble, client: FaceClient  # noqa: F811
                                           ) -> None:
    images = [png((20 + i, 30)) for i in range(3)]
    result = await client.match(images, types="7,7,13", image_liveness=None)
    parts = double.calls("match")[0].form["images"].split(",")
    assert [base64.b64decode(p) for p in parts] == images
    assert double.calls("match")[0].form["types"] == "7,7,13"
    assert [(p.index_i, p.index_j) for p in result.pairs] == [(0, 1), (0, 2), (1, 2)]


async def test_options_travel_as_strings(double: ProtocolDouble, client: FaceClient  # noqa: F811
                                         ) -> None:
    await client.add_user("u_1", "Zhang San 张三", ["g1", "g2"], IMG, action_type="replace")
    form = double.calls("add")[0].form
    assert (form["uid"], form["user_info"], form["group_id"], form["action_type"]) == (
        "u_1", "Zhang San 张三", "g1,g2", "replace")
    await client.person_verify(IMG, "110101199003070011", "李雷", quality=True,
                               quality_conf={"blur": 0.5}, ext_fields="qualities")
    form = double.calls("person_verify")[0].form
    assert form["quality"] == "use" and form["quality_conf"] == '{"blur":0.5}'
    assert "faceliveness" not in form  # off unless asked
    await client.get_group_list(start=5, num=1000)
    assert double.calls("group_list")[0].form == {"start": "5", "num": "1000"}


CALLS: list[tuple[str, Callable[[FaceClient], Awaitable[Any]], type, set[str]]] = [
    ("detect", lambda c: c.detect(IMG), DetectResult, {"image"}),
    ("match", lambda c: c.match([IMG, IMG]), MatchResult, {"images"}),
    ("identify", lambda c: c.identify("g1", IMG, user_top_num=5), IdentifyResult,
     {"group_id", "image", "user_top_num"}),
    ("verify", lambda c: c.verify("u1", "g1", IMG), VerifyResult, {"uid", "group_id", "image"}),
    ("multi_identify", lambda c: c.multi_identify("g1", IMG, detect_top_num=10,
                                                  user_top_num=20),
     IdentifyResult, {"group_id", "image", "detect_top_num", "user_top_num"}),
    ("add", lambda c: c.add_user("u1", "", "g1", IMG), WriteResult,
     {"uid", "user_info", "group_id", "image"}),
    ("update", lambda c: c.update_user("u1", "i", "g1", IMG, action_type="replace"),
     WriteResult, {"uid", "user_info", "group_id", "image", "action_type"}),
    ("delete", lambda c: c.delete_user("u1", group_id="g1"), WriteResult, {"uid", "group_id"}),
    ("get", lambda c: c.get_user("u1"), UserResult, {"uid"}),
    ("group_list", lambda c: c.get_group_list(), GroupListResult, set()),
    ("group_users", lambda c: c.get_group_users("g1", num=10), GroupUsersResult,
     {"group_id", "num"}),
    ("group_add", lambda c: c.add_group_user("g1", "g2,g3", "u1"), WriteResult,
     {"src_group_id", "group_id", "uid"}),
    ("group_delete", lambda c: c.delete_group_user(["g2"], "u1"), WriteResult,
     {"group_id", "uid"}),
    ("person_verify", lambda c: c.person_verify(IMG, "110101199003070011", "Li Lei"),
     PersonVerifyResult, {"image", "id_card_number", "name"}),
    ("faceverify", lambda c: c.faceverify(IMG, face_fields="faceliveness"), DetectResult,
     {"image", "face_fields"}),
]


@pytest.mark.parametrize(("name", "call", "record", "fields"), CALLS, ids=[c[0] for c in CALLS])
async def test_every_interface(double: ProtocolDouble, client: FaceClient, name: str,  # noqa: F811
                               call: Callable[[FaceClient], Awaitable[Any]], record: type,
                               fields: set[str]) -> None:
    result = await call(client)
    assert type(result) is record
    assert result.log_id == double.last_log_id and result.attempts == 1
    [req] = double.requests
    assert req.path == PATHS[name] and set(req.form) == fields
    assert client.stats.calls == {name: 1}


async def test_replies_are_parsed(double: ProtocolDouble, client: FaceClient  # noqa: F811
                                  ) -> None:
    ident = await client.multi_identify("g1", IMG)
    assert ident.candidates[0].uid == "u333333" and ident.candidates[0].scores == (99.3,)
    assert ident.candidates[0].position is not None
    assert ident.candidates[0].position.width == 44
    assert (await client.verify("u1", "g1", IMG)).scores == (99.3, 83.6)
    user = await client.get_user("u7")
    assert [(r.uid, r.group_id) for r in user.records] == [("u7", "grep1"), ("u7", "grep2")]
    double.script("get", {"result": [{"uid": "u7", "user_info": "x", "groups": ["a", "b"]}]})
    user = await client.get_user("u7")  # the field table's shape
    assert [(r.uid, r.group_id) for r in user.records] == [("u7", "a"), ("u7", "b")]
    pv = await client.person_verify(IMG, "110101199003070011", "Li Lei")
    assert pv.score == 0.03419 and pv.ext_info == {"faceliveness": 0.834963}
    assert (await client.get_group_list()).group_ids == ("grp1", "grp2")


def test_detect_parsing_is_tolerant() -> None:
    seed = {**FACE, "landmark": [{"x": 161.74819946289, "y": 163.30244445801}],
            "age": 29.298097610474, "expression": 1, "expression_probablity": 0.5543018579483,
            "gender": "male", "brand_new_field": [1, 2]}
    del seed["yaw"]
    face = parse_face(seed)
    assert face.landmark[0].x == pytest.approx(161.74819946289)
    assert face.extra["expression_probability"] == pytest.approx(0.5543018579483)
    assert "expression_probablity" not in face.extra
    assert face.extra["age"] == pytest.approx(29.298097610474)
    assert face.extra["brand_new_field"] == [1, 2]
    assert face.yaw != face.yaw  # missing -> NaN, which the quality gate fails
    assert face.qualities is not None and face.qualities.occlusion["chin"] == 0
    assert face.qualities.completeness == 1 and face.location.width == 172


# -- the token ---------------------------------------------------------------------------


async def test_token_is_cached(double: ProtocolDouble, client: FaceClient) -> None:  # noqa: F811
    for _ in range(3):
        await client.detect(IMG)
    assert double.token_fetches == 1
    assert len({r.token for r in double.requests}) == 1
    assert client.stats.token_fetches == 1


async def test_token_renewed_30s_early_and_fetched_once_for_concurrent_callers(
        double: ProtocolDouble) -> None:  # noqa: F811
    import asyncio

    double.token_expires_in = 100
    clock = Clock()
    async with FaceClient(double.settings(), retry=FAST, clock=clock) as client:
        assert double.token_fetches == 1
        clock.now += 69.9  # 30 s before expiry is 70 s after the fetch
        await client.detect(IMG)
        assert double.token_fetches == 1
        clock.now += 0.2
        await asyncio.gather(*(client.detect(IMG) for _ in range(20)))
        assert double.token_fetches == 2
        assert len({r.token for r in double.requests[1:]}) == 1
        assert double.requests[1].token != double.requests[0].token


async def test_token_without_expires_in_is_fetched_every_call(double: ProtocolDouble  # noqa: F811
                                                               ) -> None:
    double.token_expires_in = None
    async with FaceClient(double.settings(), retry=FAST) as client:
        await client.detect(IMG)
        await client.detect(IMG)
    assert double.token_fetches == 3


@pytest.mark.parametrize("code", [110, 111])
async def test_refresh_once_on_token_error(double: ProtocolDouble, client: FaceClient,  # noqa: F811
                                           code: int) -> None:
    double.revoke_tokens(code)
    result = await client.detect(IMG)
    assert result.attempts == 2
    assert double.token_fetches == 2
    assert client.stats.token_refreshes == 1 and client.stats.retries == 0
    assert double.requests[0].token != double.requests[1].token


async def test_second_token_error_is_auth_error(double: ProtocolDouble, client: FaceClient  # noqa: F811
                                                ) -> None:
    double.script("detect", error(110), error(111))
    with pytest.raises(AuthError) as info:
        await client.detect(IMG)
    assert info.value.code == 111 and info.value.attempts == 2
    assert double.token_fetches == 2


async def test_refresh_happens_once_per_call_not_per_retry(double: ProtocolDouble,  # noqa: F811
                                                           client: FaceClient) -> None:
    double.script("detect", error(110), error(18), error(110))
    with pytest.raises(AuthError) as info:
        await client.detect(IMG)
    assert info.value.attempts == 3
    assert client.stats.token_refreshes == 1 and client.stats.retries == 1


@pytest.mark.parametrize(
    ("reply", "code"),
    [(token_error(), "invalid_client"),
     ({"access_token": "24.x", "expires_in": 100, "scope": "public"}, "scope"),
     ({"access_token": "24.x", "expires_in": 100}, "scope")],
    ids=["invalid-client", "no-brain-scope", "no-scope"],
)
async def test_token_refused_is_auth_error_on_enter(double: ProtocolDouble, reply: Any,  # noqa: F811
                                                    code: str) -> None:
    double.script_token(reply)
    client = FaceClient(double.settings(), retry=FAST)
    with pytest.raises(AuthError) as info:
        await client.__aenter__()
    assert info.value.code == code and double.token_fetches == 1  # not retried
    assert "closed" in repr(client)


async def test_wrong_credentials(double: ProtocolDouble) -> None:  # noqa: F811
    settings = double.settings(secret_key=Secret("not-the-secret"))
    with pytest.raises(AuthError, match="unknown client id"):
        async with FaceClient(settings, retry=FAST):
            pass


async def test_token_endpoint_failure_is_retried(double: ProtocolDouble) -> None:  # noqa: F811
    double.script_token(http(502))
    async with FaceClient(double.settings(), retry=FAST) as client:
        await client.detect(IMG)
    assert double.token_fetches == 2 and client.stats.retries == 1


# -- retries and failures ------------------------------------------------------------------


async def test_retry_then_success_reports_attempts(double: ProtocolDouble,  # noqa: F811
                                                   client: FaceClient) -> None:
    double.script("detect", error(216400), http(500))
    result = await client.detect(IMG)
    assert result.attempts == 3 and len(double.requests) == 3
    assert client.stats.retries == 2
    assert client.stats.errors == {216400: 1, "HTTP500": 1}


async def test_retry_gives_up_after_max_attempts(double: ProtocolDouble,  # noqa: F811
                                                 client: FaceClient) -> None:
    double.script("detect", *[error(216500)] * 5)
    with pytest.raises(TransientError) as info:
        await client.detect(IMG)
    assert info.value.attempts == 3 and info.value.code == 216500
    assert len(double.requests) == 3


async def test_retry_stops_before_the_total_time_budget(double: ProtocolDouble  # noqa: F811
                                                        ) -> None:
    clock, slept = Clock(), []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    policy = RetryPolicy(max_attempts=50, max_delay=10.0, initial_wait=1.0, max_wait=4.0,
                         jitter=0.0, sleep=fake_sleep, clock=clock)
    double.script("detect", *[error(216500)] * 50)
    async with FaceClient(double.settings(), retry=policy) as client:
        with pytest.raises(TransientError) as info:
            await client.detect(IMG)
    assert slept == [1.0, 2.0, 4.0]  # exponential; one more 4 s wait would end past 10 s
    assert info.value.attempts == 4


@pytest.mark.parametrize(
    ("reply", "code"),
    [(http(500), "HTTP500"), (http(200, "<html>maintenance</html>"), "HTTP200"),
     (error(216401, status=503), 216401), (http(503, ""), "HTTP503")],
    ids=["500-html", "200-html", "503-json", "503-empty"],
)
async def test_server_errors_are_transient(double: ProtocolDouble, client: FaceClient,  # noqa: F811
                                           reply: Any, code: Any) -> None:
    double.script("detect", reply, reply, reply)
    with pytest.raises(TransientError) as info:
        await client.detect(IMG)
    assert info.value.code == code and info.value.attempts == 3


async def test_http_401_without_json_is_auth_error(double: ProtocolDouble,  # noqa: F811
                                                    client: FaceClient) -> None:
    double.script("detect", http(401, "Unauthorized"))
    with pytest.raises(AuthError) as info:
        await client.detect(IMG)
    assert info.value.code == "HTTP401" and info.value.attempts == 1


async def test_dropped_connection_is_sdk108(double: ProtocolDouble) -> None:  # noqa: F811
    double.script("detect", DROP, DROP)
    policy = RetryPolicy(max_attempts=2, sleep=no_sleep)
    async with FaceClient(double.settings(), retry=policy) as client:
        with pytest.raises(TransientError, match="connection failed") as info:
            await client.detect(IMG)
    assert info.value.code == "SDK108" and info.value.attempts == 2


async def test_read_timeout_is_sdk108(double: ProtocolDouble) -> None:  # noqa: F811
    double.script("detect", delay(3.0), {"result_num": 0, "result": []})
    async with FaceClient(double.settings(read_timeout=0.3), retry=FAST) as client:
        result = await client.detect(IMG)
        assert result.attempts == 2 and result.faces == ()
        assert client.stats.errors == {"SDK108": 1}
        double.script("detect", delay(3.0))
        async with FaceClient(double.settings(read_timeout=0.3),
                              retry=RetryPolicy(max_attempts=1)) as once:
            with pytest.raises(TransientError, match="timeout") as info:
                await once.detect(IMG)
    assert info.value.code == "SDK108" and info.value.attempts == 1


async def test_connection_refused_when_opening_is_one_unreachable_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again on exit: nothing listens there
    settings = ProtocolDouble().settings(endpoint=f"http://127.0.0.1:{port}")
    with pytest.raises(UnreachableError) as info:
        async with FaceClient(settings, retry=FAST):
            pass
    assert info.value.cause.startswith("connection refused")
    assert str(info.value).startswith(f"cannot reach the face service at http://127.0.0.1:{port}")


async def test_quota_is_not_retried(double: ProtocolDouble, client: FaceClient  # noqa: F811
                                    ) -> None:
    double.script("add", error(17))
    with pytest.raises(QuotaError) as info:
        await client.add_user("u1", "", "g1", IMG)
    assert info.value.attempts == 1 and len(double.requests) == 1


async def test_already_add(double: ProtocolDouble, client: FaceClient) -> None:  # noqa: F811
    double.script("group_add", error(216100, "already add"), error(216100))
    with pytest.raises(AlreadyInGroupError) as info:
        await client.add_group_user("g1", "g2", "u1")
    assert info.value.code == 216100 and info.value.log_id == double.last_log_id
    with pytest.raises(InvalidInputError) as other:  # same code, other message
        await client.add_group_user("g1", "g2", "u1")
    assert not isinstance(other.value, AlreadyInGroupError)


async def test_a_lone_rate_limit_error_is_retried_not_taken_for_a_quota(
        double: ProtocolDouble) -> None:  # noqa: F811
    async with FaceClient(double.settings(), qps=50, retry=FAST) as client:
        double.script("detect", error(18))
        result = await client.detect(IMG)
        assert result.attempts == 2
        # one 18 with nothing else sent in its second shows no quota: the pace holds
        assert client.limiter.backoffs() == {} and client.limiter.found("detect") is None
        assert client.limiter.rate("detect") == pytest.approx(50 * 0.98)


async def test_the_limiter_finds_a_quota_lower_than_its_limit(
        double: ProtocolDouble) -> None:  # noqa: F811
    # Wall-clock but not timed: 160 calls with --qps 120 against a server allowing 40/s.
    import asyncio

    double.qps_limit["detect"] = 40
    async with FaceClient(double.settings(), qps=120, retry=FAST) as client:
        await asyncio.gather(*(client.detect(IMG) for _ in range(160)))
        found = client.limiter.found("detect")
    assert found is not None and 36 <= found <= 44
    assert client.stats.calls["detect"] == 160 + client.stats.errors[18]


async def test_limiter_holds_the_server_quota(double: ProtocolDouble) -> None:  # noqa: F811
    # Wall-clock but not timed: 60 calls at 40/s against a server allowing 40/s.
    import asyncio

    double.qps_limit["detect"] = 40
    async with FaceClient(double.settings(), qps=40, retry=FAST) as client:
        await asyncio.gather(*(client.detect(IMG) for _ in range(60)))
    assert client.stats.errors.get(18, 0) == 0
    assert client.stats.calls["detect"] == 60


# -- validation before sending ---------------------------------------------------------------

JPEG_MAGIC = b"\xff\xd8\xff"
BAD_ARGS: list[tuple[str, Callable[[FaceClient], Awaitable[Any]], str]] = [
    ("uid-charset", lambda c: c.add_user("a-b", "", "g", IMG), "uid"),
    ("uid-empty", lambda c: c.delete_user(""), "uid"),
    ("uid-long", lambda c: c.get_user("u" * 129), "uid"),
    ("uid-type", lambda c: c.get_user(42), "uid"),
    ("user-info", lambda c: c.add_user("u", "é" * 129, "g", IMG), "user_info"),
    ("group-charset", lambda c: c.identify("g-1", IMG), "group_id"),
    ("group-49", lambda c: c.identify("g" * 49, IMG), "group_id"),
    ("group-hole", lambda c: c.identify(["a", ""], IMG), "group_id"),
    ("group-list-for-one", lambda c: c.update_user("u", "", "a,b", IMG), "group_id"),
    ("src-group", lambda c: c.add_group_user("a b", "g", "u"), "src_group_id"),
    ("image-empty", lambda c: c.detect(b""), "image"),
    ("image-gif", lambda c: c.detect(b"GIF89a" + b"\0" * 40), "image"),
    ("image-str", lambda c: c.detect("a path"), "image"),
    ("image-small", lambda c: c.detect(png((10, 60))), "image"),
    ("image-big", lambda c: c.detect(png((4100, 16))), "image"),
    ("image-corrupt", lambda c: c.detect(JPEG_MAGIC + b"junk" * 10), "image"),
    ("image-4MiB", lambda c: c.detect(JPEG_MAGIC + b"\0" * (3 * 2**20)), "image"),
    ("add-10MiB", lambda c: c.add_user("u", "", "g", JPEG_MAGIC + b"\0" * (15 * 2**19)),
     "image"),
    ("match-one", lambda c: c.match([IMG]), "images"),
    ("match-types", lambda c: c.match([IMG, IMG], types="7"), "types"),
    ("match-liveness", lambda c: c.match([IMG, IMG], image_liveness="yes"), "image_liveness"),
    ("identify-top", lambda c: c.identify("g", IMG, user_top_num=6), "user_top_num"),
    ("multi-detect-top", lambda c: c.multi_identify("g", IMG, detect_top_num=11),
     "detect_top_num"),
    ("multi-user-top", lambda c: c.multi_identify("g", IMG, user_top_num=21), "user_top_num"),
    ("verify-top", lambda c: c.verify("u", "g", IMG, top_num=0), "top_num"),
    ("max-face", lambda c: c.detect(IMG, max_face_num=0), "max_face_num"),
    ("max-face-bool", lambda c: c.detect(IMG, max_face_num=True), "max_face_num"),
    ("start", lambda c: c.get_group_list(start=-1), "start"),
    ("num-big", lambda c: c.get_group_users("g", num=1001), "num"),
    ("num-zero", lambda c: c.get_group_list(num=0), "num"),
    ("action-add", lambda c: c.add_user("u", "", "g", IMG, action_type="merge"), "action_type"),
    ("action-update", lambda c: c.update_user("u", "", "g", IMG, action_type="append"),
     "action_type"),
    ("face-fields", lambda c: c.detect(IMG, face_fields=["smile"]), "face_fields"),
    ("faceverify-fields", lambda c: c.faceverify(IMG, face_fields="age"), "face_fields"),
    ("ext-fields", lambda c: c.identify("g", IMG, ext_fields="qualities"), "ext_fields"),
    ("person-name", lambda c: c.person_verify(IMG, "110101199003070011", " "), "name"),
    ("person-id", lambda c: c.person_verify(IMG, "", "Li"), "id_card_number"),
]


@pytest.mark.parametrize(("call", "argument"), [b[1:] for b in BAD_ARGS],
                         ids=[b[0] for b in BAD_ARGS])
async def test_bad_arguments_never_reach_the_server(
        double: ProtocolDouble, client: FaceClient,  # noqa: F811
        call: Callable[[FaceClient], Awaitable[Any]], argument: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        await call(client)
    err = info.value
    assert err.code is None and err.attempts == 0
    assert err.message.startswith(argument)
    assert double.requests == [] and client.stats.calls == {}


# -- secrets and lifecycle ---------------------------------------------------------------------


async def test_secrets_never_appear(double: ProtocolDouble,  # noqa: F811
                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # a CLI test earlier in the session leaves faceflow's loggers at WARNING (as the CLI
    # sets them without -v); this test reads their INFO lines
    caplog.set_level(logging.DEBUG, logger="faceflow")
    texts: list[str] = []
    double.script("detect", error(18), error(100, f"bad key {API_KEY}"))
    double.script("add", DROP, delay(2.0), DROP)
    async with FaceClient(double.settings(read_timeout=0.3), retry=FAST) as client:
        texts.append(repr(client) + repr(client.settings) + str(client.settings))
        double.revoke_tokens()
        with pytest.raises(InvalidInputError) as bad:
            await client.detect(IMG)
        assert "***" in bad.value.message
        with pytest.raises(TransientError) as dropped:
            await client.add_user("u", "", "g", IMG)
        texts += [str(bad.value), repr(bad.value), str(dropped.value), repr(dropped.value)]
    with pytest.raises(AuthError) as refused:
        async with FaceClient(double.settings(api_key=Secret("wrong")), retry=FAST):
            pass
    texts += [str(refused.value), repr(refused.value)]
    secrets = [API_KEY, SECRET_KEY, *double._state.tokens]
    client_logs = [r.getMessage() for r in caplog.records
                   if not r.name.startswith(("aiohttp.server", "aiohttp.access", "aiohttp.web"))]
    assert any("retry" in line for line in client_logs)  # the logs did say things
    for secret in secrets:
        assert all(secret not in text for text in texts + client_logs), secret


async def test_client_cannot_be_reopened_or_used_outside(double: ProtocolDouble  # noqa: F811
                                                         ) -> None:
    client = FaceClient(double.settings(), retry=FAST)
    with pytest.raises(RuntimeError, match="unopened"):
        await client.detect(IMG)
    async with client:
        with pytest.raises(RuntimeError, match="only once"):
            await client.__aenter__()
    assert client._transport._session is not None and client._transport._session.closed
    with pytest.raises(RuntimeError, match="closed"):
        await client.detect(IMG)
    with pytest.raises(RuntimeError, match="only once"):
        async with client:
            pass
    assert double.token_fetches == 1


async def test_session_settings(double: ProtocolDouble) -> None:  # noqa: F811
    settings = double.settings(connect_timeout=1.5, read_timeout=7.0)
    async with FaceClient(settings, retry=FAST, connection_limit=5) as client:
        session = client._transport._session
        assert session is not None and session.connector is not None
        assert session.connector.limit == 5
        assert (session.timeout.sock_connect, session.timeout.sock_read) == (1.5, 7.0)
        assert session.connector._ssl is True  # aiohttp's "verify certificates"
        stats = client.stats.as_dict()
    assert stats == {"calls": {}, "errors": {}, "retries": 0, "token_fetches": 1,
                     "token_refreshes": 0, "outage_waits": 0}



@pytest.mark.parametrize("tail", [b"", b"a", b"ab"], ids=["no-pad", "pad2", "pad1"])
def test_form_encoding_equals_urlencode(tail: bytes) -> None:
    # The fast path must produce exactly what requests (hence the SDK) would send.
    from urllib.parse import urlencode

    from pipeline.client.transport import encode_form

    b64 = base64.b64encode(png((30, 30), noise=True) + tail)
    fields = [("image", b64), ("user_info", "Zhang San 张三 a+b/c=d&e"), ("uid", "u_1")]
    expected = urlencode([(k, v.decode() if isinstance(v, bytes) else v) for k, v in fields])
    assert encode_form(fields) == expected.encode()


async def test_an_image_is_encoded_once_for_detect_then_add(
        double: ProtocolDouble, client: FaceClient) -> None:  # noqa: F811
    import os

    # ~3.6 MB of noise: 4.8 MB in base64, fine for user add (10 MiB), not for detect (4 MiB)
    big = Image.frombytes("RGB", (1100, 1100), os.urandom(1100 * 1100 * 3))
    buf = io.BytesIO()
    big.save(buf, "PNG", compress_level=0)
    image = buf.getvalue()
    await client.add_user("u1", "", "g1", image)
    assert client._encoded.get(image) is not None
    with pytest.raises(InvalidInputError, match="image_too_large"):
        await client.detect(image)  # the cached text still obeys detect's limit
    small = png()
    await client.detect(small)
    await client.add_user("u1", "", "g1", small)
    sent = [r.form["image"] for r in double.requests]
    assert len(sent) == 3 and sent[1] == sent[2] == base64.b64encode(small).decode()
