"""The ledger: a durable record of what faceflow enrolled, on which service.

A nightly enrollment reads a members export that grows by a few rows a night.
With a ledger, rows whose ``(group, uid, image sha256)`` faceflow already
enrolled on that service are not sent again (status ``skipped_known``), every
success is recorded as it happens, and ``faceflow reconcile`` can compare the
service with what was enrolled.

The interface (:class:`~pipeline.ledger.base.Ledger`) is small on purpose so a
second backend (PostgreSQL for the scale-out issue) needs only its few methods;
:func:`open_ledger` picks the backend from the location::

    path/to/ledger.sqlite        -> SqliteLedger (the embedded default)
    sqlite:///abs/path.sqlite    -> SqliteLedger
    postgresql://...             -> PgLedger (shared by hosts; pipeline/ledger/pg.py)

Modules:

- :mod:`pipeline.ledger.base`: the records (:class:`Entry`, :class:`KnownFace`,
  :class:`GroupStats`), the :class:`Ledger` protocol, :func:`endpoint_key`;
- :mod:`pipeline.ledger.sql`: the statements both SQL backends share (dialect
  differences are class attributes and hooks);
- :mod:`pipeline.ledger.sqlite`: the SQLite backend (WAL; survives kill -9; two
  processes may write at once);
- :mod:`pipeline.ledger.pg`: the PostgreSQL backend (shards and hosts share it);
- :mod:`pipeline.ledger.runs`: outcomes -> entries (recording a run, ``ledger
  import``) and the bulk "what is already known" decision for a manifest.
"""

from __future__ import annotations

from pipeline.api.errors import ConfigError
from pipeline.ledger.base import (
    ACTIONS,
    ENROLL_ACTIONS,
    Entry,
    GroupStats,
    KnownFace,
    Ledger,
    endpoint_key,
)

#: Environment variable naming the ledger when ``--ledger`` is not given.
LEDGER_ENV = "FACEFLOW_LEDGER"

__all__ = ["ACTIONS", "ENROLL_ACTIONS", "Entry", "GroupStats", "KnownFace", "LEDGER_ENV",
           "Ledger", "endpoint_key", "open_ledger"]


def open_ledger(location: str) -> Ledger:
    """The ledger at ``location`` (a file path or a URL; see the module docstring).

    A SQLite file and its folder are created when missing. Raises
    :class:`ConfigError` for a location no backend serves or a file that is
    not a ledger.
    """
    text = str(location).strip()
    if not text:
        raise ConfigError("--ledger: give a file path (e.g. ledger.sqlite)")
    scheme, sep, rest = text.partition("://")
    if sep and scheme.lower() in ("postgresql", "postgres"):
        from pipeline.ledger.pg import PgLedger  # noqa: PLC0415

        return PgLedger(text)
    if sep and scheme.lower() != "sqlite":
        raise ConfigError(f"--ledger {text!r}: unknown scheme {scheme!r}; give a file path")
    from pipeline.ledger.sqlite import SqliteLedger  # noqa: PLC0415

    return SqliteLedger(rest if sep else text)
