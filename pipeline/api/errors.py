"""The one exception hierarchy of faceflow, and the one table ``code -> class``.

::

    FaceflowError
     ├── ConfigError                  bad options, thresholds or manifest: stop before any call
     │    ├── ManifestError           ... with the manifest line that is wrong
     │    └── UnreachableError        the endpoint does not answer as the service at all
     ├── ImageProblem                 a photo that cannot be sent (a reason slug of
     │                                pipeline.runs.reasons): an outcome row, not a stop
     └── ApiError                     anything the face service (or the way to it) answered
          ├── RetryableError          worth sending again after a back-off
          │    ├── QpsLimitError      4, 18: rate limits; the limiter slows down
          │    └── TransientError     216300, 216400, 216401, 216500, 216613, 216615, 216617,
          │                           SDK108 (timeouts), HTTP 5xx, dropped connections
          ├── QuotaError              17, 19: stop the caller until the quota resets
          ├── ServiceUnavailableError the service stopped answering for longer than the
          │                           client waits for it (an outage): stop, resume later
          ├── AuthError               13, 14, 15, 110, 111, 216015, 216110, bad credentials
          │    └── NoPermissionError  6: the app lacks permission for this API (a v3-only
          │                           app calling a v2 path gets 6: try --api v3)
          ├── InvalidInputError       3, 100, 2161xx, 2162xx, 216402, 216614, 216631, 2220xx,
          │    │                      222203/4/8, 2231xx input codes, 22235x, and
          │    │                      arguments the client refuses before sending (code None)
          │    ├── FaceNotFoundError  216402, 222202 (v3: "pic not has face")
          │    └── FaceTokenError     222209: unknown or expired face_token (v3)
          ├── RejectedError           v3 quality_control / liveness_control failures
          │                           (223113-223116, 223120-223127): a new capture may pass
          ├── NoMatchError            222207: nobody above match_threshold (v3 search)
          └── StateError              the face library is not in the state the call needs
               ├── UserNotFoundError  216611, 216612, 223103
               ├── ImageExistsError   216616, 223105 (v3: "face is already exist")
               ├── EmptyGroupError    216618
               ├── LastGroupError     216619
               ├── AlreadyInGroupError 216100 with error_msg "already add", 223102
               ├── GroupNotFoundError 223100, 223111 (v3)
               ├── GroupExistsError   223101 (v3)
               ├── FaceMissingError   223106 (v3: the face_token is not the user's)
               └── FaceLimitError     222210, or the message "the number of user's faces is
                                      beyond the limit" (v3: 20 faces per user and group)

Two code tables share this tree: :data:`ERROR_TABLE` (v2) and :data:`V3_ERROR_TABLE`
(contract v3 §6). The gateway codes (1-19, 100, 110, 111) are in both with one meaning.
``make_error(..., api="v3")`` reads the v3 one; unknown v3 codes 222900-222999 are
transient and any other unknown v3 code is input (v3 contract §6).

Every :class:`ApiError` carries ``code``, ``message``, ``log_id`` and ``attempts``
(how many times the request was sent; 0 when it was refused before sending).
Retries select by class, never by message. Messages never contain credentials or
access tokens: only the service's ``error_msg`` and our own words go in them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


class FaceflowError(Exception):
    """Root of every error faceflow raises on purpose."""


class ConfigError(FaceflowError):
    """A bad option, threshold file or setting: the run stops before the first call."""


class ManifestError(ConfigError):
    """A manifest that cannot be read as a whole.

    ``line`` is the 1-based line (CSV/JSONL) or row number (Parquet, counted
    from 1) that is wrong, or None when the problem is the file itself.
    """

    def __init__(self, path: str, message: str, line: int | None = None) -> None:
        self.path = path
        self.line = line
        self.message = message
        where = f"{path}, line {line}" if line is not None else path
        super().__init__(f"{where}: {message}")


class UnreachableError(ConfigError):
    """The endpoint cannot be reached, or what answers there is not the face service.

    ``endpoint`` is the URL tried and ``cause`` a few words (``connection refused``,
    ``name not resolved``, ``TLS handshake failed``, ``HTTP 404, not JSON``...).
    """

    def __init__(self, endpoint: str, cause: str, hint: str = "") -> None:
        self.endpoint, self.cause = endpoint, cause
        super().__init__(f"cannot reach the face service at {endpoint}: {cause}"
                         + (f" ({hint})" if hint else ""))


class ImageProblem(FaceflowError):
    """One problem with an image file: ``reason`` (a slug of the reasons catalogue,
    :mod:`pipeline.runs.reasons`) and ``message`` (one sentence: what is wrong and what to
    do). The row it belongs to gets an outcome; the run goes on."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class ApiError(FaceflowError):
    """An error answered by the face service, or met on the way to it."""

    def __init__(
        self,
        code: int | str | None,
        message: str,
        log_id: int | None = None,
        attempts: int = 1,
    ) -> None:
        self.code = code
        self.message = message
        self.log_id = log_id
        self.attempts = attempts
        super().__init__(message)

    def __str__(self) -> str:
        code = "client" if self.code is None else self.code
        log = f", log_id {self.log_id}" if self.log_id is not None else ""
        return f"[{code}] {self.message}{log}"


class RetryableError(ApiError):
    """Worth sending again after a back-off."""


class QpsLimitError(RetryableError):
    """A rate limit (4 cluster-wide, 18 per app): slow down, then retry."""


class TransientError(RetryableError):
    """A passing server or network fault: retry with ordinary back-off."""


class QuotaError(ApiError):
    """The daily (17) or total (19) quota is spent: stop until it resets."""


class ServiceUnavailableError(ApiError):
    """The service answered nothing for longer than the client waits (an outage)."""


class AuthError(ApiError):
    """Credentials, token or app configuration are wrong."""


class InvalidInputError(ApiError):
    """The request itself is wrong; sending it again changes nothing."""


class FaceNotFoundError(InvalidInputError):
    """216402: the service found no face in the image."""


class NoPermissionError(AuthError):
    """6: the app has no permission for this API (for v2 paths: a v3-only app)."""


class FaceTokenError(InvalidInputError):
    """222209 (v3): the face_token is unknown or has expired (detect tokens live 60 min)."""


class RejectedError(ApiError):
    """v3: the picture failed a quality or liveness control; a new capture may pass."""


class NoMatchError(ApiError):
    """222207 (v3): no user scored above the search's match_threshold."""


class StateError(ApiError):
    """The face library is not in the state the call needs."""


class UserNotFoundError(StateError):
    """216611 / 216612: the uid is not registered (in that group)."""


class ImageExistsError(StateError):
    """216616: this image is already registered for the user."""


class EmptyGroupError(StateError):
    """216618: the group has no users."""


class LastGroupError(StateError):
    """216619: removing the user would leave it in no group."""


class AlreadyInGroupError(StateError):
    """216100 "already add" / 223102: the user is already in the target group."""


class GroupNotFoundError(StateError):
    """223100 / 223111 (v3): the group (or the copy's target group) does not exist."""


class GroupExistsError(StateError):
    """223101 (v3): group add of a group that exists."""


class FaceMissingError(StateError):
    """223106 (v3): face delete of a face_token the user does not have."""


class FaceLimitError(StateError):
    """222210 (v3): the user already has 20 faces in this group."""


#: Gateway codes, one meaning under v2 and v3 (the v3 contract's gateway table).
GATEWAY_TABLE: dict[int | str, tuple[type[ApiError], str]] = {
    1: (TransientError, "Unknown error"),
    2: (TransientError, "Service temporarily unavailable"),
    3: (InvalidInputError, "Unsupported openapi method"),
    4: (QpsLimitError, "Open api request limit reached"),
    6: (NoPermissionError, "no permission to access data"),
    13: (AuthError, "Get service token failed"),
    14: (AuthError, "IAM Certification failed"),
    15: (AuthError, "app not exsits or create failed"),
    17: (QuotaError, "Open api daily request limit reached"),
    18: (QpsLimitError, "Open api qps request limit reached"),
    19: (QuotaError, "Open api total request limit reached"),
    100: (InvalidInputError, "Invalid parameter"),
    110: (AuthError, "Access token invalid or no longer valid"),
    111: (AuthError, "Access token expired"),
}

#: code -> (class, the reference's error_msg). The engine answers with these
#: messages; the client maps codes to classes with this table and nothing else.
ERROR_TABLE: dict[int | str, tuple[type[ApiError], str]] = {
    **GATEWAY_TABLE,
    216015: (AuthError, "module closed"),
    216100: (InvalidInputError, "invalid param"),
    216101: (InvalidInputError, "not enough param"),
    216102: (InvalidInputError, "service not support"),
    216103: (InvalidInputError, "param too long"),
    216110: (AuthError, "appid not exist"),
    216111: (InvalidInputError, "invalid userid"),
    216200: (InvalidInputError, "empty image"),
    216201: (InvalidInputError, "image format error"),
    216202: (InvalidInputError, "image size error"),
    216300: (TransientError, "db error"),
    216400: (TransientError, "backend error"),
    216401: (TransientError, "internal error"),
    216402: (FaceNotFoundError, "face not found"),
    216500: (TransientError, "unknown error"),
    216611: (UserNotFoundError, "user not exist"),
    216612: (UserNotFoundError, "user not exist"),
    216613: (TransientError, "fail to delete user record"),
    216614: (InvalidInputError, "not enough images"),
    216615: (TransientError, "fail to process images"),
    216616: (ImageExistsError, "image exist"),
    216617: (TransientError, "fail to add user"),
    216618: (EmptyGroupError, "no user in group"),
    216619: (LastGroupError, "user must be in one group at least"),
    216631: (InvalidInputError, "request add user overlimit"),
    "SDK108": (TransientError, "connection or read data timeout"),
}

_V3_PARAMS = {
    222001: "param[] is null", 222002: "param[start] format error",
    222003: "param[length] format error", 222004: "param[op_app_id_list] format error",
    222005: "param[group_id_list] format error", 222006: "group_id format error",
    222007: "uid format error", 222008: "face_id format error",
    222009: "quality_conf format error", 222010: "user_info format error",
    222011: "param[uid_list] format error", 222012: "param[op_app_id] format error",
    222013: "param[image] format error", 222014: "param[app_id] format error",
    222015: "param[image_type] format error", 222016: "param[max_face_num] format error",
    222017: "param[face_field] format error", 222018: "param[user_id] format error",
    222019: "param[quality_control] format error",
    222020: "param[liveness_control] format error",
    222021: "param[max_user_num] format error", 222022: "param[id_card_number] format error",
    222023: "param[name] format error", 222024: "param[face_type] format error",
    222025: "param[face_token] format error", 222026: "param[max_star_num] format error",
}
_V3_REJECTED = {
    223113: "face is covered", 223114: "face is fuzzy", 223115: "face light is not good",
    223116: "incomplete face", 223120: "liveness check fail",
    223121: "left eye is occlusion", 223122: "right eye is occlusion",
    223123: "left cheek is occlusion", 223124: "right cheek is occlusion",
    223125: "chin contour is occlusion", 223126: "nose is occlusion",
    223127: "mouth is occlusion",
}
#: The 20-faces-per-user message; its code is unconfirmed (the engine sends 222210), so
#: the message maps to FaceLimitError whatever code comes with it (v3 contract §6).
FACE_LIMIT_MSG = "the number of user's faces is beyond the limit"

#: v3 code -> (class, error_msg) (v3 contract §6; Baidu's spellings kept).
V3_ERROR_TABLE: dict[int | str, tuple[type[ApiError], str]] = {
    **GATEWAY_TABLE,
    **{code: (InvalidInputError, msg) for code, msg in _V3_PARAMS.items()},
    222201: (TransientError, "network not available"),
    222202: (FaceNotFoundError, "pic not has face"),
    222203: (InvalidInputError, "image check fail"),
    222204: (InvalidInputError, "image_url_download_fail"),
    222205: (TransientError, "network not availablel"),
    222206: (TransientError, "rtse service return fail"),
    222207: (NoMatchError, "match user is not found"),
    222208: (InvalidInputError, "the number of image is incorrect"),
    222209: (FaceTokenError, "face token not exist"),
    222210: (FaceLimitError, FACE_LIMIT_MSG),
    222300: (TransientError, "add face fail"),
    222301: (TransientError, "get face fail"),
    222302: (TransientError, "system error"),
    222303: (TransientError, "get face fail"),
    223100: (GroupNotFoundError, "group is not exist"),
    223101: (GroupExistsError, "group is already exist"),
    223102: (AlreadyInGroupError, "user is already exist"),
    223103: (UserNotFoundError, "user is not exist"),
    223104: (InvalidInputError, "group_list is too large"),
    223105: (ImageExistsError, "face is already exist"),
    223106: (FaceMissingError, "face is not exist"),
    223110: (InvalidInputError, "uid_list is too large"),
    223111: (GroupNotFoundError, "dst group is not exist"),
    223112: (InvalidInputError, "quality_conf format error"),
    **{code: (RejectedError, msg) for code, msg in _V3_REJECTED.items()},
    223117: (InvalidInputError, "app_list is too large"),
    223118: (InvalidInputError, "quality control error"),
    223119: (InvalidInputError, "liveness control item error"),
    222350: (StateError, "police picture is none or low quality"),
    222351: (InvalidInputError, "id number and name not match or id number not exist"),
    222352: (InvalidInputError, "name format error"),
    222353: (InvalidInputError, "id number format error"),
    222354: (InvalidInputError, "id number not exist"),
    222355: (StateError, "police picture not exist"),
    222360: (InvalidInputError, "invalid name or id number"),
    222361: (TransientError, "system busy"),
    **{code: (TransientError, "system busy") for code in range(222901, 222917)},
    "SDK108": (TransientError, "connection or read data timeout"),
    # the Java SDK's local checks (SDKDOC); never sent by the Python SDK or by faceflow
    "SDK100": (InvalidInputError, "image size error"),
    "SDK101": (InvalidInputError, "image length error"),
    "SDK102": (InvalidInputError, "read image file error"),
    "SDK109": (InvalidInputError, "unsupported image format"),
}
#: Gateway codes: under v3 their replies carry only error_code and error_msg.
GATEWAY_CODES = frozenset(GATEWAY_TABLE)

#: Codes a token refresh may cure (the contract: refresh once on 110 or 111).
TOKEN_CODES = frozenset({110, 111})

ALREADY_ADD_MSG = "already add"


def error_class(code: int | str | None, message: str = "", api: str = "v2") -> type[ApiError]:
    """The class for a service error code of protocol ``api`` ("v2" or "v3").

    v2: unknown codes are plain :class:`ApiError`. v3: unknown 222900-222999 are
    transient, any other unknown code is input (v3 contract §6).
    """
    norm = normalise_code(code)
    if api == "v3":
        return _v3_class(norm, message)
    if norm == 216100 and message.strip() == ALREADY_ADD_MSG:
        return AlreadyInGroupError
    if norm is None or norm not in ERROR_TABLE:
        return ApiError
    return ERROR_TABLE[norm][0]


def _v3_class(code: int | str | None, message: str) -> type[ApiError]:
    if message.strip().startswith(FACE_LIMIT_MSG):
        return FaceLimitError
    if code in V3_ERROR_TABLE:
        return V3_ERROR_TABLE[code][0]
    if isinstance(code, int) and 222900 <= code <= 222999:
        return TransientError
    return ApiError if code is None else InvalidInputError


def error_message(code: int | str) -> str:
    """The reference's ``error_msg`` for a code (for the engine and protocol doubles);
    v2 codes from the v2 table, v3-only codes from the v3 one (the two do not overlap)."""
    if code in ERROR_TABLE:
        return ERROR_TABLE[code][1]
    return V3_ERROR_TABLE[code][1]


def reply_code(reply: Mapping[str, Any]) -> int | str | None:
    """A reply's ``error_code``, normalised (``"18"`` -> 18); None for a success (absent or 0)."""
    code = normalise_code(reply.get("error_code"))
    return None if code in (None, 0) else code


def reply_error(reply: Mapping[str, Any], attempts: int = 1, api: str = "v2",
                scrub: Callable[[str], str] = str) -> ApiError | None:
    """The error a reply stands for (its message passed through ``scrub``), or None."""
    code = reply_code(reply)
    if code is None:
        return None
    return make_error(code, scrub(str(reply.get("error_msg", ""))), reply.get("log_id"),
                      attempts, api=api)


def parse_log_id(value: object) -> int | None:
    """A ``log_id`` as an int (int, whole float or digit string), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def make_error(
    code: int | str | None, message: str, log_id: object = None, attempts: int = 1,
    api: str = "v2",
) -> ApiError:
    """Build the error of the right class for ``code`` under protocol ``api``."""
    norm = normalise_code(code)
    return error_class(norm, message, api)(norm, message, parse_log_id(log_id), attempts)


def normalise_code(code: object) -> int | str | None:
    """An error code as the tables key it: ints stay, digit strings become ints."""
    # Server codes are integers; the SDK's own is the string "SDK108". Some
    # proxies send numbers as strings, so "18" is read as 18.
    if isinstance(code, str) and code.isdigit():
        return int(code)
    return code if isinstance(code, (int, str)) else None
