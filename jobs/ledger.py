"""``faceflow ledger import`` and ``faceflow ledger stats``."""

from __future__ import annotations

from pathlib import Path

import click

from jobs.exits import ConfigProblem
from pipeline.api.errors import ConfigError
from pipeline.ledger import LEDGER_ENV, open_ledger


def ledger_option(required: bool = False):  # type: ignore[no-untyped-def]
    """``--ledger PATH`` [env FACEFLOW_LEDGER]."""
    return click.option(
        "--ledger", "ledger", envvar=LEDGER_ENV, default=None, required=required,
        metavar="PATH",
        help=f"The ledger of what faceflow enrolled (a SQLite file) [env {LEDGER_ENV}].")


@click.group(epilog="""\b
Examples:
  faceflow ledger import runs/* --ledger ledger.sqlite
  faceflow ledger stats --ledger ledger.sqlite""")
def ledger() -> None:
    """The ledger: a durable record of every face faceflow enrolled (SQLite, WAL).

    Read it with DuckDB: duckdb -c "INSTALL sqlite; LOAD sqlite;
    SELECT * FROM sqlite_scan('ledger.sqlite', 'faces')"
    """


@ledger.command("import", epilog="""\b
Example:
  faceflow ledger import runs/20261125T010203Z-3fa9c1 runs/20261126T010203Z-77b0e2 \\
      --ledger ledger.sqlite""")
@click.argument("run_dirs", nargs=-1, required=True,
                type=click.Path(path_type=Path, file_okay=False, exists=True))
@ledger_option(required=True)
def import_(run_dirs: tuple[Path, ...], ledger: str) -> None:
    """Record the successes of enroll RUN_DIRS in the ledger (created when missing).

    Idempotent: a success already recorded is not recorded again, so importing
    the same directories twice changes nothing. Older runs are applied first.
    """
    from pipeline.ledger.runs import import_runs  # noqa: PLC0415

    try:
        with _open(ledger) as book:
            result = import_runs(book, run_dirs)
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from None
    for run_id, seen, new in result.runs:
        click.echo(f"{run_id}: {seen} successful rows, {new} new ledger entries")
    click.echo(f"{result.recorded} entries recorded in {ledger}")


@ledger.command("stats", epilog="""\b
Example:
  faceflow ledger stats --ledger ledger.sqlite""")
@ledger_option(required=True)
def stats(ledger: str) -> None:
    """Faces and uids held per service and group, and the events recorded."""
    try:
        with _open(ledger) as book:
            lines = book.stats()
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from None
    if not lines:
        click.echo(f"The ledger {ledger} is empty.")
        return
    click.echo(f"ledger {ledger}")
    rows = [("service", "group", "uids", "faces", "last event (UTC)", "events")]
    for s in lines:
        events = ", ".join(f"{k} {v}" for k, v in sorted(s.events.items()))
        rows.append((s.endpoint, s.group_id, str(s.uids), str(s.faces),
                     (s.last_recorded_at or "-")[:19], events))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        cells = [r[i].rjust(widths[i]) if i in (2, 3) else r[i].ljust(widths[i])
                 for i in range(5)]
        click.echo("  ".join(cells) + "  " + r[5])


class _open:
    """``with _open(location) as book``: the ledger, closed at the end."""

    def __init__(self, location: str) -> None:
        self.book = open_ledger(location)

    def __enter__(self):  # type: ignore[no-untyped-def]
        return self.book

    def __exit__(self, *exc: object) -> None:
        self.book.close()
