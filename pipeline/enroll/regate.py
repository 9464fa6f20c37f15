"""Offline re-gating: apply other quality thresholds to a finished run, with zero calls.

The outcomes of an enroll run hold every input of the quality gate for the face
the gate judged: the box (``face_width``/``face_height``, for ``min_face_size``),
pose angles, blur, illumination, completeness, each occlusion part, and the face
count. :func:`regate` judges those numbers again (:func:`pipeline.enroll.gate.
judge_metrics`, the very rules enroll uses) and reports what changes.

Verdicts per row (``new_verdict``):

- ``pass`` / ``fail``: the row reached the gate (detect found a face to judge);
- ``not_judged``: it never did (bad input, no face, several faces without
  ``--largest-face``, a call that failed before detect answered, ``skipped_known``).
  Thresholds cannot change those rows.

``change`` is ``newly_passing`` (failed the gate before, passes now),
``newly_failing`` (the reverse) or ``same``. "Before" is the gate with the run's own
thresholds (from ``run.json``), re-judged here too, so before and after are
computed the same way. The new thresholds are the run's, then the TOML file,
then each ``--threshold``.

Files written to ``out_dir`` (default: the run directory):

- ``regate.parquet``: one row per outcome (:data:`REGATE_SCHEMA`);
- ``regate-manifest.csv``: every row that passes the new gate, as a manifest
  (absolute image paths, a ``group_id`` column). Enrolled with the same
  ``--ledger`` as the run, the rows enrolled before are ``skipped_known`` and
  only the newly passing ones are sent;
- ``regate.json``: the thresholds before and after and the per-reason counts.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pipeline.api.errors import ConfigError
from pipeline.enroll.gate import (
    REASON_ORDER,
    QualityMetrics,
    Thresholds,
    judge_metrics,
    thresholds_from_dict,
)
from pipeline.enroll.thresholds import load_thresholds
from pipeline.runs.outcomes import METRIC_FIELDS, OUTCOME_SCHEMA
from pipeline.runs.rundir import RunDir, write_atomic, write_table_atomic

REGATE_PARQUET = "regate.parquet"
REGATE_MANIFEST = "regate-manifest.csv"
REGATE_JSON = "regate.json"
VERDICTS = ("pass", "fail", "not_judged")
CHANGES = ("newly_passing", "newly_failing", "same")

REGATE_SCHEMA = pa.schema(
    [
        pa.field("row", pa.int64(), nullable=False),
        pa.field("line", pa.int64()),
        pa.field("uid", pa.string()),
        pa.field("group_id", pa.string()),
        pa.field("image", pa.string()),
        pa.field("old_status", pa.string(), nullable=False),
        pa.field("old_reasons", pa.list_(pa.string()), nullable=False),
        pa.field("old_verdict", pa.string(), nullable=False),
        pa.field("new_verdict", pa.string(), nullable=False),
        pa.field("new_reasons", pa.list_(pa.string()), nullable=False),
        pa.field("change", pa.string(), nullable=False),
    ],
    metadata={"faceflow.record": "pipeline.enroll.regate.RegateRow"},
)

if TYPE_CHECKING:
    from pipeline.runs.manifest import Manifest, ManifestRow
    from pipeline.runs.rundir import RunInfo


@dataclass(frozen=True, slots=True)
class RegateRow:
    """One outcome judged again; see the module docstring for the verdicts."""

    row: int
    line: int | None
    uid: str | None
    group_id: str | None
    image: str | None
    old_status: str
    old_reasons: tuple[str, ...]
    old_verdict: str
    new_verdict: str
    new_reasons: tuple[str, ...]
    change: str


@dataclass(frozen=True, slots=True)
class RegateResult:
    """``reasons`` maps a gate reason to (rows failing it before, after);
    ``verdicts`` a verdict to (rows before, after)."""

    run_id: str
    rows: int
    before: Thresholds
    after: Thresholds
    verdicts: Mapping[str, tuple[int, int]]
    reasons: Mapping[str, tuple[int, int]]
    changes: Mapping[str, int]
    manifest_rows: int
    parquet: Path
    manifest: Path
    summary: Path


_QUALITY_ONLY = ("blur", "illumination", "completeness")


def metrics_from_outcome(rec: Mapping[str, Any]) -> tuple[QualityMetrics, bool] | None:
    """The gate's inputs stored in one outcome, and whether the service sent qualities;
    None when the row never reached the gate (no judged face: no box stored)."""
    if rec.get("face_width") is None or rec.get("face_height") is None:
        return None
    values = {name: rec.get(name) for name in METRIC_FIELDS}
    has_qualities = any(rec.get(name) is not None for name in _QUALITY_ONLY)
    return QualityMetrics(face_width=rec["face_width"], face_height=rec["face_height"],
                          **values), has_qualities


def judge_row(rec: Mapping[str, Any], before: Thresholds, after: Thresholds) -> RegateRow:
    """The :class:`RegateRow` of one outcome record (pure)."""
    found = metrics_from_outcome(rec)
    new_reasons: tuple[str, ...] = ()
    if found is None:
        old, new, new_reasons = "not_judged", "not_judged", ()
    else:
        metrics, has_q = found
        was = judge_metrics(metrics, before, has_qualities=has_q)
        now = judge_metrics(metrics, after, has_qualities=has_q)
        old = "pass" if was.passed else "fail"
        new, new_reasons = ("pass" if now.passed else "fail"), now.reasons
    change = ("newly_passing" if (old, new) == ("fail", "pass")
              else "newly_failing" if (old, new) == ("pass", "fail") else "same")
    return RegateRow(rec["row"], rec.get("line"), rec.get("uid"), rec.get("group_id"),
                     rec.get("image"), rec["status"], tuple(rec.get("reasons") or ()),
                     old, new, tuple(new_reasons), change)


def new_thresholds(run_dir: Path, thresholds_file: Path | None,
                   overrides: Mapping[str, str] | None) -> tuple[Any, Thresholds, Thresholds]:
    """(run info, the run's thresholds, the new ones). ConfigError for a bad key or value."""
    info = RunDir(run_dir).read_info()
    if info.job != "enroll":
        raise ConfigError(f"{run_dir} holds a {info.job} run; regate reads enroll runs")
    if thresholds_file is None and not overrides:
        raise ConfigError("regate: give --thresholds FILE or at least one --threshold KEY=VALUE")
    before = thresholds_from_dict(info.thresholds or {})
    after = load_thresholds(thresholds_file, dict(overrides or {}) or None, base=before)
    return info, before, after


def regate(run_dir: Path, *, thresholds_file: Path | None = None,
           overrides: Mapping[str, str] | None = None, out_dir: Path | None = None
           ) -> RegateResult:
    """Judge the outcomes of ``run_dir`` again and write the three files (module docstring).

    Reads only local files; sends nothing. ConfigError (nothing written) for a
    directory without an enroll run, no new threshold, a bad threshold, or a
    manifest that changed since the run (the new manifest copies its rows).
    """
    info, before, after = new_thresholds(run_dir, thresholds_file, overrides)
    rundir = RunDir(run_dir)
    table = rundir.read_records(OUTCOME_SCHEMA).sort_by("row")
    judged = [judge_row(rec, before, after) for rec in table.to_pylist()]
    manifest = _source_manifest(info)
    out = Path(out_dir) if out_dir else Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = (out / REGATE_PARQUET, out / REGATE_MANIFEST, out / REGATE_JSON)
    write_table_atomic(paths[0], pa.Table.from_pylist(
        [_as_dict(r) for r in judged], schema=REGATE_SCHEMA))
    passing = {r.row for r in judged if r.new_verdict == "pass"}
    written = write_manifest(paths[1], manifest, passing)
    result = RegateResult(info.run_id, len(judged), before, after, *_counts(judged), written,
                          *paths)
    write_atomic(paths[2], json.dumps(_summary(result), indent=2).encode("utf-8"))
    return result


def _as_dict(r: RegateRow) -> dict[str, Any]:
    return {name: list(v) if isinstance(v, tuple) else v
            for name in REGATE_SCHEMA.names for v in [getattr(r, name)]}


def _counts(rows: list[RegateRow]) -> tuple[dict[str, tuple[int, int]],
                                             dict[str, tuple[int, int]], dict[str, int]]:
    old = Counter(r.old_verdict for r in rows)
    new = Counter(r.new_verdict for r in rows)
    verdicts = {v: (old[v], new[v]) for v in VERDICTS}
    gate_before = Counter(x for r in rows if r.old_verdict == "fail" for x in r.old_reasons
                          if x in REASON_ORDER)
    gate_after = Counter(x for r in rows for x in r.new_reasons)
    reasons = {x: (gate_before[x], gate_after[x]) for x in REASON_ORDER
               if gate_before[x] or gate_after[x]}
    changes = Counter(r.change for r in rows)
    return verdicts, reasons, {c: changes[c] for c in CHANGES}


def _summary(result: RegateResult) -> dict[str, Any]:
    return {"run_id": result.run_id, "rows": result.rows,
            "thresholds_before": result.before.to_dict(),
            "thresholds_after": result.after.to_dict(),
            "verdicts": {k: {"before": a, "after": b} for k, (a, b) in result.verdicts.items()},
            "reasons": {k: {"before": a, "after": b} for k, (a, b) in result.reasons.items()},
            "changes": dict(result.changes), "manifest_rows": result.manifest_rows}


def _source_manifest(info: RunInfo) -> Manifest:
    from pipeline.runs.manifest import open_manifest  # noqa: PLC0415

    options = info.options or {}
    try:
        manifest = open_manifest(info.manifest.path, default_group=options.get("group"),
                                 default_action=options.get("mode") or "add")
    except ConfigError as exc:
        raise ConfigError(f"the run's manifest cannot be read ({exc}); regate copies its "
                          "rows into the new manifest") from None
    if manifest.fingerprint != info.manifest.fingerprint:
        raise ConfigError(f"{info.manifest.path} changed since run {info.run_id}; regate "
                          "copies the run's rows, so it needs the manifest as it was")
    return manifest


def write_manifest(path: Path, manifest: Manifest, rows: set[int]) -> int:
    """The manifest rows in ``rows`` as a CSV manifest: the original columns with the
    image made absolute, plus ``group_id`` (the row's, defaults applied) when the
    original had none. Header only when ``rows`` is empty. Returns the rows written."""
    group_col = next((c for c in manifest.columns if c.strip().lower() == "group_id"), None)
    columns = list(manifest.columns) + ([] if group_col else ["group_id"])
    tmp = path.with_name(path.name + ".tmp")
    written = 0
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        if rows:
            for batch in manifest.batches(8192, start_row=min(rows)):
                for row in batch:
                    if row.row in rows:
                        writer.writerow(_absolute(row, group_col))
                        written += 1
    tmp.replace(path)
    return written


def _absolute(row: ManifestRow, group_col: str | None) -> dict[str, str]:
    cells = dict(row.columns)
    image_col = next((k for k in cells if k.strip().lower() == "image"), "image")
    cells[image_col] = str(row.image_path)  # absolute; the path a ledger recorded
    cells[group_col or "group_id"] = row.group_id
    return cells
