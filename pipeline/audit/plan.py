"""The audit's plan: one :class:`AuditImage` per known photo, from enrollment runs, a
manifest and/or a ledger, frozen in ``plan.parquet`` at the first session."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.api.errors import (
    ConfigError,
)
from pipeline.audit.config import AuditConfig
from pipeline.audit.findings import (
    PLAN_SCHEMA,
    AuditImage,
    records_table,
    table_records,
)
from pipeline.runs.rundir import (
    RunDir,
    RunInfo,
    write_table_atomic,
)

PLAN_FILE = "plan.parquet"

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
    wanted, out = set(rows), dict[int, str]()
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
    path: Path, default_group: str | None, start: int = 0, *, probe: bool = True,
    encoding: str = "utf-8", delimiter: str | None = None,
) -> list[AuditImage]:
    """The add/update/upsert rows of a manifest, hashed now (sha256 of the file bytes).

    A row whose image cannot be read keeps ``sha256`` None; its probe will fail
    with the reason. Rows repeating a (uid, sha256) are kept once.
    """
    from pipeline.runs.manifest import open_manifest  # noqa: PLC0415

    manifest = open_manifest(path, default_group=default_group, encoding=encoding,
                             delimiter=delimiter)
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
        plan += plan_from_manifest(config.manifest, config.groups[0], start=len(plan),
                                   encoding=config.encoding, delimiter=config.delimiter)
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


def read_plan(rundir: RunDir) -> list[AuditImage]:
    try:
        table = pq.read_table(rundir.path / PLAN_FILE, schema=PLAN_SCHEMA)
    except FileNotFoundError:
        raise ConfigError(f"{rundir.path} has no {PLAN_FILE}: not a complete audit") from None
    return table_records(table, AuditImage)


def write_plan(rundir: RunDir, plan: Sequence[AuditImage]) -> str:
    """Write ``plan.parquet`` (frozen at the first session); return the plan's fingerprint."""
    table = records_table(plan, PLAN_SCHEMA)
    rundir.path.mkdir(parents=True, exist_ok=True)
    write_table_atomic(rundir.path / PLAN_FILE, table)
    return _fingerprint(table)


def _fingerprint(table: pa.Table) -> str:
    digest = hashlib.sha256()
    for name in ("uid", "path", "sha256"):
        digest.update(json.dumps(table.column(name).to_pylist()).encode())
    return "sha256:" + digest.hexdigest()
