"""``faceflow regate``: re-apply the quality gate to a run's stored detect results."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from jobs.exits import ConfigProblem
from pipeline.api.errors import ConfigError


@click.command(epilog="""\b
Examples:
  faceflow regate runs/20261125T010203Z-3fa9c1 --threshold blur=0.8
  faceflow regate runs/20261125T010203Z-3fa9c1 --thresholds strict.toml --out regate-strict
  faceflow enroll runs/20261125T010203Z-3fa9c1/regate-manifest.csv --ledger ledger.sqlite""")
@click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--thresholds", "thresholds_file", default=None, metavar="FILE",
              type=click.Path(path_type=Path, dir_okay=False),
              help="Quality thresholds (TOML) applied over the run's own.")
@click.option("--threshold", "threshold_pairs", multiple=True, metavar="KEY=VALUE",
              help="Change one threshold, e.g. blur=0.8 or min_face_size=80 (repeatable).")
@click.option("--out", "out_dir", default=None, type=click.Path(path_type=Path, file_okay=False),
              help="Where regate.parquet, regate-manifest.csv and regate.json go "
                   "[default RUN_DIR].")
def regate(run_dir: Path, thresholds_file: Path | None, threshold_pairs: tuple[str, ...],
           out_dir: Path | None) -> None:
    """Judge RUN_DIR's faces again with other thresholds, sending nothing.

    The outcomes hold every input of the gate (box size, pose, blur,
    illumination, completeness, occlusion), so no detect is paid again. Prints,
    per reason, the rows failing before and after; writes regate.parquet, and
    regate-manifest.csv with every row that passes now: enroll it with the
    run's --ledger and only the newly passing rows are sent.
    """
    from jobs.enroll import parse_thresholds  # noqa: PLC0415
    from pipeline.enroll.regate import regate as run_regate  # noqa: PLC0415

    try:
        result = run_regate(run_dir, thresholds_file=thresholds_file,
                            overrides=parse_thresholds(threshold_pairs), out_dir=out_dir)
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from None
    lines = [(f"{verdict}", a, b) for verdict, (a, b) in result.verdicts.items()]
    lines += [(f"  fails {reason}", a, b) for reason, (a, b) in result.reasons.items()]
    width = max(len(name) for name, _, _ in lines)
    click.echo(f"run {result.run_id}: {result.rows} rows\n{'':{width}}  before   after")
    for name, a, b in lines:
        click.echo(f"{name:{width}}  {a:>6}  {b:>6}")
    changes = result.changes
    click.echo(f"newly passing {changes['newly_passing']}, newly failing "
               f"{changes['newly_failing']} (no request was sent)")
    click.echo(f"Rows: {result.parquet}\nSummary: {result.summary}\n"
               f"Passing rows ({result.manifest_rows}), a manifest: {result.manifest}\n"
               f"  enroll it: faceflow enroll {shlex.quote(str(result.manifest))} "
               "--ledger LEDGER")
