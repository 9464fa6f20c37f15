"""``faceflow enroll`` and ``faceflow rerun``: parse options, run the enroll job, show progress."""

from __future__ import annotations

import asyncio
import shlex
import sys
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from jobs.exits import ConfigProblem, config_errors, exit_with
from jobs.options import (
    api_option,
    connection_options,
    run_stoppable,
    settings_from,
)
from pipeline.api.errors import ConfigError
from pipeline.client.config import Settings
from pipeline.enroll.config import EnrollConfig, resume_enroll_config
from pipeline.enroll.decide import MODES
from pipeline.enroll.events import EnrollObserver, RunResult, RunStart
from pipeline.enroll.events import Progress as RunProgress
from pipeline.enroll.job import run_enroll
from pipeline.enroll.rerun import RunNotFinishedError, plan_rerun
from pipeline.frame import StopReason
from pipeline.runs.outcomes import STATUSES, SUCCESS_STATUSES, Outcome
from pipeline.runs.rundir import RunDir, new_run_id

#: Seconds between plain progress lines when stderr is not a terminal (cron, CI).
PLAIN_INTERVAL_S = 10.0


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"3/16"`` -> (3, 16); None stays None. Bad text: ConfigProblem (exit 2)."""
    if text is None:
        return None
    k, sep, n = text.partition("/")
    try:
        shard = (int(k), int(n))
    except ValueError:
        shard = None
    if not sep or shard is None or not 0 <= shard[0] < shard[1]:
        raise ConfigProblem(f"--shard {text!r}: use K/N with 0 <= K < N, e.g. --shard 3/16 "
                            "(shards are numbered from 0)")
    return shard


def parse_qps(text: str | None) -> float | dict[str, float] | None:
    """``"5"`` -> 5.0 for every interface; ``"detect=5,add=2"`` -> per interface (calls/s)."""
    if text is None or not text.strip():
        return None
    if "=" not in text:
        return _positive("--qps", text)
    limits: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"{part!r}: write NAME=N, e.g. detect=5,add=2",
                                     param_hint="--qps")
        limits[name.strip()] = _positive(f"--qps {name.strip()}", value)
    return limits


def _positive(what: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a number", param_hint=what) from None
    if not value > 0:
        raise click.BadParameter(f"{text!r} must be above 0 (calls per second)", param_hint=what)
    return value


def parse_thresholds(pairs: tuple[str, ...]) -> dict[str, str]:
    """``("blur=0.5", "occlusion.mouth=0.6")`` -> {key: value}; pipeline.enroll.gate checks them."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise click.BadParameter(f"{pair!r}: write KEY=VALUE, e.g. blur=0.5",
                                     param_hint="--threshold")
        out[key.strip()] = value.strip()
    return out


def _settings(kwargs: dict[str, Any]) -> Settings:
    return settings_from(kwargs)  # missing/bad credentials: ConfigProblem, exit 2


# -- progress on the terminal ------------------------------------------------------------


def _counts_text(counts: Mapping[str, int]) -> str:
    return "  ".join(f"{s} {counts[s]}" for s in STATUSES if counts.get(s))


class ConsoleObserver(EnrollObserver):
    """A rich progress bar on a TTY; a plain line every ``interval`` s otherwise."""

    def __init__(self, console: Console, *, interval: float = PLAIN_INTERVAL_S) -> None:
        self.console, self.interval = console, interval
        self.bar: Progress | None = None
        self.task_id: Any = None
        self._last_line = time.monotonic()
        self._start: RunStart | None = None

    def started(self, start: RunStart) -> None:
        # Said once the service has answered (the first row or tick, the ledger's count,
        # a stop, or the end): an endpoint that is not the service gets one error line.
        self._start = start

    def _show_start(self, bar: bool = True) -> None:
        start, self._start = self._start, None
        if start is None:
            return
        if start.resumed:
            self.console.print(f"Resuming run {start.run_id} in {start.run_dir}: "
                               f"{start.already_done} of {start.total_rows} rows already have an "
                               f"outcome; skipping them.", highlight=False, soft_wrap=True,
                               markup=False)
        else:
            self.console.print(f"Run {start.run_id} -> {start.run_dir} ({start.total_rows} rows)",
                               highlight=False, soft_wrap=True, markup=False)
        if start.delimiter_detected:
            name = {"\t": "tab", ";": "';'"}.get(start.delimiter_detected,
                                                  repr(start.delimiter_detected))
            self.console.print(f"The manifest's header is separated by {name}: reading it "
                               f"with {name} as the separator (--delimiter to choose).",
                               highlight=False, soft_wrap=True, markup=False)
        if start.recovered:
            self.console.print(f"Recovered {start.recovered} outcomes from the journal of an "
                               "interrupted session.", highlight=False, soft_wrap=True,
                               markup=False)
        if bar and self.console.is_terminal:
            self.bar = Progress(TextColumn("enroll"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]} rows/s"), TimeRemainingColumn(),
                                TextColumn("{task.fields[counts]}"), console=self.console,
                                transient=False)
            self.task_id = self.bar.add_task("enroll", total=start.total_rows,
                                             completed=start.already_done, rate="-", counts="")
            self.bar.start()

    def row_done(self, outcome: Outcome, progress: RunProgress) -> None:
        self._show_start()
        if self.bar is not None:
            self._update(progress)

    def tick(self, progress: RunProgress) -> None:
        self._show_start()
        if self.bar is not None:
            self._update(progress)
        elif time.monotonic() - self._last_line >= self.interval:
            self._last_line = time.monotonic()
            done = progress.already_done + progress.done
            rate = progress.done / progress.elapsed_s if progress.elapsed_s else 0.0
            self.console.print(f"{done}/{progress.total_rows} rows, {rate:.1f} rows/s, "
                               f"{progress.in_flight} in flight; {_counts_text(progress.counts)}",
                               highlight=False, soft_wrap=True, markup=False)

    def _update(self, progress: RunProgress) -> None:
        rate = progress.done / progress.elapsed_s if progress.elapsed_s > 0 else 0.0
        assert self.bar is not None
        self.bar.update(self.task_id, completed=progress.already_done + progress.done,
                        rate=f"{rate:.1f}", counts=_counts_text(progress.counts))

    def known_skipped(self, rows: int) -> None:
        self._show_start()
        if rows:
            self.console.print(f"Ledger: {rows} rows are enrolled already (same uid, group and "
                               "file): skipped_known, not sent.", highlight=False,
                               soft_wrap=True)

    def stopping(self, reason: str, message: str) -> None:
        if reason == StopReason.UNREACHABLE:
            self._start = None  # nothing was sent: the error line alone, when the run ends
            return
        self._show_start()
        # escape: service codes in brackets ("[invalid_client] ...") are text, not markup.
        self.console.print(f"[bold yellow]Stopping ({reason}):[/] {escape(message)}; no new "
                           "rows start.", soft_wrap=True)

    def close(self) -> None:
        self._show_start(bar=False)
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def summary_table(result: RunResult) -> Table:
    """Rows per status over the whole run (every session)."""
    table = Table(title=f"run {result.run_id}", title_justify="left")
    table.add_column("status")
    table.add_column("rows", justify="right")
    table.add_column("share", justify="right")
    total = max(1, sum(result.counts.values()))
    for status in STATUSES:
        n = result.counts.get(status, 0)
        if n:
            style = "green" if status in SUCCESS_STATUSES else "red"
            table.add_row(f"[{style}]{status}[/]", str(n), f"{100 * n / total:.0f}%")
    if result.remaining:
        table.add_row("[yellow]not done yet[/]", str(result.remaining), "")
    return table


def print_summary(console: Console, result: RunResult, resume_hint: str) -> None:
    console.print(summary_table(result))
    lines = [f"Outcomes (Parquet): {result.outcomes_dir}",
             f"Failures (a manifest you can rerun): {result.failures_csv}",
             f"Report: faceflow report {shlex.quote(str(result.run_dir))}"]
    if result.stop_reason is not None:
        lines.append(_stop_advice(result, resume_hint))
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True, markup=False)


def _stop_advice(result: RunResult, resume_hint: str) -> str:
    left = f"{result.remaining} rows have no outcome yet"
    what = {
        "quota": "The daily/total request quota is used up (error 17/19). Wait until it "
                 "resets (or raise it in the console), then resume",
        "auth": "The service refused the credentials mid-run. Fix --api-key/--secret-key or "
                "the app's settings, then resume",
        "interrupted": "Interrupted. Outcomes so far are saved; resume",
        "budget": "The shared QPS budget (--qps-budget) could not be reached. Outcomes so "
                  "far are saved; when its store is back, resume",
        "credentials": "The service refused the credentials before any call (nothing was "
                       "sent). Fix --api-key/--secret-key (or FACEFLOW_API_KEY/"
                       "FACEFLOW_SECRET_KEY), then run",
        "outage": "The service answered nothing for longer than --outage-after plus "
                  "--outage-wait. Outcomes so far are saved, no row was failed for it; when "
                  "the service is back, resume",
        "disk": "The run directory could not be written (see above). Outcomes written so "
                "far are kept; free space (or fix the disk), then resume",
    }.get(result.stop_reason or "interrupted", "Stopped. Outcomes so far are saved; resume")
    return f"{what}; {left}:\n  {resume_hint}"


# -- running ---------------------------------------------------------------------------------


def execute(config: EnrollConfig, resume_hint: str, console: Console | None = None) -> RunResult:
    """Run ``config`` with progress on stderr, print the summary; ConfigError -> exit 2."""
    console = console or Console(stderr=True)
    observer = ConsoleObserver(console)
    try:
        with config_errors():
            result = asyncio.run(run_stoppable(
                lambda stop: run_enroll(config, observer=observer, stop=stop)))
    finally:
        observer.close()
    if result.stop_reason == StopReason.UNREACHABLE:  # nothing was sent: one line says why
        console.print(f"Error: {result.stop_message}", highlight=False, soft_wrap=True,
                      markup=False)
        return result
    print_summary(console, result, resume_hint)
    return result


def _resume_hint(config: EnrollConfig, run_dir: Path) -> str:
    """The command that continues the run: its options come from run.json, none repeated."""
    parts = ["faceflow", "enroll", str(config.manifest), "--run-dir", str(run_dir), "--resume"]
    return " ".join(shlex.quote(p) for p in parts)


def _run_options(func: Any) -> Any:
    """Options enroll and rerun share (rerun: each overrides the old run's value)."""
    options = [
        click.option("--concurrency", type=click.IntRange(min=1), default=None,
                     help="Rows in flight at once [default 8]."),
        click.option("--qps", default=None, metavar="N | NAME=N,...",
                     help="Calls per second: one number for every interface, or per "
                          "interface, e.g. detect=10,add=5."),
        click.option("--qps-budget", default=None, metavar="postgresql://... | redis://...",
                     envvar="FACEFLOW_QPS_BUDGET",
                     help="Share one QPS budget with every process using this API key "
                          "(any host), in PostgreSQL or Redis: --qps is then the account's "
                          "total. If the store cannot be reached the run stops (exit 3) to "
                          "be resumed [env FACEFLOW_QPS_BUDGET]."),
        click.option("--thresholds", "thresholds_file", default=None, metavar="FILE",
                     type=click.Path(path_type=Path, dir_okay=False),
                     help="Quality thresholds (TOML) instead of the reference defaults."),
        click.option("--threshold", "threshold_pairs", multiple=True, metavar="KEY=VALUE",
                     help="Override one threshold, e.g. blur=0.5 or occlusion.mouth=0.6 "
                          "(repeatable)."),
        click.option("--largest-face", is_flag=True, default=None,
                     help="With several faces, judge the largest instead of refusing the row."),
        click.option("--images-root", type=click.Path(path_type=Path, file_okay=False),
                     default=None, metavar="DIR",
                     help="Refuse images whose real path is outside DIR (outside_manifest_dir); "
                          "by default any readable file is used."),
        click.option("--ledger", envvar="FACEFLOW_LEDGER", default=None, metavar="PATH",
                     help="The ledger (SQLite file, created when missing) [env FACEFLOW_LEDGER]: "
                          "rows it holds are not sent (skipped_known); successes are "
                          "recorded."),
        click.option("--block-duplicates", is_flag=True, default=None,
                     help="Before each add, identify the photo in its groups: another uid "
                          "at or above --duplicate-score (confirmed by match) makes the row "
                          "duplicate_suspect instead of enrolling it."),
        click.option("--duplicate-score", type=click.FloatRange(min=0, max=100, min_open=True),
                     default=None, metavar="SCORE",
                     help="Similarity (0-100) that blocks a row [default 80]."),
        click.option("--flush-rows", type=click.IntRange(min=1), default=None,
                     help="Write a Parquet part every N outcomes [default 1000]."),
        click.option("--flush-seconds", type=click.FloatRange(min=0.1), default=None,
                     help="... or every S seconds [default 10]."),
        click.option("--outage-after", type=click.FloatRange(min=0, min_open=True),
                     default=None, metavar="SECONDS",
                     help="When the service answers nothing for this long (connections "
                          "failing, 5xx), pause new rows and probe it [default 60]."),
        click.option("--outage-wait", type=click.FloatRange(min=0), default=None,
                     metavar="SECONDS",
                     help="Keep probing this long after pausing; the run resumes by itself "
                          "if the service comes back, else stops (exit 5) to be resumed "
                          "[default 300]."),
        api_option,
        click.option("--server-quality", type=click.Choice(("LOW", "NORMAL", "HIGH")),
                     default=None,
                     help="v3 only: also send quality_control at this level with each write "
                          "(the local quality gate still decides first)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _overrides(kwargs: dict[str, Any]) -> dict[str, Any]:
    """EnrollConfig keywords for the shared options that were given."""
    out: dict[str, Any] = {
        "concurrency": kwargs.pop("concurrency"),
        "qps": parse_qps(kwargs.pop("qps")),
        "qps_budget": kwargs.pop("qps_budget"),
        "thresholds_file": kwargs.pop("thresholds_file"),
        "largest_face": kwargs.pop("largest_face"),
        "flush_rows": kwargs.pop("flush_rows"),
        "images_root": kwargs.pop("images_root"),
        "flush_seconds": kwargs.pop("flush_seconds"),
        "ledger": kwargs.pop("ledger"),
        "block_duplicates": kwargs.pop("block_duplicates"),
        "duplicate_score": kwargs.pop("duplicate_score"),
        "api": kwargs.pop("api"),
        "server_quality": kwargs.pop("server_quality"),
        "outage_after": kwargs.pop("outage_after"),
        "outage_wait": kwargs.pop("outage_wait"),
    }
    pairs = kwargs.pop("threshold_pairs")
    if pairs:
        out["threshold_overrides"] = parse_thresholds(pairs)
    return {k: v for k, v in out.items() if v is not None}


@click.command(epilog="""\b
Examples:
  faceflow enroll members.csv --group staff --endpoint http://127.0.0.1:8480
  faceflow enroll members.csv --group staff --run-dir runs/staff --resume
  faceflow enroll new.parquet --mode upsert --qps detect=10,add=5 --threshold blur=0.5
  faceflow enroll members.csv --group staff --ledger ledger.sqlite --block-duplicates
  FACEFLOW_API=v3 faceflow enroll members.csv --group staff --server-quality NORMAL""")
@click.argument("manifest", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--group", default=None, help="group_id for rows without a group_id column.")
@click.option("--mode", type=click.Choice(MODES), default=None,
              help="add: register (append the face); update: replace the faces of known "
                   "uids; upsert: replace, registering unknown uids. [default: add]")
@click.option("--run-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Where outcomes go [default runs/<run_id>]. The same dir again resumes.")
@click.option("--resume", is_flag=True,
              help="Insist on resuming: refuse a --run-dir that holds no run of MANIFEST.")
@click.option("--shard", default=None, metavar="K/N",
              help="Enroll only shard K (0-based) of N: a contiguous range of rows. Each shard "
                   "is its own resumable run (give each its own --run-dir under one folder); "
                   "`faceflow merge FOLDER` then checks and combines them.")
@click.option("--encoding", default=None,
              help="Text encoding of a CSV/JSONL manifest, e.g. gb18030 or gbk (Excel on a "
                   "Chinese system), utf-16. [default: utf-8]")
@click.option("--delimiter", default=None, metavar="CHAR",
              help="CSV separator, e.g. ';' or tab [default ',', or ';'/tab when the header "
                   "is separated by it].")
@click.option("--change-options", is_flag=True,
              help="On resume: apply options that differ from the run's (recorded in "
                   "run.json) instead of refusing them.")
@_run_options
@connection_options
def enroll(manifest: Path, group: str | None, mode: str | None, run_dir: Path | None,
           resume: bool, shard: str | None, encoding: str | None, delimiter: str | None,
           change_options: bool, **kwargs: Any) -> None:
    """Enroll the faces of MANIFEST (CSV, JSONL or Parquet).

    Columns: image and uid; optionally group_id, user_info, action.

    Each row: read the image, detect with qualities, apply the quality gate, then
    add/update. Outcomes go to RUN_DIR/outcomes/*.parquet, the rows that did not
    succeed to RUN_DIR/failures.csv. Exit 0 all enrolled, 1 some rows failed,
    2 bad configuration or credentials refused before any call (nothing sent), 3 quota
    (or the shared --qps-budget unreachable), 4 credentials refused mid-run, 5 the
    service answered nothing for longer than --outage-after + --outage-wait (resume when
    it is back), 6 run directory not writable mid-run (disk full), 130 interrupted. An
    endpoint that is not the service (nothing listening, no DNS, TLS to a plain port,
    a wrong path) is exit 2 within seconds, with one line naming it and the cause.

    Resuming (the same --run-dir again) reuses the run's options from run.json;
    options given again that differ are refused unless --change-options.
    """
    existing = run_dir is not None and RunDir(run_dir).exists()
    if existing and kwargs.get("endpoint") is None and "FACEFLOW_ENDPOINT" not in _env():
        kwargs["endpoint"] = _old_endpoint(run_dir)  # type: ignore[arg-type]
    settings = _settings(kwargs)
    given = _overrides(kwargs)
    given.update({k: v for k, v in (("group", group), ("mode", mode), ("encoding", encoding),
                                    ("delimiter", delimiter), ("shard", parse_shard(shard)))
                  if v is not None})
    if resume and run_dir is None:
        raise click.UsageError("--resume needs --run-dir (the run directory to resume)")
    with config_errors():
        if existing:  # a resume: the run's own settings, unless given (and then compared)
            assert run_dir is not None
            config = resume_enroll_config(run_dir, manifest, settings, given, resume=resume,
                                          change_options=change_options)
        else:
            config = EnrollConfig(manifest=manifest, settings=settings, run_dir=run_dir,
                                  resume=resume, **given)
    exit_with(_execute_enroll(config))


def _execute_enroll(config: EnrollConfig) -> RunResult:
    # Pick the run dir here so the resume hint (printed on a stop) can name it.
    if config.run_dir is None:
        config = replace(config, run_dir=config.runs_root / new_run_id())
    assert config.run_dir is not None
    return execute(config, _resume_hint(config, config.run_dir))


@click.command(epilog="""\b
Examples:
  faceflow rerun runs/20261125T010203Z-3fa9c1
  faceflow rerun runs/20261125T010203Z-3fa9c1 --all --run-dir runs/retry1""")
@click.argument("old_run_dir", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--all", "include_all", is_flag=True,
              help="Retry every row that did not succeed, not only retryable failures.")
@click.option("--run-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="The new run's directory [default: a new run id next to the old run]. "
                   "The same dir again resumes the rerun.")
@_run_options
@connection_options
def rerun(old_run_dir: Path, include_all: bool, run_dir: Path | None, **kwargs: Any) -> None:
    """Retry the failed rows of OLD_RUN_DIR in a new run linked to it (parent_run_id).

    Retryable failures (timeouts, server errors, rate limits that outlasted the
    retries) by default; --all for every row that did not succeed. The old
    run's options apply unless given again here.
    """
    old_endpoint = _old_endpoint(old_run_dir)
    if kwargs.get("endpoint") is None and old_endpoint and "FACEFLOW_ENDPOINT" not in _env():
        kwargs["endpoint"] = old_endpoint
    settings = _settings(kwargs)
    try:
        config = plan_rerun(old_run_dir, settings, include_all=include_all, run_dir=run_dir,
                            overrides=_overrides(kwargs))
    except RunNotFinishedError as exc:
        resume = " ".join(shlex.quote(p) for p in ["faceflow", "enroll", exc.manifest,
                                                   "--run-dir", str(exc.run_dir), "--resume"])
        raise ConfigProblem(f"{exc}:\n  {resume}") from None
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from None
    if config is None:
        which = "rows that did not succeed" if include_all else "retryable failures"
        click.echo(f"Nothing to rerun: {old_run_dir} has no {which}"
                   f"{'' if include_all else ' (--all retries every failed row)'}.", err=True)
        sys.exit(0)
    assert config.run_dir is not None
    hint = " ".join(shlex.quote(p) for p in ["faceflow", "rerun", str(old_run_dir), "--run-dir",
                                             str(config.run_dir)] + (["--all"] if include_all
                                                                     else []))
    exit_with(execute(config, hint))


def _old_endpoint(old_run_dir: Path) -> str | None:
    with config_errors():
        return str(RunDir(old_run_dir).read_info().settings.get("endpoint") or "") or None


def _env() -> Mapping[str, str]:
    import os  # noqa: PLC0415

    return os.environ
