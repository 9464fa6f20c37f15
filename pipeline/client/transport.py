"""HTTP for the face client: one keep-alive session, the access token, the wire format.

Token mode only
    The client always authenticates with an OAuth access token from
    ``GET /oauth/2.0/token?grant_type=client_credentials&client_id=..&client_secret=..``
    (contract §1.3). A token whose ``scope`` lacks ``brain_all_scope`` would make the
    official SDK fall back to ``bce-auth-v1`` request signing; faceflow does not
    implement that signing and raises :class:`~pipeline.api.errors.AuthError` instead,
    as it does for ``{"error": "invalid_client"}`` and HTTP 401 replies.

Token cache
    A token is reused until 30 s before ``expires_in`` runs out (as the SDK), or until
    half its life when it lives under a minute (the SDK's margin would renew a 2-s token
    before every call); without ``expires_in`` it is fetched for every call. Concurrent
    callers share one fetch (single-flight). :meth:`Transport.invalidate` drops a token
    the service called invalid (110/111) so the next caller fetches a new one, once for
    all of them.

Timeouts
    The connect timeout is fixed (``Settings.connect_timeout``). The read timeout, unless
    ``Settings.read_timeout`` fixes it, follows the latency the service shows:
    :data:`TIMEOUT_MULTIPLE` times the p99 of the last :data:`LATENCY_WINDOW` answered
    requests, within :data:`TIMEOUT_FLOOR` and :data:`TIMEOUT_CEILING` seconds
    (:data:`TIMEOUT_START` until 20 have been answered: a few fast answers say nothing of
    the queue the next call may meet). A call that hangs then frees its slot after
    seconds, not after the SDK's 60 s, and costs its row one attempt.

    A slow service is not a hung call. Past that limit a call is given up only when the
    service answers others and not it (a call sent after it was answered), or when
    nothing at all has been answered since it was sent. A call waiting in a queue that
    moves (earlier calls are being answered, none has overtaken it) waits on, up to the
    ceiling: giving it up would not make the service faster, and the retry would queue
    the same work a second time behind it.

Wire format (contract §1.4)
    ``POST endpoint + path ? access_token=..&aipSdk=python&aipVersion=2_2_2`` with an
    ``application/x-www-form-urlencoded`` body. The reply is decoded as JSON whatever
    the HTTP status. Network failures and timeouts become
    :class:`~pipeline.api.errors.TransientError` with code ``"SDK108"``; a body that is not
    a JSON object becomes ``TransientError("HTTP<status>")`` (``AuthError`` for 401/403).
    v3 (``protocol="v3"``, v3 contract §1.4): ``aipVersion=4.15.13`` and an
    ``application/json`` body; the same token, decoding and error rules.

Secrets
    The API key, secret key and tokens travel only in the token request and in query
    strings; they are never logged and never put into an exception: errors are built
    from our own words and the service's ``error_msg`` (scrubbed of any credential),
    and aiohttp's exceptions (whose text can hold the URL with its query) are replaced,
    not chained.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, quote_plus

import aiohttp
import pybase64
from yarl import URL

from pipeline.api.errors import ApiError, AuthError, TransientError, reply_error
from pipeline.client.config import Settings

log = logging.getLogger("faceflow.client")

TOKEN_PATH = "/oauth/2.0/token"
#: Seconds before ``expires_in`` runs out at which the token is renewed (the SDK's 30 s).
RENEW_EARLY = 30.0
SDK_QUERY = "aipSdk=python&aipVersion=2_2_2"
FORM_TYPE = {"Content-Type": "application/x-www-form-urlencoded"}
#: v3 (v3 contract §1.4, §8.1): JSON bodies and the current SDK's version on the wire.
V3_SDK_QUERY = "aipSdk=python&aipVersion=4.15.13"
JSON_TYPE = {"Content-Type": "application/json"}
TIMEOUT_CODE = "SDK108"
TIMEOUT_MSG = "connection or read data timeout"
NEEDED_SCOPE = "brain_all_scope"
#: The adaptive read timeout (seconds): a multiple of the recent p99, floor, ceiling.
#: The start value holds until 20 answers were seen: 30 s, half the SDK's 60 s, as a first
#: call may meet a queue of other clients' work (a local engine on a laptop).
TIMEOUT_MULTIPLE, TIMEOUT_FLOOR, TIMEOUT_CEILING, TIMEOUT_START = 4.0, 2.0, 60.0, 30.0
LATENCY_WINDOW = 200


class ReadTimeout:
    """The read timeout: fixed, or following observed latency and the order of answers."""

    __slots__ = ("fixed", "_latencies", "_cached", "_dirty", "_newest_sent_answered",
                 "_last_answer")

    def __init__(self, fixed: float | None) -> None:
        self.fixed = fixed
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._cached, self._dirty = TIMEOUT_START, 0
        #: The send time of the newest call answered, and when the last answer came.
        self._newest_sent_answered = self._last_answer = float("-inf")

    def observe(self, seconds: float, sent_at: float | None = None) -> None:
        """A request sent at ``sent_at`` (monotonic) was answered after ``seconds``."""
        self._latencies.append(seconds)
        self._dirty += 1
        if sent_at is not None:
            self._newest_sent_answered = max(self._newest_sent_answered, sent_at)
            self._last_answer = max(self._last_answer, sent_at + seconds)

    def seconds(self) -> float:
        """The limit past which a call may be given up (see :meth:`overdue`)."""
        if self.fixed is not None:
            return self.fixed
        seen = len(self._latencies)
        if seen < 20:
            return TIMEOUT_START
        if self._dirty and (self._dirty >= 10 or seen < LATENCY_WINDOW):
            ordered = sorted(self._latencies)
            p99 = ordered[min(seen - 1, int(0.99 * seen))]
            self._cached = _clamp(TIMEOUT_MULTIPLE * p99)
            self._dirty = 0
        return self._cached

    def overdue(self, sent_at: float, now: float) -> bool:
        """Whether a call sent at ``sent_at`` and unanswered at ``now`` is given up: past
        the limit, and overtaken by a later call or met by no answer at all since it was
        sent; past the ceiling whatever the others do. A fixed timeout is just that."""
        age = now - sent_at
        if self.fixed is not None or age >= TIMEOUT_CEILING:
            return age >= (self.fixed or TIMEOUT_CEILING)
        if age < self.seconds():
            return False
        return self._newest_sent_answered > sent_at or self._last_answer < sent_at


def _clamp(seconds: float) -> float:
    return min(TIMEOUT_CEILING, max(TIMEOUT_FLOOR, seconds))


#: How often a call past its limit but still in a moving queue is looked at again (s).
RECHECK_EVERY = 0.5


def describe_failure(exc: BaseException, read_timeout: float | None = None) -> str:
    """A few words naming why a request got no answer (never the URL or its query)."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "its TLS certificate is not trusted"
    if isinstance(exc, (aiohttp.ClientConnectorSSLError, aiohttp.ClientSSLError, ssl.SSLError)):
        return "TLS handshake failed (does it speak plain http://?)"
    if isinstance(exc, (aiohttp.ClientConnectorDNSError, UnicodeError)):
        return "host name not resolved"
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        if isinstance(os_error, socket.gaierror):
            return "host name not resolved"
        if isinstance(os_error, ConnectionRefusedError):
            return "connection refused (nothing listens on that port)"
        if isinstance(os_error, ssl.SSLError):
            return "TLS handshake failed (does it speak plain http://?)"
        return f"cannot connect ({type(os_error).__name__})"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return "no connection within the connect timeout"
    if isinstance(exc, TimeoutError):
        return f"no answer within {read_timeout:.1f} s" if read_timeout else "timed out"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection without answering"
    return f"connection failed ({type(exc).__name__})"


@dataclass(frozen=True, slots=True)
class Token:
    """An access token and the clock reading (seconds) at which to stop using it."""

    value: str = field(repr=False)
    renew_at: float


def b64encode(data: bytes) -> bytes:
    """Standard base64, no newline. pybase64 (SIMD) gives the stdlib's bytes ~40x faster:
    21 us instead of 800 for a 300 KB photo, which was most of the client's CPU per call."""
    return bytes(pybase64.b64encode(data))


def usable_seconds(expires_in: object) -> float:
    """Seconds a token is used for: ``expires_in`` less min(30 s, half of it); 0 (fetch
    again for the next call) when ``expires_in`` is missing or not a positive number."""
    if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)):
        return 0.0
    if not expires_in > 0:
        return 0.0
    return float(expires_in) - min(RENEW_EARLY, expires_in / 2)


def encode_form(fields: list[tuple[str, str | bytes]]) -> bytes:
    """Form-encode ``fields`` in order, as ``requests`` does (UTF-8, ``quote_plus``).

    A ``bytes`` value must already be standard base64 text: only ``+``, ``/`` and
    the ``=`` padding need escaping there. ``bytes.replace`` does that far faster
    than ``quote_plus`` (which walks a 300 KB photo byte by byte), and the padding,
    only ever at the end, is escaped without a pass over the text.
    """
    parts: list[bytes | memoryview] = []
    for name, value in fields:
        parts.append(("&" if parts else "").encode() + name.encode("ascii") + b"=")
        if isinstance(value, bytes):
            text = value.replace(b"+", b"%2B").replace(b"/", b"%2F")
            pad = 2 if text.endswith(b"==") else 1 if text.endswith(b"=") else 0
            # a memoryview slice: join copies the text once, not twice
            parts += [memoryview(text)[:len(text) - pad], b"%3D" * pad]
        else:
            parts.append(quote_plus(value).encode("ascii"))
    return b"".join(parts)


def network_error(exc: BaseException, what: str, read_timeout: float | None = None
                  ) -> TransientError:
    """A TransientError("SDK108") for a timeout or a broken connection, without the URL.

    Its ``cause`` attribute names what went wrong in a few words (:func:`describe_failure`).
    """
    cause = describe_failure(exc, read_timeout)
    if isinstance(exc, TimeoutError) and not isinstance(exc, aiohttp.ConnectionTimeoutError):
        error = TransientError(TIMEOUT_CODE, f"{what}: {TIMEOUT_MSG} ({cause})", attempts=0)
    else:
        # our words only: str(exc) of aiohttp errors may carry the URL and query.
        error = TransientError(TIMEOUT_CODE, f"{what}: connection failed: {cause}", attempts=0)
    error.cause = cause  # type: ignore[attr-defined]
    return error


class Transport:
    """The session and token of one :class:`~pipeline.client.faceclient.FaceClient`.

    ``clock()`` (monotonic seconds) times the token cache; ``on_token_fetch`` is called
    once per token request sent (for the client's stats).
    """

    def __init__(self, settings: Settings, *, connection_limit: int = 32,
                 clock: Callable[[], float] = time.monotonic,
                 on_token_fetch: Callable[[], None] = lambda: None,
                 protocol: str = "v2") -> None:
        self._settings = settings
        #: "v2": form bodies, aipVersion 2_2_2; "v3": JSON bodies, aipVersion 4.15.13.
        self.protocol = protocol
        self._query = V3_SDK_QUERY if protocol == "v3" else SDK_QUERY
        self._content = JSON_TYPE if protocol == "v3" else FORM_TYPE
        self._base = settings.endpoint.rstrip("/")
        self._limit = connection_limit
        self._clock = clock
        self._on_token_fetch = on_token_fetch
        self._session: aiohttp.ClientSession | None = None
        self._token: Token | None = None
        self._inflight: asyncio.Future[Token] | None = None
        self._urls: dict[str, URL] = {}  # path -> URL with the current token's query
        self.read_timeout = ReadTimeout(settings.read_timeout)

    async def open(self) -> None:
        """Create the session (inside the running loop). TLS certificates are verified."""
        s = self._settings
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=s.connect_timeout,
                                        sock_read=s.read_timeout or TIMEOUT_CEILING)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._limit), timeout=timeout,
            raise_for_status=False, auto_decompress=True,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._inflight is not None and not self._inflight.done():
            self._inflight.cancel()

    # -- token ----------------------------------------------------------------------

    async def token(self) -> str:
        """A valid access token, fetched (once for all concurrent callers) when needed."""
        tok = self._token
        if tok is not None and self._clock() < tok.renew_at:
            return tok.value
        if self._inflight is None:
            task = asyncio.ensure_future(self._fetch_token())
            task.add_done_callback(self._fetch_done)
            self._inflight = task
        # shield: one caller being cancelled must not cancel the fetch the others await
        return (await asyncio.shield(self._inflight)).value

    def _fetch_done(self, task: asyncio.Future[Token]) -> None:
        self._inflight = None
        if task.cancelled():
            return
        if task.exception() is None:  # also marks a failure as retrieved
            self._token = task.result()
            self._urls.clear()

    def invalidate(self, value: str) -> None:
        """The service refused ``value`` (110/111): the next :meth:`token` fetches anew.

        Only drops the cached token if it is still ``value``, so many calls failing
        with the same old token cause one fetch, not one each.
        """
        if self._token is not None and self._token.value == value:
            self._token = None
            self._urls.clear()

    async def _fetch_token(self) -> Token:
        s = self._settings
        params = {"grant_type": "client_credentials", "client_id": s.api_key.reveal(),
                  "client_secret": s.secret_key.reveal()}
        self._on_token_fetch()
        started = self._clock()
        status, reply = await self._exchange("GET", URL(self._base + TOKEN_PATH), params=params,
                                             what="token request")
        token = self._read_token(status, reply, started)
        log.debug("token fetched (valid %.0f s)", token.renew_at - started)
        return token

    def _read_token(self, status: int, reply: object, started: float) -> Token:
        """Decide what a token reply means: a Token, or the error to raise."""
        if not isinstance(reply, dict):
            raise TransientError(f"HTTP{status}", "token request: the reply is not JSON",
                                 attempts=0)
        if "error" in reply or status in (401, 403):
            code = str(reply.get("error") or f"HTTP{status}")
            detail = self.scrub(str(reply.get("error_description", "")))
            raise AuthError(code, f"the token endpoint refused the credentials ({code}"
                                  f"{': ' + detail if detail else ''})", attempts=0)
        error = reply_error(reply, attempts=0, scrub=self.scrub)
        if error is not None:
            raise error
        if status >= 500 or not reply.get("access_token"):
            raise TransientError(f"HTTP{status}", "token request: no access_token in the reply",
                                 attempts=0)
        if NEEDED_SCOPE not in str(reply.get("scope", "")).split():
            raise AuthError("scope", f"the token's scope lacks {NEEDED_SCOPE}; faceflow only "
                                     "supports token mode (no bce-auth-v1 signing)", attempts=0)
        return Token(str(reply["access_token"]), started + usable_seconds(reply.get("expires_in")))

    def scrub(self, text: str) -> str:
        """``text`` with any credential or token replaced by ``***``."""
        s = self._settings
        secrets = [s.api_key.reveal(), s.secret_key.reveal()]
        if self._token is not None:
            secrets.append(self._token.value)
        for secret in secrets:
            if secret and secret in text:
                text = text.replace(secret, "***")
        return text

    # -- API calls ------------------------------------------------------------------

    def _url(self, path: str, token: str) -> URL:
        url = self._urls.get(path) if token == getattr(self._token, "value", None) else None
        if url is None:
            url = URL(f"{self._base}{path}?access_token={quote(token, safe='')}&{self._query}",
                      encoded=True)
            if token == getattr(self._token, "value", None):
                self._urls[path] = url
        return url

    async def post(self, path: str, body: bytes, token: str) -> tuple[int, dict[str, Any]]:
        """POST ``body`` (form-encoded for v2, JSON for v3); (HTTP status, JSON object)."""
        status, reply = await self._exchange("POST", self._url(path, token), data=body,
                                             headers=self._content, what=path)
        if not isinstance(reply, dict):
            cls = AuthError if status in (401, 403) else TransientError
            raise cls(f"HTTP{status}", f"{path}: the reply is not a JSON object", attempts=0)
        return status, reply

    async def _exchange(self, method: str, url: URL, *, what: str, **kwargs: Any
                        ) -> tuple[int, object]:
        """Send one request; (status, JSON value or None when the body is not JSON)."""
        if self._session is None:
            raise RuntimeError("the client is not open")
        clock, fixed = self.read_timeout, self.read_timeout.fixed
        # --read-timeout: aiohttp's own socket timeout; else ours (_Watch), the ceiling behind it
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._settings.connect_timeout,
                                        sock_read=fixed or TIMEOUT_CEILING)
        started = time.monotonic()
        watch = _Watch(clock, started) if fixed is None else None
        try:
            async with self._session.request(method, url, timeout=timeout, **kwargs) as resp:
                body = await resp.read()
                status = resp.status
        except asyncio.CancelledError:
            if watch is not None and watch.gave_up():
                log.debug("%s %s: no answer after %.1f s", method, what, watch.age())
                raise network_error(TimeoutError(), what, watch.age()) from None
            raise
        except (aiohttp.ClientError, TimeoutError, UnicodeError) as exc:
            # UnicodeError: a host name no resolver could look up (idna refuses it)
            log.debug("%s %s failed: %s", method, what, type(exc).__name__)
            raise network_error(exc, what, fixed or time.monotonic() - started) from None
        finally:
            if watch is not None:
                watch.stop()
        clock.observe(time.monotonic() - started, started)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, None


class _Watch:
    """Gives up the current task's request when :meth:`ReadTimeout.overdue` says so.

    One timer per request, set for when its limit runs out; a call found still waiting
    in a moving queue is looked at again every :data:`RECHECK_EVERY` seconds. Giving up
    cancels the task (as :func:`asyncio.timeout` does) and :meth:`gave_up` turns that
    cancellation into a timeout, leaving any other cancellation alone."""

    __slots__ = ("_clock", "_started", "_task", "_loop", "_handle", "_fired")

    def __init__(self, clock: ReadTimeout, started: float) -> None:
        self._clock, self._started = clock, started
        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        self._fired = False
        self._handle = self._loop.call_at(started + clock.seconds(), self._check)

    def _check(self) -> None:
        if self._clock.overdue(self._started, time.monotonic()):
            self._fired = True
            if self._task is not None:
                self._task.cancel()
        else:
            self._handle = self._loop.call_later(RECHECK_EVERY, self._check)

    def gave_up(self) -> bool:
        """True when the cancellation being handled is ours (then it is taken back)."""
        return self._fired and self._task is not None and self._task.uncancel() == 0

    def age(self) -> float:
        return time.monotonic() - self._started

    def stop(self) -> None:
        self._handle.cancel()


def check_reply(reply: dict[str, Any], status: int, scrub: Callable[[str], str],
                api: str = "v2") -> ApiError | None:
    """The error a decoded reply stands for, or None for a success.

    An ``error_code`` other than 0 is mapped through the error table (message
    scrubbed); an HTTP 5xx without one is transient.
    """
    error = reply_error(reply, api=api, scrub=scrub)
    if error is not None:
        return error
    if status >= 500:
        return TransientError(f"HTTP{status}", f"server error HTTP {status}", attempts=0)
    return None
