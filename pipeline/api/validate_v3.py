"""Pure checks of v3 request arguments (v3 contract §2.2, §5), as validate.py for v2.

Each ``check_*`` returns None or a reason slug; :data:`REASON_TEXT` has the sentences.
v3 is stricter than v2: ``user_id`` / ``group_id`` at most 48 bytes, one group per
write, at most 10 groups per search, pictures at most 2 MiB of base64 text and below
1920x1080 px.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pipeline.api.validate import b64_size, image_format, image_size

ID_MAX_BYTES = 48
USER_INFO_MAX_BYTES = 256
GROUP_LIST_MAX = 10
IMAGE_B64_MAX = 2 * 2**20
MAX_LONG_SIDE, MAX_SHORT_SIDE = 1920, 1080
MIN_SIDE = 15
SEARCH_USER_MAX = 50
MULTI_FACE_MAX, MULTI_USER_MAX = 10, 20
DETECT_FACE_MAX = 20
PAGE_LENGTH_MAX = 1000
LEVELS = ("NONE", "LOW", "NORMAL", "HIGH")
ALL_GROUPS = "@ALL"
#: face_field values of the contract (GEN's list, plus the older names still accepted).
FACE_FIELDS = frozenset({"age", "expression", "face_shape", "gender", "glasses", "landmark",
                         "landmark150", "quality", "eye_status", "emotion", "face_type",
                         "mask", "spoofing", "beauty", "race", "landmark72"})

_ID = re.compile(r"[A-Za-z0-9_]+", re.ASCII)
_TOKEN = re.compile(r"[A-Za-z0-9_]{1,64}", re.ASCII)

REASON_TEXT: dict[str, str] = {
    "id_empty": "the id is empty",
    "id_charset": "ids may only contain letters, digits and underscore",
    "id_too_long": f"v3 ids are at most {ID_MAX_BYTES} bytes",
    "group_list_empty": "group_id_list is empty (or has an empty item between commas)",
    "group_list_too_many": f"v3 searches at most {GROUP_LIST_MAX} groups at once",
    "user_info_too_long": f"user_info is longer than {USER_INFO_MAX_BYTES} bytes (UTF-8)",
    "image_empty": "the image is empty",
    "image_format": "the image is not a JPEG, PNG or BMP file",
    "image_too_large": "the image is over 2 MiB once base64-encoded (the v3 limit)",
    "image_corrupt": "the image header cannot be read",
    "image_too_small": f"the image's shortest side is below {MIN_SIDE} px",
    "image_too_big": f"v3 takes pictures up to {MAX_LONG_SIDE}x{MAX_SHORT_SIDE} px",
    "face_token": "a face_token is 1-64 letters, digits or _",
    "level": "must be NONE, LOW, NORMAL or HIGH",
}


def check_id(value: str, allow_all: bool = False) -> str | None:
    """user_id / group_id: [A-Za-z0-9_], 1-48 bytes (``@ALL`` where allowed)."""
    if allow_all and value == ALL_GROUPS:
        return None
    if not value:
        return "id_empty"
    if not _ID.fullmatch(value):
        return "id_charset"
    if len(value) > ID_MAX_BYTES:
        return "id_too_long"
    return None


def check_group_list(groups: Sequence[str]) -> str | None:
    """group_id_list: 1-10 valid ids."""
    if not groups or any(not g for g in groups):
        return "group_list_empty"
    if len(groups) > GROUP_LIST_MAX:
        return "group_list_too_many"
    for group in groups:
        reason = check_id(group)
        if reason:
            return reason
    return None


def check_user_info(user_info: str) -> str | None:
    if len(user_info.encode("utf-8")) > USER_INFO_MAX_BYTES:
        return "user_info_too_long"
    return None


def check_face_token(token: str) -> str | None:
    return None if _TOKEN.fullmatch(token) else "face_token"


def check_level(level: str) -> str | None:
    return None if level in LEVELS else "level"


def check_dimensions(size: tuple[int, int] | None) -> str | None:
    """``image_corrupt`` for None; sides of at least 15 px and below 1920x1080."""
    if size is None:
        return "image_corrupt"
    if min(size) < MIN_SIDE:
        return "image_too_small"
    if max(size) > MAX_LONG_SIDE or min(size) > MAX_SHORT_SIDE:
        return "image_too_big"
    return None


def check_image(data: bytes) -> str | None:
    """Format, encoded size (<= 2 MiB of base64), then dimensions; the first problem wins."""
    if not data:
        return "image_empty"
    if image_format(data) is None:
        return "image_format"
    if b64_size(len(data)) > IMAGE_B64_MAX:
        return "image_too_large"
    return check_dimensions(image_size(data))


def fits(size: tuple[int, int]) -> bool:
    """True when a picture of ``size`` px is within v3's resolution limit."""
    return check_dimensions(size) is None
