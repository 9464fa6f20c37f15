"""The enroll report of a run with Chinese paths and long names, laid out by headless
Chromium (issue 17): captions wrap inside their figure, the timeline SVG is drawn, and a
screenshot is not blank. Chinese glyphs need a CJK font: the test installs Debian's
``fonts-wqy-microhei`` with Chromium when it can (see tests/test_html_chromium.py)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image, ImageStat
from support.doubles import FACE, ProtocolDouble, double  # noqa: F401
from test_html_chromium import CHROMIUM, FLAGS, chromium  # noqa: F401
from test_report_pages import _manifest, _photos

from pipeline.enroll.job import EnrollConfig, run_enroll
from pipeline.enroll.report import render_html

pytestmark = pytest.mark.chromium

#: Measures the laid-out page and writes the figures into <body data-layout="...">.
MEASURE = """<script>
window.addEventListener("load", function () {
  var caps = document.querySelectorAll("figcaption"), over = 0;
  caps.forEach(function (c) { if (c.scrollWidth > c.clientWidth + 1) over++; });
  var svg = document.querySelector("#timeline svg"), box = svg ? svg.getBoundingClientRect()
    : {width: 0, height: 0};
  document.body.setAttribute("data-layout", "captions " + caps.length + " overflowing " + over
    + " svg " + Math.round(box.width) + "x" + Math.round(box.height));
});
</script></body>"""


def _cjk_font() -> bool:
    if shutil.which("fc-list") and subprocess.run(["fc-list", ":lang=zh"], capture_output=True,
                                                  text=True).stdout.strip():
        return True
    install = ["apt-get", "install", "-y", "--no-install-recommends", "fonts-wqy-microhei"]
    try:
        return subprocess.run(install, capture_output=True, timeout=600).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _turned(_: object) -> dict[str, object]:
    return {"result_num": 1, "result": [{**FACE, "yaw": 27.14}]}


async def test_enroll_page_with_chinese_paths_in_chromium(
        chromium: str, double: ProtocolDouble, tmp_path: Path) -> None:  # noqa: F811
    long = "员工照片_" + "非常长的文件名没有空格" * 6 + "_{}.jpg"
    manifest = _manifest(tmp_path / "m.csv", _photos(tmp_path / "人事部", 5, long))
    double.default("detect", _turned)
    await run_enroll(EnrollConfig(manifest=manifest, settings=double.settings(), group="g",
                                  run_dir=tmp_path / "run"))
    folder = tmp_path / "报告"
    folder.mkdir()
    page = folder / "运行报告.html"
    page.write_text(render_html(tmp_path / "run").replace("</body>", MEASURE), encoding="utf-8")
    fonts = _cjk_font()
    shot = tmp_path / "enroll.png"
    done = subprocess.run([chromium, *FLAGS, f"--user-data-dir={tmp_path / 'p1'}",
                           f"--screenshot={shot}", "--window-size=1200,1600",
                           page.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.exists(), done.stderr[-2000:]
    with Image.open(shot) as img:
        rgb = img.convert("RGB")
        assert len(rgb.getcolors(maxcolors=1_000_000) or []) > 50
        assert max(ImageStat.Stat(rgb).stddev) > 10
    dom = subprocess.run([chromium, *FLAGS, f"--user-data-dir={tmp_path / 'p2'}",
                          "--window-size=1200,1600", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    layout = re.search(r'data-layout="captions (\d+) overflowing (\d+) svg (\d+)x(\d+)"', dom)
    assert layout, dom[-1500:]
    captions, overflowing, width, height = map(int, layout.groups())
    assert captions == 5 and overflowing == 0  # long unbroken Chinese names wrap
    assert width > 300 and height > 100  # the timeline is drawn
    assert "人事部" in dom and "3 of 5 shown" in dom
    if not fonts:
        pytest.skip("laid out and checked; no CJK font could be installed for the glyphs")
