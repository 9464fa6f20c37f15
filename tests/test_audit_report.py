"""report.html of an audit: self-contained, escaped, one card per finding, small thumbnails."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

from PIL import Image
from support.audit_fixtures import HOSTILE_INFO, HOSTILE_UID, build_audit_dir

from pipeline.audit.job import read_findings


def test_report_has_a_card_per_finding_with_two_photos(tmp_path: Path) -> None:
    run_dir = build_audit_dir(tmp_path)
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    findings = read_findings(run_dir)
    assert sorted(f.kind for f in findings) == [
        "exact_copy", "multiple_people_one_uid", "same_person_multiple_uids"]
    assert html.count('class="card finding"') == len(findings) == 3
    for f in findings:
        assert f'data-kind="{f.kind}"' in html
    # Six photos on three cards, all embedded; the page extends base.html.
    assert len(re.findall(r'<img src="data:image/jpeg;base64,', html)) == 6
    assert "faceflow report page" in html or "One stylesheet for every faceflow" in html


def test_report_is_self_contained_and_escaped(tmp_path: Path) -> None:
    html = (build_audit_dir(tmp_path) / "report.html").read_text(encoding="utf-8")
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', html)
    assert "http://" not in html and "https://" not in html
    assert HOSTILE_UID not in html and HOSTILE_INFO not in html
    assert "&lt;script&gt;" in html and "&lt;img" in html
    assert "fixture-secret-value" not in html


def test_thumbnails_are_small_jpegs(tmp_path: Path) -> None:
    html = (build_audit_dir(tmp_path) / "report.html").read_text(encoding="utf-8")
    for data in re.findall(r'data:image/jpeg;base64,([A-Za-z0-9+/=]+)', html):
        with Image.open(io.BytesIO(base64.b64decode(data))) as img:
            assert img.format == "JPEG" and max(img.size) <= 160
