"""load_image: one generated file per reason slug, plus the accepted odd formats."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import variants
from pipeline.runs.images import PIXEL_LIMIT, REASON_TEXT, ImageProblem, LoadedImage, load_image


def picture(width: int = 96, height: int = 64, mode: str = "RGB") -> Image.Image:
    """A smooth gradient (compresses well, decodes the same everywhere)."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    rgb = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB").convert(mode)


def encode(img: Image.Image, fmt: str = "JPEG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def problem(path: Path, **kw: object) -> ImageProblem:
    with pytest.raises(ImageProblem) as info:
        load_image(path, **kw)  # type: ignore[arg-type]
    assert info.value.reason in REASON_TEXT
    assert info.value.message and str(info.value) == info.value.message
    return info.value


# name -> file bytes, expected reason
BAD_CONTENT = {
    "text_as_jpg": (variants.text_as_jpg(), "image_format"),
    "gif_still": (encode(picture(), "GIF"), "image_format"),
    "gif_animated": (variants.animated_gif(picture()), "image_format"),
    "webp": (encode(picture(), "WEBP"), "image_format"),
    "tiff": (encode(picture(), "TIFF"), "image_format"),
    "truncated_jpeg": (variants.corrupt_jpeg_bytes(encode(picture(400, 300)), 0.5),
                       "image_corrupt"),
    "png_header_only": (encode(picture(), "PNG")[:40], "image_corrupt"),
    "bomb_30000": (variants.decompression_bomb_png(30000), "decompression_bomb"),
    "bomb_8000": (variants.decompression_bomb_png(8000), "decompression_bomb"),  # our 50 MP cap
    "bomb_10000": (variants.decompression_bomb_png(10000), "decompression_bomb"),  # Pillow warns
    "tiny_10x10": (encode(picture(10, 10)), "image_too_small"),
    "thin_200x14": (encode(picture(200, 14), "PNG"), "image_too_small"),
}


@pytest.mark.parametrize("name", list(BAD_CONTENT), ids=list(BAD_CONTENT))
def test_bad_content_has_one_reason(tmp_path: Path, name: str) -> None:
    data, reason = BAD_CONTENT[name]
    assert problem(write(tmp_path, "photo.jpg", data)).reason == reason


def test_bomb_file_is_tiny_and_limit_is_documented(tmp_path: Path) -> None:
    data = variants.decompression_bomb_png(30000)
    assert len(data) < 10_000
    assert "50 MP" in problem(write(tmp_path, "b.png", data)).message
    assert PIXEL_LIMIT == 50_000_000


def test_missing_directory_and_empty(tmp_path: Path) -> None:
    assert problem(tmp_path / "absent.jpg").reason == "file_missing"
    assert problem(tmp_path / "absent" / "deeper.jpg").reason == "file_missing"
    (tmp_path / "folder.jpg").mkdir()
    assert problem(tmp_path / "folder.jpg").reason == "not_a_file"
    assert problem(write(tmp_path, "zero.jpg", b"")).reason == "file_empty"
    os.symlink(tmp_path / "nowhere.jpg", tmp_path / "dangling.jpg")
    assert problem(tmp_path / "dangling.jpg").reason == "file_missing"


def test_symlink_loop(tmp_path: Path) -> None:
    os.symlink(tmp_path / "b.jpg", tmp_path / "a.jpg")
    os.symlink(tmp_path / "a.jpg", tmp_path / "b.jpg")
    assert problem(tmp_path / "a.jpg").reason == "symlink_loop"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable(tmp_path: Path) -> None:
    path = write(tmp_path, "locked.jpg", encode(picture()))
    path.chmod(0)
    assert problem(path).reason == "file_unreadable"


def test_too_large_is_refused_before_reading(tmp_path: Path) -> None:
    path = write(tmp_path, "big.jpg", b"\xff\xd8\xff" + b"\0" * 5000)  # garbage past the limit
    err = problem(path, max_file_bytes=4096)
    assert err.reason == "file_too_large" and "5,003 bytes, over the 4,096 bytes" in err.message
    # The same garbage within the limit is read, and found damaged.
    assert problem(path, max_file_bytes=10_000).reason == "image_corrupt"


def test_outside_root(tmp_path: Path) -> None:
    root, other = tmp_path / "manifests", tmp_path / "elsewhere"
    root.mkdir()
    other.mkdir()
    outside = write(other, "x.jpg", encode(picture()))
    inside = write(root, "ok.jpg", encode(picture()))
    os.symlink(outside, root / "link.jpg")
    assert problem(root / ".." / "elsewhere" / "x.jpg", root=root).reason == "outside_manifest_dir"
    assert problem(root / "link.jpg", root=root).reason == "outside_manifest_dir"
    assert problem(Path("/etc/passwd"), root=root).reason == "outside_manifest_dir"
    assert load_image(inside, root=root).width == 96
    assert load_image(root / "link.jpg").width == 96  # without root the link is followed


def test_plain_jpeg_is_sent_as_is(tmp_path: Path) -> None:
    data = encode(picture())
    img = load_image(write(tmp_path, "a.jpg", data))
    assert img == LoadedImage(data, hashlib.sha256(data).hexdigest(),
                              hashlib.sha256(data).hexdigest(), 96, 64, "jpeg", ())


@pytest.mark.parametrize(
    ("fmt", "mode", "sent"),
    [("PNG", "RGBA", "png"), ("PNG", "L", "png"), ("PNG", "P", "png"), ("PNG", "LA", "png"),
     ("BMP", "RGB", "bmp"), ("JPEG", "L", "jpeg"), ("PNG", "1", "png")],
    ids=["png-rgba", "png-grey", "png-palette", "png-grey-alpha", "bmp", "jpeg-grey", "png-1bit"],
)
def test_plain_modes_are_sent_as_is(tmp_path: Path, fmt: str, mode: str, sent: str) -> None:
    data = encode(picture(mode=mode), fmt)
    img = load_image(write(tmp_path, "a.img", data))
    assert (img.data, img.format, img.transformed) == (data, sent, ())


def test_sample_rgba_png_is_sent_as_is(samples_dir: Path) -> None:
    path = samples_dir / "obama_02_rgba.png"
    img = load_image(path)
    assert img.data == path.read_bytes() and img.transformed == () and img.format == "png"


@pytest.mark.parametrize(
    ("data", "sent"),
    [(variants.cmyk_jpeg(picture()), "jpeg"), (variants.png16(picture()), "png")],
    ids=["cmyk-jpeg", "png-16bit-grey"],
)
def test_converted(tmp_path: Path, data: bytes, sent: str) -> None:
    img = load_image(write(tmp_path, "a.img", data))
    assert img.transformed == ("converted",) and img.format == sent
    assert img.sha256 == hashlib.sha256(data).hexdigest() != img.sent_sha256
    decoded = Image.open(io.BytesIO(img.data))
    assert decoded.mode in ("RGB", "L") and decoded.size == (96, 64)
    # 16-bit grey is scaled into 0-255, not clipped to white.
    assert 0 < np.asarray(decoded.convert("L")).mean() < 250


def test_png_16bit_rgb_is_converted(tmp_path: Path) -> None:
    arr = (np.asarray(picture(), dtype=np.uint16) * 257).astype(">u2")
    # Pillow cannot write RGB48, so build the PNG from the raw rows by hand.
    data = _png_rgb48(arr)
    img = load_image(write(tmp_path, "deep.png", data))
    assert img.transformed == ("converted",) and img.format == "png"
    assert Image.open(io.BytesIO(img.data)).mode == "RGB"


def _png_rgb48(arr: np.ndarray) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))

    h, w, _ = arr.shape
    rows = b"".join(b"\x00" + arr[y].tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def test_exif_rotation_swaps_width_and_height(tmp_path: Path) -> None:
    data = variants.exif_rotated_jpeg(picture(96, 64), orientation=6)
    assert Image.open(io.BytesIO(data)).size == (64, 96)  # stored turned
    img = load_image(write(tmp_path, "turned.jpg", data))
    assert (img.width, img.height, img.transformed, img.format) == (96, 64, ("exif_rotated",),
                                                                   "jpeg")
    sent = Image.open(io.BytesIO(img.data))
    assert sent.size == (96, 64) and sent.getexif().get(0x0112, 1) == 1


def test_huge_image_is_resized_or_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "huge.jpg", encode(picture(5000, 5000), quality=70))
    img = load_image(path)
    assert img.transformed == ("resized",) and max(img.width, img.height) <= 4096
    assert Image.open(io.BytesIO(img.data)).size == (img.width, img.height) == (4096, 4096)
    assert problem(path, fit=False).reason == "image_too_big"


def test_heavy_png_is_recompressed_or_refused(tmp_path: Path) -> None:
    noise = np.random.default_rng(7).integers(0, 256, (1300, 1300, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise, "RGB"), "PNG", compress_level=1)
    assert 4 * 2**20 < 4 * len(data) / 3 < 10 * 2**20
    path = write(tmp_path, "noise.png", data)
    img = load_image(path)
    assert img.format == "jpeg" and 4 * len(img.data) / 3 <= 4 * 2**20
    assert img.transformed in (("recompressed",), ("resized",))
    assert problem(path, fit=False).reason == "image_too_large"


def test_reason_text_has_every_slug() -> None:
    assert set(REASON_TEXT) == {
        "file_missing", "not_a_file", "file_unreadable", "symlink_loop", "outside_manifest_dir",
        "file_empty", "file_too_large", "image_format", "image_corrupt", "decompression_bomb",
        "image_too_small", "image_too_big", "image_too_large",
    }
