"""Every documented error code, served by the double, arrives as its class with its fields."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import pytest
from PIL import Image
from support.doubles import ProtocolDouble, error

from pipeline.api.errors import (
    ERROR_TABLE,
    TOKEN_CODES,
    AlreadyInGroupError,
    ApiError,
    RetryableError,
    TransientError,
    UserNotFoundError,
    error_class,
    make_error,
    parse_log_id,
    reply_error,
)
from pipeline.client.faceclient import V3_HINT, FaceClient
from pipeline.client.retry import RetryPolicy


async def no_sleep(_seconds: float) -> None:
    return None


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "white").save(buf, "PNG")
    return buf.getvalue()


IMG = _png()
ATTEMPTS = 2


@pytest.fixture
async def served() -> AsyncIterator[tuple[ProtocolDouble, FaceClient]]:
    async with ProtocolDouble() as double:
        policy = RetryPolicy(max_attempts=ATTEMPTS, limit_attempts=ATTEMPTS, sleep=no_sleep)
        async with FaceClient(double.settings(), qps=10, retry=policy) as client:
            yield double, client


@pytest.mark.parametrize("code", list(ERROR_TABLE), ids=[str(c) for c in ERROR_TABLE])
async def test_each_code_raises_its_class(served: tuple[ProtocolDouble, FaceClient],
                                          code: int | str) -> None:
    double, client = served
    cls, message = ERROR_TABLE[code]
    double.script("detect", *[error(code)] * ATTEMPTS)
    with pytest.raises(ApiError) as info:
        await client.detect(IMG)
    err = info.value
    assert type(err) is cls
    if code == 6:  # a v2 path answering 6: the client adds the "try --api v3" hint
        message += V3_HINT
    assert (err.code, err.message, err.log_id) == (code, message, double.last_log_id)
    # retryable codes are sent again; 110/111 are resent once after a token refresh
    resent = issubclass(cls, RetryableError) or code in TOKEN_CODES
    assert err.attempts == (ATTEMPTS if resent else 1)
    assert len(double.requests) == err.attempts
    assert client.stats.errors[code] == err.attempts
    assert str(err) == f"[{code}] {message}, log_id {err.log_id}"


async def test_codes_sent_as_strings_are_read_as_numbers(
        served: tuple[ProtocolDouble, FaceClient]) -> None:
    double, client = served
    double.script("get", error("216611", "user not exist"))
    with pytest.raises(UserNotFoundError) as info:
        await client.get_user("ghost")
    assert info.value.code == 216611 and info.value.attempts == 1


@pytest.mark.parametrize(
    ("reply", "cls", "code"),
    [
        ({"error_code": 0, "log_id": 1}, None, None),
        ({"error_code": "0"}, None, None),
        ({"log_id": 5, "result": []}, None, None),
        ({"error_code": 216100, "error_msg": "already add"}, AlreadyInGroupError, 216100),
        ({"error_code": 216100, "error_msg": " already add "}, AlreadyInGroupError, 216100),
        ({"error_code": 999999, "error_msg": "new"}, ApiError, 999999),
        ({"error_code": "SDK108", "error_msg": "t"}, TransientError, "SDK108"),
    ],
    ids=["zero", "zero-str", "absent", "already-add", "already-add-spaces", "unknown", "sdk108"],
)
def test_reply_error(reply: dict, cls: type[ApiError] | None, code: object) -> None:
    error = reply_error(reply, attempts=3)
    if cls is None:
        assert error is None
        return
    assert type(error) is cls and error.code == code and error.attempts == 3


@pytest.mark.parametrize(("value", "parsed"),
                         [(7, 7), ("123", 123), (12.0, 12), (12.5, None), (True, None),
                          ("x1", None), (None, None)],
                         ids=["int", "digits", "whole-float", "fraction", "bool", "text", "none"])
def test_parse_log_id(value: object, parsed: int | None) -> None:
    assert parse_log_id(value) == parsed


def test_make_error_log_id_and_unknown_code() -> None:
    assert make_error(18, "x", "123").log_id == 123
    assert make_error(18, "x", "not-a-number").log_id is None
    assert error_class(216100, "invalid param") is not AlreadyInGroupError
    assert type(make_error(424242, "?")) is ApiError
    assert str(make_error(None, "refused before sending", attempts=0)) == (
        "[client] refused before sending")
