"""Connection settings shared by every job, and the :class:`Secret` wrapper.

Flags and environment variables have the same names everywhere:
``--endpoint`` / ``FACEFLOW_ENDPOINT``, ``--api-key`` / ``FACEFLOW_API_KEY``,
``--secret-key`` / ``FACEFLOW_SECRET_KEY``, ``--app-id`` / ``FACEFLOW_APP_ID``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping

from pipeline.api.endpoints import (  # noqa: F401 - ENGINE_DEMO_* re-exported for callers
    BAIDU_ENDPOINT,
    ENGINE_DEFAULT_PORT,
    ENGINE_DEMO_API_KEY,
    ENGINE_DEMO_SECRET_KEY,
)
from pipeline.api.errors import ConfigError


class Secret:
    """A string that never shows itself: ``repr`` and ``str`` are masked.

    Call :meth:`reveal` at the one place the value must travel (the token request).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling (e.g. into a process pool) keeps the value but not in any text form.
        return (Secret, (self._value,))


@dataclass(frozen=True)
class Settings:
    """Where the face service is and how to talk to it.

    Timeouts are seconds (the SDK's setters take milliseconds; its defaults are 60 s).
    ``read_timeout`` None (the default) lets the client follow the latency the service
    shows (a multiple of the recent p99, within a floor and a ceiling; see
    :mod:`pipeline.client.transport`); a number fixes it.
    ``api_key`` and ``secret_key`` may be given as plain strings: they are wrapped
    in :class:`Secret` on construction.
    """

    endpoint: str = BAIDU_ENDPOINT
    api_key: Secret = field(default_factory=lambda: Secret(""))
    secret_key: Secret = field(default_factory=lambda: Secret(""))
    app_id: str = ""
    connect_timeout: float = 10.0
    read_timeout: float | None = None

    def __post_init__(self) -> None:
        # Plain strings are accepted and wrapped, so a secret is never kept unmasked.
        for name in ("api_key", "secret_key"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, Secret(value))
        if not self.endpoint.startswith(("http://", "https://")):
            raise ConfigError(
                f"--endpoint {self.endpoint!r} is not an http(s) URL; "
                f"use e.g. {BAIDU_ENDPOINT} or http://127.0.0.1:{ENGINE_DEFAULT_PORT}"
            )
        if not self.api_key or not self.secret_key:
            raise ConfigError(
                "no credentials: pass --api-key and --secret-key "
                "or set FACEFLOW_API_KEY and FACEFLOW_SECRET_KEY"
            )
        if self.connect_timeout <= 0 or (self.read_timeout is not None and self.read_timeout <= 0):
            raise ConfigError("timeouts must be positive numbers of seconds")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Settings from ``FACEFLOW_*`` variables; explicit overrides win when not None."""
        env = os.environ if env is None else env
        values: dict[str, object] = {
            "endpoint": env.get("FACEFLOW_ENDPOINT", BAIDU_ENDPOINT),
            "api_key": Secret(env.get("FACEFLOW_API_KEY", "")),
            "secret_key": Secret(env.get("FACEFLOW_SECRET_KEY", "")),
            "app_id": env.get("FACEFLOW_APP_ID", ""),
        }
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)  # type: ignore[arg-type]

    def public(self) -> dict[str, object]:
        """The settings safe to write down (run settings, logs): no secrets."""
        return {
            "endpoint": self.endpoint,
            "app_id": self.app_id,
            "connect_timeout": self.connect_timeout,
            "read_timeout": self.read_timeout,
        }
