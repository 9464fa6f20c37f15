"""Probing one photo: identify it in the audited groups, confirm each candidate uid with
one match, match it against its uid's reference photo -> a :class:`ProbeRecord`."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline.api.errors import (
    ApiError,
    EmptyGroupError,
)
from pipeline.api.records import MatchResult
from pipeline.api.validate import b64_size
from pipeline.audit.config import AuditConfig
from pipeline.audit.findings import (
    AuditImage,
    ProbeRecord,
)
from pipeline.audit.plan import photos_by_uid, reference_rows
from pipeline.audit.scratch import ScratchMap
from pipeline.frame import (
    STOPPING_ERRORS,
    FaceApi,
    as_stop,
)
from pipeline.runs.rundir import (
    utc_now,
)

log = logging.getLogger("faceflow.audit")

#: Bytes of base64 text one match request may carry (reference §3.2: 20M, M = 2^20).
MATCH_BUDGET = 20 * 2**20

Loader = Callable[[AuditImage], bytes]


def default_loader(img: AuditImage, api: str = "v2") -> bytes:
    """The bytes enroll sent for this photo (:func:`pipeline.runs.images.load_image`,
    within the limits of protocol ``api``)."""
    from pipeline.runs.images import limits_for, load_image  # noqa: PLC0415

    return load_image(Path(img.path), limits=limits_for(api)).data


class PhotoCache:
    """Photo bytes by plan row, read in a worker thread; the last ``size`` kept (LRU).

    Candidate photos are asked for again and again (a popular uid), probes once.
    """

    def __init__(self, loader: Loader, size: int = 64) -> None:
        self._loader, self._size = loader, size
        self._cache: OrderedDict[int, bytes] = OrderedDict()

    async def get(self, img: AuditImage) -> bytes:
        data = self._cache.get(img.row)
        if data is not None:
            self._cache.move_to_end(img.row)
            return data
        data = await asyncio.to_thread(self._loader, img)
        self._cache[img.row] = data
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return data


@dataclass
class _ProbeState:
    """What is known about one probe so far; becomes its :class:`ProbeRecord`."""

    img: AuditImage
    started: datetime
    identify_log_id: int | None = None
    cands: list[tuple[str, str, float, str]] = field(default_factory=list)
    matches: list[tuple[str, int, float, int | None]] = field(default_factory=list)
    ref: tuple[int | None, float | None, int | None] = (None, None, None)
    calls: int = 0
    attempts: int = 0

    def record(self, run_id: str, status: str = "checked", reason: str | None = None,
               code: str | None = None, message: str | None = None) -> ProbeRecord:
        c, m = list(zip(*self.cands, strict=True)), list(zip(*self.matches, strict=True))
        c, m = c or [()] * 4, m or [()] * 4
        return ProbeRecord(
            run_id=run_id, row=self.img.row, uid=self.img.uid, status=status, reason=reason,
            error_code=code, error_msg=message, identify_log_id=self.identify_log_id,
            cand_uids=c[0], cand_groups=c[1], cand_scores=c[2], cand_infos=c[3],
            match_uids=m[0], match_rows=m[1], match_scores=m[2], match_log_ids=m[3],
            ref_row=self.ref[0], ref_score=self.ref[1], ref_log_id=self.ref[2],
            calls=self.calls, attempts=self.attempts, started_at=self.started,
            finished_at=utc_now())


def _inverse(mapping: Mapping[str, str]) -> dict[str, str]:
    return {v: k for k, v in mapping.items()}


class Prober:
    """Runs the calls of one probe (shared by every probe of a session)."""

    def __init__(self, config: AuditConfig, plan: Sequence[AuditImage], client: FaceApi,
                 photos: PhotoCache, run_id: str, scratch: ScratchMap | None = None) -> None:
        self.config, self.plan, self.client, self.photos = config, plan, client, photos
        self.run_id, self.scratch = run_id, scratch
        self.refs, self.by_uid = reference_rows(plan), photos_by_uid(plan)
        self.scratch_uids = _inverse(scratch.uids) if scratch else {}
        groups = list(config.groups) + ([scratch.group] if scratch else [])
        self.search = ",".join(groups)
        self.calls: Counter[str] = Counter()  # interface -> requests, this session

    async def probe(self, img: AuditImage) -> ProbeRecord:
        """The record of ``img``'s probe; raises :class:`StopRun` on quota or auth errors."""
        from pipeline.runs.images import ImageProblem  # noqa: PLC0415

        state = _ProbeState(img, utc_now())
        try:
            data = await self.photos.get(img)
            await self._identify(data, state)
            await self._confirm(data, state)
            await self._reference(data, state)
        except ImageProblem as exc:
            return state.record(self.run_id, "failed", exc.reason, None, exc.message)
        except STOPPING_ERRORS as exc:
            raise as_stop(exc) from exc
        except ApiError as exc:
            state.attempts += exc.attempts
            code = None if exc.code is None else str(exc.code)
            return state.record(self.run_id, "failed", "api_error", code, str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug on one probe must not end the audit
            log.exception("probe of plan row %d failed unexpectedly", img.row)
            return state.record(self.run_id, "failed", "internal_error", None,
                                f"{type(exc).__name__}: {exc}"[:500])
        return state.record(self.run_id)

    async def _identify(self, data: bytes, state: _ProbeState) -> None:
        state.calls += 1
        self.calls["identify"] += 1
        try:
            result = await self.client.identify(self.search, data,
                                                user_top_num=self.config.top_k)
        except EmptyGroupError as exc:  # nobody enrolled yet: nothing to find
            state.attempts += exc.attempts
            return
        state.attempts += result.attempts
        state.identify_log_id = result.log_id
        for c in result.candidates:
            uid, group = self._real(c.uid, c.group_id)
            state.cands.append((uid, group, float(c.best), c.user_info or ""))

    def _real(self, uid: str, group: str) -> tuple[str, str]:
        """Map a scratch user back to its manifest uid and the group it would join."""
        if self.scratch is not None and group == self.scratch.group:
            real = self.scratch_uids.get(uid, uid)
            ref = self.refs.get(real)
            return real, self.plan[ref].group_id if ref is not None else group
        return uid, group

    async def _confirm(self, data: bytes, state: _ProbeState) -> None:
        seen = {state.img.uid}
        for uid, _group, score, _info in state.cands:
            if uid in seen or score < self.config.threshold or uid not in self.by_uid:
                continue
            seen.add(uid)
            for found in await self._match_uid(data, uid, state):
                state.matches.append((uid, *found))

    async def _match_uid(
        self, data: bytes, uid: str, state: _ProbeState
    ) -> list[tuple[int, float, int | None]]:
        """(photo row, score, log id) of the probe against each of ``uid``'s known photos
        sent (one match call); every photo is kept, not only the best, so a finding's
        confidence can ask that all of them agree."""
        rows = self.by_uid[uid][: self.config.confirm_photos]
        same = [r for r in rows if state.img.sha256 and self.plan[r].sha256 == state.img.sha256]
        if same:
            return [(same[0], 100.0, None)]  # identical bytes: no call needed
        photos = await self._budgeted(data, rows)
        if not photos:
            return []
        result = await self._match([data, *(p for _, p in photos)], state)
        return [(photos[index - 1][0], score, result.log_id)
                for index, score in _probe_pairs(result.pairs)]

    async def _budgeted(self, data: bytes, rows: Sequence[int]) -> list[tuple[int, bytes]]:
        """The photos of ``rows`` that load and fit one match request with the probe."""
        from pipeline.runs.images import ImageProblem  # noqa: PLC0415

        used, out = _b64_len(data), []
        for row in rows:
            try:
                photo = await self.photos.get(self.plan[row])
            except ImageProblem:
                continue  # this photo cannot be confirmed against; try the uid's others
            if used + _b64_len(photo) + 1 > MATCH_BUDGET:
                break
            used += _b64_len(photo) + 1
            out.append((row, photo))
        return out

    async def _reference(self, data: bytes, state: _ProbeState) -> None:
        img = state.img
        ref_row = self.refs[img.uid]
        if ref_row == img.row:
            return
        ref = self.plan[ref_row]
        if img.sha256 and ref.sha256 == img.sha256:
            state.ref = (ref_row, 100.0, None)
            return
        result = await self._match([await self.photos.get(ref), data], state)
        best = _best_pair(result.pairs)
        state.ref = (ref_row, best[1] if best else 0.0, result.log_id)

    async def _match(self, images: list[bytes], state: _ProbeState) -> MatchResult:
        state.calls += 1
        self.calls["match"] += 1
        result = await self.client.match(images)
        state.attempts += result.attempts
        return result


def _probe_pairs(pairs: Iterable[Any]) -> list[tuple[int, float]]:
    """(index of the other image, score) of every pair that involves image 0, in index order."""
    out: dict[int, float] = {}
    for p in pairs:
        if 0 not in (p.index_i, p.index_j):
            continue
        other = p.index_j if p.index_i == 0 else p.index_i
        out[other] = max(float(p.score), out.get(other, float("-inf")))
    return sorted(out.items())


def _best_pair(pairs: Iterable[Any]) -> tuple[int, float] | None:
    """(index of the other image, score) of the best pair that involves image 0."""
    return max(_probe_pairs(pairs), key=lambda item: item[1], default=None)


def _b64_len(data: bytes) -> int:
    return b64_size(len(data))
