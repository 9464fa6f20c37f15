"""Reconcile: does the service still hold what the ledger says faceflow enrolled?

``faceflow reconcile --group G --ledger L`` in two phases, both resumable:

1. **list** the group on the service: ``getGroupUsers`` page by page (``start``,
   ``num`` = ``page_size``, at most 1000) until a page comes back short. Each page
   is saved (``pages/page-<start>.parquet``, atomic) as soon as it arrives, so a
   stopped reconcile resumes after the last saved page. The lists are then compared
   with the ledger's faces of G on that service (pure: :func:`compare`), and the
   discrepancies frozen into ``plan.parquet``:

   - ``missing_in_service``: the ledger holds faces of the uid, the group does not
     list it (deleted behind faceflow's back);
   - ``unknown_to_ledger``: the group lists the uid, the ledger never recorded it
     (enrolled outside faceflow, or before the ledger: ``ledger import`` the old runs);
   - ``faces_differ`` (only with ``check_faces``): on both sides, but ``verify`` of the
     ledger's latest photo against the uid scores below ``score``: the uid's faces
     were replaced outside faceflow.

2. **detail** each discrepancy (bounded concurrency, the client's rate limiter):
   ``getUser`` tells where a missing uid went (no group left, or other groups) and
   which groups an unknown uid is in; ``--delete-unknown`` then deletes an unknown
   uid from G (``deleteUser`` with ``group_id``). Each result is a
   :class:`ReconcileRecord` journaled in ``outcomes/`` (the run directory of
   :mod:`pipeline.runs.rundir`), so resume skips what is done.

At the end: ``reconcile.parquet`` (every record), ``summary.json`` and
``repair-manifest.csv``: every ledger face of the missing uids (absolute image path,
uid, group_id, user_info, action add). The missing uids are recorded in the ledger
(``missing_in_service``: their faces leave it), so ``faceflow enroll
repair-manifest.csv --ledger L`` sends them again; deletions are recorded as
``deleted_unknown``. Nothing is ever deleted without ``delete_unknown``.

Calls: ceil(users / page_size) getGroupUsers + one getUser per discrepancy (+ one
verify per common uid with ``check_faces``, + one deleteUser per deletion).
"""

from __future__ import annotations

import asyncio
import csv
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.api.errors import ApiError, ConfigError, EmptyGroupError, UserNotFoundError
from pipeline.client.config import Settings
from pipeline.frame import (
    STOPPING_ERRORS,
    ClientFactory,
    FaceApi,
    Runner,
    Stopped,
    as_stop,
    default_client_factory,
    factory_options,
    next_session,
    open_held,
)
from pipeline.ledger import Entry, KnownFace, Ledger, endpoint_key, open_ledger
from pipeline.postgres import redact
from pipeline.runs.rundir import (
    RUN_ID_RE,
    ManifestRef,
    RunDir,
    RunInfo,
    new_run_id,
    status_counts,
    utc_now,
    write_atomic,
    write_table_atomic,
)

KINDS = ("missing_in_service", "unknown_to_ledger", "faces_differ")
PAGE_MAX = 1000
PAGES_DIR = "pages"
PLAN_FILE = "plan.parquet"
RECONCILE_PARQUET = "reconcile.parquet"
SUMMARY_JSON = "summary.json"
REPAIR_MANIFEST = "repair-manifest.csv"

_PAGE_SCHEMA = pa.schema([pa.field("uid", pa.string(), nullable=False),
                          pa.field("user_info", pa.string())])
PLAN_SCHEMA = pa.schema(
    [
        pa.field("row", pa.int64(), nullable=False),
        pa.field("uid", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("ledger_faces", pa.int32(), nullable=False),
        pa.field("ledger_image", pa.string()),
        pa.field("ledger_user_info", pa.string()),
        pa.field("service_user_info", pa.string()),
    ],
    metadata={"faceflow.record": "pipeline.ledger.reconcile.PlanRow"},
)
RECONCILE_SCHEMA = pa.schema(
    [
        pa.field("row", pa.int64(), nullable=False),
        pa.field("uid", pa.string(), nullable=False),
        pa.field("group_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("ledger_faces", pa.int32(), nullable=False),
        pa.field("ledger_image", pa.string()),
        pa.field("ledger_user_info", pa.string()),
        pa.field("service_user_info", pa.string()),
        pa.field("service_groups", pa.list_(pa.string()), nullable=False),
        pa.field("verify_score", pa.float64()),
        pa.field("action", pa.string(), nullable=False),
        pa.field("error_code", pa.string()),
        pa.field("error_msg", pa.string()),
        pa.field("log_id", pa.uint64()),
        pa.field("delete_log_id", pa.uint64()),
        pa.field("attempts", pa.int32(), nullable=False),
        pa.field("finished_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ],
    metadata={"faceflow.record": "pipeline.ledger.reconcile.ReconcileRecord"},
)


@dataclass(frozen=True, slots=True)
class PlanRow:
    """One discrepancy found by comparing the lists (before any per-uid call)."""

    row: int
    uid: str
    kind: str
    ledger_faces: int
    ledger_image: str | None
    ledger_user_info: str | None
    service_user_info: str | None


@dataclass(frozen=True, slots=True)
class ReconcileRecord:
    """The detailed result of one discrepancy.

    ``service_groups``: the groups getUser lists for the uid (empty: gone everywhere).
    ``action``: ``reported``; ``deleted`` (``delete_log_id`` set); ``delete_failed``;
    ``cleared`` (faces_differ checked and in fact the same person: not a discrepancy);
    ``failed`` (a call failed: see error_code; resume retries it).
    ``verify_score``: 0-100, faces_differ only.
    """

    row: int
    uid: str
    group_id: str
    kind: str
    ledger_faces: int
    ledger_image: str | None
    ledger_user_info: str | None
    service_user_info: str | None
    service_groups: tuple[str, ...]
    verify_score: float | None
    action: str
    error_code: str | None
    error_msg: str | None
    log_id: int | None
    delete_log_id: int | None
    attempts: int
    finished_at: datetime


@dataclass(frozen=True)
class ReconcileConfig:
    """Options of a reconcile. ``delete_unknown`` deletes unknown uids from the group
    and needs ``confirm_group`` equal to ``group`` (typed twice on purpose)."""

    group: str
    ledger: str
    settings: Settings
    run_dir: Path | None = None
    runs_root: Path = Path("runs")
    page_size: int = PAGE_MAX
    concurrency: int = 4
    qps: float | Mapping[str, float] | None = None
    check_faces: bool = False
    score: float = 80.0
    delete_unknown: bool = False
    confirm_group: str | None = None
    #: The protocol, "v2" or "v3" (pipeline/client/v3jobs.py; on v3 the group listing
    #: carries no user_info, so ``service_user_info`` is empty).
    api: str = "v2"

    def __post_init__(self) -> None:
        from pipeline.api import validate  # noqa: PLC0415

        problem = validate.check_group_id(self.group)
        if problem:
            text = validate.REASON_TEXT.get(problem, problem)
            raise ConfigError(f"--group {self.group!r}: {text}")
        if not 1 <= self.page_size <= PAGE_MAX:
            raise ConfigError(f"--page-size {self.page_size}: use 1 to {PAGE_MAX} "
                              "(getGroupUsers returns at most 1000 users a page)")
        if self.concurrency < 1:
            raise ConfigError("--concurrency must be at least 1")
        if self.delete_unknown and self.confirm_group != self.group:
            raise ConfigError(
                "--delete-unknown deletes every uid of the group the ledger does not know; "
                f"to confirm, add --confirm-delete-group {self.group} (the group again)")

    def options(self) -> dict[str, Any]:
        qps = dict(self.qps) if isinstance(self.qps, Mapping) else self.qps
        return {"group": self.group, "ledger": redact(self.ledger) if self.ledger else None,
                "page_size": self.page_size,
                "concurrency": self.concurrency, "qps": qps, "check_faces": self.check_faces,
                "score": self.score, "delete_unknown": self.delete_unknown, "api": self.api}


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    """What a reconcile found. ``stopped`` is None when it ran to the end (then
    ``counts`` covers the whole group); ``differences`` sums ``counts``."""

    run_id: str
    run_dir: Path
    stopped: Stopped | None
    service_users: int
    ledger_uids: int
    counts: Mapping[str, int]  # kind -> uids (faces_differ after verify)
    actions: Mapping[str, int]
    repair_rows: int
    parquet: Path
    summary: Path
    repair_manifest: Path

    @property
    def differences(self) -> int:
        return sum(self.counts.values())

    @property
    def stop_reason(self) -> str | None:
        """The stop reason's value (run.json's ``stop_reason``), None when it finished."""
        return None if self.stopped is None else str(self.stopped.reason)

    @property
    def failed(self) -> int:
        """For the exit-code table: the differences found (1 when any)."""
        return self.differences


class ReconcileObserver:
    """Progress of a reconcile; the default does nothing."""

    def page(self, start: int, users: int) -> None:
        """A page of getGroupUsers arrived (``users`` on it)."""

    def compared(self, service_users: int, ledger_uids: int, plan: Mapping[str, int]) -> None:
        """The lists are compared; ``plan`` counts the discrepancies by kind."""

    def stopping(self, stopped: Stopped) -> None:
        """Quota, credentials or an interrupt: no new call starts."""


# -- the pure part -------------------------------------------------------------------------


def compare(service: Mapping[str, str], ledger_faces: Iterable[KnownFace], *,
            check_faces: bool = False) -> list[PlanRow]:
    """The discrepancies between the service's uids (uid -> user_info) and the ledger's
    faces of the same group, ordered: missing, unknown, then (``check_faces``) every
    uid on both sides as a ``faces_differ`` candidate; uids sorted within a kind."""
    by_uid: dict[str, list[KnownFace]] = {}
    for face in ledger_faces:
        by_uid.setdefault(face.uid, []).append(face)
    rows: list[PlanRow] = []

    def add(uid: str, kind: str) -> None:
        faces = by_uid.get(uid, [])
        latest = max(faces, key=lambda f: f.recorded_at) if faces else None
        rows.append(PlanRow(len(rows), uid, kind, len(faces),
                            latest.image_path if latest else None,
                            latest.user_info if latest else None, service.get(uid)))

    for uid in sorted(set(by_uid) - set(service)):
        add(uid, "missing_in_service")
    for uid in sorted(set(service) - set(by_uid)):
        add(uid, "unknown_to_ledger")
    if check_faces:
        for uid in sorted(set(service) & set(by_uid)):
            add(uid, "faces_differ")
    return rows


# -- phase 1: the service's list ------------------------------------------------------------


def _saved_pages(rundir: RunDir) -> list[tuple[int, Path]]:
    folder = rundir.path / PAGES_DIR
    if not folder.is_dir():
        return []
    return sorted((int(p.stem.split("-")[1]), p) for p in folder.glob("page-*.parquet"))


async def list_group(client: FaceApi, rundir: RunDir, group: str, page_size: int,
                     observer: ReconcileObserver) -> dict[str, str]:
    """uid -> user_info of every user of ``group``, resuming after the saved pages."""
    users: dict[str, str] = {}
    start, last_full = 0, True
    for page_start, path in _saved_pages(rundir):
        table = pq.read_table(path)
        users.update(zip(table["uid"].to_pylist(), table["user_info"].to_pylist(), strict=True))
        start, last_full = page_start + table.num_rows, table.num_rows == page_size
    (rundir.path / PAGES_DIR).mkdir(parents=True, exist_ok=True)
    while last_full:
        try:
            result = await client.get_group_users(group, start=start, num=page_size)
            page = [(u.uid, u.user_info) for u in result.users]
        except STOPPING_ERRORS as exc:
            raise as_stop(exc) from exc
        except EmptyGroupError:  # 216618: a group nobody is in (the engine answers 0 users)
            page = []
        write_table_atomic(rundir.path / PAGES_DIR / f"page-{start:010d}.parquet",
                           pa.Table.from_pylist([{"uid": u, "user_info": i} for u, i in page],
                                                schema=_PAGE_SCHEMA))
        users.update(page)
        observer.page(start, len(page))
        start, last_full = start + len(page), len(page) == page_size
    return users


# -- phase 2: one discrepancy ----------------------------------------------------------------


class _Detail:
    """Runs the calls of one plan row (shared by the rows of a session)."""

    def __init__(self, config: ReconcileConfig, client: FaceApi) -> None:
        self.config, self.client = config, client

    async def run(self, plan: PlanRow) -> ReconcileRecord:
        fields: dict[str, Any] = {**asdict(plan), "group_id": self.config.group,
                                  "service_groups": (), "verify_score": None,
                                  "action": "reported", "error_code": None, "error_msg": None,
                                  "log_id": None, "delete_log_id": None, "attempts": 0}
        try:
            if plan.kind == "faces_differ":
                await self._verify(plan, fields)
            else:
                await self._get_user(plan, fields)
                if plan.kind == "unknown_to_ledger" and self.config.delete_unknown:
                    await self._delete(plan, fields)
        except STOPPING_ERRORS as exc:
            raise as_stop(exc) from exc
        except ApiError as exc:
            fields.update(action="failed", error_code=None if exc.code is None else str(exc.code),
                          error_msg=exc.message)
            fields["attempts"] += exc.attempts
        return ReconcileRecord(**fields, finished_at=utc_now())

    async def _get_user(self, plan: PlanRow, fields: dict[str, Any]) -> None:
        try:
            result = await self.client.get_user(plan.uid)
        except UserNotFoundError as exc:  # gone from every group
            fields["attempts"] += exc.attempts
            fields["log_id"] = exc.log_id
            return
        fields["attempts"] += result.attempts
        fields["log_id"] = result.log_id
        fields["service_groups"] = tuple(sorted({r.group_id for r in result.records}))

    async def _delete(self, plan: PlanRow, fields: dict[str, Any]) -> None:
        try:
            result = await self.client.delete_user(plan.uid, group_id=self.config.group)
        except STOPPING_ERRORS:
            raise
        except ApiError as exc:
            fields.update(action="delete_failed", error_msg=exc.message,
                          error_code=None if exc.code is None else str(exc.code))
            fields["attempts"] += exc.attempts
            return
        fields["attempts"] += result.attempts
        fields.update(action="deleted", delete_log_id=result.log_id)

    async def _verify(self, plan: PlanRow, fields: dict[str, Any]) -> None:
        from pipeline.runs.images import ImageProblem, limits_for, load_image  # noqa: PLC0415

        try:
            image = await asyncio.to_thread(load_image, Path(plan.ledger_image or ""),
                                            limits=limits_for(self.config.api))
        except ImageProblem as exc:
            fields.update(action="failed", error_msg=f"the ledger's photo: {exc.message}")
            return
        result = await self.client.verify(plan.uid, self.config.group, image.data)
        fields["attempts"] += result.attempts
        fields["log_id"] = result.log_id
        score = max(result.scores, default=0.0)
        fields["verify_score"] = float(score)
        if score >= self.config.score:
            fields["action"] = "cleared"


# -- a whole reconcile --------------------------------------------------------------------------


async def run_reconcile(config: ReconcileConfig,
                        client_factory: ClientFactory = default_client_factory,
                        observer: ReconcileObserver | None = None,
                        stop: asyncio.Event | None = None) -> ReconcileResult:
    """Run (or resume) a reconcile; see the module docstring. ConfigError before any call.

    ``client_factory(settings, qps)`` opens the client (:mod:`pipeline.frame`);
    setting ``stop`` interrupts cleanly (pages and records so far are kept)."""
    observer = observer or ReconcileObserver()
    ledger = open_ledger(config.ledger)
    try:
        rundir = RunDir(config.run_dir or config.runs_root / new_run_id())
        info = open_held(rundir, lambda held: _open_run(config, held))
        try:
            return await _run_held(config, ledger, rundir, info, client_factory, observer, stop)
        finally:
            rundir.release()
    finally:
        ledger.close()


def _open_run(config: ReconcileConfig, rundir: RunDir) -> RunInfo:
    """run.json of a new reconcile, or of the resumed one (same service and group)."""
    endpoint = endpoint_key(config.settings.endpoint)
    ref = ManifestRef(config.ledger, f"reconcile:{endpoint}/{config.group}", 0)
    if rundir.exists():
        info = rundir.read_info()
        if info.job != "reconcile" or info.manifest.fingerprint != ref.fingerprint:
            raise ConfigError(f"{rundir.path} holds a {info.job} run "
                              f"({info.manifest.fingerprint}), not a reconcile of "
                              f"{endpoint} group {config.group}; choose another --run-dir")
        return next_session(rundir, info, settings=config.settings.public(),
                            options=config.options())
    run_id = rundir.path.name if RUN_ID_RE.match(rundir.path.name) else new_run_id()
    info = RunInfo(run_id=run_id, job="reconcile", created_at=utc_now().isoformat(),
                   manifest=ref, settings=config.settings.public(), options=config.options())
    rundir.write_info(info)
    return info


async def _run_held(config: ReconcileConfig, ledger: Ledger, rundir: RunDir, info: RunInfo,
                    client_factory: ClientFactory, observer: ReconcileObserver,
                    stop: asyncio.Event | None) -> ReconcileResult:
    faces = list(ledger.faces(endpoint_key(config.settings.endpoint), config.group))
    session = _Session(config, rundir, faces, observer, stop)
    try:
        async with client_factory(config.settings, config.qps,
                                  **factory_options(api=config.api)) as client:
            stopped = await session.run(client)
    except STOPPING_ERRORS as exc:  # raised while opening the client (the token fetch)
        found = as_stop(exc)
        stopped = Stopped(found.reason, found.message)
    if stopped is not None:
        observer.stopping(stopped)
    return _finish(config, ledger, rundir, info, faces, session.service, stopped)


class _Session:
    """One session: list the group (one item on the frame's runner, so an interrupt
    stops it between pages), then the discrepancies (``concurrency`` at a time)."""

    def __init__(self, config: ReconcileConfig, rundir: RunDir, faces: Sequence[KnownFace],
                 observer: ReconcileObserver, stop: asyncio.Event | None) -> None:
        self.config, self.rundir, self.faces = config, rundir, faces
        self.observer, self.stop = observer, stop
        self.service: dict[str, str] = {}

    async def run(self, client: FaceApi) -> Stopped | None:
        async def listing(_: int) -> None:
            self.service = await list_group(client, self.rundir, self.config.group,
                                            self.config.page_size, self.observer)

        stopped = await Runner[int](1, self.stop, noun="pages").run([0], listing)
        if stopped is not None:
            return stopped
        plan = _freeze_plan(self.rundir, compare(self.service, self.faces,
                                                 check_faces=self.config.check_faces))
        self.observer.compared(len(self.service), len({f.uid for f in self.faces}),
                               Counter(p.kind for p in plan))
        store = self.rundir.open_store(RECONCILE_SCHEMA, len(plan), flush_rows=200)
        detail = _Detail(self.config, client)

        async def one(p: PlanRow) -> None:
            store.append(await detail.run(p))

        def flush() -> None:
            store.maybe_flush()

        try:
            todo = [p for p in plan if not store.done[p.row]]
            runner = Runner[PlanRow](self.config.concurrency, self.stop, noun="uids", tick=flush)
            return await runner.run(todo, one)
        finally:
            store.close()


def _freeze_plan(rundir: RunDir, plan: list[PlanRow]) -> list[PlanRow]:
    """The plan of the first session that got this far (resume keeps its row numbers)."""
    path = rundir.path / PLAN_FILE
    if path.exists():
        return [PlanRow(**r) for r in pq.read_table(path).to_pylist()]
    write_table_atomic(path, pa.Table.from_pylist([asdict(p) for p in plan], schema=PLAN_SCHEMA))
    return plan


# -- the end: files, ledger, exit code ----------------------------------------------------------


def _finish(config: ReconcileConfig, ledger: Ledger, rundir: RunDir, info: RunInfo,
            faces: Sequence[KnownFace], service: Mapping[str, str], stopped: Stopped | None
            ) -> ReconcileResult:
    records = rundir.read_records(RECONCILE_SCHEMA).sort_by("row")
    paths = (rundir.path / RECONCILE_PARQUET, rundir.path / SUMMARY_JSON,
             rundir.path / REPAIR_MANIFEST)
    write_table_atomic(paths[0], records)
    rows = records.to_pylist()
    found = [r for r in rows if r["action"] != "cleared"]
    counts = {k: sum(1 for r in found if r["kind"] == k) for k in KINDS}
    actions = status_counts(records, "action")
    repair = _write_repair(paths[2], config.group, faces,
                           {r["uid"] for r in found if r["kind"] == "missing_in_service"})
    if stopped is None:
        _record(ledger, endpoint_key(config.settings.endpoint), config.group, info.run_id, rows)
    stop_reason = None if stopped is None else str(stopped.reason)
    ledger_uids = len({f.uid for f in faces})
    summary = {"run_id": info.run_id, "group": config.group,
               "service": endpoint_key(config.settings.endpoint),
               "ledger": redact(config.ledger) if config.ledger else None,
               "service_users": len(service), "ledger_uids": ledger_uids,
               "counts": counts, "actions": actions, "repair_rows": repair,
               "stop_reason": stop_reason, "finished_at": utc_now().isoformat()}
    write_atomic(paths[1], json.dumps(summary, indent=2).encode("utf-8"))
    rundir.update_info(finished_at=summary["finished_at"], counts=counts,
                       stop_reason=stop_reason)
    return ReconcileResult(info.run_id, rundir.path, stopped, len(service), ledger_uids,
                           counts, actions, repair, *paths)


def _record(ledger: Ledger, endpoint: str, group: str, run_id: str, rows: list[dict[str, Any]]
            ) -> None:
    """Missing uids leave the ledger (so enroll sends them again); deletions are noted."""
    entries = []
    for r in rows:
        action = {"missing_in_service": "missing_in_service"}.get(r["kind"])
        if r["action"] == "deleted":
            action = "deleted_unknown"
        if action is not None:
            entries.append(Entry(endpoint=endpoint, group_id=group, uid=r["uid"],
                                 image_sha256=None, action=action, run_id=run_id, row=r["row"],
                                 at=r["finished_at"], write_log_id=r["delete_log_id"]))
    ledger.record(entries)


def _write_repair(path: Path, group: str, faces: Sequence[KnownFace], missing: set[str]) -> int:
    """A manifest of every ledger face of the ``missing`` uids (action add)."""
    tmp = path.with_name(path.name + ".tmp")
    written = 0
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "uid", "group_id", "user_info", "action"])
        for face in faces:
            if face.uid in missing and face.image_path:
                writer.writerow([face.image_path, face.uid, group, face.user_info or "", "add"])
                written += 1
    tmp.replace(path)
    return written
