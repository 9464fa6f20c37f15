"""The duplicate-identity audit: one person under several uids, several people under one uid.

Input is a *plan*: one :class:`AuditImage` per known photo (uid, group, path, sha256),
built from enrollment run directories (their successful outcomes) and/or a
manifest. Three kinds of finding (:data:`KINDS`):

``exact_copy``
    the same file bytes (sha256) under different uids. Found from the plan alone,
    with no API call.
``same_person_multiple_uids``
    each probe photo is searched with ``identify`` (top ``top_k`` <= 5 users) in the
    audited groups. Every *other* uid scoring >= ``threshold`` is confirmed with one
    ``match`` call: the probe against up to ``confirm_photos`` known photos of that
    uid, in one request (a uid that holds two people is still confirmed against the
    right photo); every photo's score is recorded. A uid with no known photo is
    reported unconfirmed, with the identify score. Each finding carries a confidence
    (``high`` only when the score clears a stricter bound, the uid leads its rivals
    by a margin and every checked photo of both uids agrees; see
    :mod:`pipeline.audit.findings`).
``multiple_people_one_uid``
    each photo of a uid is matched against the uid's reference photo (its first photo
    in plan order); a score below ``threshold`` is a finding.

API calls, n = photos probed, k = top_k: n identify + at most n*k confirm matches +
at most n reference matches, i.e. O(n*k), never O(n^2). Identical bytes skip the
call (score 100). With ``before_enroll`` the manifest is audited before it is
enrolled: its photos are first added to a scratch group ``<G>__audit_<run id>``
under scratch uids (one per manifest uid, so a uid's own photos take one of the
top-k slots, not k), every photo is then identified against ``G,<scratch>`` and
the scratch users are deleted at the end: n adds + n identify + <= n*k matches +
<= n matches + u deletes (u = distinct uids). Scratch uids carry a random token,
so they never touch a real user; a stopped audit leaves the scratch group for its
resume to reuse and delete.

The records (plan photo, probe record, finding) and the pure rules that turn probe
records into findings live in :mod:`pipeline.audit.findings`; findings are clustered
(:mod:`pipeline.audit.clusters`): nodes are plan photos, edges "same person" (same bytes,
a confirmed match, a reference match >= threshold).

The run directory works like enroll's (:mod:`pipeline.runs.rundir`): ``run.json``,
``plan.parquet`` (the plan, frozen at the first session), one :class:`ProbeRecord`
per probe in ``outcomes/`` (journal first, so a killed audit resumes without
calling finished probes again; failed probes are retried by the next session),
then ``findings.parquet``, ``clusters.parquet`` and ``report.html``, rewritten
from all probe records at the end of every session. This module never prints.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import re
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.api.errors import (
    ApiError,
    ConfigError,
    EmptyGroupError,
    GroupNotFoundError,
    ImageExistsError,
    UserNotFoundError,
)
from pipeline.audit.clusters import CLUSTER_SCHEMA, Cluster
from pipeline.audit.findings import (
    FINDING_SCHEMA,
    KINDS,
    PLAN_SCHEMA,
    PROBE_SCHEMA,
    AuditImage,
    Finding,
    ProbeRecord,
    derive_findings,
    latest_probes,
    records_table,
    table_records,
)
from pipeline.client.budget import PgBudget, check_budget_options, open_budget
from pipeline.client.config import Settings
from pipeline.frame import (
    STOPPING_ERRORS,
    ClientFactory,
    FaceApi,
    Runner,
    Stopped,
    StopReason,
    as_stop,
    default_client_factory,
    next_session,
    open_held,
)
from pipeline.runs.rundir import (
    ManifestRef,
    RecordStore,
    RunDir,
    RunInfo,
    new_run_id,
    utc_now,
    write_atomic,
    write_table_atomic,
)

log = logging.getLogger("faceflow.audit")

#: The reference allows at most 5 users per identify.
MAX_TOP_K = 5
#: Bytes of base64 text one match request may carry (reference §3.2: 20M, M = 2^20).
MATCH_BUDGET = 20 * 2**20
PLAN_FILE, FINDINGS_FILE, CLUSTERS_FILE = "plan.parquet", "findings.parquet", "clusters.parquet"
REPORT_FILE, SCRATCH_FILE = "report.html", "scratch.json"
#: Plan rows already added to the scratch group, one per line (appended as they are
#: added), so a resumed fill adds only the others.
SCRATCH_ADDED_FILE = "scratch-added.txt"
_GROUP_RE = re.compile(r"^[A-Za-z0-9_]{1,48}$")


# -- options ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditConfig:
    """Every option of an audit.

    ``groups``: the group ids searched (identify's list form). ``threshold``: the
    same-person score, 0-100 (>= is the same person, the reference's 80).
    ``top_k``: users per identify, 1-5. ``confirm_photos``: known photos of a
    candidate uid sent with the probe in one confirm match. ``qps``: as for enroll
    (a number, a per-interface mapping, or None for the client's defaults).
    ``run_dir`` None makes ``runs_root/<run_id>``; an existing audit there resumes
    with its saved plan and options. ``scratch_settle_s``: seconds to wait after
    filling the scratch group (the reference: changes take effect after ~5 s).
    """

    settings: Settings
    groups: tuple[str, ...]
    run_dirs: tuple[Path, ...] = ()
    manifest: Path | None = None
    threshold: float = 80.0
    top_k: int = MAX_TOP_K
    concurrency: int = 4
    qps: float | Mapping[str, float] | None = None
    run_dir: Path | None = None
    runs_root: Path = Path("runs")
    before_enroll: bool = False
    confirm_photos: int = 3
    scratch_settle_s: float = 6.0
    flush_rows: int = 500
    flush_seconds: float = 10.0
    report: bool = True
    #: A ledger location: the faces it holds in ``groups`` on this service join the
    #: plan (after the run photos; a (uid, sha256) already there is kept once).
    ledger: str | None = None
    #: ``postgresql://...``: pace from the account's shared budget (--qps is its total).
    qps_budget: str | None = None
    #: The protocol, "v2" or "v3": on v3 identify is search and a confirm match compares
    #: two pictures per call (pipeline/client/v3jobs.py); photos fit v3's limits.
    api: str = "v2"

    def __post_init__(self) -> None:
        problems = _config_problems(self)
        if problems:
            raise ConfigError("; ".join(problems))
        if self.qps_budget is not None:
            check_budget_options(self.qps_budget, self.qps)

    def options(self) -> dict[str, Any]:
        """The options written into run.json (no settings, no secrets)."""
        qps = dict(self.qps) if isinstance(self.qps, Mapping) else self.qps
        return {"groups": list(self.groups), "threshold": self.threshold, "top_k": self.top_k,
                "concurrency": self.concurrency, "qps": qps,
                "before_enroll": self.before_enroll, "confirm_photos": self.confirm_photos,
                "run_dirs": [str(p) for p in self.run_dirs],
                "manifest": str(self.manifest) if self.manifest else None,
                "ledger": self.ledger, "api": self.api}


def _config_problems(c: AuditConfig) -> list[str]:
    problems = [f"--group {g!r}: use 1-48 letters, digits or underscores"
                for g in c.groups if not _GROUP_RE.match(g)]
    if not c.groups:
        problems.append("give at least one --group to search")
    if len(",".join(c.groups)) > 128 - (49 if c.before_enroll else 0):
        problems.append("the --group list is over 128 bytes (with the scratch group)")
    if not 0 <= c.threshold <= 100:
        problems.append("--threshold is a score from 0 to 100")
    if not 1 <= c.top_k <= MAX_TOP_K:
        problems.append(f"--top-k must be 1 to {MAX_TOP_K} (the reference's limit)")
    if c.concurrency < 1 or c.confirm_photos < 1:
        problems.append("--concurrency and confirm_photos must be at least 1")
    if c.before_enroll and c.manifest is None:
        problems.append("--before-enroll audits a manifest: give --manifest")
    if c.api not in ("v2", "v3"):
        problems.append(f"--api {c.api!r}: use v2 or v3")
    if c.api == "v3" and len(c.groups) + c.before_enroll > 10:
        problems.append("v3 searches at most 10 groups at once (with the scratch group)")
    return problems


# -- planning -------------------------------------------------------------------------------


def plan_from_runs(run_dirs: Iterable[Path], start: int = 0) -> list[AuditImage]:
    """The photos that enrollment runs left in the library, in run then row order.

    Successful outcomes only. An ``updated`` row replaced every earlier photo of its
    uid (user update replaces), so those are dropped. A (uid, sha256) seen twice is
    kept once. Relative image paths resolve against the run's manifest folder.
    """
    from pipeline.runs.outcomes import OUTCOME_SCHEMA, SUCCESS_STATUSES  # noqa: PLC0415

    kept: dict[tuple[str, str], AuditImage] = {}
    cols = ["row", "line", "uid", "group_id", "image", "image_sha256", "status"]
    for run_path in run_dirs:
        rundir = RunDir(run_path)
        info = rundir.read_info()
        if info.job != "enroll":
            raise ConfigError(f"{run_path} holds a {info.job} run, not an enroll run")
        base = Path(info.manifest.path).parent
        table = rundir.read_records(OUTCOME_SCHEMA, cols).sort_by("row")
        infos = _user_infos(info, table.column("row").to_pylist())
        for rec in table.to_pylist():
            if rec["status"] not in SUCCESS_STATUSES or not rec["uid"] or not rec["image"]:
                continue
            if rec["status"] == "updated":
                kept = {k: v for k, v in kept.items() if k[0] != rec["uid"]}
            key = (rec["uid"], rec["image_sha256"] or f"{run_path}:{rec['row']}")
            kept.setdefault(key, AuditImage(
                row=0, uid=rec["uid"], group_id=rec["group_id"] or "", image=rec["image"],
                path=str(_resolve(base, rec["image"])), sha256=rec["image_sha256"],
                user_info=infos.get(rec["row"]), source=str(run_path), line=rec["line"]))
    return [replace(img, row=start + i) for i, img in enumerate(kept.values())]


def _user_infos(info: RunInfo, rows: Sequence[int]) -> dict[int, str]:
    """row -> the user_info the service holds (the cell, else the uid, as enroll sends it),
    read from the run's manifest; {} when it is gone or changed since the run."""
    from pipeline.runs.manifest import open_manifest  # noqa: PLC0415

    options = info.options or {}
    try:
        manifest = open_manifest(info.manifest.path, default_group=options.get("group"),
                                 encoding=options.get("encoding") or "utf-8",
                                 delimiter=options.get("delimiter"))
    except ConfigError:
        return {}
    if manifest.fingerprint != info.manifest.fingerprint or not rows:
        return {}
    wanted, out = set(rows), {}
    for batch in manifest.batches(start_row=min(wanted)):
        out.update((r.row, r.user_info or r.uid) for r in batch if r.row in wanted)
    return out


def plan_from_ledger(location: str, endpoint: str, groups: Iterable[str], start: int = 0,
                     known: Iterable[AuditImage] = ()) -> list[AuditImage]:
    """The faces a ledger holds in ``groups`` on the service at ``endpoint`` (a URL), in
    group then uid order; a (uid, sha256) already in ``known`` is left out."""
    from pipeline.ledger import endpoint_key, open_ledger  # noqa: PLC0415

    seen = {(img.uid, img.sha256) for img in known}
    out: list[AuditImage] = []
    book = open_ledger(location)
    try:
        for group in groups:
            for face in book.faces(endpoint_key(endpoint), group):
                if (face.uid, face.image_sha256) in seen or not face.image_path:
                    continue
                seen.add((face.uid, face.image_sha256))
                out.append(AuditImage(
                    row=start + len(out), uid=face.uid, group_id=group, image=face.image_path,
                    path=face.image_path, sha256=face.image_sha256, user_info=face.user_info,
                    source=f"ledger:{location}", line=None))
    finally:
        book.close()
    return out


def plan_from_manifest(
    path: Path, default_group: str | None, start: int = 0, *, probe: bool = True
) -> list[AuditImage]:
    """The add/update/upsert rows of a manifest, hashed now (sha256 of the file bytes).

    A row whose image cannot be read keeps ``sha256`` None; its probe will fail
    with the reason. Rows repeating a (uid, sha256) are kept once.
    """
    from pipeline.runs.manifest import open_manifest  # noqa: PLC0415

    manifest = open_manifest(path, default_group=default_group)
    out: list[AuditImage] = []
    seen: set[tuple[str, str]] = set()
    for batch in manifest.batches():
        for row in batch:
            if getattr(row, "action", "add") not in ("add", "update", "upsert") or not row.uid:
                continue
            sha = file_sha256(Path(row.image_path))
            if sha is not None and (row.uid, sha) in seen:
                continue
            seen.add((row.uid, sha or f"row{row.row}"))
            out.append(AuditImage(
                row=start + len(out), uid=row.uid, group_id=row.group_id or default_group or "",
                image=row.image, path=str(row.image_path), sha256=sha,
                user_info=row.user_info, source=str(path), line=row.line, probe=probe))
    return out


def file_sha256(path: Path) -> str | None:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks; None when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(2**20), b""):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def build_plan(config: AuditConfig) -> list[AuditImage]:
    """The whole plan of ``config``: run photos first, then manifest photos.

    With ``before_enroll`` only the manifest photos are probed; run photos only
    serve to confirm candidates already in the library.
    """
    plan = plan_from_runs(config.run_dirs)
    if config.ledger:
        plan += plan_from_ledger(config.ledger, config.settings.endpoint, config.groups,
                                 start=len(plan), known=plan)
    if config.manifest is not None:
        plan += plan_from_manifest(config.manifest, config.groups[0], start=len(plan))
    if config.before_enroll:
        plan = [replace(p, probe=p.source == str(config.manifest)) for p in plan]
    if not any(p.probe for p in plan):
        raise ConfigError("nothing to audit: the inputs hold no enrolled or enrollable photo")
    return plan


def _resolve(base: Path, image: str) -> Path:
    path = Path(image)
    return path if path.is_absolute() else base / path


def reference_rows(plan: Sequence[AuditImage]) -> dict[str, int]:
    """uid -> the plan row of its reference photo (its first photo in plan order)."""
    refs: dict[str, int] = {}
    for img in plan:
        refs.setdefault(img.uid, img.row)
    return refs


def photos_by_uid(plan: Sequence[AuditImage]) -> dict[str, list[int]]:
    """uid -> its plan rows, in plan order (reference first)."""
    out: dict[str, list[int]] = {}
    for img in plan:
        out.setdefault(img.uid, []).append(img.row)
    return out


# -- calling: one probe --------------------------------------------------------------------

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


@dataclass(frozen=True, slots=True)
class ScratchMap:
    """The scratch group of a ``before_enroll`` audit: manifest uid <-> scratch uid."""

    group: str
    uids: Mapping[str, str]  # manifest uid -> scratch uid


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

    async def _match(self, images: list[bytes], state: _ProbeState) -> Any:
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
    return 4 * ((len(data) + 2) // 3)


# -- the session ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditProgress:
    """A snapshot for progress displays. ``done``/``failed`` count this session's probes;
    ``already_done`` those an earlier session finished. ``elapsed_s``: seconds."""

    total: int
    already_done: int
    done: int
    failed: int
    elapsed_s: float


@dataclass(frozen=True, slots=True)
class AuditStart:
    run_id: str
    run_dir: Path
    probes: int
    photos: int
    already_done: int
    resumed: bool


@dataclass(frozen=True, slots=True)
class AuditResult:
    """What a session did. ``counts`` are findings per kind (whole audit); ``calls``
    requests per interface sent this session; ``scratch_left`` names a scratch
    group still in the library (a stopped ``before_enroll`` audit: resume it);
    ``scratch_failed`` counts photos the scratch group refused (they are still probed,
    but no other manifest photo can find them)."""

    run_id: str
    run_dir: Path
    stop_reason: StopReason | None
    stop_message: str | None
    probes: int
    checked: int
    failed: int
    pending: int
    already_done: int
    resumed: bool
    counts: Mapping[str, int]
    clusters: int
    calls: Mapping[str, int]
    elapsed_s: float
    findings_path: Path
    clusters_path: Path
    report_path: Path | None
    scratch_left: str | None
    scratch_failed: int = 0
    #: Findings per kind that identify alone found (no photo of the other uid to
    #: confirm with match): counted in ``counts`` too.
    unconfirmed: Mapping[str, int] = field(default_factory=dict)


class AuditObserver:
    """Receives progress; the default does nothing. Called on the event loop thread."""

    def started(self, start: AuditStart) -> None:
        """The run directory and plan are ready; probes are about to start."""

    def phase(self, name: str, detail: str) -> None:
        """A stage begins: ``scratch_fill``, ``probes``, ``scratch_delete``, ``report``."""

    def probe_done(self, record: ProbeRecord, progress: AuditProgress) -> None:
        """One probe has its record (journaled)."""

    def stopping(self, reason: StopReason, message: str) -> None:
        """The audit stops early (quota, auth, interrupted)."""


class _Session:
    """One session: fill the scratch group, probe what is left, empty the scratch group."""

    def __init__(self, config: AuditConfig, rundir: RunDir, plan: Sequence[AuditImage],
                 run_id: str, observer: AuditObserver, photos: PhotoCache) -> None:
        self.config, self.rundir, self.plan, self.run_id = config, rundir, plan, run_id
        self.observer, self.photos = observer, photos
        self.calls: Counter[str] = Counter()
        self.done = self.failed = 0
        self.total = sum(p.probe for p in plan)
        self.started = time.monotonic()
        self.scratch_left: str | None = None
        self.scratch_failed = 0

    async def run(self, client: FaceApi, todo: Sequence[AuditImage], already: int,
                  stop: asyncio.Event | None) -> Stopped | None:
        scratch = None
        if self.config.before_enroll:
            scratch, stopped = await self._fill_scratch(client, stop)
            if stopped is not None:
                return stopped
        prober = Prober(self.config, self.plan, client, self.photos, self.run_id, scratch)
        store = self.rundir.open_store(PROBE_SCHEMA, len(self.plan),
                                       flush_rows=self.config.flush_rows,
                                       flush_seconds=self.config.flush_seconds)
        self.observer.phase("probes", f"{len(todo)} photos to probe")
        try:
            stopped = await self._runner(stop).run(
                todo, lambda img: self._one(prober, store, img, already))
        finally:
            store.close()
            self.calls.update(prober.calls)
        if stopped is None and scratch is not None:
            stopped = await self._empty_scratch(client, scratch, stop)
        return stopped

    def _runner(self, stop: asyncio.Event | None) -> Runner[Any]:
        return Runner(self.config.concurrency, stop, noun="probes")

    async def _one(self, prober: Prober, store: RecordStore, img: AuditImage, already: int
                   ) -> None:
        record = await prober.probe(img)
        store.append(record)
        self.done += 1
        self.failed += record.status == "failed"
        progress = AuditProgress(self.total, already, self.done,
                                 self.failed, time.monotonic() - self.started)
        self.observer.probe_done(record, progress)

    # -- the scratch group of a before-enroll audit --------------------------------------

    async def _fill_scratch(
        self, client: FaceApi, stop: asyncio.Event | None
    ) -> tuple[ScratchMap, Stopped | None]:
        state = load_scratch(self.rundir, self.plan, self.run_id, self.config.groups[0])
        self.scratch_left = state["group"]
        scratch = ScratchMap(state["group"], state["uids"])
        if state["filled"]:
            return scratch, None
        added = scratch_added(self.rundir)
        probes = [p for p in self.plan if p.probe and p.row not in added]
        self.observer.phase("scratch_fill", f"{len(probes)} photos into {scratch.group}")
        with open(self.rundir.path / SCRATCH_ADDED_FILE, "a", encoding="ascii") as log_file:
            stopped = await self._runner(stop).run(
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
            data = await self.photos.get(img)
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
            self.scratch_failed += 1  # its probe still runs; others cannot find it

    async def _delete_group(self, client: Any, group: str) -> Stopped | None:
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

    async def _empty_scratch(
        self, client: FaceApi, scratch: ScratchMap, stop: asyncio.Event | None
    ) -> Stopped | None:
        self.observer.phase("scratch_delete", f"{len(scratch.uids)} scratch users")
        stopped = await self._runner(stop).run(scratch.uids.values(),
                                               lambda u: self._delete(client, scratch, u))
        if stopped is None and hasattr(client, "delete_group"):
            # v3 groups outlive their users: the empty scratch group is deleted too.
            stopped = await self._delete_group(client, scratch.group)
        if stopped is None:
            state = load_scratch(self.rundir, self.plan, self.run_id, self.config.groups[0])
            # Emptied: a later session that fills it again must add every photo.
            (self.rundir.path / SCRATCH_ADDED_FILE).unlink(missing_ok=True)
            save_scratch(self.rundir, {**state, "filled": False, "deleted": True})
            self.scratch_left = None
        return stopped

    async def _delete(self, client: FaceApi, scratch: ScratchMap, scratch_uid: str) -> None:
        self.calls["delete"] += 1
        try:
            await client.delete_user(scratch_uid, group_id=scratch.group)
        except UserNotFoundError:
            pass  # never added (its photo failed) or deleted by an earlier session
        except STOPPING_ERRORS as exc:
            raise as_stop(exc) from exc


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


# -- a whole audit ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Audit:
    """One session of an audit: its options, run directory and plan, and whom it tells."""

    config: AuditConfig
    rundir: RunDir
    info: RunInfo
    plan: list[AuditImage]
    resumed: bool
    client_factory: ClientFactory
    observer: AuditObserver
    stop: asyncio.Event | None
    loader: Loader


async def run_audit(
    config: AuditConfig,
    client_factory: ClientFactory = default_client_factory,
    observer: AuditObserver | None = None,
    stop: asyncio.Event | None = None,
    loader: Loader = default_loader,
) -> AuditResult:
    """Run (or resume) an audit; see the module docstring.

    Raises :class:`ConfigError` (inputs, run directory) before any call.
    ``client_factory(settings, qps)`` returns an async context manager yielding
    the client; ``loader(photo)`` the bytes to send (default: what enroll sent).
    Setting ``stop`` interrupts the audit cleanly.
    """
    if loader is default_loader and config.api != "v2":
        loader = functools.partial(default_loader, api=config.api)
    rundir, info, plan, resumed = open_audit(config)
    run = _Audit(config, rundir, info, plan, resumed, client_factory,
                 observer or AuditObserver(), stop, loader)
    try:
        return await _run_held(run)
    finally:
        rundir.release()


async def _run_held(run: _Audit) -> AuditResult:
    config, rundir, plan, observer = run.config, run.rundir, run.plan, run.observer
    records = _latest(rundir)
    todo = [p for p in plan if p.probe and _needs_probe(records.get(p.row))]
    already = sum(p.probe for p in plan) - len(todo)
    observer.started(AuditStart(run.info.run_id, rundir.path, already + len(todo), len(plan),
                                already, run.resumed))
    session = _Session(run.config, rundir, plan, run.info.run_id, observer,
                       PhotoCache(run.loader))
    stopped = None
    if todo or _scratch_pending(rundir):
        try:
            async with open_budget(config.qps_budget, config.settings, config.qps) as budget, \
                    run.client_factory(config.settings, config.qps,
                                       **_client_options(budget, config.api)) as client:
                stopped = await session.run(client, todo, already, run.stop)
        except STOPPING_ERRORS as exc:  # raised while opening the budget or client (token)
            stop = as_stop(exc)
            stopped = Stopped(stop.reason, stop.message)
        if stopped is not None:
            observer.stopping(stopped.reason, stopped.message)
    observer.phase("report", "findings, clusters and report.html")
    return finish_audit(run, already, session, stopped)


def _client_options(budget: PgBudget | None, api: str = "v2") -> dict[str, Any]:
    """Factory keywords beyond (settings, qps): only those in use."""
    options: dict[str, Any] = {"limiter": budget} if budget else {}
    if api != "v2":
        options["api"] = api
    return options


def audit(config: AuditConfig, **kwargs: Any) -> AuditResult:
    """Synchronous :func:`run_audit` (runs its own event loop)."""
    return asyncio.run(run_audit(config, **kwargs))


def _needs_probe(record: ProbeRecord | None) -> bool:
    return record is None or record.status != "checked"


def _latest(rundir: RunDir) -> dict[int, ProbeRecord]:
    """The latest record per plan row; opening the store first recovers a crashed journal."""
    if rundir.journal_dir.exists():
        RecordStore(rundir, PROBE_SCHEMA, 0).close()
    return latest_probes(rundir.read_records(PROBE_SCHEMA))


def _scratch_pending(rundir: RunDir) -> bool:
    path = rundir.path / SCRATCH_FILE
    return path.exists() and not json.loads(path.read_text(encoding="utf-8")).get("deleted")


def open_audit(config: AuditConfig) -> tuple[RunDir, RunInfo, list[AuditImage], bool]:
    """The audit directory: (dir, run.json, plan, True when resuming).

    A directory holding an audit resumes it with its saved plan; its options
    (groups, threshold, top_k, before_enroll, confirm_photos) must be the same.
    """
    rundir = RunDir(config.run_dir or config.runs_root / new_run_id())
    # one session at a time (released by run_audit, or by the process's end)
    return open_held(rundir, lambda held: _open_held(config, held))


def _open_held(config: AuditConfig, rundir: RunDir
               ) -> tuple[RunDir, RunInfo, list[AuditImage], bool]:
    if rundir.exists():
        info = rundir.read_info()
        _check_same_audit(rundir, info, config)
        info = next_session(rundir, info, settings=config.settings.public())
        return rundir, info, read_plan(rundir), True
    plan = build_plan(config)
    table = records_table(plan, PLAN_SCHEMA)
    source = config.manifest or (config.run_dirs[0] if config.run_dirs else rundir.path)
    ref = ManifestRef(str(Path(source).resolve()), _fingerprint(table), len(plan))
    run_id = rundir.path.name if config.run_dir is None else new_run_id()
    info = RunInfo(run_id=run_id, job="audit", created_at=utc_now().isoformat(), manifest=ref,
                   settings=config.settings.public(), options=config.options())
    rundir.path.mkdir(parents=True, exist_ok=True)
    write_table_atomic(rundir.path / PLAN_FILE, table)
    rundir.write_info(info)
    return rundir, info, plan, False


_SAME_OPTIONS = ("groups", "threshold", "top_k", "before_enroll", "confirm_photos")


def _check_same_audit(rundir: RunDir, info: RunInfo, config: AuditConfig) -> None:
    if info.job != "audit":
        raise ConfigError(f"{rundir.path} holds a {info.job} run, not an audit; "
                          "choose another --run-dir")
    wanted = config.options()
    differ = [k for k in _SAME_OPTIONS if info.options.get(k) != wanted[k]]
    if (info.options.get("api") or "v2") != config.api:  # audits before v3 were v2
        differ.append(f"api: --api {info.options.get('api') or 'v2'} in the audit")
    if differ:
        raise ConfigError(f"{rundir.path} holds audit {info.run_id} with other options "
                          f"({', '.join(differ)}); resume it with the same options "
                          "(see resume_config) or choose another --run-dir")


def resume_config(run_dir: Path, settings: Settings, **overrides: Any) -> AuditConfig:
    """The config that resumes the audit in ``run_dir`` (its saved options, ``overrides`` on
    top: e.g. ``concurrency`` or ``qps``)."""
    info = RunDir(run_dir).read_info()
    if info.job != "audit":
        raise ConfigError(f"{run_dir} holds a {info.job} run, not an audit")
    saved = {k: info.options[k] for k in (*_SAME_OPTIONS, "concurrency", "qps", "api")
             if k in info.options and info.options[k] is not None}
    saved["groups"] = tuple(saved.get("groups", ()))
    saved["run_dirs"] = tuple(Path(p) for p in info.options.get("run_dirs") or ())
    if info.options.get("manifest"):
        saved["manifest"] = Path(info.options["manifest"])
    if info.options.get("ledger"):
        saved["ledger"] = info.options["ledger"]
    return AuditConfig(settings=settings, run_dir=Path(run_dir), **{**saved, **overrides})


def read_plan(rundir: RunDir) -> list[AuditImage]:
    try:
        table = pq.read_table(rundir.path / PLAN_FILE, schema=PLAN_SCHEMA)
    except FileNotFoundError:
        raise ConfigError(f"{rundir.path} has no {PLAN_FILE}: not a complete audit") from None
    return table_records(table, AuditImage)


def _fingerprint(table: pa.Table) -> str:
    digest = hashlib.sha256()
    for name in ("uid", "path", "sha256"):
        digest.update(json.dumps(table.column(name).to_pylist()).encode())
    return "sha256:" + digest.hexdigest()


# -- outputs ----------------------------------------------------------------------------------


def finish_audit(run: _Audit, already: int, session: _Session, stopped: Stopped | None
                 ) -> AuditResult:
    """Derive and write findings, clusters and the report; update run.json."""
    config, rundir, plan, info = run.config, run.rundir, run.plan, run.info
    reason = stopped.reason if stopped else None
    records = _latest(rundir)
    findings, clusters = write_findings(rundir, plan, records, config.threshold, info.run_id)
    statuses = Counter(r.status for r in records.values())
    probes = sum(p.probe for p in plan)
    kinds = {k: sum(f.kind == k for f in findings) for k in KINDS}
    unconfirmed = {k: n for k in KINDS
                   if (n := sum(f.kind == k and not f.confirmed for f in findings))}
    report = None
    if config.report:
        from pipeline.audit.report import write_audit_report  # noqa: PLC0415

        report = write_audit_report(rundir.path)
    rundir.update_info(finished_at=utc_now().isoformat(),
                       stop_reason=reason, counts={**kinds, "probes_checked": statuses["checked"],
                                                   "probes_failed": statuses["failed"],
                                                   "unconfirmed": sum(unconfirmed.values())})
    return AuditResult(
        run_id=info.run_id, run_dir=rundir.path, stop_reason=reason,
        stop_message=stopped.message if stopped else None, probes=probes,
        checked=statuses["checked"],
        failed=statuses["failed"], pending=probes - len(records), already_done=already,
        resumed=run.resumed, counts=kinds, clusters=len(clusters), calls=dict(session.calls),
        elapsed_s=time.monotonic() - session.started, findings_path=rundir.path / FINDINGS_FILE,
        clusters_path=rundir.path / CLUSTERS_FILE, report_path=report,
        scratch_left=session.scratch_left if _scratch_pending(rundir) else None,
        scratch_failed=session.scratch_failed, unconfirmed=unconfirmed)


def write_findings(
    rundir: RunDir, plan: Sequence[AuditImage], records: Mapping[int, ProbeRecord],
    threshold: float, run_id: str,
) -> tuple[list[Finding], list[Cluster]]:
    """Derive findings and clusters and write ``findings.parquet`` and ``clusters.parquet``."""
    findings, clusters = derive_findings(plan, records, threshold, run_id, utc_now())
    write_table_atomic(rundir.path / FINDINGS_FILE, records_table(findings, FINDING_SCHEMA))
    write_table_atomic(rundir.path / CLUSTERS_FILE, records_table(clusters, CLUSTER_SCHEMA))
    return findings, clusters


def read_findings(run_dir: Path) -> list[Finding]:
    """The findings of a finished audit, in file order."""
    table = pq.read_table(Path(run_dir) / FINDINGS_FILE, schema=FINDING_SCHEMA)
    return table_records(table, Finding)


