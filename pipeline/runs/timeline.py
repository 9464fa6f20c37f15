"""How a run went, second by second: call counts per interface in ``timeline.parquet``.

The client calls :meth:`CallTimeline.record` with each request's
:class:`~pipeline.client.faceclient.CallRecord` (its ``on_call`` hook: the client's own
accounting, not a second copy of it). Counts are kept per (UTC second,
interface) in a dict, a few bytes per second of the run, and written when the
session ends, merged with what earlier sessions of the run wrote (a resumed run
has one timeline). A session killed with SIGKILL loses its own counts, never
its outcomes.

:func:`timeline_svg` draws the calls per second (accepted vs rejected by a rate
limit, plus timeouts and other errors) per interface, and rows finished per
second from the outcomes, with matplotlib as one inline SVG (text kept as text,
no external file: the report page works offline).
"""

from __future__ import annotations

import io
import math
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TIMELINE_FILE = "timeline.parquet"
#: The counted kinds of call, as :data:`pipeline.client.faceclient.CALL_KINDS`.
KINDS = ("accepted", "rate_limited", "timeout", "error")
TIMELINE_SCHEMA = pa.schema([
    pa.field("second", pa.timestamp("s", tz="UTC"), nullable=False),
    pa.field("interface", pa.string(), nullable=False),
    *(pa.field(kind, pa.int32(), nullable=False) for kind in KINDS),
])

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class CallRecordLike(Protocol):
    """What the timeline reads of a client's CallRecord (runs/ does not import client/)."""

    at: float
    interface: str
    kind: str


class CallTimeline:
    """Per-second call counts of one session; :meth:`record` is the client's hook."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: defaultdict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])

    def record(self, call: CallRecordLike) -> None:
        """Count one request (a CallRecord: ``at``, ``interface``, ``kind``)."""
        kind = KINDS.index(call.kind) if call.kind in KINDS else 3
        self._counts[(int(call.at), call.interface)][kind] += 1

    def __len__(self) -> int:
        return len(self._counts)

    def table(self) -> pa.Table:
        """This session's counts, by second then interface."""
        keys = sorted(self._counts)
        cols: dict[str, Any] = {"second": pa.array([k[0] for k in keys], pa.int64()).cast(
            pa.timestamp("s", tz="UTC")), "interface": [k[1] for k in keys]}
        for i, kind in enumerate(KINDS):
            cols[kind] = pa.array([self._counts[k][i] for k in keys], pa.int32())
        return pa.table(cols, schema=TIMELINE_SCHEMA)

    def save(self, run_dir: Path | str) -> Path | None:
        """Merge into ``<run_dir>/timeline.parquet`` (atomic); None when nothing was counted."""
        if not self._counts:
            return None
        path = Path(run_dir) / TIMELINE_FILE
        table = self.table()
        if path.exists():
            table = pa.concat_tables([read_timeline(path.parent), table])
            summed = table.group_by(["second", "interface"]).aggregate(
                [(kind, "sum") for kind in KINDS])
            table = pa.table({name: summed.column(name if name in ("second", "interface")
                                                  else f"{name}_sum")
                              for name in TIMELINE_SCHEMA.names}).cast(TIMELINE_SCHEMA)
            table = table.sort_by([("second", "ascending"), ("interface", "ascending")])
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        return path


def read_timeline(run_dir: Path | str) -> pa.Table:
    """The run's counts (an empty table when it has none)."""
    path = Path(run_dir) / TIMELINE_FILE
    if not path.exists():
        return TIMELINE_SCHEMA.empty_table()
    return pq.read_table(path, schema=TIMELINE_SCHEMA)


# -- the chart --------------------------------------------------------------------------------

#: Longest run drawn second by second; longer runs are drawn in wider bins.
_MAX_POINTS = 600


def timeline_svg(calls: pa.Table, finished_us: np.ndarray) -> str | None:
    """An SVG chart of calls/s per interface (accepted vs rejected) and rows/s.

    ``calls``: a :data:`TIMELINE_SCHEMA` table; ``finished_us``: the outcomes'
    ``finished_at`` in microseconds. None when there is nothing to draw or
    matplotlib is not installed (``make setup`` installs it).
    """
    if calls.num_rows == 0 and len(finished_us) == 0:
        return None
    try:
        from matplotlib.figure import Figure  # noqa: PLC0415
    except ImportError:
        return None
    seconds = calls.column("second").cast(pa.int64()).to_numpy(zero_copy_only=False)
    rows_s = (finished_us // 1_000_000).astype(np.int64)
    start = int(min(seconds.min(initial=2**62), rows_s.min(initial=2**62)))
    end = int(max(seconds.max(initial=0), rows_s.max(initial=0)))
    width = max(1, math.ceil((end - start + 1) / _MAX_POINTS))  # seconds per bin
    bins = (end - start) // width + 1
    edges = np.arange(bins + 1) * width  # one step per bin, the last one included
    interfaces = sorted(set(calls.column("interface").to_pylist()))
    fig = Figure(figsize=(9, 1.9 * (len(interfaces) + 1)), layout="constrained")
    axes = fig.subplots(len(interfaces) + 1, 1, sharex=True, squeeze=False)[:, 0]
    per = f"/s (mean over {width} s)" if width > 1 else "/s"
    for ax, name in zip(axes, interfaces, strict=False):
        mask = np.asarray(calls.column("interface").to_pylist()) == name
        at = (seconds[mask] - start) // width
        for kind, colour, label in (("accepted", "#1a7f37", "accepted"),
                                    ("rate_limited", "#cf222e", "rejected (4/18)"),
                                    ("timeout", "#9a6700", "timeouts"),
                                    ("error", "#57606a", "other errors")):
            values = calls.column(kind).to_numpy(zero_copy_only=False)[mask]
            series = np.bincount(at, weights=values, minlength=bins)[:bins] / width
            if kind == "accepted" or series.any():
                ax.stairs(series, edges, color=colour, label=label, linewidth=1.2)
        ax.set_ylabel(f"{name} calls{per}", fontsize=8)
        ax.legend(loc="upper right", fontsize=7, frameon=False, ncols=4)
    rows = np.bincount((rows_s - start) // width, minlength=bins)[:bins] / width
    axes[-1].stairs(rows, edges, color="#0969da", linewidth=1.2, fill=True, alpha=0.5)
    axes[-1].set_ylabel(f"rows{per}", fontsize=8)
    axes[-1].set_xlabel("seconds since the run's first call or row", fontsize=8)
    for ax in axes:
        ax.tick_params(labelsize=7)
        ax.set_ylim(bottom=0)
        ax.set_xlim(0, edges[-1])
        ax.grid(alpha=0.3)
    return _svg(fig)


def _svg(fig: Figure) -> str:
    import matplotlib  # noqa: PLC0415

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "faceflow"}):
        fig.savefig(buf, format="svg")
    text = buf.getvalue()
    text = text[text.index("<svg"):]  # drop the XML prolog and doctype: inline in HTML
    # HTML knows inline SVG without namespace declarations; the RDF metadata (date,
    # creator URL) says nothing to a reader.
    text = re.sub(r"\s*<metadata>.*?</metadata>", "", text, count=1, flags=re.S)
    return re.sub(r'\s+xmlns(?::\w+)?="[^"]*"', "", text)
