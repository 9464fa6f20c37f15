"""The scratch group of a ``before_enroll`` audit: ``<G>__audit_<run id>``, holding the
manifest's photos under scratch uids (``ffaudit_<token>_<n>``) while they are probed,
and emptied at the end. A stopped audit leaves it for its resume to reuse and delete;
``scratch.json`` and ``scratch-added.txt`` in the run directory say how far it got."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TextIO, runtime_checkable

from pipeline.api.errors import (
    ApiError,
    GroupNotFoundError,
    ImageExistsError,
    UserNotFoundError,
)
from pipeline.audit.config import AuditConfig
from pipeline.audit.findings import (
    AuditImage,
)
from pipeline.frame import (
    STOPPING_ERRORS,
    FaceApi,
    Runner,
    Stopped,
    as_stop,
)
from pipeline.runs.rundir import (
    RunDir,
    write_atomic,
)

log = logging.getLogger("faceflow.audit")

SCRATCH_FILE = "scratch.json"
#: Plan rows already added to the scratch group, one per line (appended as they are
#: added), so a resumed fill adds only the others.
SCRATCH_ADDED_FILE = "scratch-added.txt"

@dataclass(frozen=True, slots=True)
class ScratchMap:
    """The scratch group of a ``before_enroll`` audit: manifest uid <-> scratch uid."""

    group: str
    uids: Mapping[str, str]  # manifest uid -> scratch uid


def scratch_group_name(group: str, run_id: str) -> str:
    """``<group>__audit_<run id>``, cut to the reference's 48 characters per group id.

    The run id's ``-`` is not allowed in a group id, so it becomes ``_``.
    """
    suffix = "__audit_" + re.sub(r"[^A-Za-z0-9_]", "_", run_id)
    return group[: max(1, 48 - len(suffix))] + suffix[:47]


def load_scratch(
    rundir: RunDir, plan: Sequence[AuditImage], run_id: str, group: str
) -> dict[str, Any]:
    """``scratch.json`` of a before-enroll audit, created (and saved) on first use.

    Scratch uids are ``ffaudit_<token>_<n>``: the token is random per audit, so no
    real uid is ever touched (uids are app-wide, not per group).
    """
    path = rundir.path / SCRATCH_FILE
    if path.exists():
        return dict(json.loads(path.read_text(encoding="utf-8")))
    token = run_id.rsplit("-", 1)[-1]
    uids = list(dict.fromkeys(p.uid for p in plan if p.probe))
    state = {"group": scratch_group_name(group, run_id),
             "uids": {u: f"ffaudit_{token}_{i}" for i, u in enumerate(uids)},
             "filled": False, "deleted": False}
    save_scratch(rundir, state)
    return state


def scratch_added(rundir: RunDir) -> set[int]:
    """The plan rows an earlier session added to the scratch group (a torn line is skipped)."""
    path = rundir.path / SCRATCH_ADDED_FILE
    if not path.exists():
        return set()
    text = path.read_text(encoding="ascii", errors="replace")
    return {int(n) for n in text.split("\n")[:-1] if n.isdigit()}


def save_scratch(rundir: RunDir, state: Mapping[str, Any]) -> None:
    write_atomic(rundir.path / SCRATCH_FILE, json.dumps(state, indent=1).encode())


def scratch_pending(rundir: RunDir) -> bool:
    """True while a scratch group of this audit may still be in the library."""
    path = rundir.path / SCRATCH_FILE
    return path.exists() and not json.loads(path.read_text(encoding="utf-8")).get("deleted")


@runtime_checkable
class _DeletesGroups(Protocol):
    """A v3 client: groups outlive their users there, so the empty group is deleted."""

    async def delete_group(self, group_id: str) -> object: ...


class ScratchGroup:
    """The scratch group of one session of a before-enroll audit: filled before the
    probes, emptied after them. ``load(photo)`` gives a photo's bytes, ``runner()`` a
    fresh :class:`Runner`, ``phase(name, detail)`` tells the observer; requests are
    counted into ``calls``. ``left`` names the group while it is in the library,
    ``failed`` counts the photos it refused."""

    def __init__(self, config: AuditConfig, rundir: RunDir, plan: Sequence[AuditImage],
                 run_id: str, load: Callable[[AuditImage], Awaitable[bytes]],
                 runner: Callable[[], Runner[Any]], phase: Callable[[str, str], None],
                 calls: Counter[str]) -> None:
        self.config, self.rundir, self.plan, self.run_id = config, rundir, plan, run_id
        self.load, self.runner, self.phase, self.calls = load, runner, phase, calls
        self.left: str | None = None
        self.failed = 0

    async def fill(self, client: FaceApi) -> tuple[ScratchMap, Stopped | None]:
        """Add every probe photo not added yet (under its scratch uid), then wait for the
        service to make them searchable."""
        state = load_scratch(self.rundir, self.plan, self.run_id, self.config.groups[0])
        self.left = state["group"]
        scratch = ScratchMap(state["group"], state["uids"])
        if state["filled"]:
            return scratch, None
        added = scratch_added(self.rundir)
        probes = [p for p in self.plan if p.probe and p.row not in added]
        self.phase("scratch_fill", f"{len(probes)} photos into {scratch.group}")
        with open(self.rundir.path / SCRATCH_ADDED_FILE, "a", encoding="ascii") as log_file:
            stopped = await self.runner().run(
                probes, lambda img: self._add(client, scratch, img, log_file))
        if stopped is not None:
            return scratch, stopped
        save_scratch(self.rundir, {**state, "filled": True})
        # The reference: a new user is searchable only some seconds after user add.
        await asyncio.sleep(self.config.scratch_settle_s)
        return scratch, None

    async def _add(self, client: FaceApi, scratch: ScratchMap, img: AuditImage, done: TextIO
                   ) -> None:
        from pipeline.runs.images import ImageProblem  # noqa: PLC0415

        try:
            data = await self.load(img)
            self.calls["add"] += 1
            await client.add_user(scratch.uids[img.uid], img.uid, scratch.group, data,
                                  action_type="append")
            done.write(f"{img.row}\n")
            done.flush()  # in the OS at once: a killed session's resume skips this photo
        except (ImageProblem, ImageExistsError):
            return  # unreadable photos fail in their probe; 216616 = added by a killed session
        except STOPPING_ERRORS as exc:
            raise as_stop(exc) from exc
        except ApiError:
            self.failed += 1  # its probe still runs; others cannot find it

    async def _delete_group(self, client: _DeletesGroups, group: str) -> Stopped | None:
        try:
            await client.delete_group(group)
        except GroupNotFoundError:
            pass  # never created, or deleted by an earlier session
        except STOPPING_ERRORS as exc:
            stop = as_stop(exc)
            return Stopped(stop.reason, stop.message)
        except ApiError as exc:  # the users are gone; an empty group left behind is harmless
            log.warning("could not delete the empty scratch group %s: %s", group, exc)
        return None

    async def empty(self, client: FaceApi, scratch: ScratchMap) -> Stopped | None:
        """Delete the scratch users (and, on v3, the group); record it in scratch.json."""
        self.phase("scratch_delete", f"{len(scratch.uids)} scratch users")
        stopped = await self.runner().run(scratch.uids.values(),
                                          lambda u: self._delete(client, scratch, u))
        if stopped is None and isinstance(client, _DeletesGroups):
            # v3 groups outlive their users: the empty scratch group is deleted too.
            stopped = await self._delete_group(client, scratch.group)
        if stopped is None:
            state = load_scratch(self.rundir, self.plan, self.run_id, self.config.groups[0])
            # Emptied: a later session that fills it again must add every photo.
            (self.rundir.path / SCRATCH_ADDED_FILE).unlink(missing_ok=True)
            save_scratch(self.rundir, {**state, "filled": False, "deleted": True})
            self.left = None
        return stopped

    async def _delete(self, client: FaceApi, scratch: ScratchMap, scratch_uid: str) -> None:
        self.calls["delete"] += 1
        try:
            await client.delete_user(scratch_uid, group_id=scratch.group)
        except UserNotFoundError:
            pass  # never added (its photo failed) or deleted by an earlier session
        except STOPPING_ERRORS as exc:
            raise as_stop(exc) from exc
