"""Between runs and the ledger: outcomes -> entries, and which manifest rows are known.

- :func:`entries_for` turns one successful outcome into ledger entries (one per
  group of the row); an enroll session records them as rows finish.
- :func:`import_runs` records the successes of existing run directories
  (``faceflow ledger import``); events already held are skipped, so importing
  twice changes nothing.
- :func:`known_rows` is the bulk decision of a run with a ledger: the manifest
  rows whose every (group, uid) holds a face recorded at the row's image path
  with the file's current size and mtime. Those rows need neither a call nor a
  read of the image. Memory: one batch of rows at a time.
- :func:`skipped_table` makes the ``skipped_known`` outcome rows of a batch as one
  Arrow table (a million known rows are written as parts, not one by one).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.api.errors import ConfigError
from pipeline.ledger.base import ENROLL_ACTIONS, Entry, KnownFace, Ledger, endpoint_key
from pipeline.runs.outcomes import OUTCOME_SCHEMA
from pipeline.runs.rundir import RunDir, utc_now

#: Manifest actions the enroll job sends (a row with another action is never "known").
_SENDABLE = ("add", "update", "upsert")


def split_groups(group_id: str | None) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]`` (a row sent to several groups is several faces)."""
    return [g for g in (group_id or "").split(",") if g]


@dataclass(frozen=True, slots=True)
class FileStat:
    """Where a row's bytes were read from: absolute path, size in bytes, mtime in ns."""

    path: str
    size: int
    mtime_ns: int


def stat_file(path: str | Path) -> FileStat | None:
    """The :class:`FileStat` of ``path`` (symlinks followed), None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return FileStat(str(path), st.st_size, st.st_mtime_ns)


def entries_for(outcome: Mapping[str, Any] | Any, endpoint: str, *, image_path: str | None,
                stat: FileStat | None = None, user_info: str | None = None) -> list[Entry]:
    """The ledger entries of one outcome (a record or a dict with the outcome fields).

    Empty for statuses that do not put a face on the service, and for
    ``skipped_known`` (nothing happened). ``endpoint`` is a key (:func:`endpoint_key`).
    """
    get: Any = outcome.get if isinstance(outcome, Mapping) else (
        lambda k: getattr(outcome, k))
    status, sha = get("status"), get("image_sha256")
    if status not in ENROLL_ACTIONS or not sha or not get("uid"):
        return []
    return [Entry(endpoint=endpoint, group_id=group, uid=get("uid"), image_sha256=sha,
                  action=status, run_id=get("run_id"), row=int(get("row")),
                  at=get("finished_at"), face_count=get("face_count"),
                  detect_log_id=get("detect_log_id"), write_log_id=get("write_log_id"),
                  image_path=stat.path if stat else image_path,
                  image_size=stat.size if stat else None,
                  image_mtime_ns=stat.mtime_ns if stat else None, user_info=user_info)
            for group in split_groups(get("group_id"))]


# -- ledger import ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImportResult:
    """Per run directory: (run_id, successes seen, entries newly recorded)."""

    runs: tuple[tuple[str, int, int], ...]

    @property
    def recorded(self) -> int:
        return sum(n for _, _, n in self.runs)


_IMPORT_COLUMNS = ["run_id", "row", "uid", "group_id", "image", "image_sha256", "status",
                   "face_count", "detect_log_id", "write_log_id", "finished_at"]


def import_runs(ledger: Ledger, run_dirs: Iterable[Path]) -> ImportResult:
    """Record the successes of enroll run directories, oldest run first (so a later
    update replaces an earlier add). Stat caches are not filled: the first run
    with the ledger reads each file once and remembers its stat."""
    runs = [(RunDir(p), p) for p in run_dirs]
    infos = []
    for rundir, path in runs:
        info = rundir.read_info()
        if info.job != "enroll":
            raise ConfigError(f"{path} holds a {info.job} run, not an enroll run")
        infos.append((info.created_at, info, rundir))
    done = []
    for _, info, rundir in sorted(infos, key=lambda t: t[0]):
        endpoint = endpoint_key(str(info.settings.get("endpoint") or ""))
        base = Path(info.manifest.path).parent
        infos_by_row = _user_infos(info)
        table = rundir.read_records(OUTCOME_SCHEMA, _IMPORT_COLUMNS).sort_by("row")
        entries: list[Entry] = []
        seen = 0
        for rec in table.to_pylist():
            image = rec["image"] or ""
            full = image if Path(image).is_absolute() else str(base / image)
            found = entries_for(rec, endpoint, image_path=full,
                                user_info=infos_by_row.get(rec["row"]))
            seen += bool(found)
            entries += found
        done.append((info.run_id, seen, ledger.record(entries)))
    return ImportResult(tuple(done))


def _user_infos(info: Any) -> dict[int, str]:
    """row -> user_info from the run's manifest when it is unchanged, else {}."""
    from pipeline.runs.manifest import open_manifest  # noqa: PLC0415

    options = info.options or {}
    try:
        manifest = open_manifest(info.manifest.path, default_group=options.get("group"),
                                 default_action=options.get("mode") or "add")
    except Exception:  # noqa: BLE001 — a moved or broken manifest only loses user_info
        return {}
    if manifest.fingerprint != info.manifest.fingerprint:
        return {}
    return {r.row: r.user_info for batch in manifest.batches(8192) for r in batch
            if r.user_info}


# -- the bulk decision --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KnownRow:
    """A manifest row the ledger already holds: one face per group of the row."""

    row: Any  # pipeline.runs.manifest.ManifestRow
    faces: tuple[KnownFace, ...]


def known_rows(manifest: Any, ledger: Ledger, endpoint: str, *,
               skip: np.ndarray | None = None, batch_size: int = 16_384
               ) -> Iterator[list[KnownRow]]:
    """Batches of the rows that need not be sent (see the module docstring).

    ``skip[row]`` True leaves a row out (rows already done in this run). Rows
    that repeat an earlier row, and rows with an action enroll does not send,
    are never "known": they get their usual outcome.
    """
    for batch in manifest.batches(batch_size):
        probes: list[tuple[int, str, str, str]] = []
        for i, row in enumerate(batch):
            if (skip is not None and skip[row.row]) or row.action not in _SENDABLE \
                    or manifest.row_is_duplicate_of(row.row) is not None:
                continue
            path = str(row.image_path)
            probes.extend((i, g, row.uid, path) for g in split_groups(row.group_id))
        yield _confirm(batch, ledger.known_paths(endpoint, probes))


def _confirm(batch: Sequence[Any], found: Sequence[KnownFace]) -> list[KnownRow]:
    """Keep the rows whose file still has the recorded size and mtime, in every group."""
    by_row: dict[int, list[KnownFace]] = {}
    for face in found:
        assert face.key is not None
        by_row.setdefault(face.key, []).append(face)
    out: list[KnownRow] = []
    for i in sorted(by_row):
        row = batch[i]
        st = stat_file(row.image_path)
        if st is None:
            continue
        chosen: dict[str, KnownFace] = {}
        for face in by_row[i]:
            if face.image_size == st.size and face.image_mtime_ns == st.mtime_ns:
                chosen[face.group_id] = face
        groups = split_groups(row.group_id)
        if groups and all(g in chosen for g in groups):
            out.append(KnownRow(row, tuple(chosen[g] for g in groups)))
    return out


def skipped_table(run_id: str, rows: Sequence[KnownRow], now: datetime | None = None
                  ) -> pa.Table:
    """The ``skipped_known`` outcomes of ``rows`` (attempts 0; the log ids, sha256 and
    face count are those the ledger recorded for the row's first group)."""
    now = now or utc_now()
    n = len(rows)
    first = [r.faces[0] for r in rows]
    columns: dict[str, Any] = {name: [None] * n for name in OUTCOME_SCHEMA.names}
    columns.update(
        run_id=[run_id] * n, row=[r.row.row for r in rows], line=[r.row.line for r in rows],
        uid=[r.row.uid for r in rows], group_id=[r.row.group_id for r in rows],
        image=[r.row.image for r in rows], image_sha256=[f.image_sha256 for f in first],
        status=["skipped_known"] * n, reasons=[[]] * n, retryable=[False] * n,
        face_count=[f.face_count for f in first], transformed=[[]] * n,
        detect_log_id=[f.detect_log_id for f in first],
        write_log_id=[f.write_log_id for f in first], attempts=[0] * n,
        started_at=[now] * n, finished_at=[now] * n)
    return pa.Table.from_pydict(columns, schema=OUTCOME_SCHEMA)
