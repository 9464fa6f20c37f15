"""The options of an enroll run (:class:`EnrollConfig`), as run.json records them and as a
resumed run or a rerun reads them back (:func:`resume_enroll_config`,
:func:`option_differences`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.api.errors import ConfigError
from pipeline.client.config import Settings
from pipeline.enroll.decide import MODES
from pipeline.postgres import without_password
from pipeline.runs.rundir import RunDir, RunInfo

#: The face API protocols (``--api``): v2, or v3 (the current one; pipeline/client/v3.py).
APIS = ("v2", "v3")
SERVER_QUALITY_LEVELS = ("LOW", "NORMAL", "HIGH")
#: Faces asked of detect: enough to report how many there are, few enough to stay cheap.
MAX_FACE_NUM = 10



@dataclass(frozen=True)
class EnrollConfig:
    """Every option of an enroll run.

    ``qps``: one number limits every interface (calls/s), a mapping limits
    each named interface (``{"detect": 5, "add": 2}``), None uses the client's
    defaults. ``run_dir`` None makes ``runs_root/<run_id>``. ``flush_rows`` and
    ``flush_seconds`` say how often outcomes become a Parquet part.
    """

    manifest: Path
    settings: Settings
    group: str | None = None
    mode: str = "add"
    concurrency: int = 8
    qps: float | Mapping[str, float] | None = None
    run_dir: Path | None = None
    runs_root: Path = Path("runs")
    resume: bool = False
    thresholds_file: Path | None = None
    threshold_overrides: Mapping[str, str] = field(default_factory=dict)
    largest_face: bool = False
    max_face_num: int = MAX_FACE_NUM
    flush_rows: int = 1000
    flush_seconds: float = 10.0
    parent_run_id: str | None = None
    #: When set, images whose real path (symlinks resolved) lies outside this folder
    #: are refused (``outside_manifest_dir``). None: any file the user can read.
    images_root: Path | None = None
    #: A ledger location (pipeline.ledger.open_ledger): rows it holds are not sent
    #: (``skipped_known``) and every success is recorded in it. None: no ledger.
    ledger: str | None = None
    #: Before a write, identify the photo in the row's groups; another uid scoring
    #: >= duplicate_score (confirmed by match) makes the row ``duplicate_suspect``.
    block_duplicates: bool = False
    duplicate_score: float = 80.0
    #: The manifest's text encoding (CSV, JSONL) and CSV separator (None: detected).
    encoding: str = "utf-8"
    delimiter: str | None = None
    #: ``postgresql://...``: pace every process of this account from one shared budget
    #: (pipeline/client/budget.py); ``qps`` is then the account-wide ceiling.
    qps_budget: str | None = None
    #: The protocol: "v2" or "v3" (FACE_TOKEN writes, 48-byte ids, one group per row).
    api: str = "v2"
    #: v3 only: LOW/NORMAL/HIGH sent as ``quality_control`` with each write (the local
    #: gate still decides first and names its reasons).
    server_quality: str | None = None
    #: The resolved quality limits to judge with (``run.json``'s ``thresholds``): a
    #: resumed run keeps its gate even if the thresholds file changed since. None:
    #: load ``thresholds_file`` and ``threshold_overrides``.
    thresholds_values: Mapping[str, Any] | None = None
    #: Resuming with options that differ from the run's is refused (ConfigError listing
    #: them) unless this is set; then they apply from this session on, recorded in run.json.
    change_options: bool = False
    #: ``(k, n)``: this run enrolls shard k (0-based) of n, a contiguous range of rows
    #: (:func:`shard_rows`); recorded in run.json, a resume must give the same split.
    shard: tuple[int, int] | None = None
    #: Seconds without any answer from the service (calls failing for connection
    #: reasons or 5xx) before new rows pause, and how long to keep probing after that
    #: before the run stops with reason "outage" (resume it later).
    outage_after: float = 60.0
    outage_wait: float = 300.0

    def __post_init__(self) -> None:
        from pipeline.client.ratelimit import normalise_qps  # noqa: PLC0415
        from pipeline.runs.manifest import check_delimiter, check_encoding  # noqa: PLC0415

        try:
            check_encoding(self.encoding)
            check_delimiter(self.delimiter)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        normalise_qps(self.qps)  # a mistyped interface name fails now, before any file
        if self.images_root is not None and not self.images_root.is_dir():
            raise ConfigError(f"--images-root {self.images_root}: not a directory")
        if self.mode not in MODES:
            raise ConfigError(f"--mode {self.mode!r}: use one of {', '.join(MODES)}")
        if self.concurrency < 1:
            raise ConfigError("--concurrency must be at least 1")
        if self.api not in APIS:
            raise ConfigError(f"--api {self.api!r}: use v2 or v3 (or set FACEFLOW_API)")
        if self.server_quality is not None and (
                self.api != "v3" or self.server_quality not in SERVER_QUALITY_LEVELS):
            raise ConfigError(f"--server-quality {self.server_quality!r}: use LOW, NORMAL or "
                              "HIGH, with --api v3 (v2 has no quality_control)")
        if self.outage_after <= 0 or self.outage_wait < 0:
            raise ConfigError("--outage-after must be > 0 and --outage-wait >= 0 seconds")
        if self.flush_rows < 1 or self.flush_seconds <= 0:
            raise ConfigError("flush_rows must be >= 1 and flush_seconds > 0")
        if not 0 < self.duplicate_score <= 100:
            raise ConfigError(f"--duplicate-score {self.duplicate_score:g}: use a similarity "
                              "score above 0 and at most 100 (the service's scale; 80 is "
                              "its same-person threshold)")
        if self.shard is not None:
            k, n = self.shard
            if not 0 <= k < n:
                raise ConfigError(f"--shard {k}/{n}: use K/N with 0 <= K < N, e.g. 3/16")
        if self.qps_budget is not None:
            from pipeline.client.budget import check_budget_options  # noqa: PLC0415

            check_budget_options(self.qps_budget, self.qps)

    def options(self) -> dict[str, Any]:
        """The options to write into run.json (no settings, no secrets)."""
        qps = dict(self.qps) if isinstance(self.qps, Mapping) else self.qps
        return {
            "group": self.group, "mode": self.mode, "concurrency": self.concurrency,
            "qps": qps, "largest_face": self.largest_face, "max_face_num": self.max_face_num,
            "thresholds_file": str(self.thresholds_file) if self.thresholds_file else None,
            "threshold_overrides": dict(self.threshold_overrides),
            "flush_rows": self.flush_rows, "flush_seconds": self.flush_seconds,
            "images_root": str(self.images_root) if self.images_root else None,
            # A postgresql:// ledger is written without its password: a resume or rerun
            # takes it from PGPASSWORD or ~/.pgpass (libpq), as the run did if it had none.
            "ledger": without_password(self.ledger) if self.ledger else None,
            # The shared QPS budget, also without its password: a resume (or rerun) that is
            # not given --qps-budget again keeps the account's budget instead of pacing
            # alone at the full --qps beside the other processes.
            "qps_budget": without_password(self.qps_budget) if self.qps_budget else None,
            "block_duplicates": self.block_duplicates,
            "duplicate_score": self.duplicate_score,
            "encoding": self.encoding, "delimiter": self.delimiter,
            "api": self.api, "server_quality": self.server_quality,
            "shard": f"{self.shard[0]}/{self.shard[1]}" if self.shard else None,
            "outage_after": self.outage_after, "outage_wait": self.outage_wait,
        }


#: run.json option -> the flag that sets it (options without a flag keep their name).
_FLAGS = {"group": "--group", "mode": "--mode", "concurrency": "--concurrency", "qps": "--qps",
          "largest_face": "--largest-face", "flush_rows": "--flush-rows",
          "flush_seconds": "--flush-seconds", "images_root": "--images-root",
          "encoding": "--encoding", "delimiter": "--delimiter", "ledger": "--ledger",
          "block_duplicates": "--block-duplicates", "duplicate_score": "--duplicate-score",
          "shard": "--shard", "api": "--api", "server_quality": "--server-quality",
          "outage_after": "--outage-after", "outage_wait": "--outage-wait",
          "qps_budget": "--qps-budget"}
#: Judged through the resolved limits (``thresholds``), not as written.
_THRESHOLD_OPTIONS = ("thresholds_file", "threshold_overrides")


def option_differences(info: RunInfo, options: Mapping[str, Any],
                       limits: Mapping[str, Any] | None) -> list[str]:
    """What ``options`` and ``limits`` (the quality gate's resolved thresholds) change in
    the run of ``info``, one "--flag: X in the run, Y now" each. Options the run did not
    record (older versions) are not compared."""
    out = []
    for key, value in options.items():
        if key in _THRESHOLD_OPTIONS or key not in info.options or info.options[key] == value:
            continue
        if key in ("ledger", "qps_budget") and value and info.options[key] and \
                without_password(str(info.options[key])) == without_password(str(value)):
            continue  # the same URL (a ledger's password was recorded as "***" before)
        out.append(f"{_FLAGS.get(key, key)}: {_shown(info.options[key])} in the run, "
                   f"{_shown(value)} now")
    if info.thresholds is not None and limits is not None:
        for key in sorted(set(info.thresholds) | set(limits)):
            old, new = info.thresholds.get(key), limits.get(key)
            if isinstance(old, Mapping) and isinstance(new, Mapping):
                out += [f"threshold {key}.{part}: {_shown(old.get(part))} in the run, "
                        f"{_shown(new.get(part))} now"
                        for part in sorted(set(old) | set(new)) if old.get(part) != new.get(part)]
            elif old != new:
                out.append(f"threshold {key}: {_shown(old)} in the run, {_shown(new)} now")
    return out


def _shown(value: object) -> str:
    if isinstance(value, Mapping):
        return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in value.items()) or "none"
    if isinstance(value, float):
        return f"{value:g}"
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(
        value)


def resume_enroll_config(run_dir: Path, manifest: Path, settings: Settings,
                         given: Mapping[str, Any], *, resume: bool = False,
                         change_options: bool = False) -> EnrollConfig:
    """The config that continues the enroll run in ``run_dir``: the options and quality
    limits saved in its ``run.json``, with the options in ``given`` (those the user gave
    again) on top; ``resume`` and ``change_options`` as the CLI's flags. Differences between
    ``given`` and the run are refused when the run opens (see :func:`option_differences`).
    """
    info = RunDir(run_dir).read_info()
    if info.job != "enroll":
        raise ConfigError(f"{run_dir} holds a {info.job} run, not an enroll run; choose "
                          "another --run-dir")
    saved = config_options(info.options)
    if info.options.get("shard"):  # "k/n" in run.json
        k, _, n = str(info.options["shard"]).partition("/")
        saved["shard"] = (int(k), int(n))
    values = None if any(k in given for k in _THRESHOLD_OPTIONS) else info.thresholds
    return EnrollConfig(manifest=manifest, settings=settings, run_dir=Path(run_dir),
                        parent_run_id=info.parent_run_id, thresholds_values=values,
                        resume=resume, change_options=change_options, **{**saved, **given})


# -- run.json options ------------------------------------------------------------------


def config_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """EnrollConfig keyword arguments from a run.json ``options`` object."""
    # A rerun's manifest holds only the failed rows: the shard does not carry over.
    allowed = set(EnrollConfig.__dataclass_fields__) - {"manifest", "settings", "run_dir",
                                                        "runs_root", "resume", "parent_run_id",
                                                        "shard"}
    out = {k: v for k, v in options.items() if k in allowed}
    for key in ("thresholds_file", "images_root"):
        if out.get(key):
            out[key] = Path(out[key])
    if out.get("ledger"):  # runs recorded its password as "***"; libpq would send that
        out["ledger"] = without_password(str(out["ledger"]))
    return out
