"""Pure checks of request arguments against the documented limits (contract §2, §3, §5).

Every ``check_*`` function returns None when the value is acceptable, or a short
reason *slug* (e.g. ``"uid_charset"``); :data:`REASON_TEXT` turns a slug into a
sentence. Nothing here does I/O or raises for bad input: the client turns a slug
into :class:`~pipeline.api.errors.InvalidInputError` before sending anything, and the
enroll job uses the same functions to pre-check manifest rows without a call.

Sizes follow the contract: "M" is 2**20 bytes and image limits apply to the
*base64 text* (``4 * ceil(n / 3)`` bytes for ``n`` raw bytes). Dimensions are read
from the image header with Pillow, without decoding the pixels.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Sequence

from PIL import Image

UID_MAX_BYTES = 128
USER_INFO_MAX_BYTES = 256
GROUP_ID_MAX_CHARS = 48  # one id of a list
GROUP_FIELD_MAX_BYTES = 128  # the whole comma-separated field
IMAGE_B64_MAX = 4 * 2**20  # detect, identify, verify, multi-identify, update, ...
ADD_IMAGE_B64_MAX = 10 * 2**20  # user add
MATCH_B64_MAX = 20 * 2**20  # match: every image of the request together
MIN_SIDE = 15  # px, shortest side
MAX_SIDE = 4096  # px, longest side
IDENTIFY_USER_TOP_MAX = 5
MULTI_DETECT_TOP_MAX = 10
MULTI_USER_TOP_MAX = 20
PAGE_NUM_MAX = 1000  # group getlist / getusers ``num``

#: Documented option values (contract §3).
DETECT_FIELDS = frozenset(
    {"age", "beauty", "expression", "faceshape", "gender", "glasses", "landmark", "qualities"}
)
FACEVERIFY_FIELDS = frozenset({"qualities", "faceliveness"})
ADD_ACTIONS = frozenset({"append", "replace"})
UPDATE_ACTIONS = frozenset({"replace"})

#: slug -> the sentence shown to people (reports, failures.csv, exception text).
REASON_TEXT: dict[str, str] = {
    "uid_empty": "uid is empty",
    "uid_charset": "uid may only contain letters, digits and underscore",
    "uid_too_long": f"uid is longer than {UID_MAX_BYTES} bytes",
    "user_info_too_long": f"user_info is longer than {USER_INFO_MAX_BYTES} bytes (UTF-8)",
    "group_id_empty": "group_id is empty (or has an empty item between commas)",
    "group_id_charset": "group_id may only contain letters, digits and underscore "
    "(commas separate several ids)",
    "group_id_too_long": f"a group id is longer than {GROUP_ID_MAX_CHARS} characters, "
    f"or the whole field is longer than {GROUP_FIELD_MAX_BYTES} bytes",
    "group_id_multiple": "this interface takes one group id, not a comma-separated list",
    "image_empty": "the image is empty",
    "image_format": "the image is not a JPEG, PNG or BMP file",
    "image_too_large": "the image is too large once base64-encoded "
    "(4 MiB; 10 MiB for user add; 20 MiB for all match images together)",
    "image_too_small": f"the image's shortest side is below {MIN_SIDE} px",
    "image_too_big": f"the image's longest side is above {MAX_SIDE} px",
    "image_corrupt": "the image header cannot be read",
    "images_too_few": "match needs at least 2 images",
}

_ID_RE = re.compile(r"[A-Za-z0-9_]+", re.ASCII)
_JPEG, _PNG, _BMP = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM"


def b64_size(n: int) -> int:
    """Length in bytes of the standard base64 text of ``n`` raw bytes (with padding)."""
    return 4 * ((n + 2) // 3)


def check_uid(uid: str) -> str | None:
    """``uid_empty``, ``uid_charset`` ([A-Za-z0-9_] only) or ``uid_too_long`` (> 128 B)."""
    if not uid:
        return "uid_empty"
    if not _ID_RE.fullmatch(uid):
        return "uid_charset"
    if len(uid) > UID_MAX_BYTES:  # ASCII by now, so characters == bytes
        return "uid_too_long"
    return None


def check_user_info(user_info: str) -> str | None:
    """``user_info_too_long`` when the UTF-8 text exceeds 256 bytes. Empty is allowed."""
    if len(user_info) * 4 <= USER_INFO_MAX_BYTES:  # fast path: cannot exceed in UTF-8
        return None
    if len(user_info.encode("utf-8")) > USER_INFO_MAX_BYTES:
        return "user_info_too_long"
    return None


def check_group_ids(group_ids: str) -> str | None:
    """The list form: comma-separated ids of [A-Za-z0-9_], each <= 48 chars, all <= 128 B.

    Reasons: ``group_id_empty`` (also an empty item, as in ``"a,,b"``),
    ``group_id_charset``, ``group_id_too_long``.
    """
    if not group_ids:
        return "group_id_empty"
    for item in group_ids.split(","):
        if not item:
            return "group_id_empty"
        if not _ID_RE.fullmatch(item):
            return "group_id_charset"
        if len(item) > GROUP_ID_MAX_CHARS:
            return "group_id_too_long"
    if len(group_ids) > GROUP_FIELD_MAX_BYTES:
        return "group_id_too_long"
    return None


def check_group_id(group_id: str) -> str | None:
    """One group id (user update / delete / get, getusers, src_group_id): no commas."""
    if "," in group_id:
        return "group_id_multiple"
    return check_group_ids(group_id)


def join_group_ids(group_id: str | Sequence[str]) -> str:
    """A list of ids as the comma-separated wire form; a string is returned as is."""
    return group_id if isinstance(group_id, str) else ",".join(group_id)


def image_format(data: bytes) -> str | None:
    """``"jpeg"``, ``"png"`` or ``"bmp"`` from the magic bytes, else None."""
    if data.startswith(_JPEG):
        return "jpeg"
    if data.startswith(_PNG):
        return "png"
    if data.startswith(_BMP):
        return "bmp"
    return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) in pixels from the header alone, or None when it cannot be read.

    JPEG, PNG and BMP headers are read directly (a few microseconds; Pillow's
    ``open`` also parses EXIF and quantisation tables, ~0.2 ms for a photo);
    anything unusual goes to Pillow, which still reads only the header.
    """
    size = _header_size(data)
    return size if size is not None else _pillow_size(data)


def _pillow_size(data: bytes) -> tuple[int, int] | None:
    try:
        with warnings.catch_warnings():
            # Pillow warns (and above 2x its limit, raises) on huge headers; MAX_SIDE
            # rejects those anyway, so the warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                return img.size
    except Image.DecompressionBombError:
        return (MAX_SIDE + 1, MAX_SIDE + 1)
    except Exception:  # noqa: BLE001 - any unreadable header is the same answer
        return None


# SOF0..SOF15 carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) are not frames.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _header_size(data: bytes) -> tuple[int, int] | None:
    """The fast path of :func:`image_size`; None means "ask Pillow"."""
    if data.startswith(_PNG):
        if data[12:16] != b"IHDR" or len(data) < 24:
            return None
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data.startswith(_JPEG):
        return _jpeg_size(data)
    return _bmp_size(data) if data.startswith(_BMP) else None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the JPEG segments to the first SOF marker (ITU T.81 B.1.1)."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
        elif marker < 0xC0 or marker in (0xD9, 0xDA):  # invalid, or EOI/SOS before a frame
            return None
        elif marker in _SOF_MARKERS:
            if i + 9 > n:
                return None
            height = int.from_bytes(data[i + 5:i + 7], "big")
            width = int.from_bytes(data[i + 7:i + 9], "big")
            return (width, height) if height else None  # 0: height defined later (DNL)
        else:
            i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return None


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 26:
        return None
    header = int.from_bytes(data[14:18], "little")
    if header == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        return int.from_bytes(data[18:20], "little"), int.from_bytes(data[20:22], "little")
    if header < 40:
        return None
    width = int.from_bytes(data[18:22], "little", signed=True)
    height = int.from_bytes(data[22:26], "little", signed=True)
    return (width, abs(height)) if width > 0 else None  # height < 0: stored top-down


def check_image(data: bytes, *, max_b64_bytes: int = IMAGE_B64_MAX) -> str | None:
    """Format (magic bytes), encoded size, then dimensions; the first problem wins.

    Reasons: ``image_empty``, ``image_format``, ``image_too_large`` (base64 text
    above ``max_b64_bytes``), ``image_corrupt``, ``image_too_small`` (shortest
    side < 15 px), ``image_too_big`` (longest side > 4096 px).
    """
    if not data:
        return "image_empty"
    if image_format(data) is None:
        return "image_format"
    if b64_size(len(data)) > max_b64_bytes:
        return "image_too_large"
    return check_dimensions(image_size(data))


def check_dimensions(size: tuple[int, int] | None) -> str | None:
    """``image_corrupt`` for None, else the side rules (15 px <= sides <= 4096 px)."""
    if size is None:
        return "image_corrupt"
    if min(size) < MIN_SIDE:
        return "image_too_small"
    if max(size) > MAX_SIDE:
        return "image_too_big"
    return None


def check_match_images(images: Sequence[bytes]) -> str | None:
    """Match: at least 2 images, each valid, all base64 texts plus commas <= 20 MiB."""
    if len(images) < 2:
        return "images_too_few"
    if sum(b64_size(len(img)) for img in images) + len(images) - 1 > MATCH_B64_MAX:
        return "image_too_large"
    for img in images:
        reason = check_image(img, max_b64_bytes=MATCH_B64_MAX)
        if reason:
            return reason
    return None


def check_fields(value: str | Sequence[str], allowed: frozenset[str]) -> str | None:
    """The first item of a comma list (or sequence) that is not in ``allowed``, else None."""
    items = value.split(",") if isinstance(value, str) else list(value)
    for item in items:
        if item.strip() not in allowed:
            return item
    return None
