"""Summaries of an enroll run, computed from its Parquet outcomes alone, and the HTML page.

:func:`summarize` reads ``<run_dir>/outcomes/*.parquet`` (and ``run.json`` for
the run's identity) and returns a frozen :class:`Summary`: counts per status
and per reason, error codes, latency percentiles, attempts and throughput.

Throughput is measured over *active* time: the union of the rows'
``[started_at, finished_at]`` intervals, so the hours between a stopped
session and its resume do not dilute rows/s. Latency is per row,
``finished_at - started_at`` in seconds (image read, detect, write, retries
and the rate limiter's waits included).

:func:`render_html` turns a Summary into one self-contained page (CSS inline,
thumbnails as base64 JPEG) with the jinja2 templates in ``pipeline/templates``;
``base.html`` holds the layout and CSS for every report page.
"""

from __future__ import annotations

import base64
import io
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import __version__
from pipeline.runs.outcomes import OUTCOME_SCHEMA, STATUSES, SUCCESS_STATUSES
from pipeline.runs.rundir import RunDir, RunInfo

#: Thumbnails per reason in the HTML page shown at once, more behind "show all", and
#: their longest side in pixels. Rows past the two are counted (failures.csv has them).
THUMBS_PER_REASON = 3
THUMBS_MORE = 30
THUMB_PX = 160


@dataclass(frozen=True, slots=True)
class Latency:
    """Seconds per row (finished_at - started_at)."""

    p50: float
    p90: float
    p99: float
    mean: float
    max: float


@dataclass(frozen=True, slots=True)
class Summary:
    """Everything a report shows. Tuples are ordered: statuses in STATUSES order,
    reasons and codes by count, largest first."""

    run_id: str
    parent_run_id: str | None
    manifest: str
    manifest_rows: int
    rows: int  # rows with an outcome
    succeeded: int
    counts: tuple[tuple[str, int], ...]
    reasons: tuple[tuple[str, str, int], ...]  # (status, reason, rows)
    error_codes: tuple[tuple[str, int], ...]
    retryable_failed: int
    latency: Latency | None
    attempts_total: int
    attempts_max: int
    rows_retried: int  # rows that needed more requests than their stages
    active_s: float
    rows_per_s: float
    calls_per_s: float
    first_started: str | None
    last_finished: str | None
    exit_code: int | None
    stop_reason: str | None
    #: "finished", "in progress (pid N)", "stopped (reason)" or "not finished".
    state: str = "finished"
    #: The face API protocol of the run ("v2" or "v3"; runs before v3 were v2).
    api: str = "v2"

    @property
    def remaining(self) -> int:
        return max(0, self.manifest_rows - self.rows)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["counts"] = dict(self.counts)
        out["reasons"] = [{"status": s, "reason": r, "rows": n} for s, r, n in self.reasons]
        out["error_codes"] = dict(self.error_codes)
        out["remaining"] = self.remaining
        return out


def summarize(run_dir: Path | str) -> Summary:
    """The Summary of the run in ``run_dir`` (ConfigError when it holds no run)."""
    rundir = RunDir(run_dir)
    info = rundir.read_info()
    table = rundir.read_records(OUTCOME_SCHEMA)
    journal = rundir.journal_records(OUTCOME_SCHEMA)
    if journal.num_rows:  # a session running now, or killed: its rows count too
        table = pa.concat_tables([table, journal])
    return replace(summarize_table(table, info), state=run_state(rundir, info, table.num_rows))


def run_state(rundir: RunDir, info: RunInfo, rows: int) -> str:
    """``finished``, ``in progress (pid N)``, ``stopped (reason)``, or ``not finished``
    (a session was killed, or never reached its end)."""
    pid = rundir.holder_pid()
    if pid is not None:
        return f"in progress (pid {pid})" if pid > 0 else "in progress"
    if info.stop_reason:
        return f"stopped ({info.stop_reason})"
    if info.finished_at is None or rows < info.manifest.num_rows:
        return "not finished"
    return "finished"


def summarize_table(table: pa.Table, info: RunInfo) -> Summary:
    """The pure part of :func:`summarize`: an outcomes table + run.json -> Summary."""
    counts = _counts(table)
    started = _micros(table, "started_at")
    finished = _micros(table, "finished_at")
    active = active_seconds(started, finished)
    attempts = table.column("attempts").to_numpy(zero_copy_only=False).astype(np.int64)
    return Summary(
        run_id=info.run_id, parent_run_id=info.parent_run_id, manifest=info.manifest.path,
        manifest_rows=info.manifest.num_rows, rows=table.num_rows,
        succeeded=sum(n for s, n in counts if s in SUCCESS_STATUSES), counts=counts,
        reasons=_reasons(table), error_codes=_codes(table),
        retryable_failed=_count(table, pc.and_(pc.equal(table["status"], "failed"),
                                               table["retryable"])),
        latency=latency_of((finished - started) / 1e6),
        attempts_total=int(attempts.sum()), attempts_max=int(attempts.max(initial=0)),
        rows_retried=_rows_retried(table, attempts), active_s=active,
        rows_per_s=table.num_rows / active if active > 0 else 0.0,
        calls_per_s=float(attempts.sum()) / active if active > 0 else 0.0,
        first_started=_iso(started.min()) if len(started) else None,
        last_finished=_iso(finished.max()) if len(finished) else None,
        exit_code=info.exit_code, stop_reason=info.stop_reason,
        api=str((info.options or {}).get("api") or "v2"))


def latency_of(seconds: np.ndarray) -> Latency | None:
    """p50/p90/p99 (linear interpolation), mean and max; None for no rows."""
    if len(seconds) == 0:
        return None
    p50, p90, p99 = np.percentile(seconds, [50, 90, 99])
    return Latency(float(p50), float(p90), float(p99), float(seconds.mean()),
                   float(seconds.max()))


def active_seconds(started_us: np.ndarray, finished_us: np.ndarray) -> float:
    """Length in seconds of the union of the intervals [started, finished] (microseconds)."""
    if len(started_us) == 0:
        return 0.0
    order = np.argsort(started_us, kind="stable")
    starts, ends = started_us[order], np.maximum.accumulate(finished_us[order])
    # A new stretch begins where a row starts after every earlier row has finished.
    gap = np.empty(len(starts), dtype=bool)
    gap[0] = True
    gap[1:] = starts[1:] > ends[:-1]
    first = np.flatnonzero(gap)
    last = np.append(first[1:] - 1, len(starts) - 1)
    return float((ends[last] - starts[first]).sum()) / 1e6


def _micros(table: pa.Table, column: str) -> np.ndarray:
    arr = table.column(column).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
    return arr.to_numpy(zero_copy_only=False)


def _iso(us: int) -> str:
    return datetime.fromtimestamp(int(us) / 1e6, tz=UTC).isoformat(timespec="seconds")


def _count(table: pa.Table, mask: pa.Array | pa.ChunkedArray) -> int:
    return int(pc.sum(pc.cast(mask, pa.int64())).as_py() or 0)


def _counts(table: pa.Table) -> tuple[tuple[str, int], ...]:
    found = {d["values"]: d["counts"] for d in table.column("status").value_counts().to_pylist()}
    return tuple((s, int(found[s])) for s in STATUSES if found.get(s))


def _reasons(table: pa.Table) -> tuple[tuple[str, str, int], ...]:
    flat = table.select(["status", "reasons"]).to_pandas().explode("reasons").dropna()
    if flat.empty:
        return ()
    grouped = flat.groupby(["status", "reasons"]).size().sort_values(ascending=False)
    return tuple((str(s), str(r), int(n)) for (s, r), n in grouped.items())


def _codes(table: pa.Table) -> tuple[tuple[str, int], ...]:
    codes = table.column("error_code").drop_null()
    if len(codes) == 0:
        return ()
    pairs = [(str(d["values"]), int(d["counts"])) for d in codes.value_counts().to_pylist()]
    return tuple(sorted(pairs, key=lambda p: -p[1]))


def _rows_retried(table: pa.Table, attempts: np.ndarray) -> int:
    # A row's stages: detect (1 request) when it had a detect log id, write (1) likewise.
    # More requests than that means retries or a token refresh.
    stages = np.zeros(table.num_rows, dtype=np.int64)
    for column in ("detect_log_id", "write_log_id"):
        stages += table.column(column).is_valid().to_numpy(zero_copy_only=False)
    return int(((attempts > stages) & (stages > 0)).sum())


# -- HTML ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Thumb:
    """A rejected row shown in the page: its image as a data: URL (None if unreadable),
    the face box drawn on it, and each failed check with its value and bound."""

    row: int
    uid: str | None
    image: str | None
    status: str
    reasons: str
    data_url: str | None
    checks: tuple[str, ...] = ()


@dataclass(slots=True)
class ThumbGroup:
    """The rows of one "status: reason", in row order: ``rows`` in all, the first
    ``thumbs`` drawn (THUMBS_PER_REASON shown, the rest behind "show all")."""

    rows: int = 0
    thumbs: list[Thumb] = field(default_factory=list)

    @property
    def first(self) -> list[Thumb]:
        return self.thumbs[:THUMBS_PER_REASON]

    @property
    def more(self) -> list[Thumb]:
        return self.thumbs[THUMBS_PER_REASON:]


def render_html(run_dir: Path | str, summary: Summary | None = None) -> str:
    """The enrollment report page of ``run_dir`` as one self-contained HTML string."""
    from jinja2 import Environment, PackageLoader, select_autoescape  # noqa: PLC0415

    from pipeline.runs.timeline import read_timeline, timeline_svg  # noqa: PLC0415

    rundir = RunDir(run_dir)
    summary = summary or summarize(rundir.path)
    env = Environment(loader=PackageLoader("pipeline", "templates"),
                      autoescape=select_autoescape(["html"]))
    template = env.get_template("enroll.html")
    counts = dict(summary.counts)
    finished = _micros(rundir.read_records(OUTCOME_SCHEMA, ["finished_at"]), "finished_at")
    return template.render(s=summary, thumbs=_thumbs(rundir, summary), version=__version__,
                           success=SUCCESS_STATUSES,
                           timeline=timeline_svg(read_timeline(rundir.path), finished),
                           skipped_known=counts.get("skipped_known", 0),
                           duplicates=duplicate_rows(rundir, summary),
                           duplicates_total=counts.get("duplicate_suspect", 0))


#: Duplicate suspects listed one by one in the page (the count shows them all).
DUPLICATES_SHOWN = 100


@dataclass(frozen=True, slots=True)
class DuplicateRow:
    """A ``duplicate_suspect`` row: the photo and the uid that already holds the face."""

    row: int
    uid: str | None
    group_id: str | None
    image: str | None
    other_uid: str | None
    other_group_id: str | None
    score: float | None
    confirmed: bool
    identify_log_id: int | None
    match_log_id: int | None
    data_url: str | None


def duplicate_rows(rundir: RunDir, summary: Summary, limit: int = DUPLICATES_SHOWN
                   ) -> list[DuplicateRow]:
    """The first ``limit`` duplicate suspects of the run, in row order, with thumbnails."""
    columns = ["row", "uid", "group_id", "image", "status", "reasons", "duplicate_uid",
               "duplicate_group_id", "duplicate_score", "identify_log_id", "match_log_id",
               "transformed", *_BOX]
    table = rundir.read_records(OUTCOME_SCHEMA, columns)
    table = table.filter(pc.equal(table["status"], "duplicate_suspect")).sort_by("row")
    base = Path(summary.manifest).parent
    return [DuplicateRow(rec["row"], rec["uid"], rec["group_id"], rec["image"],
                         rec["duplicate_uid"], rec["duplicate_group_id"], rec["duplicate_score"],
                         "not_confirmed" not in (rec["reasons"] or []), rec["identify_log_id"],
                         rec["match_log_id"], _thumbnail(base, rec))
            for rec in table.slice(0, limit).to_pylist()]


def _thumbs(rundir: RunDir, summary: Summary) -> dict[str, ThumbGroup]:
    """Non-success rows per reason, keyed by "status: reason", in row order: each
    group counts its rows and draws up to THUMBS_PER_REASON + THUMBS_MORE of them."""
    from pipeline.enroll.gate import METRIC_KEYS, failed_checks, thresholds_from_dict  # noqa: PLC0415

    table = rundir.read_records(OUTCOME_SCHEMA, [*_COLUMNS, *METRIC_KEYS])
    table = table.filter(pc.invert(pc.is_in(table["status"], pa.array(SUCCESS_STATUSES))))
    table = table.sort_by("row")
    limits = thresholds_from_dict(rundir.read_info().thresholds or {})
    base = Path(summary.manifest).parent
    out: dict[str, ThumbGroup] = {}
    for rec in table.to_pylist():
        for reason in rec["reasons"] or [rec["status"]]:
            group = out.setdefault(f"{rec['status']}: {reason}", ThumbGroup())
            group.rows += 1
            if len(group.thumbs) < THUMBS_PER_REASON + THUMBS_MORE:
                checks = tuple(failed_checks(rec["reasons"] or (), rec, limits))
                group.thumbs.append(Thumb(rec["row"], rec["uid"], rec["image"], rec["status"],
                                          "; ".join(rec["reasons"]), _thumbnail(base, rec),
                                          checks))
    return out


_BOX = ["face_left", "face_top", "face_width", "face_height"]
_COLUMNS = ["row", "uid", "image", "status", "reasons", "transformed", *_BOX]


def _thumbnail(base: Path, rec: dict[str, Any]) -> str | None:
    """A small JPEG data: URL of the row's image, the face box drawn when known."""
    if not rec["image"]:
        return None
    path = Path(rec["image"])
    path = path if path.is_absolute() else base / path
    # The box is in the coordinates of the image that was sent: only draw it on the file
    # itself when that was sent as is.
    known = None not in [rec[k] for k in _BOX] and not rec["transformed"]
    box = tuple(float(rec[k]) for k in _BOX) if known else None
    return thumbnail(path, THUMB_PX, box=box)


def thumbnail(path: Path, size: int = THUMB_PX, *, quality: int = 70,
              box: tuple[float, ...] | None = None) -> str | None:
    """A JPEG ``data:`` URL of the image, longest side at most ``size`` px; None if unreadable.

    ``box`` (left, top, width, height in the file's pixels) is drawn in red when given.
    """
    from PIL import Image, ImageDraw, ImageOps  # noqa: PLC0415

    try:
        with Image.open(path) as opened:
            if box is None:
                opened.draft("RGB", (size * 2, size * 2))  # JPEG: decode at a reduced scale
            img = ImageOps.exif_transpose(opened).convert("RGB")
            if box is not None:
                left, top, width, height = box
                line = max(2, round(max(img.size) / 150))
                ImageDraw.Draw(img).rectangle((left, top, left + width, top + height),
                                              outline=(230, 40, 40), width=line)
            img.thumbnail((size, size))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=quality)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
