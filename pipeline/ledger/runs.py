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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.api.errors import ConfigError
from pipeline.ledger.base import (
    ENROLL_ACTIONS,
    Entry,
    Ledger,
    PathMatch,
    PathProbe,
    endpoint_key,
)
from pipeline.runs.outcomes import OUTCOME_SCHEMA
from pipeline.runs.rundir import RecordStore, RunDir, RunInfo, utc_now

if TYPE_CHECKING:
    from pipeline.runs.manifest import KeyChunk, Manifest
    from pipeline.runs.outcomes import Outcome

    #: What :func:`_lookup` hands to :func:`_confirm`: the chunk, the positions of its
    #: candidate rows, the faces each needs, the ledger's matches.
    _Lookup = tuple[KeyChunk, np.ndarray, list[int], list[PathMatch]]

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


def entries_for(outcome: Mapping[str, Any] | Outcome, endpoint: str, *, image_path: str | None,
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


def _user_infos(info: RunInfo) -> dict[int, str]:
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
class KnownRows:
    """Rows of one manifest chunk that the ledger holds, as columns (row order).

    ``image_sha256``, ``face_count`` and the log ids are those recorded for the row's
    first group (log ids as uint64 Arrow arrays)."""

    rows: np.ndarray
    lines: np.ndarray
    uid: pa.Array
    group_id: pa.Array
    image: pa.Array
    image_sha256: pa.Array
    face_count: pa.Array
    detect_log_id: pa.Array
    write_log_id: pa.Array

    def __len__(self) -> int:
        return len(self.rows)


def known_rows(manifest: Manifest, ledger: Ledger, endpoint: str, *,
               skip: np.ndarray | None = None) -> Iterator[KnownRows]:
    """The rows that need not be sent (see the module docstring), one
    :class:`KnownRows` per manifest chunk (:meth:`~pipeline.manifest.Manifest.key_chunks`).

    ``skip[row]`` True leaves a row out (rows already done in this run). Rows
    that repeat an earlier row, and rows with an action enroll does not send,
    are never "known": they get their usual outcome.
    """
    # The stat() calls and the ledger lookup of the next chunk run in a worker thread
    # while this one's outcomes are made: both release the GIL.
    with ThreadPoolExecutor(1, thread_name_prefix="ledger-lookup") as pool:
        pending: Future[_Lookup] | None = None
        for chunk in manifest.key_chunks():
            ahead = pool.submit(_lookup, manifest, ledger, endpoint, chunk, skip)
            if pending is not None:
                yield _confirm(*pending.result())
            pending = ahead
        if pending is not None:
            yield _confirm(*pending.result())


def _lookup(manifest: Manifest, ledger: Ledger, endpoint: str, chunk: KeyChunk,
            skip: np.ndarray | None) -> _Lookup:
    """The faces the ledger holds at the paths, sizes and mtimes of ``chunk``'s candidate
    rows (one stat per row; a file that cannot be stat'ed is no candidate)."""
    rows = chunk.rows
    keep = ~manifest.duplicate_mask(rows)
    if skip is not None:
        keep &= ~skip[rows]
    keep &= pc.is_in(chunk.action, pa.array(_SENDABLE)).to_numpy(zero_copy_only=False)
    index = np.flatnonzero(keep)
    at = pa.array(index)
    uids, groups, paths = (chunk.uid.take(at).to_pylist(), chunk.group_id.take(at).to_pylist(),
                           chunk.image_path.take(at).to_pylist())
    probes: list[PathProbe] = []
    need: list[int] = []
    stat = os.stat
    for j, (uid, group, path) in enumerate(zip(uids, groups, paths, strict=True)):
        try:
            st = stat(path)
        except OSError:
            need.append(0)
            continue
        if "," in group:
            parts = split_groups(group)
            probes.extend((j, g, uid, path, st.st_size, st.st_mtime_ns) for g in parts)
            need.append(len(parts))
        else:
            probes.append((j, group, uid, path, st.st_size, st.st_mtime_ns))
            need.append(1 if group else 0)
    found = ledger.known_paths(endpoint, probes) if probes else []
    return chunk, index, need, found


def _confirm(chunk: KeyChunk, index: np.ndarray, need: list[int], found: Sequence[PathMatch]
             ) -> KnownRows:
    """Keep the rows found in every group of the row (a match's key is a position in
    ``index``, itself positions in ``chunk``)."""
    first: dict[int, PathMatch] = {}
    groups: dict[int, set[str]] = {}
    for match in found:
        j = match[0]
        if j not in first:
            first[j] = match
            if need[j] > 1:
                groups[j] = {match[1]}
        elif need[j] > 1:
            groups[j].add(match[1])
    keep = sorted(j for j in first if need[j] == 1 or len(groups.get(j, ())) == need[j])
    chosen = [first[j] for j in keep]
    at = pa.array(index[keep] if keep else np.empty(0, np.int64), pa.int64())
    pos = at.to_numpy()
    return KnownRows(
        chunk.rows[pos], chunk.lines[pos], chunk.uid.take(at), chunk.group_id.take(at),
        chunk.image.take(at), pa.array([m[2] for m in chosen], pa.string()),
        pa.array([m[3] for m in chosen], pa.int32()), _uint64([m[4] for m in chosen]),
        _uint64([m[5] for m in chosen]))


def _uint64(values: list[Any]) -> pa.Array:
    """Log ids (int, decimal text or None) as uint64."""
    return pa.array([None if v is None else int(v) for v in values], pa.uint64())


def skip_known(manifest: Manifest, ledger: Ledger, endpoint: str, store: RecordStore,
               run_id: str) -> int:
    """Give every known row not done yet its ``skipped_known`` outcome, written in bulk
    to ``store`` (a RecordStore: one part per batch); returns how many."""
    total = 0
    for found in known_rows(manifest, ledger, endpoint, skip=store.done):
        if len(found):
            store.append_table(skipped_table(run_id, found))
        total += len(found)
    return total


def skipped_table(run_id: str, known: KnownRows, now: datetime | None = None) -> pa.Table:
    """The ``skipped_known`` outcomes of ``known`` (attempts 0; sha256, face count and
    log ids as the ledger recorded them)."""
    now = now or utc_now()
    n = len(known)
    columns: dict[str, Any] = {f.name: pa.nulls(n, f.type) for f in OUTCOME_SCHEMA}
    empty_list = pa.array([[]] * n, pa.list_(pa.string()))
    columns.update(
        run_id=pa.array([run_id] * n, pa.string()), row=pa.array(known.rows, pa.int64()),
        line=pa.array(known.lines, pa.int64()), uid=known.uid, group_id=known.group_id,
        image=known.image, image_sha256=known.image_sha256,
        status=pa.array(["skipped_known"] * n, pa.string()), reasons=empty_list,
        retryable=pa.array(np.zeros(n, bool)), face_count=known.face_count,
        transformed=empty_list, detect_log_id=known.detect_log_id,
        write_log_id=known.write_log_id, attempts=pa.array(np.zeros(n, np.int32)),
        started_at=pa.array([now] * n, pa.timestamp("us", tz="UTC")),
        finished_at=pa.array([now] * n, pa.timestamp("us", tz="UTC")))
    return pa.Table.from_pydict(columns, schema=OUTCOME_SCHEMA)
