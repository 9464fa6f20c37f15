"""``faceflow merge FOLDER``: check the shard runs under FOLDER and combine them.

Sharded enrollment (``faceflow enroll big.csv --shard K/N --run-dir FOLDER/shard-KK``)
leaves one ordinary run directory per shard. Merging checks, before writing anything:

* every shard run is an enroll run of the same manifest (same fingerprint) with the same
  options that decide outcomes (group, mode, thresholds, face choice, encoding...);
* all use the same split N, and shards 0..N-1 are each there exactly once;
* every shard finished: its outcomes hold each row of its range exactly once, and no
  row outside it (so together they cover every manifest row exactly once).

Then FOLDER becomes a run directory of the whole manifest: ``run.json`` (a new run id,
the shards' run ids and folders under ``shards``, the counts), ``outcomes/`` (the
shards' Parquet parts, hard-linked when the file system allows, renumbered),
``failures.csv`` (every row that did not succeed, a manifest to rerun) and
``report.html``. ``faceflow report FOLDER`` reads it like any run.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipeline.api.errors import ConfigError
from pipeline.runs.outcomes import OUTCOME_SCHEMA
from pipeline.runs.rundir import RunDir, RunInfo, new_run_id, status_counts, utc_now

#: Options that may differ between shards (pace and batching, not outcomes).
FREE_OPTIONS = frozenset({"shard", "concurrency", "qps", "flush_rows", "flush_seconds",
                          "outage_after", "outage_wait"})
SHARDS_FILE = "shards.json"


@dataclass(frozen=True, slots=True)
class Shard:
    """One shard run: its number, folder and run.json."""

    index: int
    count: int
    rundir: RunDir
    info: RunInfo


@dataclass(frozen=True, slots=True)
class MergeResult:
    run_id: str
    folder: Path
    shards: int
    rows: int
    counts: dict[str, int]
    failures: int
    report: Path


def find_shards(folder: Path) -> list[Shard]:
    """The shard runs directly under ``folder`` (run.json with an ``options.shard``)."""
    shards = []
    for child in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        rundir = RunDir(child)
        if not rundir.exists():
            continue
        info = rundir.read_info()
        text = (info.options or {}).get("shard")
        if info.job != "enroll" or not text:
            continue
        k, n = (int(x) for x in str(text).split("/"))
        shards.append(Shard(k, n, rundir, info))
    return shards


def check_shards(folder: Path, shards: list[Shard]) -> list[str]:
    """Problems that forbid a merge (empty: none). Pure on run.json contents."""
    if not shards:
        return [f"{folder} holds no shard runs (enroll --shard K/N --run-dir {folder}/shard-K)"]
    first = shards[0]
    problems = []
    for s in shards[1:]:
        where = f"{s.rundir.path.name} vs {first.rundir.path.name}"
        if s.info.manifest.fingerprint != first.info.manifest.fingerprint:
            problems.append(f"different manifests ({where}): {s.info.manifest.path} "
                            f"vs {first.info.manifest.path}")
        if s.count != first.count:
            problems.append(f"different splits ({where}): /{s.count} vs /{first.count}")
        differ = sorted(k for k in set(s.info.options) | set(first.info.options)
                        if k not in FREE_OPTIONS
                        and s.info.options.get(k) != first.info.options.get(k))
        if differ:
            problems.append(f"different options ({where}): {', '.join(differ)}")
        if s.info.thresholds != first.info.thresholds:
            problems.append(f"different quality thresholds ({where})")
    seen: dict[int, list[str]] = {}
    for s in shards:
        seen.setdefault(s.index, []).append(s.rundir.path.name)
    for k, names in sorted(seen.items()):
        if len(names) > 1:
            problems.append(f"shard {k}/{first.count} is in {len(names)} folders: "
                            f"{', '.join(names)}")
    missing = [k for k in range(first.count) if k not in seen]
    if missing:
        problems.append(f"missing shards of /{first.count}: "
                        f"{', '.join(str(k) for k in missing[:20])}")
    return problems


def _row_problems(shard: Shard, rows: np.ndarray, num_rows: int) -> list[str]:
    from pipeline.enroll.job import shard_rows  # noqa: PLC0415

    want = shard_rows(num_rows, (shard.index, shard.count))
    name = shard.rundir.path.name
    unique, times = np.unique(rows, return_counts=True)
    problems = []
    outside = unique[(unique < want.start) | (unique >= want.stop)]
    if len(outside):
        problems.append(f"{name}: {len(outside)} outcome(s) of rows outside its range")
    if (times > 1).any():
        problems.append(f"{name}: {int((times > 1).sum())} row(s) with several outcomes")
    inside = unique[(unique >= want.start) & (unique < want.stop)]
    if len(inside) < len(want):
        problems.append(f"{name}: not finished, {len(want) - len(inside)} of {len(want)} rows "
                        f"have no outcome (resume it with the same --shard)")
    return problems


def merge_shards(folder: Path) -> MergeResult:
    """Check and combine the shard runs under ``folder`` (see the module docstring).

    Raises ConfigError listing every problem; nothing is written then.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a folder")
    shards = sorted(find_shards(folder), key=lambda s: s.index)
    problems = check_shards(folder, shards)
    num_rows = shards[0].info.manifest.num_rows if shards else 0
    if not problems:
        for s in shards:
            _hold_check(s)
            rows = s.rundir.read_records(OUTCOME_SCHEMA, ["row"]).column("row").to_numpy()
            problems += _row_problems(s, rows, num_rows)
    if problems:
        raise ConfigError("cannot merge " + str(folder) + ":\n  " + "\n  ".join(problems))
    return _write_parent(folder, shards)


def _hold_check(shard: Shard) -> None:
    # A shard still running holds its folder; merging it would read half its outcomes.
    try:
        shard.rundir.hold()
    except ConfigError as exc:
        raise ConfigError(f"cannot merge: {exc}") from None
    shard.rundir.release()


def _write_parent(folder: Path, shards: list[Shard]) -> MergeResult:
    from pipeline.enroll.failures import write_failures  # noqa: PLC0415
    from pipeline.enroll.report import render_html  # noqa: PLC0415
    from pipeline.runs.manifest import open_manifest  # noqa: PLC0415

    parent = RunDir(folder)
    old = parent.read_info() if parent.exists() else None
    _link_parts(parent, shards)
    counts = status_counts(parent.read_records(OUTCOME_SCHEMA, ["status"]))
    first = shards[0].info
    options = {**first.options, "shard": None,
               "shards": [{"shard": f"{s.index}/{s.count}", "run_id": s.info.run_id,
                           "run_dir": s.rundir.path.name} for s in shards]}
    info = RunInfo(run_id=old.run_id if old else new_run_id(), job="enroll",
                   created_at=old.created_at if old else utc_now().isoformat(),
                   manifest=first.manifest, settings=first.settings, options=options,
                   thresholds=first.thresholds)
    outcomes = sum(counts.values())
    # exit_code is the command's to record (jobs/exits.py), like every run's.
    info = replace(info, finished_at=utc_now().isoformat(), counts=counts,
                   failures_for=outcomes)
    parent.write_info(info)
    manifest = open_manifest(first.manifest.path, default_group=first.options.get("group"),
                             default_action=first.options.get("mode") or "add",
                             encoding=first.options.get("encoding") or "utf-8",
                             delimiter=first.options.get("delimiter"))
    if manifest.fingerprint != first.manifest.fingerprint:
        raise ConfigError(f"{first.manifest.path} changed since the shards ran; "
                          "failures.csv needs the manifest they enrolled")
    failures = write_failures(folder / "failures.csv", manifest, parent)
    report = folder / "report.html"
    report.write_text(render_html(folder), encoding="utf-8")
    return MergeResult(info.run_id, folder, len(shards), outcomes, counts, failures, report)



def _link_parts(parent: RunDir, shards: list[Shard]) -> None:
    """The shards' parts as the parent's ``outcomes/part-NNNNN.parquet`` (fresh each merge)."""
    out = parent.outcomes_dir
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    number = 0
    for s in shards:
        for part in s.rundir.part_paths():
            target = out / f"part-{number:05d}.parquet"
            try:
                os.link(part, target)
            except OSError:
                shutil.copy2(part, target)
            number += 1


def describe(result: MergeResult) -> list[str]:
    """Lines for the terminal."""
    counts = ", ".join(f"{k} {v}" for k, v in sorted(result.counts.items()))
    return [f"merged {result.shards} shards into {result.folder} (run {result.run_id}): "
            f"{result.rows} rows, {counts}",
            f"Failures (a manifest you can rerun): {result.folder / 'failures.csv'} "
            f"({result.failures} rows)",
            f"Report: {result.report}"]
