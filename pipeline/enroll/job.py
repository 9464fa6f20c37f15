"""The enroll job: manifest rows -> detect -> quality gate -> user add/update -> outcomes.

One row goes through four stages, split so that the deciding parts are pure:

1. **check** (pure, no call): uid, user_info, group_id and action are valid, the
   row is not a duplicate of an earlier one -> else ``invalid_input``.
2. **fetch**: the image is read in a worker thread (``load_image``) -> a problem
   becomes ``invalid_input`` with the image module's reason slug.
3. **detect + decide** (:func:`decide_face` is pure): ``detect`` with
   ``face_fields=qualities`` and up to :data:`~pipeline.enroll.config.MAX_FACE_NUM` faces, then the
   quality gate -> ``no_face``, ``multiple_faces`` or ``rejected_quality``.
4. **write**: ``add`` -> user add (``action_type=append``), ``update`` -> user
   update, ``upsert`` -> user update with ``action_type=replace`` (registers a
   missing uid). 216616 "image exist" means the face is already there:
   ``already_enrolled``, a success. That is what makes resume safe: an add that
   was sent but not journaled before a crash is sent again and answered 216616.

Errors become outcomes (:func:`classify_error`), except two that stop the run
cleanly: :class:`QuotaError` (17/19) and an :class:`AuthError` that survived the
client's token refresh. Then no new row starts, rows in flight finish, and the
row that met the error gets no outcome, so resume picks it up. An interrupt
(the ``stop`` event) cancels rows in flight instead; they too are left for resume.

The runner is async: rows stream from ``Manifest.batches`` (never the whole
manifest in memory) and at most ``concurrency`` rows are in flight, on the job
frame's :class:`~pipeline.frame.Runner`. Progress goes to an :class:`EnrollObserver`;
this module never prints. The pure decisions are in :mod:`pipeline.enroll.decide`,
``failures.csv`` in :mod:`pipeline.enroll.failures`, reruns in
:mod:`pipeline.enroll.rerun`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
import pyarrow as pa

from pipeline.api.errors import (
    ApiError,
    ConfigError,
)
from pipeline.client.budget import open_budget
from pipeline.enroll.config import EnrollConfig, option_differences
from pipeline.enroll.decide import (
    MODES,
    RowDecision,
    check_row,
    classify_error,
    decide_face,
    success_status,
)
from pipeline.enroll.events import EnrollObserver, Progress, RunResult, RunStart
from pipeline.enroll.failures import FAILURES_CSV, info_failures_for, write_failures
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
from pipeline.ledger.runs import entries_for, skip_known, split_groups, stat_file
from pipeline.runs.outcomes import (
    METRIC_FIELDS,
    OUTCOME_SCHEMA,
    Outcome,
    make_outcome,
)
from pipeline.runs.reasons import Status
from pipeline.runs.rundir import (
    RUN_ID_RE,
    ManifestRef,
    RecordStore,
    RunDir,
    RunInfo,
    new_run_id,
    utc_now,
)

if TYPE_CHECKING:
    from pipeline.api.errors import ImageProblem
    from pipeline.enroll.gate import FaceChoice, Thresholds
    from pipeline.ledger.base import Ledger
    from pipeline.ledger.runs import FileStat
    from pipeline.runs.images import LoadedImage
    from pipeline.runs.manifest import Manifest, ManifestRow

_log = logging.getLogger(__name__)


class CallResult(Protocol):
    """What every call's record carries (pipeline.api.records)."""

    @property
    def attempts(self) -> int: ...

    @property
    def log_id(self) -> int | None: ...


R = TypeVar("R", bound=CallResult)

# -- one row ------------------------------------------------------------------------


@dataclass
class _RowState:
    """What is known about a row so far; becomes the Outcome."""

    fields: dict[str, Any]
    attempts: int = 0
    stat: FileStat | None = None  # the image file's FileStat when a ledger is used

    def finish(self, verdict: RowDecision) -> Outcome:
        extra = {"status": verdict.status, "reasons": verdict.reasons,
                 "retryable": verdict.retryable}
        if verdict.message is not None:
            extra["error_msg"] = verdict.message
        by_cause = getattr(self.attempts, "by_cause", None)  # the client's Attempts
        return make_outcome(**self.fields, **extra, attempts=int(self.attempts),
                            attempts_by_cause=by_cause() if by_cause else None,
                            finished_at=utc_now())

    def note_error(self, exc: ApiError, log_field: str) -> None:
        self.attempts += exc.attempts
        self.fields["error_code"] = None if exc.code is None else str(exc.code)
        self.fields["error_msg"] = exc.message
        if exc.log_id is not None:
            self.fields[log_field] = exc.log_id


_METRIC_COLUMNS = frozenset(METRIC_FIELDS)


def _metric_fields(choice: FaceChoice, face_count: int) -> dict[str, Any]:
    out: dict[str, Any] = {"face_count": face_count}
    verdict = getattr(choice, "verdict", None)
    metrics = getattr(verdict, "metrics", None)
    if metrics is not None:
        values = asdict(metrics)
        out.update({k: v for k, v in values.items() if k in _METRIC_COLUMNS})
    face = getattr(choice, "face", None)
    if face is not None:
        box = face.location
        out.update(face_left=box.left, face_top=box.top, face_width=box.width,
                   face_height=box.height, face_probability=face.face_probability)
    return out


def _windows_hint(row: ManifestRow, problem: ImageProblem) -> str:
    """The image problem's message, plus a hint for an absolute Windows path."""
    from pipeline.runs.manifest import windows_drive_path  # noqa: PLC0415

    if problem.reason == "file_missing" and windows_drive_path(row.image):
        return (f"{problem.message}. {row.image!r} is a Windows path (drive or network "
                "share): copy the photos to this machine and write paths relative to the "
                "manifest's folder (backslashes are fine)")
    return str(problem.message)


class _RowRunner:
    """Runs the stages of one row against a client (shared by every row of a session)."""

    def __init__(self, config: EnrollConfig, run_id: str, client: FaceApi, thresholds: Thresholds,
                 ledger: Ledger | None = None) -> None:
        self.config, self.run_id, self.client, self.thresholds = config, run_id, client, thresholds
        self.ledger = ledger
        self.endpoint = _endpoint_key(config)

    async def run(self, row: ManifestRow, duplicate_of: int | None) -> Outcome:
        """The terminal outcome of ``row``; raises :class:`StopRun` for quota/auth."""
        state = _RowState({"run_id": self.run_id, "row": row.row, "line": row.line,
                           "uid": row.uid, "group_id": row.group_id, "image": row.image,
                           "started_at": utc_now()})
        early = check_row(row, duplicate_of, self.config.api)
        if early is not None:
            return state.finish(early)
        image = await self._load(row, state)
        if isinstance(image, RowDecision):
            return state.finish(image)
        known = await self._known(row, image, state)
        if known is not None:
            return state.finish(known)
        verdict = await self._detect(image, state)
        if verdict is None and self.config.block_duplicates:
            verdict = await self._duplicates(row, image, state)
        if verdict is None:
            verdict = await self._write(row, image, state)
        outcome = state.finish(verdict)
        await self._record(row, outcome, state)
        return outcome

    async def _load(self, row: ManifestRow, state: _RowState) -> LoadedImage | RowDecision:
        from pipeline.runs.images import ImageProblem, limits_for, load_image  # noqa: PLC0415

        def stat_then_load() -> LoadedImage:
            # The stat is taken before the read: if the file changes while it is read,
            # its mtime is newer than the one a ledger records, so it is read again.
            state.stat = stat_file(row.image_path) if self.ledger is not None else None
            return load_image(row.image_path, root=self.config.images_root,
                              limits=limits_for(self.config.api))

        try:
            image = await asyncio.to_thread(stat_then_load)
        except ImageProblem as exc:
            return RowDecision(Status.INVALID_INPUT, (exc.reason,), message=_windows_hint(row, exc))
        state.fields.update(image_sha256=image.sha256, transformed=tuple(image.transformed))
        return image

    async def _known(self, row: ManifestRow, image: LoadedImage, state: _RowState
                     ) -> RowDecision | None:
        """``skipped_known`` when the ledger holds this (group, uid, sha256) in every group
        of the row (a file touched or moved since: read once, then remembered)."""
        if self.ledger is None or row.action not in MODES:
            return None
        groups = split_groups(row.group_id)
        found = [await asyncio.to_thread(self.ledger.known_image, self.endpoint, g, row.uid,
                                         image.sha256) for g in groups]
        faces = [f for f in found if f is not None]
        if not groups or len(faces) < len(found):
            return None
        if state.stat is not None:
            for face in faces:
                await asyncio.to_thread(self.ledger.refresh_stat, face, state.stat.path,
                                        state.stat.size, state.stat.mtime_ns)
        first = faces[0]
        state.fields.update(detect_log_id=first.detect_log_id, write_log_id=first.write_log_id,
                            face_count=first.face_count)
        return RowDecision(Status.SKIPPED_KNOWN)

    async def _record(self, row: ManifestRow, outcome: Outcome, state: _RowState) -> None:
        """Record a success in the ledger. A ledger error is logged, never fatal: the
        row is sent again next time and answered "image exist" (already_enrolled)."""
        if self.ledger is None or not outcome.succeeded or outcome.status == "skipped_known":
            return
        entries = entries_for(outcome, self.endpoint, image_path=str(row.image_path),
                              stat=state.stat, user_info=row.user_info or None)
        try:
            await asyncio.to_thread(self.ledger.record, entries)
        except Exception as exc:  # noqa: BLE001 — sqlite3.Error, OSError, a backend's own
            _log.warning("row %d: not recorded in the ledger (%s: %s)", row.row,
                         type(exc).__name__, exc)

    async def _duplicates(self, row: ManifestRow, image: LoadedImage, state: _RowState
                          ) -> RowDecision | None:
        """--block-duplicates: ``duplicate_suspect`` when another uid holds this face."""
        from pipeline.enroll.duplicates import find_duplicate  # noqa: PLC0415

        try:
            found = await find_duplicate(self.client, row, image.data,
                                         bound=self.config.duplicate_score, ledger=self.ledger,
                                         endpoint=self.endpoint)
        except STOPPING_ERRORS as exc:
            raise as_stop(exc) from exc
        except ApiError as exc:
            state.note_error(exc, "identify_log_id")
            return classify_error(exc)
        state.attempts += found.attempts
        state.fields.update(identify_log_id=found.identify_log_id,
                            match_log_id=found.match_log_id)
        if found.uid is None:
            return None
        state.fields.update(duplicate_uid=found.uid, duplicate_group_id=found.group_id,
                            duplicate_score=found.score)
        return RowDecision(Status.DUPLICATE_SUSPECT, found.reasons, message=found.message)

    async def _detect(self, image: LoadedImage, state: _RowState) -> RowDecision | None:
        from pipeline.enroll.gate import choose_face  # noqa: PLC0415

        result = await self._call(
            self.client.detect(image.data, max_face_num=self.config.max_face_num,
                               face_fields=("qualities",)), state, "detect_log_id")
        if isinstance(result, RowDecision):
            return result
        choice = choose_face(result.faces, self.thresholds,
                             largest_face=self.config.largest_face)
        state.fields.update(_metric_fields(choice, len(result.faces)))
        return decide_face(choice)

    async def _write(self, row: ManifestRow, image: LoadedImage, state: _RowState) -> RowDecision:
        # user_info is optional in the manifest but required (non-empty) by user add and
        # update, so an empty one is sent as the uid (documented in the README).
        args = (row.uid, row.user_info or row.uid, row.group_id, image.data)
        if row.action == "add":
            call = self.client.add_user(*args, action_type="append")
        elif row.action == "update":
            call = self.client.update_user(*args)
        else:
            call = self.client.update_user(*args, action_type="replace")
        result = await self._call(call, state, "write_log_id")
        if isinstance(result, RowDecision):
            return result
        return RowDecision(success_status(row.action))

    async def _call(self, call: Awaitable[R], state: _RowState, log_field: str
                    ) -> R | RowDecision:
        """Await one API call of a row: the result, with its attempts and ``log_id`` added
        to the row; or the row's RowDecision for an API error. Quota and auth stop the run."""
        try:
            result = await call
        except STOPPING_ERRORS as exc:
            raise as_stop(exc) from exc
        except ApiError as exc:
            state.note_error(exc, log_field)
            return classify_error(exc)
        state.attempts += result.attempts
        state.fields[log_field] = result.log_id
        return result


# -- the session ----------------------------------------------------------------------


class _Session:
    """One pass over the rows still to do, with at most ``concurrency`` in flight."""

    def __init__(self, run: _Run, store: RecordStore, rows: _RowRunner) -> None:
        self.run, self.store, self.rows = run, store, rows
        self.already_done = int(store.done[shard_rows(run.manifest.num_rows,
                                                      run.config.shard)].sum())
        self.counts: Counter[str] = Counter()
        self.started = time.monotonic()
        self.runner: Runner[ManifestRow] = Runner(
            run.config.concurrency, run.stop, noun="rows", on_stop=self._stopping,
            tick=self._tick, ready=self._ready)

    def progress(self) -> Progress:
        total = len(shard_rows(self.run.manifest.num_rows, self.run.config.shard))
        return Progress(total, self.already_done, sum(self.counts.values()),
                        self.runner.in_flight, dict(self.counts), time.monotonic() - self.started)

    async def go(self) -> Stopped | None:
        end = shard_rows(self.run.manifest.num_rows, self.run.config.shard).stop
        rows = _AsyncRows(self.run.manifest, self.store.done, self.runner.halted, end)
        return await self.runner.run(rows, self._one)

    async def _one(self, row: ManifestRow) -> None:
        try:
            outcome = await self.rows.run(row, self.run.manifest.row_is_duplicate_of(row.row))
        except (StopRun, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001 — a bug on one row must not end the run
            _log.exception("row %d: unexpected error; recorded as failed/internal_error", row.row)
            outcome = make_outcome(
                run_id=self.rows.run_id, row=row.row, line=row.line, uid=row.uid,
                group_id=row.group_id, image=row.image, status=Status.FAILED,
                reasons=("internal_error",), retryable=True,
                error_msg=f"{type(exc).__name__}: {exc}"[:500],
                started_at=utc_now(), finished_at=utc_now())
        try:
            self.store.append(outcome)
        except OSError as exc:  # disk full, I/O error: stop at the first, keep what was written
            self.runner.halt(StopReason.DISK, disk_message(self.store.rundir.path, exc))
            return
        self.counts[outcome.status] += 1
        self.run.observer.row_done(outcome, self.progress())

    async def _ready(self) -> None:
        """While the service answers nobody, no new row starts (see Health.wait_ready);
        once it has been gone longer than --outage-wait, the run stops (outage)."""
        ready = outage_pause(self.rows.client)
        if ready is not None:
            await ready()

    def _stopping(self, stopped: Stopped) -> None:
        self.run.observer.stopping(stopped.reason, stopped.message)

    def _tick(self) -> None:
        try:
            self.store.maybe_flush()
        except OSError as exc:  # a part could not be written: stop at the first error
            self.runner.halt(StopReason.DISK, disk_message(self.store.rundir.path, exc))
        self.run.observer.tick(self.progress())


class _AsyncRows:
    """The manifest rows not done yet, read batch by batch in a worker thread."""

    def __init__(self, manifest: Manifest, done: np.ndarray, halt: asyncio.Event,
                 end: int | None = None) -> None:
        self.manifest, self.done, self.halt = manifest, done, halt
        self.end = len(done) if end is None else end  # a shard stops reading at its end

    def __aiter__(self) -> AsyncIterator[ManifestRow]:
        return self._rows()

    async def _rows(self) -> AsyncIterator[ManifestRow]:
        if self.done.all():
            return
        # argmin of a bool array is the first False: the first row left, found without
        # the index array of every row left (80 MB at 10M rows).
        first = int(np.argmin(self.done))
        batches: Iterator[list[ManifestRow]] = self.manifest.batches(start_row=first)
        while not self.halt.is_set():
            batch = await asyncio.to_thread(next, batches, None)
            if batch is None:
                return
            for row in batch:
                if row.row >= self.end:
                    return
                if not self.done[row.row]:
                    yield row


# -- a whole run ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Run:
    """One session of an enroll run: what it reads, where it writes, whom it tells."""

    config: EnrollConfig
    manifest: Manifest
    thresholds: Thresholds
    rundir: RunDir
    info: RunInfo
    resumed: bool
    client_factory: ClientFactory
    observer: EnrollObserver
    stop: asyncio.Event | None
    ledger: Ledger | None = None  # the ledger of enrolled faces (--ledger), or None


async def run_enroll(
    config: EnrollConfig,
    client_factory: ClientFactory = default_client_factory,
    observer: EnrollObserver | None = None,
    stop: asyncio.Event | None = None,
) -> RunResult:
    """Run (or resume) an enrollment; see the module docstring.

    Raises :class:`ConfigError` (manifest, thresholds, run directory) before any
    call. ``client_factory(settings, qps)`` returns an async context manager
    yielding the client. Setting ``stop`` interrupts the run cleanly.
    """
    manifest, thresholds = open_inputs(config)
    ledger = _open_ledger(config)
    try:
        rundir, info, resumed = open_run(config, manifest, thresholds)  # holds the run dir
        run = _Run(config, manifest, thresholds, rundir, info, resumed, client_factory,
                   observer or EnrollObserver(), stop, ledger)
        try:
            return await _run_held(run)
        finally:
            rundir.release()
    finally:
        if ledger is not None:
            ledger.close()


def _open_ledger(config: EnrollConfig) -> Ledger | None:
    if not config.ledger:
        return None
    from pipeline.ledger import open_ledger  # noqa: PLC0415

    return open_ledger(config.ledger)


def _endpoint_key(config: EnrollConfig) -> str:
    from pipeline.ledger import endpoint_key  # noqa: PLC0415

    return endpoint_key(config.settings.endpoint)


async def _run_held(run: _Run) -> RunResult:
    config, manifest = run.config, run.manifest
    try:
        store = run.rundir.open_store(OUTCOME_SCHEMA, manifest.num_rows,
                                      flush_rows=config.flush_rows,
                                      flush_seconds=config.flush_seconds)
    except OSError as exc:  # recovery could not write a part: nothing was sent yet
        raise ConfigError(f"{run.rundir.path}: cannot write the run directory: "
                          f"{exc.strerror or exc}") from None
    rows = shard_rows(manifest.num_rows, config.shard)
    # Rows of other shards count as done here (in memory only: no outcome is written).
    store.done[: rows.start] = True
    store.done[rows.stop:] = True
    already = int(store.done[rows.start: rows.stop].sum())
    detected = manifest.delimiter if getattr(manifest, "delimiter_detected", False) else None
    run.observer.started(RunStart(run.info.run_id, run.rundir.path, Path(manifest.path),
                                  len(rows), already, run.resumed, store.recovered, detected))
    started = time.monotonic()
    stopped, session_counts = None, Counter[str]()
    try:
        skipped = 0
        if run.ledger is not None and already < len(rows):
            skipped = await asyncio.to_thread(skip_known, manifest, run.ledger,
                                              _endpoint_key(config), store, run.info.run_id)
            run.observer.known_skipped(skipped)
        if int(store.done[rows.start: rows.stop].sum()) < len(rows):
            stopped, session_counts = await _run_session(run, store)
        if skipped:
            session_counts["skipped_known"] += skipped
    finally:
        try:
            store.close()
        except OSError as exc:  # the last part could not be written: the journal has it
            if stopped is None:
                stopped = Stopped(StopReason.DISK, disk_message(run.rundir.path, exc))
                run.observer.stopping(stopped.reason, stopped.message)
    return _finish(run, store, already, time.monotonic() - started, stopped, session_counts,
                   len(rows))


def shard_rows(num_rows: int, shard: tuple[int, int] | None) -> range:
    """The rows of shard ``k`` of ``n``: ``[k*N//n, (k+1)*N//n)``; all rows for None.

    Contiguous ranges whose sizes differ by at most one; together they hold every
    row once, so ``faceflow merge`` can check coverage from the split alone.
    """
    if shard is None:
        return range(num_rows)
    k, n = shard
    return range(k * num_rows // n, (k + 1) * num_rows // n)


def enroll(
    config: EnrollConfig,
    client_factory: ClientFactory = default_client_factory,
    observer: EnrollObserver | None = None,
    stop: asyncio.Event | None = None,
) -> RunResult:
    """Synchronous :func:`run_enroll` (runs its own event loop)."""
    return asyncio.run(run_enroll(config, client_factory, observer, stop))


async def _run_session(run: _Run, store: RecordStore) -> tuple[Stopped | None, Counter[str]]:
    from pipeline.runs.timeline import CallTimeline  # noqa: PLC0415

    config = run.config
    session: _Session | None = None
    timeline = CallTimeline()
    try:
        async with open_budget(config.qps_budget, config.settings, config.qps) as budget, \
                run.client_factory(config.settings, config.qps,
                                   **factory_options(budget, config.api,
                                                   server_quality=config.server_quality)
                                   ) as client:
            if hasattr(client, "on_call"):  # the client's hook: per-second call counts
                client.on_call = timeline.record
            if hasattr(client, "health"):  # the outage pause: --outage-after/--outage-wait
                client.health.configure(outage_after=config.outage_after,
                                        outage_wait=config.outage_wait)
            rows = _RowRunner(config, run.info.run_id, client, run.thresholds, run.ledger)
            session = _Session(run, store, rows)
            stopped = await session.go()
    except STOPPING_ERRORS as exc:  # raised while opening the budget or client (token fetch)
        stop = as_stop(exc)
        reason, message = stop.reason, stop.message
        if reason == StopReason.AUTH and session is None:  # refused before any call
            reason, message = StopReason.CREDENTIALS, f"{message}; nothing was sent"
        run.observer.stopping(reason, message)
        return Stopped(reason, message), session.counts if session else Counter()
    finally:
        try:
            timeline.save(store.rundir.path)
        except OSError as exc:
            _log.warning("timeline not saved: %s", exc)
    assert session is not None
    return stopped, session.counts


def _finish(run: _Run, store: RecordStore, already: int, elapsed: float,
            stopped: Stopped | None, session_counts: Counter[str], total_rows: int
            ) -> RunResult:
    from pipeline.runs.rundir import status_counts  # noqa: PLC0415

    rundir, manifest = run.rundir, run.manifest
    stop_reason = stopped.reason if stopped else None
    stop_message = stopped.message if stopped else None
    statuses = rundir.read_records(OUTCOME_SCHEMA, ["status"])
    journal = rundir.journal_records(OUTCOME_SCHEMA)  # a session that stopped on a disk error
    if journal.num_rows:
        statuses = pa.concat_tables([statuses, journal.select(["status"])])
    counts = status_counts(statuses)
    failures = rundir.path / FAILURES_CSV
    outcomes = sum(counts.values())
    try:
        # failures.csv changes only with the outcomes: a resume with nothing to do (or a
        # session that stopped before any row) leaves the file of the same outcomes alone.
        if not (failures.exists() and info_failures_for(rundir) == outcomes):
            write_failures(failures, manifest, rundir)
        rundir.update_info(finished_at=utc_now().isoformat(), counts=counts,
                           stop_reason=stop_reason, failures_for=outcomes)
    except OSError as exc:  # the outcomes are safe (parts + journal); these files follow
        if stop_reason not in (None, StopReason.DISK):
            _log.warning("run.json/failures.csv not updated: %s", exc)
        else:
            stop_reason, stop_message = StopReason.DISK, disk_message(rundir.path, exc)
    return RunResult(
        run_id=run.info.run_id, run_dir=rundir.path, manifest=Path(manifest.path),
        stop_reason=stop_reason, stop_message=stop_message,
        counts=counts, session_counts=dict(session_counts), total_rows=total_rows,
        already_done=already, remaining=int((~store.done).sum()), resumed=run.resumed,
        elapsed_s=elapsed, failures_csv=failures, outcomes_dir=rundir.outcomes_dir)


def open_inputs(config: EnrollConfig) -> tuple[Any, Any]:
    """The manifest and the quality thresholds; ConfigError (naming the line) when wrong."""
    from pipeline.enroll.thresholds import load_thresholds  # noqa: PLC0415
    from pipeline.runs.manifest import open_manifest  # noqa: PLC0415

    manifest = open_manifest(config.manifest, default_group=config.group,
                             default_action=config.mode, encoding=config.encoding,
                             delimiter=config.delimiter)
    if config.thresholds_values is not None:
        from pipeline.enroll.gate import thresholds_from_dict  # noqa: PLC0415

        return manifest, thresholds_from_dict(config.thresholds_values)
    thresholds = load_thresholds(config.thresholds_file, dict(config.threshold_overrides) or None)
    return manifest, thresholds


def open_run(config: EnrollConfig, manifest: Manifest, thresholds: Thresholds
             ) -> tuple[RunDir, RunInfo, bool]:
    """The run directory for ``config``, held (:meth:`RunDir.hold`; the caller releases
    it): (dir, its run.json, True when resuming).

    An existing run of the same manifest (same fingerprint) resumes; a run of
    another manifest, ``resume`` with no run there, or a dir another session holds,
    is a ConfigError.
    """
    rundir = RunDir(config.run_dir or config.runs_root / new_run_id())
    if config.resume and not rundir.exists():  # refused before anything is created
        raise ConfigError(
            f"--resume: {rundir.path} holds no run (no run.json). Drop --resume to start "
            "a new run there, or give the --run-dir of the run to resume.")
    try:
        return open_held(rundir, lambda held: _open_held(config, manifest, thresholds, held))
    except OSError as exc:  # run.json cannot be written (read-only, full): nothing was sent
        raise ConfigError(f"{rundir.path}: cannot write the run directory: "
                          f"{exc.strerror or exc}") from None


def _open_held(config: EnrollConfig, manifest: Manifest, thresholds: Thresholds, rundir: RunDir
               ) -> tuple[RunDir, RunInfo, bool]:
    ref = ManifestRef(str(Path(manifest.path).resolve()), manifest.fingerprint, manifest.num_rows)
    limits = thresholds.to_dict() if hasattr(thresholds, "to_dict") else None
    current: dict[str, Any] = {"settings": config.settings.public(),
                               "options": config.options(), "thresholds": limits}
    if rundir.exists():
        info = rundir.read_info()
        _check_same_run(rundir, info, ref)
        _check_same_api(rundir, info, config.api)
        _check_same_shard(rundir, info, current["options"].get("shard"))
        changes = option_differences(info, current["options"], limits)
        if changes and not config.change_options:
            raise ConfigError(
                f"{rundir.path} holds run {info.run_id}, started with other settings: "
                f"{'; '.join(changes)}. Resume without these options (the run's settings "
                "apply), or add --change-options to apply them from now on (recorded in "
                "run.json).")
        if changes:
            entry = {"session": info.sessions + 1, "at": utc_now().isoformat(),
                     "changes": changes}
            current["option_changes"] = [*info.option_changes, entry]
        return rundir, next_session(rundir, info, **current), True
    # A directory named like a run id (runs/<run_id>) gives the run its name.
    run_id = rundir.path.name if RUN_ID_RE.match(rundir.path.name) else new_run_id()
    info = RunInfo(run_id=run_id, job="enroll", created_at=utc_now().isoformat(), manifest=ref,
                   parent_run_id=config.parent_run_id, **current)
    rundir.write_info(info)
    return rundir, info, False


def _check_same_run(rundir: RunDir, info: RunInfo, ref: ManifestRef) -> None:
    if info.job != "enroll":
        raise ConfigError(f"{rundir.path} holds a {info.job} run, not an enroll run; "
                          "choose another --run-dir")
    if info.manifest.fingerprint != ref.fingerprint:
        raise ConfigError(
            f"{rundir.path} holds run {info.run_id} of {info.manifest.path} "
            f"({info.manifest.fingerprint[:19]}...), not of {ref.path} "
            f"({ref.fingerprint[:19]}...): the manifest differs. Choose another --run-dir "
            "(or none, for a new run under runs/).")


def _check_same_api(rundir: RunDir, info: RunInfo, api: str) -> None:
    """A run keeps its protocol: tokens, id rules and error codes differ between them."""
    before = str((info.options or {}).get("api") or "v2")
    if before != api:
        raise ConfigError(
            f"{rundir.path} holds run {info.run_id} made with --api {before}; it cannot be "
            f"resumed with --api {api}. Resume with --api {before} (or FACEFLOW_API="
            f"{before}), or start a new run in another --run-dir.")


def _check_same_shard(rundir: RunDir, info: RunInfo, shard: str | None) -> None:
    held = info.options.get("shard")
    if held != shard:
        what = f"shard {held}" if held else "a whole (unsharded) run"
        asked = f"--shard {shard}" if shard else "no --shard"
        raise ConfigError(
            f"{rundir.path} holds {what} of {info.manifest.path}, but this command gives "
            f"{asked}: a resume must use the same split. Give the same --shard, or another "
            "--run-dir for another split.")
