"""pipeline.enroll.report and `faceflow report`: summaries from the Parquet outcomes alone."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from jobs.cli import main
from pipeline.enroll.report import active_seconds, latency_of, render_html, summarize
from pipeline.runs.outcomes import OUTCOME_SCHEMA, make_outcome
from pipeline.runs.rundir import ManifestRef, RunDir, RunInfo

T0 = datetime(2026, 11, 25, 1, 0, 0, tzinfo=UTC)


def _rec(row: int, status: str, start_s: float, dur_s: float, **kw):
    start = T0 + timedelta(seconds=start_s)
    return make_outcome(run_id="r1", row=row, status=status, started_at=start,
                        finished_at=start + timedelta(seconds=dur_s), **kw)


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A run of 6 manifest rows, 5 with outcomes, in two sessions an hour apart."""
    Image.new("RGB", (300, 200), (90, 140, 200)).save(tmp_path / "blurry.png")
    rd = RunDir(tmp_path / "run")
    rd.write_info(RunInfo(run_id="r1", job="enroll", created_at=T0.isoformat(),
                          manifest=ManifestRef(str(tmp_path / "m.csv"), "sha256:ab", 6),
                          exit_code=1))
    store = rd.open_store(OUTCOME_SCHEMA, 6, flush_rows=2)
    store.append(_rec(0, "enrolled", 0, 1.0, attempts=2, detect_log_id=1, write_log_id=2))
    store.append(_rec(1, "enrolled", 0.5, 1.0, attempts=4, detect_log_id=1, write_log_id=2))
    store.append(_rec(2, "rejected_quality", 1, 1.0, attempts=1, detect_log_id=3,
                      reasons=("blur", "illumination"), image="blurry.png",
                      face_left=10.0, face_top=10.0, face_width=80.0, face_height=80.0))
    store.append(_rec(3, "failed", 3600, 2.0, attempts=6, retryable=True,
                      reasons=("retries_exhausted",), error_code="216500", detect_log_id=9))
    store.append(_rec(4, "invalid_input", 3601, 0.0, reasons=("duplicate_row",)))
    store.close()
    return rd.path


def test_summary_counts_reasons_and_codes(run: Path) -> None:
    s = summarize(run)
    assert s.counts == (("enrolled", 2), ("rejected_quality", 1), ("invalid_input", 1),
                        ("failed", 1))
    assert s.rows == 5 and s.succeeded == 2 and s.remaining == 1
    assert ("rejected_quality", "blur", 1) in s.reasons
    assert ("invalid_input", "duplicate_row", 1) in s.reasons
    assert s.error_codes == (("216500", 1),)
    assert s.retryable_failed == 1
    assert s.attempts_total == 13 and s.attempts_max == 6
    assert s.rows_retried == 2  # row 1 (4 requests for 2 stages) and row 3 (6 for 1)


def test_throughput_uses_active_time_not_the_gap_between_sessions(run: Path) -> None:
    s = summarize(run)
    # Session 1 covers 0..2 s, session 2 covers 3600..3602 s: 4 s active.
    assert s.active_s == pytest.approx(4.0)
    assert s.rows_per_s == pytest.approx(5 / 4.0)
    assert s.calls_per_s == pytest.approx(13 / 4.0)
    assert s.latency is not None and s.latency.max == pytest.approx(2.0)


def test_active_seconds_merges_overlaps() -> None:
    us = 1_000_000
    starts = np.array([0, 1, 10, 11, 5]) * us
    ends = np.array([3, 2, 12, 11, 6]) * us
    assert active_seconds(starts, ends) == pytest.approx(3 + 1 + 2)
    assert active_seconds(np.array([], dtype=np.int64), np.array([], dtype=np.int64)) == 0


def test_latency_percentiles() -> None:
    lat = latency_of(np.arange(1, 101, dtype=float))
    assert lat is not None and lat.p50 == pytest.approx(50.5) and lat.p99 == pytest.approx(99.01)
    assert latency_of(np.array([])) is None


def test_html_is_self_contained_with_thumbnails(run: Path) -> None:
    html = render_html(run)
    assert "Enrollment run" in html and "<style>" in html
    assert html.count("data:image/jpeg;base64,") == 2  # one image, listed under two reasons
    assert "duplicate_row" in html and "no image" in html
    assert "http://" not in html and "https://" not in html  # nothing fetched from outside


def test_cli_report_json_text_and_html(run: Path, tmp_path: Path) -> None:
    out = CliRunner().invoke(main, ["report", str(run), "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["counts"] == {"enrolled": 2, "rejected_quality": 1, "invalid_input": 1,
                              "failed": 1}
    assert data["remaining"] == 1
    page = tmp_path / "r.html"
    text = CliRunner().invoke(main, ["report", str(run), "--html", str(page)])
    assert text.exit_code == 0 and "rejected_quality" in text.stdout
    assert page.read_text().startswith("<!doctype html>")


def test_cli_report_refuses_a_dir_without_a_run(tmp_path: Path) -> None:
    out = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert out.exit_code == 2 and "holds no run" in out.output
