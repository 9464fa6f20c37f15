"""The one exception hierarchy of faceflow, and the one table ``code -> class``.

::

    FaceflowError
     ├── ConfigError                  bad options, thresholds or manifest: stop before any call
     │    ├── ManifestError           ... with the manifest line that is wrong
     │    └── UnreachableError        the endpoint does not answer as the service at all
     └── ApiError                     anything the face service (or the way to it) answered
          ├── RetryableError          worth sending again after a back-off
          │    ├── QpsLimitError      4, 18: rate limits; the limiter slows down
          │    └── TransientError     216300, 216400, 216401, 216500, 216613, 216615, 216617,
          │                           SDK108 (timeouts), HTTP 5xx, dropped connections
          ├── QuotaError              17, 19: stop the caller until the quota resets
          ├── ServiceUnavailableError the service stopped answering for longer than the
          │                           client waits for it (an outage): stop, resume later
          ├── AuthError               14, 110, 111, 216015, 216110, bad credentials
          ├── InvalidInputError       100, 2161xx, 2162xx, 216402, 216614, 216631, and
          │    │                      arguments the client refuses before sending (code None)
          │    └── FaceNotFoundError  216402
          └── StateError              the face library is not in the state the call needs
               ├── UserNotFoundError  216611, 216612
               ├── ImageExistsError   216616
               ├── EmptyGroupError    216618
               ├── LastGroupError     216619
               └── AlreadyInGroupError 216100 with error_msg "already add"

Every :class:`ApiError` carries ``code``, ``message``, ``log_id`` and ``attempts``
(how many times the request was sent; 0 when it was refused before sending).
Retries select by class, never by message. Messages never contain credentials or
access tokens: only the service's ``error_msg`` and our own words go in them.
"""

from __future__ import annotations

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
    """216100 "already add": the user is already in the target group."""


#: code -> (class, the reference's error_msg). The engine answers with these
#: messages; the client maps codes to classes with this table and nothing else.
ERROR_TABLE: dict[int | str, tuple[type[ApiError], str]] = {
    4: (QpsLimitError, "Open api request limit reached"),
    14: (AuthError, "IAM Certification failed"),
    17: (QuotaError, "Open api daily request limit reached"),
    18: (QpsLimitError, "Open api qps request limit reached"),
    19: (QuotaError, "Open api total request limit reached"),
    100: (InvalidInputError, "Invalid parameter"),
    110: (AuthError, "Access token invalid or no longer valid"),
    111: (AuthError, "Access token expired"),
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

#: Codes a token refresh may cure (the contract: refresh once on 110 or 111).
TOKEN_CODES = frozenset({110, 111})

ALREADY_ADD_MSG = "already add"


def error_class(code: int | str | None, message: str = "") -> type[ApiError]:
    """The class for a service error code; unknown codes are plain :class:`ApiError`."""
    if code == 216100 and message.strip() == ALREADY_ADD_MSG:
        return AlreadyInGroupError
    norm = _normalise_code(code)
    if norm is None or norm not in ERROR_TABLE:
        return ApiError
    return ERROR_TABLE[norm][0]


def error_message(code: int | str) -> str:
    """The reference's ``error_msg`` for a code (for the engine and protocol doubles)."""
    return ERROR_TABLE[code][1]


def raise_for_reply(reply: dict[str, Any], attempts: int = 1) -> None:
    """Raise the mapped error when a reply carries an ``error_code`` other than 0."""
    code = reply.get("error_code")
    if code in (None, 0, "0"):
        return
    raise make_error(code, str(reply.get("error_msg", "")), reply.get("log_id"), attempts)


def make_error(
    code: int | str | None, message: str, log_id: Any = None, attempts: int = 1
) -> ApiError:
    """Build the error of the right class for ``code``."""
    norm = _normalise_code(code)
    cls = error_class(norm, message)
    lid = int(log_id) if isinstance(log_id, (int, str)) and str(log_id).isdigit() else None
    return cls(norm, message, lid, attempts)


def _normalise_code(code: int | str | None) -> int | str | None:
    # Server codes are integers; the SDK's own is the string "SDK108". Some
    # proxies send numbers as strings, so "18" is read as 18.
    if isinstance(code, str) and code.isdigit():
        return int(code)
    return code
