"""``failures.csv``: the rows of a run that did not succeed, as a manifest to run again
(the original columns, absolute image paths, plus ``status`` and ``reason``)."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.api.errors import (
    ConfigError,
)
from pipeline.runs.outcomes import (
    OUTCOME_SCHEMA,
    SUCCESS_STATUSES,
)
from pipeline.runs.reasons import Status
from pipeline.runs.rundir import (
    RunDir,
)

if TYPE_CHECKING:
    from pipeline.runs.manifest import Manifest, ManifestRow

FAILURES_CSV = "failures.csv"


def _non_success(rundir: RunDir, *, retryable_only: bool = False) -> dict[int, tuple[str, str]]:
    """row -> (status, reasons joined by ';') for the rows that did not succeed."""
    table = rundir.read_records(OUTCOME_SCHEMA, ["row", "status", "reasons", "retryable"])
    out: dict[int, tuple[str, str]] = {}
    for rec in table.to_pylist():
        if rec["status"] in SUCCESS_STATUSES:
            continue
        if retryable_only and not (rec["status"] == Status.FAILED and rec["retryable"]):
            continue
        out[rec["row"]] = (rec["status"], ";".join(rec["reasons"] or ()))
    return out


def info_failures_for(rundir: RunDir) -> int | None:
    """How many outcomes the run's ``failures.csv`` was written from (run.json), or None."""
    try:
        return rundir.read_info().failures_for
    except ConfigError:
        return None


def write_failures(path: Path, manifest: Manifest, rundir: RunDir) -> int:
    """Write ``failures.csv`` (original columns + status + reason); return its row count.

    Image paths are made absolute so the file is a manifest that works from any folder;
    an empty image cell stays empty.
    """
    return write_manifest_rows(path, manifest, _non_success(rundir))


def write_manifest_rows(path: Path, manifest: Manifest, rows: Mapping[int, tuple[str, str]]) -> int:
    """Copy the manifest rows in ``rows`` (row -> (status, reason)) to a CSV manifest.

    Written to a temporary name, then renamed. A header-only file when ``rows`` is empty.
    """
    columns = list(manifest.columns) + [c for c in ("status", "reason")
                                        if c not in manifest.columns]
    image_column = manifest.image_column
    tmp = path.with_name(path.name + ".tmp")
    written = 0
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in _rows_of(manifest, rows):
            status, reason = rows[row.row]
            cells = dict(row.columns)
            if row.image:  # absolute and normalised (row.image_path); empty stays empty
                cells[image_column] = str(row.image_path)
            writer.writerow({**cells, "status": status, "reason": reason})
            written += 1
    tmp.replace(path)
    return written


def _rows_of(manifest: Manifest, wanted: Mapping[int, object]) -> Iterator[ManifestRow]:
    if not wanted:
        return
    last = max(wanted)
    for batch in manifest.batches(start_row=min(wanted)):
        for row in batch:
            if row.row in wanted:
                yield row
        if batch and batch[-1].row >= last:
            return
