"""Request parameters of the engine's v3 paths (v3 contract §1.4, §2, §5).

Bodies are JSON (objects; match and faceverify arrays) or, on object-style paths,
form-encoded, as the official SDKs send them. Values may be strings or JSON numbers.
Every check raises :class:`~pipeline.engine.params.Failure` with a v3 code: a missing
parameter is ``222001 param[] is null``, a malformed one the parameter's own 2220xx
code (parameters without one in Baidu's table use 222001 with a detail naming the rule).
Messages never echo long values.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Mapping
from typing import Any

from PIL import Image

from pipeline.engine.images import ImageRefused, decode_base64
from pipeline.engine.params import Failure

MIB = 2**20
IMAGE_B64_LIMIT = 2 * MIB  # base64 text of one picture
REQUEST_LIMIT = 10 * MIB  # the whole request body
MAX_LONG_SIDE, MAX_SHORT_SIDE = 1920, 1080  # "below 1920x1080" (v3 contract §5)
IMAGE_TYPES = ("BASE64", "FACE_TOKEN", "URL")
LEVELS = ("NONE", "LOW", "NORMAL", "HIGH")
FACE_TYPES = ("LIVE", "IDCARD", "WATERMARK", "CERT", "INFRARED")
ALL_GROUPS = "@ALL"
_ID = re.compile(r"^[A-Za-z0-9_]{1,48}$")
_TOKEN = re.compile(r"^[A-Za-z0-9_]{1,64}$")

#: parameter -> its "param[...] format error" code in Baidu's table.
CODES = {
    "start": 222002, "length": 222003, "group_id_list": 222005, "group_id": 222006,
    "src_group_id": 222006, "dst_group_id": 222006, "user_info": 222010, "image": 222013,
    "image_type": 222015, "max_face_num": 222016, "face_field": 222017, "user_id": 222018,
    "quality_control": 222019, "liveness_control": 222020, "max_user_num": 222021,
    "id_card_number": 222022, "name": 222023, "face_type": 222024, "face_token": 222025,
}

Params = Mapping[str, Any]


def bad(name: str, rule: str) -> Failure:
    """The failure for a malformed ``name``: its own code, else 222001 with the rule."""
    return Failure(CODES.get(name, 222001), f"{name} {rule}")


def text(params: Params, name: str, default: str = "") -> str:
    """A string parameter (JSON numbers are read as their decimal text)."""
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise bad(name, "must be a string")
    return str(value)


def required(params: Params, name: str) -> str:
    value = text(params, name)
    if value == "":
        raise Failure(222001, f"{name} is required")
    return value


def integer(params: Params, name: str, default: int, low: int, high: int) -> int:
    """An integer (JSON number or numeric string) within [low, high]; ``default`` if absent."""
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool):
        raise bad(name, "must be an integer")
    try:
        value = int(raw) if not isinstance(raw, float) or raw.is_integer() else None
    except ValueError:
        value = None
    if value is None:
        raise bad(name, "must be an integer")
    if not low <= value <= high:
        raise bad(name, f"must be within {low}-{high}")
    return value


def one_of(params: Params, name: str, allowed: tuple[str, ...], default: str) -> str:
    value = text(params, name) or default
    if value not in allowed:
        raise bad(name, f"must be one of {', '.join(allowed)}")
    return value


def ident(params: Params, name: str, allow_all: bool = False) -> str:
    """group_id / user_id: letters, digits, underscore, 1-48 bytes (``@ALL`` if allowed)."""
    value = required(params, name)
    if allow_all and value == ALL_GROUPS:
        return value
    if not _ID.match(value):
        raise bad(name, "must be 1-48 letters, digits or _")
    return value


def group_id_list(params: Params) -> list[str]:
    """Comma-separated group ids, at most 10 (more -> 223104); duplicates dropped."""
    raw = required(params, "group_id_list")
    groups = list(dict.fromkeys(g.strip() for g in raw.split(",")))
    if any(not _ID.match(g) for g in groups):
        raise bad("group_id_list", "must be group ids of 1-48 letters, digits or _ "
                  "separated by commas")
    if len(groups) > 10:
        raise Failure(223104, "at most 10 groups")
    return groups


def user_info(params: Params) -> str | None:
    """user_info (optional, <= 256 UTF-8 bytes); None when absent."""
    if params.get("user_info") is None:
        return None
    info = text(params, "user_info")
    if len(info.encode()) > 256:
        raise Failure(222010, "user_info is longer than 256 bytes")
    return info


def face_token(value: str) -> str:
    if not _TOKEN.match(value):
        raise Failure(222025, "face_token must be 1-64 letters, digits or _")
    return value


def image_bytes(value: str) -> bytes:
    """Base64 text -> picture bytes under the v3 limits (2 MiB text, below 1920x1080)."""
    if len(value) > IMAGE_B64_LIMIT:
        raise Failure(222013, "the base64 image is over 2M")
    try:
        data = decode_base64(value)
    except ImageRefused:
        raise Failure(222203, "the image is not valid base64") from None
    width, height = _size(data)
    if max(width, height) > MAX_LONG_SIDE or min(width, height) > MAX_SHORT_SIDE:
        raise Failure(222013, f"the picture is {width}x{height} px; v3 takes pictures "
                      f"up to {MAX_LONG_SIDE}x{MAX_SHORT_SIDE}")
    return data


def _size(data: bytes) -> tuple[int, int]:
    # Header only: Pillow reads the size without decoding the pixels.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as img:
                return img.size
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            raise Failure(222203, "the picture cannot be read") from None
