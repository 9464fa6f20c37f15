"""``faceflow merge FOLDER``: combine the shard runs of a sharded enrollment."""

from __future__ import annotations

from pathlib import Path

import click

from jobs.exits import config_errors, exit_code
from pipeline.runs.rundir import RunDir


@click.command(epilog="""\b
Example (16 shards, one per host or per Kubernetes Indexed Job pod):
  faceflow enroll big.csv --group staff --shard 3/16 --run-dir runs/big/shard-03
  ...
  faceflow merge runs/big""")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False, exists=True))
def merge(folder: Path) -> None:
    """Check the shard runs under FOLDER and combine them into one run there.

    Every shard must be an enroll run of the same manifest with the same options and
    split, shards 0..N-1 each once, every row enrolled exactly once. FOLDER then holds
    run.json, outcomes/, failures.csv and report.html for the whole manifest. Exit 0
    when every row succeeded, 1 when some did not, 2 when the shards do not fit together
    (each problem is listed; nothing is written).
    """
    from pipeline.enroll.merge import describe, merge_shards

    with config_errors():
        result = merge_shards(folder)
    for line in describe(result):
        click.echo(line)
    code = exit_code(None, result.failures)
    RunDir(result.folder).update_info(exit_code=code)
    raise SystemExit(code)
