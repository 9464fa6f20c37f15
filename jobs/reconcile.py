"""``faceflow reconcile``: compare a group on the service with the ledger."""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from jobs.enroll import ConfigProblem, _settings, parse_qps
from jobs.exits import exit_with
from jobs.ledger import ledger_option
from jobs.options import api_option, connection_options, run_stoppable
from pipeline.api.errors import ConfigError
from pipeline.frame import Stopped
from pipeline.ledger.reconcile import (
    ReconcileConfig,
    ReconcileObserver,
    run_reconcile,
)
from pipeline.runs.rundir import new_run_id


class _Echo(ReconcileObserver):
    def page(self, start: int, users: int) -> None:
        click.echo(f"getGroupUsers start={start}: {users} users", err=True)

    def compared(self, service_users: int, ledger_uids: int, plan: Mapping[str, int]) -> None:
        found = ", ".join(f"{k} {n}" for k, n in plan.items()) or "no difference"
        click.echo(f"service {service_users} uids, ledger {ledger_uids} uids: {found}", err=True)

    def stopping(self, stopped: Stopped) -> None:
        click.echo(f"Stopping ({stopped.reason}): {stopped.message}", err=True)


@click.command(epilog="""\b
Examples:
  faceflow reconcile --group staff --ledger ledger.sqlite
  faceflow reconcile --group staff --ledger ledger.sqlite --check-faces --qps 5
  faceflow enroll runs/<run_id>/repair-manifest.csv --ledger ledger.sqlite""")
@click.option("--group", required=True, help="The group to compare (one group id).")
@ledger_option(required=True)
@click.option("--run-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Where the results go [default runs/<run_id>]. The same dir again resumes.")
@click.option("--page-size", type=click.IntRange(1, 1000), default=1000, show_default=True,
              help="Users per getGroupUsers page.")
@click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True,
              help="Per-uid calls in flight at once.")
@click.option("--qps", default=None, metavar="N | NAME=N,...",
              help="Calls per second: one number for every interface, or per interface.")
@click.option("--check-faces", is_flag=True,
              help="Also verify each common uid with the ledger's latest photo (one verify "
                   "per uid): a score below --score is faces_differ.")
@click.option("--score", type=click.FloatRange(0, 100, min_open=True), default=80.0,
              show_default=True, help="Same-person bound for --check-faces.")
@click.option("--delete-unknown", is_flag=True,
              help="Delete from the group every uid the ledger does not know (recorded). "
                   "Needs --confirm-delete-group with the group again.")
@click.option("--confirm-delete-group", default=None, metavar="GROUP",
              help="The group, typed again, to confirm --delete-unknown.")
@api_option
@connection_options
def reconcile(group: str, ledger: str, run_dir: Path | None, page_size: int, concurrency: int,
              qps: str | None, check_faces: bool, score: float, delete_unknown: bool,
              confirm_delete_group: str | None, **kwargs: Any) -> None:
    """Compare GROUP on the service with what the ledger says faceflow enrolled there.

    Pages through getGroupUsers, then calls getUser per uid that differs. Writes
    RUN_DIR/reconcile.parquet (missing_in_service, unknown_to_ledger,
    faces_differ), summary.json and repair-manifest.csv (the missing uids' photos:
    enroll it with the same --ledger to restore them). Deletes nothing unless
    --delete-unknown --confirm-delete-group GROUP. Exit 0 in sync, 1 differences
    found, 2 bad configuration, 3 quota, 4 credentials refused, 130 interrupted.
    """
    settings = _settings(kwargs)
    try:
        config = ReconcileConfig(group=group, ledger=ledger, settings=settings,
                                 run_dir=run_dir or Path("runs") / new_run_id(),
                                 page_size=page_size, concurrency=concurrency,
                                 qps=parse_qps(qps), check_faces=check_faces, score=score,
                                 delete_unknown=delete_unknown,
                                 confirm_group=confirm_delete_group,
                                 api=kwargs.pop("api", None) or "v2")
        result = asyncio.run(run_stoppable(
            lambda stop: run_reconcile(config, observer=_Echo(), stop=stop)))
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from None
    counts = ", ".join(f"{k} {n}" for k, n in result.counts.items())
    click.echo(f"reconcile {result.run_id}: service {result.service_users} uids, ledger "
               f"{result.ledger_uids} uids; {counts}")
    actions = ", ".join(f"{k} {n}" for k, n in sorted(result.actions.items()))
    if actions:
        click.echo(f"actions: {actions}")
    click.echo(f"Results: {result.parquet}\nSummary: {result.summary}")
    if result.repair_rows:
        click.echo(f"Repair manifest ({result.repair_rows} photos): {result.repair_manifest}\n"
                   f"  restore: faceflow enroll {shlex.quote(str(result.repair_manifest))} "
                   f"--ledger {shlex.quote(ledger)}")
    if result.stopped is not None:
        click.echo(f"Stopped ({result.stopped.reason}); resume: faceflow reconcile --group "
                   f"{group} --ledger {shlex.quote(ledger)} --run-dir "
                   f"{shlex.quote(str(result.run_dir))}", err=True)
    exit_with(result)  # 0 in sync, 1 differences found; records run.json's exit_code
