"""The pure argument checks of pipeline.api.validate, rule by rule, at their boundaries."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from pipeline.api import validate as v

SEEN: set[str] = set()


def image(size: tuple[int, int] = (40, 30), fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (120, 90, 60)).save(buf, fmt)
    return buf.getvalue()


def reason(value: str | None) -> str | None:
    if value:
        SEEN.add(value)
    return value


@pytest.mark.parametrize(
    ("uid", "expected"),
    [
        ("u_42", None),
        ("A" * 128, None),
        ("", "uid_empty"),
        ("A" * 129, "uid_too_long"),
        ("user-1", "uid_charset"),
        ("user 1", "uid_charset"),
        ("名字", "uid_charset"),
        ("ünï", "uid_charset"),
        ("a,b", "uid_charset"),
    ],
    ids=["ok", "128B", "empty", "129B", "hyphen", "space", "cjk", "accents", "comma"],
)
def test_check_uid(uid: str, expected: str | None) -> None:
    assert reason(v.check_uid(uid)) == expected


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        ("", None),
        ("x" * 256, None),
        ("x" * 257, "user_info_too_long"),
        ("é" * 128, None),  # 256 bytes in UTF-8
        ("é" * 129, "user_info_too_long"),  # 129 characters but 258 bytes
        ("张" * 85, None),  # 255 bytes
        ("张" * 86, "user_info_too_long"),  # 86 characters, 258 bytes
    ],
    ids=["empty", "256ascii", "257ascii", "256utf8", "258utf8", "255cjk", "258cjk"],
)
def test_check_user_info_counts_utf8_bytes(info: str, expected: str | None) -> None:
    assert reason(v.check_user_info(info)) == expected


@pytest.mark.parametrize(
    ("groups", "expected"),
    [
        ("staff", None),
        ("g1,g2,g_3", None),
        ("g" * 48, None),
        ("g" * 49, "group_id_too_long"),
        (",".join(["g" * 42] * 3) + ",ab", "group_id_too_long"),  # 131 bytes in all
        (",".join(["g" * 42] * 3), None),  # 128 bytes
        ("", "group_id_empty"),
        ("a,,b", "group_id_empty"),
        ("a,", "group_id_empty"),
        ("staff-1", "group_id_charset"),
        ("a, b", "group_id_charset"),
    ],
    ids=["one", "list", "48", "49", "131B", "128B", "empty", "hole", "trailing", "hyphen",
         "space"],
)
def test_check_group_ids(groups: str, expected: str | None) -> None:
    assert reason(v.check_group_ids(groups)) == expected


def test_single_group_id_refuses_a_list() -> None:
    assert reason(v.check_group_id("a,b")) == "group_id_multiple"
    assert v.check_group_id("a_b") is None
    assert v.join_group_ids(["a", "b"]) == "a,b"


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 6, 299, 300, 301])
def test_b64_size_matches_the_encoder(n: int) -> None:
    assert v.b64_size(n) == len(base64.b64encode(b"x" * n))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP"])
def test_accepted_formats(fmt: str) -> None:
    assert v.check_image(image(fmt=fmt)) is None


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "image_empty"),
        (b"GIF89a" + b"\0" * 64, "image_format"),
        (b"hello, not an image", "image_format"),
        (b"\xff\xd8\xff" + b"\0" * 64, "image_corrupt"),
        (b"\x89PNG\r\n\x1a\n" + b"garbage", "image_corrupt"),
    ],
    ids=["empty", "gif", "text", "jpeg-magic-garbage", "png-magic-garbage"],
)
def test_check_image_format_and_header(data: bytes, expected: str) -> None:
    assert reason(v.check_image(data)) == expected


def test_gif_is_refused_by_magic_bytes() -> None:
    assert reason(v.check_image(image(fmt="GIF"))) == "image_format"


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((15, 15), None),
        ((14, 200), "image_too_small"),
        ((200, 14), "image_too_small"),
        ((4096, 16), None),
        ((4097, 16), "image_too_big"),
        ((16, 4097), "image_too_big"),
    ],
    ids=["15x15", "w14", "h14", "w4096", "w4097", "h4097"],
)
def test_check_image_dimensions(size: tuple[int, int], expected: str | None) -> None:
    assert reason(v.check_image(image(size))) == expected


def png_header(width: int, height: int) -> bytes:
    """A PNG signature, IHDR and an empty IDAT: a size claim with no pixels at all."""
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = b"IDAT"
    return (b"\x89PNG\r\n\x1a\n"
            + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
            + struct.pack(">I", 0) + idat + struct.pack(">I", zlib.crc32(idat)))


def test_dimensions_come_from_the_header_only() -> None:
    # Decoding 30000x30000 pixels would take gigabytes; the header is enough.
    assert v.image_size(png_header(5000, 6000)) == (5000, 6000)
    assert reason(v.check_image(png_header(5000, 6000))) == "image_too_big"
    assert reason(v.check_image(png_header(30000, 30000))) == "image_too_big"
    assert v.check_image(png_header(640, 480)) is None


@pytest.mark.parametrize(
    ("limit", "raw_ok"),
    [(v.IMAGE_B64_MAX, 3 * 2**20), (v.ADD_IMAGE_B64_MAX, (10 * 2**20 // 4) * 3)],
    ids=["4MiB", "10MiB"],
)
def test_encoded_size_limit_is_exact(limit: int, raw_ok: int) -> None:
    fake = b"\xff\xd8\xff" + b"\0" * (raw_ok - 3)  # JPEG magic: the size rule is reached
    assert v.b64_size(len(fake)) == limit
    assert v.check_image(fake, max_b64_bytes=limit) != "image_too_large"
    assert reason(v.check_image(fake + b"\0", max_b64_bytes=limit)) == "image_too_large"


def test_match_images() -> None:
    assert reason(v.check_match_images([image()])) == "images_too_few"
    assert v.check_match_images([image(), image()]) is None
    assert reason(v.check_match_images([image(), b"nope"])) == "image_format"
    big = b"\xff\xd8\xff" + b"\0" * (8 * 2**20)  # 10.7 MiB encoded: fine alone, not twice
    assert v.check_match_images([big, big]) == "image_too_large"


def test_check_fields() -> None:
    assert v.check_fields("qualities,landmark", v.DETECT_FIELDS) is None
    assert v.check_fields(["qualities", "smile"], v.DETECT_FIELDS) == "smile"
    assert v.check_fields("faceliveness", v.DETECT_FIELDS) == "faceliveness"


def test_every_reason_seen_has_a_sentence() -> None:
    # Runs after the checks above (file order): every slug they returned is explained.
    assert SEEN, "the tests above returned no reason"
    assert SEEN <= set(v.REASON_TEXT)
    assert all(text and text[0].islower() for text in v.REASON_TEXT.values())


def _variants() -> dict[str, bytes]:
    base = Image.new("RGB", (123, 77), (10, 200, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: the stored size is still what the header says
    out = {}
    for name, img, fmt, kwargs in [
        ("jpeg", base, "JPEG", {}),
        ("jpeg-progressive", base, "JPEG", {"progressive": True}),
        ("jpeg-gray", base.convert("L"), "JPEG", {}),
        ("jpeg-cmyk", base.convert("CMYK"), "JPEG", {}),
        ("jpeg-exif", base, "JPEG", {"exif": exif.tobytes()}),
        ("png-rgba", base.convert("RGBA"), "PNG", {}),
        ("png-palette", base.convert("P"), "PNG", {}),
        ("bmp-24", base, "BMP", {}),
        ("bmp-1bit", base.convert("1"), "BMP", {}),
    ]:
        buf = io.BytesIO()
        img.save(buf, fmt, **kwargs)
        out[name] = buf.getvalue()
    samples = Path(__file__).resolve().parent.parent / "data" / "samples"
    for path in sorted(samples.glob("*.*")):
        if path.suffix.lower() in (".jpg", ".png", ".bmp"):
            out[path.name] = path.read_bytes()
    return out


VARIANTS = _variants()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_fast_header_reader_agrees_with_pillow(name: str) -> None:
    data = VARIANTS[name]
    fast = v._header_size(data)
    assert fast is not None
    assert fast == v._pillow_size(data)
