"""Request parameter rules of the engine (contract §2) and the coded failure they raise.

Every check raises :class:`Failure` with the API code to answer: a missing parameter is
216101 ``not enough param``, a malformed one 216100 ``invalid param``, an image too large
216202 and bad base64 216200. Messages name the parameter but never echo long values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pipeline.api.errors import error_message
from pipeline.engine.images import ImageRefused, decode_base64

MIB = 2**20
STANDARD_IMAGE_LIMIT = 4 * MIB  # base64 text, contract §5 ("M" = 2^20 bytes)
ADD_IMAGE_LIMIT = 10 * MIB
MATCH_LIMIT = 20 * MIB
_ID = re.compile(r"^[A-Za-z0-9_]+$")


class Failure(Exception):
    """An API-level error reply: ``code`` and ``error_msg`` (the table's, plus detail)."""

    def __init__(self, code: int, detail: str = "") -> None:
        base = error_message(code)
        self.code = code
        self.message = f"{base}: {detail}" if detail else base
        super().__init__(self.message)


def required(params: Mapping[str, str], name: str) -> str:
    """A parameter that must be present and non-empty."""
    value = params.get(name)
    if value is None or value == "":
        raise Failure(216101, f"{name} is required")
    return value


def optional_int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """An integer parameter within [low, high]; ``default`` when absent or empty."""
    raw = params.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise Failure(216100, f"{name} must be an integer") from None
    if not low <= value <= high:
        raise Failure(216100, f"{name} must be within {low}-{high}")
    return value


def uid_param(params: Mapping[str, str], name: str = "uid") -> str:
    """uid rule: letters, digits, underscore; at most 128 bytes."""
    uid = required(params, name)
    if len(uid.encode()) > 128 or not _ID.match(uid):
        raise Failure(216100, f"{name} must be letters, digits or _ (at most 128 bytes)")
    return uid


def user_info_param(params: Mapping[str, str]) -> str:
    """user_info: free text of at most 256 bytes (UTF-8)."""
    info = required(params, "user_info")
    if len(info.encode()) > 256:
        raise Failure(216100, "user_info is longer than 256 bytes")
    return info


def group_list(params: Mapping[str, str], name: str = "group_id", single: bool = False):
    """group_id list form: comma-separated ids of letters/digits/_ (each <= 48 chars, the
    whole field <= 128 bytes). Duplicates are dropped, order kept. ``single``: exactly one."""
    raw = required(params, name)
    groups = list(dict.fromkeys(g.strip() for g in raw.split(",")))
    bad = len(raw.encode()) > 128 or any(not g or len(g) > 48 or not _ID.match(g) for g in groups)
    if bad:
        raise Failure(216100, f"{name} must be ids of letters, digits or _ separated by commas")
    if single and len(groups) != 1:
        raise Failure(216100, f"{name} must name one group")
    return groups


def image_param(params: Mapping[str, str], name: str = "image", limit: int = STANDARD_IMAGE_LIMIT):
    """The decoded bytes of a base64 image field of at most ``limit`` bytes of text."""
    text = required(params, name)
    return image_bytes(text, limit)


def image_bytes(text: str, limit: int) -> bytes:
    if len(text) > limit:
        raise Failure(216202, f"the base64 image is over {limit // MIB}M")
    try:
        return decode_base64(text)
    except ImageRefused as problem:
        raise Failure(problem.code) from None


def field_list(params: Mapping[str, str], name: str) -> list[str]:
    """A comma list such as face_fields, lower-cased, empties dropped."""
    return [f.strip().lower() for f in params.get(name, "").split(",") if f.strip()]


def not_supported(names: list[str], what: str) -> Failure:
    """216102 naming what the engine cannot compute (it never invents attributes)."""
    return Failure(
        216102, f"{what} {','.join(names)} {'is' if len(names) == 1 else 'are'} "
        "not supported by the faceflow engine",
    )
