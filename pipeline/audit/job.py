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

The pieces: options (:mod:`pipeline.audit.config`), the plan (:mod:`pipeline.audit.plan`),
one probe (:mod:`pipeline.audit.probe`), the scratch group (:mod:`pipeline.audit.scratch`),
the output files (:mod:`pipeline.audit.outputs`) and the page
(:mod:`pipeline.audit.report`); this module runs a session on the job frame
(:mod:`pipeline.frame`). The records (plan photo, probe record, finding) and the pure
rules that turn probe records into findings live in :mod:`pipeline.audit.findings`;
findings are clustered (:mod:`pipeline.audit.clusters`): nodes are plan photos, edges
"same person" (same bytes, a confirmed match, a reference match >= threshold).

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
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.api.errors import ConfigError
from pipeline.audit.config import MAX_TOP_K, AuditConfig
from pipeline.audit.findings import (
    CONFIDENCES,
    KINDS,
    PROBE_SCHEMA,
    AuditImage,
    ProbeRecord,
    latest_probes,
)
from pipeline.audit.outputs import CLUSTERS_FILE, FINDINGS_FILE, read_findings, write_findings
from pipeline.audit.plan import build_plan, file_sha256, read_plan, write_plan
from pipeline.audit.probe import Loader, PhotoCache, Prober, default_loader
from pipeline.audit.report import write_audit_report
from pipeline.audit.scratch import ScratchGroup, scratch_pending
from pipeline.client.budget import open_budget
from pipeline.client.config import Settings
from pipeline.frame import (
    STOPPING_ERRORS,
    ClientFactory,
    FaceApi,
    Runner,
    Stopped,
    StopReason,
    StopRun,
    as_stop,
    default_client_factory,
    disk_message,
    factory_options,
    next_session,
    open_held,
    outage_pause,
)
from pipeline.postgres import without_password
from pipeline.runs.rundir import (
    ManifestRef,
    RecordStore,
    RunDir,
    RunInfo,
    new_run_id,
    utc_now,
)

__all__ = [
    "MAX_TOP_K", "AuditConfig", "AuditObserver", "AuditProgress", "AuditResult", "AuditStart",
    "audit", "file_sha256", "finish_audit", "open_audit", "read_findings", "resume_config",
    "run_audit",
]


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
    #: Findings per confidence (high, medium, low; see pipeline.audit.findings).
    confidence: Mapping[str, int] = field(default_factory=dict)


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

    def __init__(self, run: _Audit, photos: PhotoCache) -> None:
        self.run, self.photos = run, photos
        self.calls: Counter[str] = Counter()
        self.done = self.failed = 0
        self.total = sum(p.probe for p in run.plan)
        self.started = time.monotonic()
        self.scratch = ScratchGroup(run.config, run.rundir, run.plan, run.info.run_id,
                                    photos.get, self._runner, run.observer.phase, self.calls)

    async def go(self, client: FaceApi, todo: Sequence[AuditImage], already: int
                 ) -> Stopped | None:
        run, scratch = self.run, None
        if run.config.before_enroll:
            scratch, stopped = await self.scratch.fill(client)
            if stopped is not None:
                return stopped
        prober = Prober(run.config, run.plan, client, self.photos, run.info.run_id, scratch)
        store = run.rundir.open_store(PROBE_SCHEMA, len(run.plan),
                                      flush_rows=run.config.flush_rows,
                                      flush_seconds=run.config.flush_seconds)
        run.observer.phase("probes", f"{len(todo)} photos to probe")
        try:
            stopped = await self._runner(client).run(
                todo, lambda img: self._one(prober, store, img, already))
        finally:
            self.calls.update(prober.calls)
            try:
                store.close()
            except OSError as exc:  # the last part: its journal is recovered on resume
                stopped = stopped or Stopped(StopReason.DISK, disk_message(run.rundir.path,
                                                                           exc))
        if stopped is None and scratch is not None:
            stopped = await self.scratch.empty(client, scratch)
        return stopped

    def _runner(self, client: FaceApi | None = None) -> Runner[Any]:
        """The probes' runner; with ``client``, new probes pause while the service is down."""
        return Runner(self.run.config.concurrency, self.run.stop, noun="probes",
                      ready=None if client is None else outage_pause(client))

    async def _one(self, prober: Prober, store: RecordStore, img: AuditImage, already: int
                   ) -> None:
        record = await prober.probe(img)
        try:
            store.append(record)
        except OSError as exc:  # disk full: stop at the first error, keep what was written
            raise StopRun(StopReason.DISK, disk_message(self.run.rundir.path, exc)) from exc
        self.done += 1
        self.failed += record.status == "failed"
        progress = AuditProgress(self.total, already, self.done,
                                 self.failed, time.monotonic() - self.started)
        self.run.observer.probe_done(record, progress)


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
    session = _Session(run, PhotoCache(run.loader))
    stopped = None
    if todo or scratch_pending(rundir):
        try:
            async with open_budget(config.qps_budget, config.settings, config.qps) as budget, \
                    run.client_factory(config.settings, config.qps,
                                       **factory_options(budget, config.api)) as client:
                stopped = await session.go(client, todo, already)
        except STOPPING_ERRORS as exc:  # raised while opening the budget or client (token)
            stop = as_stop(exc)
            stopped = Stopped(stop.reason, stop.message)
            if stop.reason == StopReason.AUTH:  # refused as the session opened: no call made
                stopped = Stopped(StopReason.CREDENTIALS, f"{stop.message}; nothing was sent")
        if stopped is not None:
            observer.stopping(stopped.reason, stopped.message)
    observer.phase("report", "findings, clusters and report.html")
    return finish_audit(run, already, session, stopped)


def audit(
    config: AuditConfig,
    client_factory: ClientFactory = default_client_factory,
    observer: AuditObserver | None = None,
    stop: asyncio.Event | None = None,
    loader: Loader = default_loader,
) -> AuditResult:
    """Synchronous :func:`run_audit` (runs its own event loop)."""
    return asyncio.run(run_audit(config, client_factory, observer, stop, loader))


def _needs_probe(record: ProbeRecord | None) -> bool:
    return record is None or record.status != "checked"


def _latest(rundir: RunDir) -> dict[int, ProbeRecord]:
    """The latest record per plan row; opening the store first recovers a crashed journal."""
    if rundir.journal_dir.exists():
        RecordStore(rundir, PROBE_SCHEMA, 0).close()
    return latest_probes(rundir.read_records(PROBE_SCHEMA))


def open_audit(config: AuditConfig) -> tuple[RunDir, RunInfo, list[AuditImage], bool]:
    """The audit directory: (dir, run.json, plan, True when resuming).

    A directory holding an audit resumes it with its saved plan; its options
    (groups, threshold, top_k, before_enroll, confirm_photos) must be the same.
    """
    rundir = RunDir(config.run_dir or config.runs_root / new_run_id())
    # A new audit reads its inputs (manifest, runs) before anything is created.
    plan = None if rundir.exists() else build_plan(config)
    # one session at a time (released by run_audit, or by the process's end)
    try:
        return open_held(rundir, lambda held: _open_held(config, held, plan))
    except OSError as exc:  # plan.parquet or run.json cannot be written: nothing was sent
        raise ConfigError(f"{rundir.path}: cannot write the run directory: "
                          f"{exc.strerror or exc}") from None


def _open_held(config: AuditConfig, rundir: RunDir, plan: list[AuditImage] | None
               ) -> tuple[RunDir, RunInfo, list[AuditImage], bool]:
    if rundir.exists():
        info = rundir.read_info()
        _check_same_audit(rundir, info, config)
        info = next_session(rundir, info, settings=config.settings.public())
        return rundir, info, read_plan(rundir), True
    plan = build_plan(config) if plan is None else plan
    fingerprint = write_plan(rundir, plan)
    source = config.manifest or (config.run_dirs[0] if config.run_dirs else rundir.path)
    ref = ManifestRef(str(Path(source).resolve()), fingerprint, len(plan))
    run_id = rundir.path.name if config.run_dir is None else new_run_id()
    info = RunInfo(run_id=run_id, job="audit", created_at=utc_now().isoformat(), manifest=ref,
                   settings=config.settings.public(), options=config.options())
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
    saved = {k: info.options[k] for k in (*_SAME_OPTIONS, "concurrency", "qps", "api",
                                          "encoding", "delimiter", "qps_budget")
             if k in info.options and info.options[k] is not None}
    saved["groups"] = tuple(saved.get("groups", ()))
    saved["run_dirs"] = tuple(Path(p) for p in info.options.get("run_dirs") or ())
    if info.options.get("manifest"):
        saved["manifest"] = Path(info.options["manifest"])
    if info.options.get("ledger"):
        saved["ledger"] = without_password(info.options["ledger"])
    return AuditConfig(settings=settings, run_dir=Path(run_dir), **{**saved, **overrides})


# -- outputs ----------------------------------------------------------------------------------


def finish_audit(run: _Audit, already: int, session: _Session, stopped: Stopped | None
                 ) -> AuditResult:
    """Derive and write findings, clusters and the report; update run.json. When the run
    directory cannot be written (disk full), the audit stops (:attr:`StopReason.DISK`)
    with what its probe records say; resuming writes the outputs."""
    try:
        return _finish_audit(run, already, session, stopped)
    except OSError as exc:
        if stopped is None or stopped.reason != StopReason.DISK:
            stopped = Stopped(StopReason.DISK, disk_message(run.rundir.path, exc))
            run.observer.stopping(stopped.reason, stopped.message)
        return _unwritten(run, already, session, stopped)


def _unwritten(run: _Audit, already: int, session: _Session, stopped: Stopped) -> AuditResult:
    """The result of a session whose outputs could not be written: probes counted from
    the parts and the journal, read only."""
    rundir = run.rundir
    records = latest_probes(pa.concat_tables([rundir.read_records(PROBE_SCHEMA),
                                              rundir.journal_records(PROBE_SCHEMA)]))
    statuses = Counter(r.status for r in records.values())
    probes = sum(p.probe for p in run.plan)
    return AuditResult(
        run_id=run.info.run_id, run_dir=rundir.path, stop_reason=stopped.reason,
        stop_message=stopped.message, probes=probes, checked=statuses["checked"],
        failed=statuses["failed"], pending=probes - len(records), already_done=already,
        resumed=run.resumed, counts={}, clusters=0, calls=dict(session.calls),
        elapsed_s=time.monotonic() - session.started, findings_path=rundir.path / FINDINGS_FILE,
        clusters_path=rundir.path / CLUSTERS_FILE, report_path=None,
        scratch_left=session.scratch.left if scratch_pending(rundir) else None,
        scratch_failed=session.scratch.failed)


def _finish_audit(run: _Audit, already: int, session: _Session, stopped: Stopped | None
                  ) -> AuditResult:
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
        scratch_left=session.scratch.left if scratch_pending(rundir) else None,
        scratch_failed=session.scratch.failed, unconfirmed=unconfirmed,
        confidence={c: sum(f.confidence == c for f in findings) for c in CONFIDENCES})
