"""The audit report rendered in headless Chromium: not blank, and the cards are in the DOM.

Chromium is installed on demand (``apt-get install -y chromium``) when we are root
with apt-get; the test skips, with the reason, only when that is impossible.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image, ImageStat
from support.audit_fixtures import build_audit_dir

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.chromium


def _apt_install() -> str | None:
    """Install chromium with apt-get; None on success, else why not."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "Chromium is missing and apt-get is not usable here (not root or no apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    try:
        if subprocess.run(install, env=env, capture_output=True, timeout=900).returncode:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
            done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
            if done.returncode:
                return f"apt-get install chromium failed: {done.stderr.strip()[-300:]}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"apt-get install chromium failed: {exc}"
    return None if Path(CHROMIUM).exists() else "apt-get ran but /usr/bin/chromium is missing"


@pytest.fixture(scope="session")
def chromium() -> str:
    if not Path(CHROMIUM).exists():
        problem = _apt_install()
        if problem:
            pytest.skip(problem)
    return CHROMIUM


def _run(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [chromium, *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_report_renders_in_chromium(chromium: str, tmp_path: Path) -> None:
    run_dir = build_audit_dir(tmp_path)
    url = (run_dir / "report.html").resolve().as_uri()
    shot = tmp_path / "report.png"
    done = _run(chromium, tmp_path / "profile", f"--screenshot={shot}",
                "--window-size=1200,900", url)
    assert shot.exists(), done.stderr[-2000:]
    with Image.open(shot) as img:
        rgb = img.convert("RGB")
        assert rgb.size == (1200, 900)
        colours = rgb.getcolors(maxcolors=1_000_000) or []
        assert len(colours) > 50  # text, thumbnails and borders, not one flat colour
        assert max(ImageStat.Stat(rgb).stddev) > 10

    dom = _run(chromium, tmp_path / "profile2", "--dump-dom", url).stdout
    assert len(re.findall(r'class="card finding"', dom)) == 3
    assert len(re.findall(r'<img src="data:image/jpeg;base64,', dom)) == 6
    # The inline script ran (it fills the counter) and the hostile uid stayed text.
    assert '<span class="meta" id="shown">3 shown</span>' in dom
    assert "<title>Audit audit-fixture</title>" in dom
