"""The ledger's records and its backend interface (:class:`Ledger`).

Two tables of facts, whatever the backend:

- **events** (append-only): one :class:`Entry` per thing that happened to a
  face: a success of a run (``enrolled``, ``updated``, ``already_enrolled``),
  or what ``reconcile`` found or did (``missing_in_service``,
  ``deleted_unknown``). An event is identified by ``(run_id, row, group_id,
  action)``, so recording the same run twice changes nothing (``ledger import``
  is idempotent).
- **faces** (the state the events lead to): one row per ``(endpoint,
  group_id, uid, image_sha256)`` faceflow believes the service holds.
  ``enrolled`` / ``already_enrolled`` add the face; ``updated`` (user update
  and upsert replace a uid's faces) first drops the uid's other faces in that
  group; ``missing_in_service`` / ``deleted_unknown`` drop every face of the uid
  in that group, so the next enroll sends those rows again.

A face row also remembers where its bytes were last seen (``image_path``,
``image_size``, ``image_mtime_ns``): a manifest row whose file still has that
path, size and modification time is trusted to hold the recorded sha256
without being read, as git and rsync trust a file's stat. Any other row is read
and hashed, then looked up by sha256.

``endpoint`` is the service's host[:port] (:func:`endpoint_key`): one ledger can
serve several services without mixing them.

Implementing a backend: the methods of :class:`Ledger`, each one transaction;
``record`` must apply entries in the order given and skip events it already
holds. Several processes may use one ledger at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from urllib.parse import urlsplit

#: Successes of an enroll run that leave the face on the service.
ENROLL_ACTIONS = ("enrolled", "updated", "already_enrolled")
#: What reconcile records: the uid is gone from the group (drops its faces).
REMOVAL_ACTIONS = ("missing_in_service", "deleted_unknown")
ACTIONS = ENROLL_ACTIONS + REMOVAL_ACTIONS
#: Actions that replace the uid's faces in the group instead of adding one.
REPLACING_ACTIONS = ("updated",)

_DEFAULT_PORTS = {"http": 80, "https": 443}


def endpoint_key(endpoint: str) -> str:
    """``https://aip.baidubce.com`` -> ``aip.baidubce.com``;
    ``http://127.0.0.1:8480/`` -> ``127.0.0.1:8480`` (default ports dropped, lower case)."""
    parts = urlsplit(endpoint.strip())
    host = (parts.hostname or endpoint.strip()).lower()
    port = parts.port
    if port is not None and port != _DEFAULT_PORTS.get(parts.scheme.lower()):
        return f"{host}:{port}"
    return host


@dataclass(frozen=True, slots=True)
class Entry:
    """One event. ``group_id`` is one group (a row sent to ``a,b`` gives two entries).

    ``image_sha256`` is None only for removals. ``image_path`` is absolute;
    ``image_size`` (bytes) and ``image_mtime_ns`` are the file's stat when it was
    read, or None when unknown (then the next run reads the file once).
    ``at`` is when the event happened (UTC).
    """

    endpoint: str
    group_id: str
    uid: str
    image_sha256: str | None
    action: str
    run_id: str
    row: int
    at: datetime
    face_count: int | None = None
    detect_log_id: int | None = None
    write_log_id: int | None = None
    image_path: str | None = None
    image_size: int | None = None
    image_mtime_ns: int | None = None
    user_info: str | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown ledger action {self.action!r}; expected one of {ACTIONS}")
        if self.action in ENROLL_ACTIONS and not self.image_sha256:
            raise ValueError(f"a {self.action} entry needs image_sha256")
        if self.at.tzinfo is None:
            raise ValueError("Entry.at must be timezone-aware (UTC)")


@dataclass(frozen=True, slots=True)
class KnownFace:
    """A face the ledger holds for ``(endpoint, group_id, uid)``.

    ``key`` echoes the caller's probe key (:meth:`Ledger.known_paths`), else None.
    ``recorded_at`` is ISO 8601 UTC; ``action`` the event that put it there.
    """

    endpoint: str
    group_id: str
    uid: str
    image_sha256: str
    image_path: str | None
    image_size: int | None
    image_mtime_ns: int | None
    user_info: str | None
    face_count: int | None
    detect_log_id: int | None
    write_log_id: int | None
    run_id: str
    row: int
    action: str
    recorded_at: str
    key: int | None = None


@dataclass(frozen=True, slots=True)
class GroupStats:
    """``faces`` held and distinct ``uids`` of a group; ``events`` recorded for it by action."""

    endpoint: str
    group_id: str
    uids: int
    faces: int
    events: dict[str, int]
    last_recorded_at: str | None


#: A path probe: (caller's key, group_id, uid, absolute image path, the file's size in
#: bytes, its mtime in ns).
PathProbe = tuple[int, str, str, str, int, int]
#: A face found for a probe, as a plain tuple (a million of them are made per night):
#: (probe key, group_id, image_sha256, face_count, detect_log_id, write_log_id).
#: Log ids may come back as decimal text.
PathMatch = tuple[int, str, str, int | None, int | str | None, int | str | None]


class Ledger(Protocol):
    """What every backend provides. Each method is one transaction."""

    location: str

    def record(self, entries: Sequence[Entry]) -> int:
        """Apply ``entries`` in order; skip events already held. Returns how many were new."""
        ...

    def known_paths(self, endpoint: str, probes: Sequence[PathProbe]) -> list[PathMatch]:
        """The faces whose (group, uid, image_path, image_size, image_mtime_ns) equal a
        probe's, with the probe's key: the file is unchanged since it was recorded."""
        ...

    def known_image(self, endpoint: str, group_id: str, uid: str, sha256: str
                    ) -> KnownFace | None:
        """The face (group, uid, sha256) if the ledger holds it."""
        ...

    def refresh_stat(self, face: KnownFace, image_path: str, size: int, mtime_ns: int) -> None:
        """Remember that ``face``'s bytes are now at ``image_path`` with this stat."""
        ...

    def faces(self, endpoint: str, group_id: str, uid: str | None = None
              ) -> Iterator[KnownFace]:
        """Every face held for the group (of ``uid`` only, when given), ordered by uid
        then recorded time."""
        ...

    def stats(self) -> list[GroupStats]:
        """One line per (endpoint, group), ordered by endpoint then group."""
        ...

    def close(self) -> None:
        """Release the connection (the ledger may be opened again)."""
        ...
