"""``faceflow report``: summarise a run directory from its Parquet outcomes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from jobs.exits import ConfigProblem, config_errors
from jobs.options import plural
from pipeline.enroll.report import Summary, render_html, summarize
from pipeline.runs.outcomes import SUCCESS_STATUSES


def summary_tables(s: Summary) -> list[Table]:
    """Statuses, reasons and timing as rich tables."""
    state = "" if s.state == "finished" else f"{s.state}, "
    title = f"run {s.run_id}: {state}{s.rows} of {s.manifest_rows} rows have an outcome"
    # min_width: a title wider than the table would be wrapped into the table's width.
    counts = Table(title=title, title_justify="left", min_width=len(title))
    counts.add_column("status")
    counts.add_column("rows", justify="right")
    for status, n in s.counts:
        style = "green" if status in SUCCESS_STATUSES else "red"
        counts.add_row(f"[{style}]{status}[/]", str(n))
    if s.remaining:
        counts.add_row("[yellow]not done yet[/]", str(s.remaining))
    tables = [counts]
    if s.reasons:
        reasons = Table(title="reasons", title_justify="left")
        for col in ("status", "reason", "rows"):
            reasons.add_column(col, justify="right" if col == "rows" else "left")
        for status, reason, n in s.reasons:
            reasons.add_row(status, reason, str(n))
        tables.append(reasons)
    tables.append(_timing(s))
    return tables


def _timing(s: Summary) -> Table:
    timing = Table(title="latency and throughput", title_justify="left")
    timing.add_column("measure")
    timing.add_column("value", justify="right")
    if s.latency:
        lat = s.latency
        timing.add_row("row latency p50 / p90 / p99 (s)",
                       f"{lat.p50:.3f} / {lat.p90:.3f} / {lat.p99:.3f}")
    timing.add_row("requests (max for one row)", f"{s.attempts_total} ({s.attempts_max})")
    timing.add_row("rows that needed retries", str(s.rows_retried))
    timing.add_row("active time (s)", f"{s.active_s:.1f}")
    timing.add_row("rows/s, calls/s", f"{s.rows_per_s:.2f}, {s.calls_per_s:.2f}")
    if s.error_codes:
        timing.add_row("error codes", ", ".join(f"{c}: {n}" for c, n in s.error_codes))
    return timing


@click.command(epilog="""\b
Examples:
  faceflow report runs/20261125T010203Z-3fa9c1
  faceflow report runs/20261125T010203Z-3fa9c1 --html report.html
  faceflow report runs/20261125T010203Z-3fa9c1 --json | jq .counts""")
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--html", "html_path", type=click.Path(path_type=Path, dir_okay=False),
              default=None, help="Also write a self-contained HTML page (thumbnails included).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead.")
def report(run_dir: Path, html_path: Path | None, as_json: bool) -> None:
    """Counts per status and reason, latency percentiles, attempts and throughput of RUN_DIR.

    RUN_DIR may also be an audit run: then the findings are counted and --html
    writes the audit page.
    """
    if _job_of(run_dir) == "audit":
        _report_audit(run_dir, html_path, as_json)
        return
    with config_errors():
        summary = summarize(run_dir)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        console = Console()
        for table in summary_tables(summary):
            console.print(table)
    if html_path is not None:
        _write_html(html_path, lambda: render_html(run_dir, summary))


def _job_of(run_dir: Path) -> str | None:
    from pipeline.runs.rundir import RunDir  # noqa: PLC0415

    rundir = RunDir(run_dir)
    return rundir.read_info().job if rundir.exists() else None


def _report_audit(run_dir: Path, html_path: Path | None, as_json: bool) -> None:
    from pipeline.audit.outputs import read_findings  # noqa: PLC0415
    from pipeline.audit.report import render_audit_html  # noqa: PLC0415

    findings = read_findings(run_dir)
    counts: dict[str, int] = {}
    for finding in findings:
        counts[finding.kind] = counts.get(finding.kind, 0) + 1
    if as_json:
        click.echo(json.dumps({"job": "audit", "findings": len(findings), "counts": counts},
                              indent=2))
    else:
        table = Table(title=f"audit {run_dir.name}: {plural(len(findings), 'finding')}",
                      title_justify="left")
        table.add_column("kind")
        table.add_column("findings", justify="right")
        for kind, n in sorted(counts.items()):
            table.add_row(kind, str(n))
        Console().print(table)
    if html_path is not None:
        _write_html(html_path, lambda: render_audit_html(run_dir))


def _write_html(path: Path, render: Callable[[], str]) -> None:
    """Write the page; a path that cannot be written is one line and exit 2."""
    try:
        path.write_text(render(), encoding="utf-8")
    except OSError as exc:
        raise ConfigProblem(f"cannot write the HTML report to {path}: "
                            f"{exc.strerror or exc}") from None
    click.echo(f"HTML report: {path}", err=True)
