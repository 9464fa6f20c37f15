"""``faceflow audit``: parse options, run pipeline.audit.job, print progress and the counts."""

from __future__ import annotations

import asyncio
import shlex
import time
from pathlib import Path
from typing import Any

import click

from jobs.enroll import parse_qps
from jobs.exits import config_errors, exit_with
from jobs.options import api_option, connection_options, plural, run_stoppable, settings_from
from pipeline.api.errors import ConfigError
from pipeline.audit.findings import CONFIDENCES, KINDS, ProbeRecord
from pipeline.audit.job import (
    AuditConfig,
    AuditObserver,
    AuditProgress,
    AuditResult,
    AuditStart,
    resume_config,
    run_audit,
)
from pipeline.runs.rundir import RunDir

#: Seconds between progress lines on stderr.
PROGRESS_INTERVAL_S = 10.0
LABELS = {"same_person_multiple_uids": "same person under several uids",
          "multiple_people_one_uid": "several people under one uid",
          "exact_copy": "exact copies (same bytes, different uids)"}


class LineObserver(AuditObserver):
    """Plain progress lines on stderr: phases, then one line every ``interval`` seconds."""

    def __init__(self, interval: float = PROGRESS_INTERVAL_S) -> None:
        self.interval, self._last = interval, time.monotonic()

    def started(self, start: AuditStart) -> None:
        verb = "Resuming audit" if start.resumed else "Audit"
        _err(f"{verb} {start.run_id} -> {start.run_dir}: {start.probes} photos to probe "
             f"({start.already_done} already done), {start.photos} known photos")

    def phase(self, name: str, detail: str) -> None:
        _err(f"{name}: {detail}")

    def probe_done(self, record: ProbeRecord, progress: AuditProgress) -> None:
        if time.monotonic() - self._last >= self.interval:
            self._last = time.monotonic()
            done = progress.already_done + progress.done
            rate = progress.done / progress.elapsed_s if progress.elapsed_s else 0.0
            _err(f"{done}/{progress.total} probes, {rate:.1f}/s, {progress.failed} failed")

    def stopping(self, reason: str, message: str) -> None:
        _err(f"Stopping ({reason}): {message}")


def _err(text: str) -> None:
    click.echo(text, err=True)


def print_result(result: AuditResult, resume_hint: str) -> None:
    """The counts on stdout; where the files are and what to do next on stderr."""
    total = sum(result.counts.values())
    unconfirmed = sum(result.unconfirmed.values())
    apart = f" ({unconfirmed} unconfirmed)" if unconfirmed else ""
    click.echo(f"audit {result.run_id}: {plural(total, 'finding')}{apart} in "
               f"{plural(result.clusters, 'cluster')}; {result.checked}/"
               f"{plural(result.probes, 'probe')} checked, {result.failed} failed")
    for kind in KINDS:
        n, loose = result.counts.get(kind, 0), result.unconfirmed.get(kind, 0)
        if not loose:
            click.echo(f"  {n:6d}  {LABELS[kind]}")
            continue
        click.echo(f"  {n - loose:6d}  {LABELS[kind]}, confirmed by match")
        click.echo(f"  {loose:6d}  {LABELS[kind]}, unconfirmed (identify only: no photo of "
                   "the other uid to match)")
    if total:
        click.echo("  by confidence: " + ", ".join(
            f"{result.confidence.get(c, 0)} {c}" for c in CONFIDENCES)
            + " (act on high; review medium and low: report.html)")
    calls = ", ".join(f"{k} {v}" for k, v in sorted(result.calls.items())) or "none"
    _err(f"API calls this session: {calls} ({result.elapsed_s:.1f} s)")
    _err(f"Findings: {result.findings_path}\nClusters: {result.clusters_path}")
    if result.report_path is not None:
        _err(f"Report: {result.report_path}")
    if result.scratch_failed:
        _err(f"{result.scratch_failed} manifest photos could not be added to the scratch "
             "group: other manifest photos cannot be found as their duplicates.")
    if result.scratch_left:
        _err(f"The scratch group {result.scratch_left} is still in the library; "
             "resume to finish and delete it.")
    if result.stop_reason is not None or result.failed:
        _err(f"Resume (finished probes are not called again):\n  {resume_hint}")


def _config(sources: tuple[Path, ...], manifest: Path | None, groups: tuple[str, ...],
            run_dir: Path | None, settings: Any, options: dict[str, Any]) -> AuditConfig:
    """A new audit, or the resume of the audit in ``run_dir`` when no input is given."""
    ledger = options.pop("ledger", None)
    resuming = not ledger or (run_dir is not None and RunDir(run_dir).exists())
    if run_dir is not None and not sources and manifest is None and resuming:
        if not RunDir(run_dir).exists():
            raise ConfigError(f"{run_dir} holds no audit to resume; give RUN_DIRs or --manifest")
        given = {k: v for k, v in options.items() if v is not None}
        if groups:
            given["groups"] = groups
        return resume_config(run_dir, settings, **given)
    if not sources and manifest is None and not ledger:
        raise ConfigError("nothing to audit: give enrollment RUN_DIRs, --ledger and/or "
                          "--manifest")
    given = {k: v for k, v in options.items() if v is not None}
    return AuditConfig(settings=settings, groups=groups, run_dirs=sources, manifest=manifest,
                       run_dir=run_dir, ledger=ledger, **given)


def _hint(result: AuditResult) -> str:
    return " ".join(shlex.quote(p) for p in
                    ["faceflow", "audit", "--run-dir", str(result.run_dir)])


@click.command(epilog="""\b
Examples:
  faceflow audit runs/20261125T010203Z-3fa9c1 --group staff
  faceflow audit --manifest members.csv --group staff --top-k 3 --qps 5
  faceflow audit --manifest new.csv --group staff --before-enroll
  faceflow audit --group staff --ledger ledger.sqlite
  faceflow audit --manifest new.csv --group staff --before-enroll --api v3
  faceflow audit --run-dir runs/20261126T090000Z-77aa01    # resume""")
@click.argument("sources", nargs=-1, type=click.Path(path_type=Path, file_okay=False,
                                                      exists=True))
@click.option("--manifest", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              default=None, help="Audit the photos of a manifest (CSV, JSONL, Parquet).")
@click.option("--encoding", default=None,
              help="Text encoding of the --manifest, e.g. gb18030 or gbk (Excel on a Chinese "
                   "system), utf-16 [default: utf-8].")
@click.option("--delimiter", default=None, metavar="CHAR",
              help="CSV separator of the --manifest, e.g. ';' or tab [default ',', or ';'/tab "
                   "when the header is separated by it].")
@click.option("--ledger", envvar="FACEFLOW_LEDGER", default=None, metavar="PATH",
              help="Audit the faces the ledger holds in the --group(s) on this service "
                   "[env FACEFLOW_LEDGER].")
@click.option("--group", "groups", multiple=True, metavar="G",
              help="Group to search (repeatable); the first is the manifest's default group.")
@click.option("--threshold", type=click.FloatRange(0, 100), default=None,
              help="Same-person score, 0-100 [default 80, the reference's advice].")
@click.option("--top-k", type=click.IntRange(1, 5), default=None,
              help="Users returned per identify, at most 5 [default 5].")
@click.option("--run-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="The audit's directory [default runs/<run_id>]; an audit there resumes.")
@click.option("--qps", default=None, metavar="N | NAME=N,...",
              help="Calls per second: one number, or per interface, e.g. identify=5,match=5.")
@click.option("--qps-budget", default=None, metavar="postgresql://... | redis://...",
              envvar="FACEFLOW_QPS_BUDGET",
              help="Share one QPS budget (PostgreSQL or Redis) with every process using this "
                   "API key: --qps is then the account's total; unreachable stops the audit "
                   "(exit 3) to resume [env FACEFLOW_QPS_BUDGET].")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="Probes in flight at once [default 4].")
@click.option("--before-enroll", is_flag=True, default=None,
              help="Audit --manifest before enrolling it: against the groups and itself "
                   "(through a scratch group deleted afterwards).")
@click.option("--settle-seconds", "scratch_settle_s", type=click.FloatRange(min=0),
              default=None, help="Wait after filling the scratch group [default 6].")
@click.option("--no-report", "report", flag_value=False, default=None,
              help="Skip report.html.")
@api_option
@connection_options
def audit(sources: tuple[Path, ...], manifest: Path | None, groups: tuple[str, ...],
          run_dir: Path | None, **kwargs: Any) -> None:
    """Find one person enrolled under several uids, several people under one uid, and
    exact copies, in the photos of enrollment RUN_DIRs, a --ledger and/or a --manifest.

    Each photo is searched with identify (top-k users); every other uid over the
    threshold is confirmed with match; each photo of a uid is matched against the
    uid's first photo. Calls grow as n*k, never n^2. Writes findings.parquet,
    clusters.parquet and report.html to the audit's run directory. Exit 0 audit
    completed (findings or not), 1 some probes failed, 2 bad configuration or
    credentials refused before any call, 3 quota, 4 credentials refused mid-run,
    6 run directory not writable (disk full), 130 interrupted.
    """
    settings = settings_from(kwargs)
    options = {"threshold": kwargs.pop("threshold"), "top_k": kwargs.pop("top_k"),
               "qps": parse_qps(kwargs.pop("qps")), "qps_budget": kwargs.pop("qps_budget"),
               "concurrency": kwargs.pop("concurrency"),
               "before_enroll": kwargs.pop("before_enroll"),
               "scratch_settle_s": kwargs.pop("scratch_settle_s"), "report": kwargs.pop("report"),
               "ledger": kwargs.pop("ledger"), "api": kwargs.pop("api"),
               "encoding": kwargs.pop("encoding"), "delimiter": kwargs.pop("delimiter")}
    observer = LineObserver()
    with config_errors():
        config = _config(sources, manifest, groups, run_dir, settings, options)
        result = asyncio.run(run_stoppable(
            lambda stop: run_audit(config, observer=observer, stop=stop)))
    print_result(result, _hint(result))
    exit_with(result)
