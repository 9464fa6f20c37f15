"""Options shared by every command (the exit codes are in jobs/exits.py)."""

from __future__ import annotations

import asyncio
import signal
from typing import Any, Awaitable, Callable, TypeVar

import click

from jobs.exits import (  # noqa: F401 - re-exported for commands that import them here
    EXIT_AUTH,
    EXIT_CONFIG,
    EXIT_FAILED_ROWS,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_QUOTA,
    config_errors,
)
from pipeline.client.config import Settings

F = Callable[..., Any]
T = TypeVar("T")


def connection_options(func: F) -> F:
    """--endpoint, --api-key, --secret-key, --app-id and the two timeouts."""
    options = [
        click.option("--endpoint", envvar="FACEFLOW_ENDPOINT", default=None, metavar="URL",
                     help="Base URL of the face service [env FACEFLOW_ENDPOINT; "
                          "default https://aip.baidubce.com]."),
        click.option("--api-key", envvar="FACEFLOW_API_KEY", default=None, metavar="KEY",
                     help="API Key [env FACEFLOW_API_KEY]. Never printed or stored."),
        click.option("--secret-key", envvar="FACEFLOW_SECRET_KEY", default=None, metavar="KEY",
                     help="Secret Key [env FACEFLOW_SECRET_KEY]. Never printed or stored."),
        click.option("--app-id", envvar="FACEFLOW_APP_ID", default=None,
                     help="App ID [env FACEFLOW_APP_ID]; informational, never sent."),
        click.option("--connect-timeout", type=float, default=None, metavar="SECONDS",
                     help="Connect timeout in seconds [default 10]."),
        click.option("--read-timeout", type=float, default=None, metavar="SECONDS",
                     help="Read timeout in seconds [default: follow the service: 4x its "
                          "recent p99 latency, within 2-60 s; a call waiting in a queue "
                          "that moves waits up to 60 s]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


#: --api v2|v3 [env FACEFLOW_API]: the protocol of the face service (README "v2 or v3").
api_option = click.option(
    "--api", type=click.Choice(("v2", "v3")), envvar="FACEFLOW_API", default=None,
    help="Face API protocol: v2 (/rest/2.0/face/v2, the default) or v3 (the current one; "
         "apps opened today hold v3 permission only) [env FACEFLOW_API].")


def settings_from(kwargs: dict[str, Any]) -> Settings:
    """Pop the connection options out of a command's kwargs and build Settings; missing
    or bad credentials are configuration (exit 2)."""
    names = ("endpoint", "api_key", "secret_key", "app_id", "connect_timeout", "read_timeout")
    overrides = {name: kwargs.pop(name, None) for name in names}
    with config_errors():
        return Settings.from_env(**overrides)


async def run_stoppable(job: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Await ``job(stop)`` with Ctrl-C and SIGTERM setting ``stop`` (a clean stop, exit 130)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread (e.g. under a test runner): no handler
    try:
        return await job(stop)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def plural(n: int, word: str, words: str | None = None) -> str:
    """``"1 finding"``, ``"3 findings"`` (``words``: an irregular plural)."""
    return f"{n} {word if n == 1 else words or word + 's'}"
