"""The options of an audit (:class:`AuditConfig`), checked when it is made."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.api.errors import (
    ConfigError,
)
from pipeline.client.budget import check_budget_options
from pipeline.client.config import Settings
from pipeline.postgres import without_password

#: The reference allows at most 5 users per identify.
MAX_TOP_K = 5
_GROUP_RE = re.compile(r"^[A-Za-z0-9_]{1,48}$")

@dataclass(frozen=True)
class AuditConfig:
    """Every option of an audit.

    ``groups``: the group ids searched (identify's list form). ``threshold``: the
    same-person score, 0-100 (>= is the same person, the reference's 80).
    ``top_k``: users per identify, 1-5. ``confirm_photos``: known photos of a
    candidate uid sent with the probe in one confirm match. ``qps``: as for enroll
    (a number, a per-interface mapping, or None for the client's defaults).
    ``run_dir`` None makes ``runs_root/<run_id>``; an existing audit there resumes
    with its saved plan and options. ``scratch_settle_s``: seconds to wait after
    filling the scratch group (the reference: changes take effect after ~5 s).
    """

    settings: Settings
    groups: tuple[str, ...]
    run_dirs: tuple[Path, ...] = ()
    manifest: Path | None = None
    threshold: float = 80.0
    top_k: int = MAX_TOP_K
    concurrency: int = 4
    qps: float | Mapping[str, float] | None = None
    run_dir: Path | None = None
    runs_root: Path = Path("runs")
    before_enroll: bool = False
    confirm_photos: int = 3
    scratch_settle_s: float = 6.0
    flush_rows: int = 500
    flush_seconds: float = 10.0
    report: bool = True
    #: A ledger location: the faces it holds in ``groups`` on this service join the
    #: plan (after the run photos; a (uid, sha256) already there is kept once).
    ledger: str | None = None
    #: ``postgresql://...``: pace from the account's shared budget (--qps is its total).
    qps_budget: str | None = None
    #: The protocol, "v2" or "v3": on v3 identify is search and a confirm match compares
    #: two pictures per call (pipeline/client/v3jobs.py); photos fit v3's limits.
    api: str = "v2"
    #: The text encoding and CSV separator of ``manifest`` (as enroll's --encoding and
    #: --delimiter; None: ',' or ';'/tab when the header says so).
    encoding: str = "utf-8"
    delimiter: str | None = None

    def __post_init__(self) -> None:
        problems = _config_problems(self)
        if problems:
            raise ConfigError("; ".join(problems))
        if self.qps_budget is not None:
            check_budget_options(self.qps_budget, self.qps)

    def options(self) -> dict[str, Any]:
        """The options written into run.json (no settings, no secrets)."""
        qps = dict(self.qps) if isinstance(self.qps, Mapping) else self.qps
        return {"groups": list(self.groups), "threshold": self.threshold, "top_k": self.top_k,
                "concurrency": self.concurrency, "qps": qps,
                "before_enroll": self.before_enroll, "confirm_photos": self.confirm_photos,
                "run_dirs": [str(p) for p in self.run_dirs],
                "manifest": str(self.manifest) if self.manifest else None,
                # No password in run.json: a resume takes it from PGPASSWORD / ~/.pgpass.
                "ledger": without_password(self.ledger) if self.ledger else None,
                "qps_budget": without_password(self.qps_budget) if self.qps_budget else None,
                "api": self.api, "encoding": self.encoding,
                "delimiter": self.delimiter}


def _text_problems(encoding: str, delimiter: str | None) -> list[str]:
    from pipeline.runs.manifest import check_delimiter, check_encoding  # noqa: PLC0415

    try:
        check_encoding(encoding)
        check_delimiter(delimiter)
    except ValueError as exc:
        return [str(exc)]
    return []


def _config_problems(c: AuditConfig) -> list[str]:
    problems = [f"--group {g!r}: use 1-48 letters, digits or underscores"
                for g in c.groups if not _GROUP_RE.match(g)]
    if not c.groups:
        problems.append("give at least one --group to search")
    if len(",".join(c.groups)) > 128 - (49 if c.before_enroll else 0):
        problems.append("the --group list is over 128 bytes (with the scratch group)")
    if not 0 <= c.threshold <= 100:
        problems.append("--threshold is a score from 0 to 100")
    if not 1 <= c.top_k <= MAX_TOP_K:
        problems.append(f"--top-k must be 1 to {MAX_TOP_K} (the reference's limit)")
    if c.concurrency < 1 or c.confirm_photos < 1:
        problems.append("--concurrency and confirm_photos must be at least 1")
    if c.before_enroll and c.manifest is None:
        problems.append("--before-enroll audits a manifest: give --manifest")
    problems += _text_problems(c.encoding, c.delimiter)
    if c.api not in ("v2", "v3"):
        problems.append(f"--api {c.api!r}: use v2 or v3")
    if c.api == "v3" and len(c.groups) + c.before_enroll > 10:
        problems.append("v3 searches at most 10 groups at once (with the scratch group)")
    return problems
