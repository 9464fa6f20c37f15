"""What a job needs of a face service: the :class:`FaceApi` protocol and the client factory.

:class:`pipeline.client.faceclient.FaceClient` (Baidu Face v2, and the local engine
that speaks it) implements it; a client for another protocol version implements
the same methods and returns the same records (:mod:`pipeline.api.records`), so
jobs run unchanged on either. Errors are the classes of :mod:`pipeline.api.errors`.

Only the calls jobs make are here (enroll: detect, add, update, and identify + match
with --block-duplicates; audit: identify, match, add, delete; reconcile: get_user, the
group listings, verify, delete).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pipeline.api.records import (
    DetectResult,
    GroupListResult,
    GroupUsersResult,
    IdentifyResult,
    MatchResult,
    UserResult,
    VerifyResult,
    WriteResult,
)

if TYPE_CHECKING:
    from pipeline.client.budget import Budget
    from pipeline.client.config import Settings
    from pipeline.client.ratelimit import RateLimiter

__all__ = ["ClientFactory", "FaceApi", "Qps", "default_client_factory", "factory_options"]

#: A QPS option: one number for every interface, a mapping per interface name
#: (``{"detect": 5, "add": 2}``), or None for the client's defaults.
Qps = float | Mapping[str, float] | None


@runtime_checkable
class FaceApi(Protocol):
    """The face-service calls of every job. Images are file bytes (jpg/png/bmp)."""

    async def detect(self, image: bytes, *, max_face_num: int = 1,
                     face_fields: Sequence[str] = ()) -> DetectResult:
        """Faces in ``image``, largest first; ``face_fields`` e.g. ``("qualities",)``."""
        ...

    async def add_user(self, uid: str, user_info: str, group_id: str | Sequence[str],
                       image: bytes, *, action_type: str | None = None) -> WriteResult:
        """Register ``image`` for ``uid`` ("append" or "replace" its images)."""
        ...

    async def update_user(self, uid: str, user_info: str, group_id: str, image: bytes, *,
                          action_type: str | None = None) -> WriteResult:
        """Replace the images of ``uid`` in ``group_id`` ("replace" registers a new uid)."""
        ...

    async def delete_user(self, uid: str, *, group_id: str | None = None) -> WriteResult:
        """Delete ``uid`` from every group, or only from ``group_id``."""
        ...

    async def get_user(self, uid: str, *, group_id: str | None = None) -> UserResult:
        """One record per group ``uid`` is in (or only ``group_id``'s)."""
        ...

    async def get_group_list(self, *, start: int = 0, num: int = 100) -> GroupListResult:
        """Group ids from index ``start``, at most ``num``."""
        ...

    async def get_group_users(self, group_id: str, *, start: int = 0, num: int = 100
                              ) -> GroupUsersResult:
        """Users of ``group_id`` from index ``start``, at most ``num``."""
        ...

    async def identify(self, group_id: str | Sequence[str], image: bytes, *,
                       user_top_num: int = 1, ext_fields: str | None = None) -> IdentifyResult:
        """1:N search of ``image`` in the groups; the best ``user_top_num`` users (0-100)."""
        ...

    async def verify(self, uid: str, group_id: str | Sequence[str], image: bytes, *,
                     top_num: int = 1, ext_fields: str | None = None) -> VerifyResult:
        """1:1 check of ``image`` against ``uid``'s faces: up to ``top_num`` scores (0-100)
        (reconcile --check-faces)."""
        ...

    async def match(self, images: Sequence[bytes], *, ext_fields: str | None = None,
                    image_liveness: str | None = None, types: str | None = None
                    ) -> MatchResult:
        """Similarity (0-100) of each pair of ``images`` (indexes 0-based in order)."""
        ...


class ClientFactory(Protocol):
    """``factory(settings, qps, ...)`` -> an async context manager yielding the client.

    Options are passed only when a run uses them, so a factory that never meets them
    may take two arguments: ``limiter`` (the QPS budget shared across processes,
    ``--qps-budget``), ``api`` ("v2" or "v3") and ``server_quality`` (v3 only).
    """

    def __call__(
        self, settings: Settings, qps: Qps, /, *, limiter: RateLimiter | Budget | None = None,
        api: str = "v2", server_quality: str | None = None,
    ) -> AbstractAsyncContextManager[FaceApi]:
        ...


def factory_options(limiter: RateLimiter | Budget | None = None, api: str = "v2",
                    **v3_options: object) -> dict[str, Any]:
    """The keywords a job passes its :class:`ClientFactory` beyond (settings, qps): only
    those in use, so a v2 run without a shared budget calls a factory with two arguments.
    ``v3_options`` (e.g. ``server_quality``) go with ``api`` when it is not v2."""
    options: dict[str, Any] = {"limiter": limiter} if limiter else {}
    if api != "v2":
        options.update(api=api, **v3_options)
    return options


def default_client_factory(
    settings: Settings, qps: Qps, /, *, limiter: RateLimiter | Budget | None = None,
    api: str = "v2", server_quality: str | None = None,
) -> AbstractAsyncContextManager[FaceApi]:
    """The client for ``api``: a :class:`~pipeline.client.faceclient.FaceClient` (v2), or a
    :class:`~pipeline.client.v3jobs.V3JobApi` (the same calls over v3). Imported only when
    a job runs, so importing a job does not load aiohttp. ``limiter``: a RateLimiter, or
    the shared QPS budget that stands in for one (same ``acquire``/``on_limited``)."""
    if api == "v3":
        from pipeline.client.v3jobs import V3JobApi  # noqa: PLC0415

        return V3JobApi(settings, qps=qps, limiter=limiter, server_quality=server_quality)
    from pipeline.client.faceclient import FaceClient  # noqa: PLC0415

    return FaceClient(settings, qps=qps, limiter=limiter)
