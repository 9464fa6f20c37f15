"""``faceflow rerun``: a new run of an old run's failed rows, linked by ``parent_run_id``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.api.errors import ConfigError
from pipeline.client.config import Settings
from pipeline.enroll.config import EnrollConfig, config_options
from pipeline.enroll.failures import FAILURES_CSV, _non_success, write_manifest_rows
from pipeline.runs.outcomes import OUTCOME_SCHEMA
from pipeline.runs.rundir import RunDir, RunInfo, new_run_id

RERUN_MANIFEST = "rerun-manifest.csv"


class RunNotFinishedError(ConfigError):
    """A rerun of a run that has rows without an outcome: resume that run first."""

    def __init__(self, run_dir: Path, manifest: str, rows: int, total: int, state: str) -> None:
        self.run_dir, self.manifest, self.rows, self.total, self.state = (
            run_dir, manifest, rows, total, state)
        super().__init__(f"{run_dir} is {state}: {rows} of {total} rows have an outcome. "
                         "Resume it first (its failures are known only when every row has "
                         "one), then rerun")


def _check_finished(old: RunDir, info: RunInfo) -> None:
    from pipeline.enroll.report import run_state  # noqa: PLC0415

    rows = old.read_records(OUTCOME_SCHEMA, ["row"]).num_rows
    rows += old.journal_records(OUTCOME_SCHEMA).num_rows
    state = run_state(old, info, rows)
    if state != "finished":
        raise RunNotFinishedError(old.path, info.manifest.path, rows, info.manifest.num_rows,
                                  state)


def plan_rerun(
    old_run_dir: Path,
    settings: Settings,
    *,
    include_all: bool = False,
    run_dir: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> EnrollConfig | None:
    """The config of a rerun of ``old_run_dir``'s failed rows, or None when none qualify.

    By default only rows that failed with a retryable error; ``include_all``
    takes every row that did not succeed. The rows are copied (absolute image
    paths) to ``<new run dir>/rerun-manifest.csv``; the new run links to the old
    one through ``parent_run_id`` and uses its options unless ``overrides`` says
    otherwise. The new run dir defaults to a new run id next to the old run.
    """
    from pipeline.runs.manifest import open_manifest  # noqa: PLC0415

    old = RunDir(old_run_dir)
    info = old.read_info()
    options = {**config_options(info.options), **(overrides or {})}
    target = Path(run_dir) if run_dir else old.path.parent / new_run_id()
    manifest_path = target / RERUN_MANIFEST
    if not (RunDir(target).exists() and manifest_path.exists()):  # else: resume that rerun
        _check_finished(old, info)
        rows = _non_success(old, retryable_only=not include_all)
        if not rows:
            return None
        source = open_manifest(info.manifest.path, default_group=options.get("group"),
                               default_action=options.get("mode", "add"),
                               encoding=options.get("encoding") or "utf-8",
                               delimiter=options.get("delimiter"))
        if source.fingerprint != info.manifest.fingerprint:
            raise ConfigError(f"{info.manifest.path} changed since run {info.run_id}; "
                              f"rerun from {old.path / FAILURES_CSV} with enroll instead")
        target.mkdir(parents=True, exist_ok=True)
        write_manifest_rows(manifest_path, source, rows)
    # The rerun manifest is written as UTF-8 with commas, whatever the original was.
    options.update(encoding="utf-8", delimiter=",")
    return EnrollConfig(manifest=manifest_path, settings=settings, run_dir=target,
                        parent_run_id=info.run_id, **options)
