"""``faceflow engine``: run the local face engine, import its ID-photo registry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from jobs.exits import EXIT_FAILED_ROWS, ConfigProblem
from pipeline.client.config import ENGINE_DEFAULT_PORT


@click.group()
def engine() -> None:
    """The local face engine: the Baidu Face API v2 on 127.0.0.1, built on dlib.

    Credentials it accepts come from FACEFLOW_API_KEY / FACEFLOW_SECRET_KEY, or the
    documented demo pair (faceflow-demo-key / faceflow-demo-secret) when unset.
    """


@engine.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (loopback by default; admin endpoints answer loopback only).")
@click.option("--port", type=int, default=ENGINE_DEFAULT_PORT, show_default=True,
              help="Port; 0 picks a free one (printed on stdout).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("engine-data"), show_default=True,
              help="Folder of the faceset database (created when missing).")
@click.option("--store", "store_url", default=None, metavar="postgresql://...",
              envvar="FACEFLOW_ENGINE_STORE",
              help="Keep the faceset in PostgreSQL + pgvector, shared by every engine started "
                   "on the same URL (instead of --data-dir; run `faceflow engine migrate` "
                   "first). Also FACEFLOW_ENGINE_STORE, which keeps a password out of `ps`.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Model processes (one per core is the most useful).")
@click.option("--store-threads", type=click.IntRange(0, 256), default=16, show_default=True,
              help="With --store: requests served side by side, each on its own thread and "
                   "PostgreSQL connection (0: on the event loop, one connection).")
@click.option("--qps", type=float, default=None, help="Emulated QPS limit per interface (18).")
@click.option("--daily-quota", type=click.IntRange(0), default=None,
              help="Emulated daily calls per interface (17 when spent).")
@click.option("--token-ttl", type=float, default=2592000.0, show_default=True,
              help="Access-token lifetime in seconds.")
@click.option("--detector", type=click.Choice(["hog", "cnn"]), default="hog", show_default=True,
              help="Face detector: HOG (fast) or dlib's CNN (slower, finds more poses).")
@click.option("--model", type=click.Choice(["dlib", "sface"]), default="dlib", show_default=True,
              help="Descriptor model: dlib's ResNet, or OpenCV's YuNet+SFace (faster; needs "
                   "pip install 'faceflow[sface]'). A faceset keeps the model it was "
                   "enrolled with: an engine started with another refuses it.")
@click.option("--fault", "faults", multiple=True, metavar="KIND=RATE",
              help="Inject faults: an error code (4, 18, 216400...), http500, drop or slow, "
                   "with a 0-1 rate; repeatable.")
@click.option("--delay", type=float, default=2.0, show_default=True,
              help="Seconds a 'slow' fault delays the reply.")
@click.option("--seed", type=int, default=None, help="Seed of the fault draws.")
def serve(host: str, port: int, data_dir: Path, store_url: str | None, workers: int,
          store_threads: int, qps: float | None, daily_quota: int | None, token_ttl: float,
          detector: str, model: str, faults: tuple[str, ...], delay: float,
          seed: int | None) -> None:
    """Serve the face API until SIGTERM or Ctrl-C.

    \b
    Examples:
      faceflow engine serve --data-dir ./faceset --port 8480 --workers 2
      faceflow engine serve --store postgresql://faceflow@db/faces --port 8481
      faceflow engine serve --model sface --data-dir ./faceset-sface
    """
    from pipeline.engine.models import ModelUnavailable
    from pipeline.engine.server import ListenError, build_config
    from pipeline.engine.server import serve as run
    from pipeline.postgres import PostgresUnavailable

    _check_store_url(store_url)
    try:
        config = build_config(data_dir, workers=workers, qps=qps, daily_quota=daily_quota,
                              token_ttl=token_ttl, detector=detector,
                              faults=_parse_faults(faults), delay=delay, seed=seed,
                              store_url=store_url, model=model, store_threads=store_threads)
        run(config, host, port)
    except (ValueError, PostgresUnavailable, ListenError, ModelUnavailable) as exc:
        raise ConfigProblem(str(exc)) from None


def _check_store_url(url: str | None) -> None:
    from pipeline.postgres import is_postgres_url

    if url is not None and not is_postgres_url(url):
        raise click.BadParameter("use a postgresql:// URL, e.g. postgresql://user@host/db",
                                 param_hint="--store")


@engine.command()
@click.option("--store", "store_url", required=True, metavar="postgresql://...",
              envvar="FACEFLOW_ENGINE_STORE",
              help="The shared store's database (also FACEFLOW_ENGINE_STORE).")
def migrate(store_url: str) -> None:
    """Create or upgrade the shared store's schema (versioned; safe to run again).

    \b
    Example:
      faceflow engine migrate --store postgresql://faceflow@db/faces
    """
    from pipeline.engine.pgstore import migrate as run
    from pipeline.postgres import PostgresUnavailable, redact

    _check_store_url(store_url)
    try:
        before, after = run(store_url)
    except PostgresUnavailable as exc:
        raise ConfigProblem(str(exc)) from None
    state = "already current" if before == after else f"upgraded from version {before}"
    click.echo(f"engine schema at version {after} ({state}) on {redact(store_url)}")


@engine.command()
@click.option("--store", "store_url", required=True, metavar="postgresql://...",
              envvar="FACEFLOW_ENGINE_STORE",
              help="The shared store's database (also FACEFLOW_ENGINE_STORE).")
@click.option("--group", "groups", multiple=True, metavar="GROUP",
              help="Build this group's index again now, whatever it has (repeatable); "
                   "e.g. after most of its faces were replaced.")
def reindex(store_url: str, groups: tuple[str, ...]) -> None:
    """Build the search indexes of large groups now, instead of at the replicas' next
    look (once a minute): without --group, what they would build (groups that reached
    10,000 faces or doubled since their index); with it, those groups. Searches go on
    meanwhile; a build another replica is running is waited for.

    \b
    Example:
      faceflow engine reindex --store postgresql://faceflow@db/faces --group staff
    """
    from pipeline.engine.pgstore import reindex as run
    from pipeline.postgres import PostgresUnavailable

    _check_store_url(store_url)
    try:
        done = run(store_url, list(groups) or None)
    except (PostgresUnavailable, ValueError) as exc:
        raise ConfigProblem(str(exc)) from None
    if not done:
        click.echo("nothing to build: every group of 10,000+ faces has a current index")
    for r in done:
        if r.index is None:
            click.echo(f"{r.group}: {r.faces:,} faces, not built: {r.skipped}")
        else:
            click.echo(f"{r.group}: {r.faces:,} faces, {r.index.kind} index with "
                       f"{r.index.lists:,} lists built in {r.seconds:g} s")


def _parse_faults(items: tuple[str, ...]) -> dict[str, float]:
    faults = {}
    for item in items:
        kind, _, rate = item.partition("=")
        try:
            faults[kind.strip()] = float(rate)
        except ValueError:
            raise click.BadParameter(f"{item!r}: use KIND=RATE, e.g. 216400=0.05",
                                     param_hint="--fault") from None
    return faults


@engine.command("import-persons")
@click.argument("csv_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("engine-data"), show_default=True,
              help="The engine's data folder (stop the engine or restart it afterwards).")
@click.option("--store", "store_url", default=None, metavar="postgresql://...",
              envvar="FACEFLOW_ENGINE_STORE",
              help="Import into the shared PostgreSQL store instead (every replica sees the "
                   "records at once).")
def import_persons(csv_path: Path, data_dir: Path, store_url: str | None) -> None:
    """Load ID-photo records for person verify from a CSV.

    Columns: id_card_number,name,photo (photo paths relative to the CSV).

    \b
    Example:
      faceflow engine import-persons persons.csv --data-dir ./faceset
    """
    from pipeline.engine.persons import import_persons as run
    from pipeline.postgres import PostgresUnavailable

    _check_store_url(store_url)
    try:
        store = _open_store(store_url, data_dir)
    except PostgresUnavailable as exc:
        raise ConfigProblem(str(exc)) from None
    try:
        report = run(csv_path, store)
    except ValueError as exc:
        raise ConfigProblem(str(exc)) from None
    finally:
        store.close()
    for line, reason in report.refused:
        click.echo(f"line {line}: refused: {reason}", err=True)
    click.echo(f"imported {report.imported} person(s), refused {len(report.refused)}")
    if report.refused:
        raise SystemExit(EXIT_FAILED_ROWS)


def _open_store(store_url: str | None, data_dir: Path) -> Any:
    """The shared PostgreSQL store at ``store_url``, else the SQLite one in ``data_dir``."""
    if store_url:
        from pipeline.engine.pgstore import PgStore

        return PgStore(store_url)
    from pipeline.engine.store import Store

    data_dir.mkdir(parents=True, exist_ok=True)
    return Store(data_dir / "faceset.sqlite3")
