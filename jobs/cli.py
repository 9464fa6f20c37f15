"""The ``faceflow`` command group.

Subcommands live one per module in ``jobs/`` and are imported only when used,
so ``faceflow --help`` starts fast and never loads dlib or pandas.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys

import click

from pipeline import __version__

#: name -> ("module:attribute", one-line help shown by ``faceflow --help``)
COMMANDS: dict[str, tuple[str, str]] = {
    "enroll": ("jobs.enroll:enroll", "Enroll the faces of a manifest (detect, quality gate, add)."),
    "rerun": ("jobs.enroll:rerun", "Retry the failed rows of a run, in a new linked run."),
    "merge": ("jobs.merge:merge", "Check the shard runs of a folder and combine them into one."),
    "report": ("jobs.report:report", "Summarise a run directory (counts, reasons, latency, HTML)."),
    "ledger": ("jobs.ledger:ledger", "Import run directories into the ledger; counts per group."),
    "reconcile": ("jobs.reconcile:reconcile",
                  "Compare a group on the service with the ledger; repair manifest."),
    "regate": ("jobs.regate:regate", "Re-apply the quality gate to a run's outcomes (no calls)."),
    "audit": ("jobs.audit:audit", "Find one person under several uids, or several under one."),
    "engine": ("jobs.engine:engine", "Run the local face engine (the Baidu v2 API on dlib)."),
    "demo-scale": ("jobs.demo_scale:demo_scale",
                   "PostgreSQL, two engine replicas, two shards on one QPS budget, merge."),
    "demo": ("jobs.demo:demo", "Enroll sample photos and degraded variants on the local engine."),
}


class LazyGroup(click.Group):
    """A group whose commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, (target, _) in COMMANDS.items() if _available(target)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None or not _available(entry[0]):
            return None
        module_name, attr = entry[0].split(":")
        command = getattr(importlib.import_module(module_name), attr)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _available(target: str) -> bool:
    return importlib.util.find_spec(target.split(":")[0]) is not None


@click.group(
    cls=LazyGroup,
    epilog="""\b
Examples:
  faceflow engine serve --data-dir ./faceset &
  faceflow enroll members.csv --group staff --endpoint http://127.0.0.1:8480
  faceflow rerun runs/20261125T010203Z-3fa9c1
  faceflow report runs/20261125T010203Z-3fa9c1 --html report.html
  faceflow audit runs/20261125T010203Z-3fa9c1 --group staff""",
)
@click.version_option(__version__, prog_name="faceflow")
@click.option("-v", "--verbose", count=True, help="More log lines on stderr (-vv for debug).")
def main(verbose: int) -> None:
    """faceflow: bulk face enrollment and duplicate audits for the Baidu Face API v2.

    Credentials come from --api-key/--secret-key or FACEFLOW_API_KEY and
    FACEFLOW_SECRET_KEY; the service from --endpoint or FACEFLOW_ENDPOINT.
    """
    configure_logging(verbose)


#: Loggers -v/-vv turn up: faceflow's own. Third-party libraries (PIL's EXIF parser,
#: asyncio, aiohttp) stay at WARNING, so -vv shows one line per API call, not their debug.
OWN_LOGGERS = ("faceflow", "pipeline", "jobs")


def configure_logging(verbose: int) -> None:
    """WARNING by default; -v INFO and -vv DEBUG for faceflow's loggers only."""
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose:  # without -v the loggers keep their level (WARNING, from the root)
        level = logging.WARNING - 10 * min(verbose, 2)
        for name in OWN_LOGGERS:
            logging.getLogger(name).setLevel(level)


if __name__ == "__main__":
    main()
