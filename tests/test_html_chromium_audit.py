"""The audit page of a run with Chinese paths, names and long uids, laid out by headless
Chromium (issue 17): captions wrap inside their figure, user_info shows, and a screenshot
is not blank (tests/test_html_chromium.py installs Chromium when it can)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest
from PIL import Image, ImageStat
from support.audit_double import FaceDouble, descriptors, enroll_run, png, variant
from test_html_chromium import FLAGS, chromium  # noqa: F401
from test_html_chromium_enroll import MEASURE, _cjk_font

from pipeline.audit.job import AuditConfig, audit
from pipeline.client.config import Secret, Settings

pytestmark = pytest.mark.chromium
LONG_UID = "zhang_san_" * 8 + "again"


def test_audit_page_with_chinese_paths_in_chromium(chromium: str, tmp_path: Path) -> None:  # noqa: F811
    people = descriptors(3, 7)
    rows = [("zhang_san", png(0, 0), people[0], 0), (LONG_UID, png(0, 1), variant(people[0], 3), 0)]
    name = "人事部照片_" + "非常长的文件夹名字没有空格" * 4
    with FaceDouble(buckets=True) as double:
        run, _ = enroll_run(tmp_path, "staff", rows, double, write_files=True, name=name)
        manifest = tmp_path / "manifest.csv"
        manifest.write_text("image,uid,user_info\n" + "".join(
            f"photos/{name}_{k:06d}.png,{uid},{info}\n"
            for k, (uid, info) in enumerate([("zhang_san", "张三 销售部"),
                                             (LONG_UID, "张三（又一个账号）")])),
            encoding="utf-8")
        info = json.loads((run / "run.json").read_text())
        info["manifest"]["fingerprint"] = ("sha256:"
                                           + hashlib.sha256(manifest.read_bytes()).hexdigest())
        info["options"] = {"group": "staff"}
        (run / "run.json").write_text(json.dumps(info))
        settings = Settings(endpoint=double.url, api_key=Secret("a"), secret_key=Secret("b"))
        result = audit(AuditConfig(settings=settings, groups=("staff",), run_dirs=(run,),
                                   run_dir=tmp_path / "审计"))
    page = result.run_dir / "report.html"
    measured = page.with_name("measured.html")
    measured.write_text(page.read_text(encoding="utf-8").replace("</body>", MEASURE),
                        encoding="utf-8")
    fonts = _cjk_font()
    shot = tmp_path / "audit.png"
    done = subprocess.run([chromium, *FLAGS, f"--user-data-dir={tmp_path / 'p1'}",
                           f"--screenshot={shot}", "--window-size=1200,1200",
                           measured.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.exists(), done.stderr[-2000:]
    with Image.open(shot) as img:
        assert max(ImageStat.Stat(img.convert("RGB")).stddev) > 10
    dom = subprocess.run([chromium, *FLAGS, f"--user-data-dir={tmp_path / 'p2'}",
                          "--window-size=1200,1200", "--dump-dom", measured.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    layout = re.search(r'data-layout="captions (\d+) overflowing (\d+)', dom)
    assert layout, dom[-1500:]
    assert int(layout.group(1)) == 2 and int(layout.group(2)) == 0  # long names wrap
    assert "张三 销售部" in dom and "<b>1</b>finding</div>" in dom
    if not fonts:
        pytest.skip("laid out and checked; no CJK font could be installed for the glyphs")
