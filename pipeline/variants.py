"""Generated degradations of a photo, for tests, the demo and the benchmarks.

Pure Pillow: every function takes a PIL image (and, where the degradation is about
the face, the face box in pixels as ``(left, top, width, height)`` or any object with
those four attributes, e.g. :class:`pipeline.api.records.Box`) and returns a new image,
or file bytes for the ``*_bytes`` / format helpers. Nothing here reads or writes files.

Honest limits:

* :func:`turned` cannot rotate a head in 3-D. It compresses one half of the face
  horizontally (the half that would recede in a real turn), which moves the landmarks
  of that side towards the nose the way a yaw does; pose estimators read it as a turn.
* :func:`mouth_covered` estimates the mouth region from the face box (dlib HOG boxes
  put the mouth at about 65-95 % of the height, 25-75 % of the width) unless a
  mouth box is given.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

BoxLike = Any  # (left, top, width, height) or an object with those attributes

#: EXIF orientation -> the transpose that turns an upright image into the stored
#: pixels (the inverse of what ImageOps.exif_transpose applies when reading).
_STORE_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def _box(box: BoxLike) -> tuple[int, int, int, int]:
    if hasattr(box, "left"):
        return int(box.left), int(box.top), int(box.width), int(box.height)
    left, top, width, height = box
    return int(left), int(top), int(width), int(height)


def to_bytes(img: Image.Image, format: str = "JPEG", **save_args: Any) -> bytes:
    """Encode ``img`` (JPEG quality 92 by default; RGBA is flattened for JPEG)."""
    if format.upper() in ("JPEG", "JPG") and img.mode not in ("RGB", "L", "CMYK"):
        img = img.convert("RGB")
    if format.upper() in ("JPEG", "JPG"):
        save_args.setdefault("quality", 92)
    out = io.BytesIO()
    img.save(out, format=format, **save_args)
    return out.getvalue()


def blurred(img: Image.Image, radius: float) -> Image.Image:
    """Gaussian blur with ``radius`` pixels (standard deviation) over the whole image."""
    return img.filter(ImageFilter.GaussianBlur(radius))


def darkened(img: Image.Image, factor: float) -> Image.Image:
    """Brightness multiplied by ``factor`` (0 = black, 1 = unchanged)."""
    return ImageEnhance.Brightness(img.convert("RGB")).enhance(factor)


def cropped_through_face(img: Image.Image, box: BoxLike, keep: float = 0.75) -> Image.Image:
    """Crop so the left edge cuts the face: only the right ``keep`` fraction of it remains."""
    left, _, width, _ = _box(box)
    cut = max(1, left + round(width * (1.0 - keep)))
    return img.crop((cut, 0, img.width, img.height))


def tiny(img: Image.Image, size: int = 120) -> Image.Image:
    """The whole image scaled down so its longest side is ``size`` px (faces well under 100)."""
    scale = size / max(img.size)
    new = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(new, Image.Resampling.LANCZOS)


def huge(img: Image.Image, side: int = 5000) -> Image.Image:
    """The image scaled up so its longest side is ``side`` px (beyond the 4096 px limit)."""
    scale = side / max(img.size)
    new = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(new, Image.Resampling.BILINEAR)


def turned(img: Image.Image, box: BoxLike, squeeze: float = 0.45) -> Image.Image:
    """Approximate a head turn: the face's right half (image side) is squeezed.

    The columns from the face centre to its right edge are resized to ``squeeze`` times
    their width; everything right of the face shifts left. The image gets narrower.
    """
    left, _, width, _ = _box(box)
    centre, right = left + width // 2, min(img.width, left + width + width // 4)
    half = img.crop((centre, 0, right, img.height))
    narrow = half.resize((max(1, int(half.width * squeeze)), img.height), Image.Resampling.LANCZOS)
    rest = img.crop((right, 0, img.width, img.height))
    out = Image.new(img.mode, (centre + narrow.width + rest.width, img.height))
    out.paste(img.crop((0, 0, centre, img.height)), (0, 0))
    out.paste(narrow, (centre, 0))
    out.paste(rest, (centre + narrow.width, 0))
    return out


def mouth_covered(
    img: Image.Image,
    box: BoxLike,
    colour: tuple[int, int, int] = (40, 90, 160),
    mouth: BoxLike | None = None,
) -> Image.Image:
    """A solid ``colour`` patch (like a mask) over the mouth region of the face ``box``."""
    if mouth is None:
        left, top, width, height = _box(box)
        mouth = (left + width * 0.2, top + height * 0.62, width * 0.6, height * 0.4)
    mleft, mtop, mwidth, mheight = _box(mouth)
    out = img.convert("RGB").copy()
    out.paste(colour, (mleft, mtop, mleft + mwidth, mtop + mheight))
    return out


def two_faces(img_a: Image.Image, img_b: Image.Image, gap: int = 40) -> Image.Image:
    """``img_a`` and ``img_b`` side by side on one white canvas, scaled to the same height."""
    height = min(img_a.height, img_b.height)
    parts = [
        im.convert("RGB").resize((round(im.width * height / im.height), height))
        for im in (img_a, img_b)
    ]
    out = Image.new("RGB", (parts[0].width + gap + parts[1].width, height), "white")
    out.paste(parts[0], (0, 0))
    out.paste(parts[1], (parts[0].width + gap, 0))
    return out


def corrupt_jpeg_bytes(data: bytes, keep: float = 0.5) -> bytes:
    """The first ``keep`` fraction of a JPEG file: a valid header, truncated scan data."""
    return data[: max(64, int(len(data) * keep))]


def text_as_jpg() -> bytes:
    """Bytes of a text file, as if someone had renamed notes.txt to photo.jpg."""
    return b"This is not a photo, just text saved with a .jpg name.\n" * 4


def exif_rotated_jpeg(img: Image.Image, orientation: int = 6) -> bytes:
    """A JPEG whose stored pixels are turned and whose EXIF ``orientation`` turns them back.

    Read with ``ImageOps.exif_transpose`` it shows ``img`` upright again.
    """
    stored = img.convert("RGB").transpose(_STORE_TRANSPOSE[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    return to_bytes(stored, "JPEG", exif=exif.tobytes())


def decompression_bomb_png(side: int = 30000) -> bytes:
    """A PNG of a few hundred bytes that declares ``side`` x ``side`` grey pixels.

    Only the first rows are present (zlib-compressed zeros): decoders that trust the
    header would allocate ``side``² bytes; Pillow refuses it at open (MAX_IMAGE_PIXELS).
    """
    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (side + 1) * 8, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def cmyk_jpeg(img: Image.Image) -> bytes:
    """``img`` as a CMYK JPEG (as print workflows produce)."""
    return to_bytes(img.convert("RGB").convert("CMYK"), "JPEG")


def png16(img: Image.Image) -> bytes:
    """``img`` as a 16-bit greyscale PNG (values 0-65535)."""
    grey = np.asarray(img.convert("L"), dtype=np.uint16) * 257
    return to_bytes(Image.fromarray(grey), "PNG")


def animated_gif(img: Image.Image, frames: int = 3) -> bytes:
    """An animated GIF whose first frame is ``img``; later frames are darker mirrored copies."""
    first = img.convert("RGB")
    mirror = first.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    # Distinct frames: Pillow merges identical consecutive frames into one.
    rest = [darkened(mirror, 1.0 - 0.25 * k) for k in range(1, frames)]
    out = io.BytesIO()
    first.save(out, format="GIF", save_all=True, append_images=rest, duration=100, loop=0)
    return out.getvalue()
