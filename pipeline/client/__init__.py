"""The async client of the Baidu Face API v2: FaceClient, transport, rate limits, retry, config.

``FaceClient`` is re-exported lazily so that importing :mod:`pipeline.client.config`
(Settings) does not load aiohttp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.client.faceclient import FaceClient

__all__ = ["FaceClient"]


def __getattr__(name: str) -> object:
    if name == "FaceClient":
        from pipeline.client.faceclient import FaceClient  # noqa: PLC0415

        return FaceClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
