"""Image files -> the bytes to send, or one named problem.

:func:`load_image` reads one file and checks it in this order, stopping at the first
problem (each has one reason slug, see :data:`REASON_TEXT`):

1. the path: ``outside_manifest_dir`` (only when ``root`` is given; symlinks are
   resolved for this check so a manifest cannot reach into /etc), ``file_missing``,
   ``symlink_loop``, ``file_unreadable``, ``not_a_file``;
2. the size on disk, from ``stat`` before reading: ``file_empty``, ``file_too_large``;
3. the content: ``image_format`` (magic bytes must say JPEG, PNG or BMP; GIF, WebP,
   TIFF, HEIC and text are refused), ``decompression_bomb`` (more than
   :data:`PIXEL_LIMIT` pixels), ``image_corrupt`` (a full decode must succeed, so a
   truncated JPEG is caught here, not by the service), ``image_too_small``;
4. the service's limits (reference §5): longest side <= 4096 px and base64 text
   <= 4 MiB (detect's limit, which every row passes first). With ``fit=True`` a
   larger image is downscaled (LANCZOS) and re-encoded as JPEG quality 92 until it
   fits; with ``fit=False`` it fails with ``image_too_big`` (pixels) or
   ``image_too_large`` (bytes).

What is sent: the file exactly as it is, unless it needs one of these (listed in
``transformed``, in this order): ``exif_rotated`` (EXIF orientation other than 1 is
applied, re-encoded as JPEG quality 95), ``converted`` (CMYK/YCbCr/LAB JPEGs,
16-bit PNGs and other modes a decoder may not take become 8-bit RGB or L; PNG
stays PNG, others become JPEG quality 95), ``resized`` or ``recompressed`` (step 4;
``recompressed`` when re-encoding alone made it fit). Alpha is flattened onto
white whenever the output is JPEG.

The function is pure apart from reading the file, keeps at most one decoded image
alive, and is safe to call from worker threads (``asyncio.to_thread``).
"""

from __future__ import annotations

import errno
import hashlib
import io
import math
import os
import stat
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.api import validate_v3
from pipeline.api.errors import ImageProblem
from pipeline.api.validate import IMAGE_B64_MAX, MAX_SIDE, MIN_SIDE, b64_size
from pipeline.runs.reasons import IMAGE_REASONS, PIXEL_LIMIT

#: Default largest file read (bytes); bigger files are refused from ``stat`` alone.
MAX_FILE_BYTES = 10 * 2**20
EXIF_ORIENTATION = 0x0112

#: Reason slug -> sentence for every image problem (the catalogue's).
REASON_TEXT = IMAGE_REASONS

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "jpeg"), (b"\x89PNG\r\n\x1a\n", "png"), (b"BM", "bmp"),
)
_OTHER_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "a GIF"), (b"GIF89a", "a GIF"), (b"II*\x00", "a TIFF"), (b"MM\x00*", "a TIFF"),
    (b"%PDF", "a PDF"), (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000"), (b"\xff\x0a", "a JPEG XL"),
)
_PIL_FORMATS = {"jpeg": ("JPEG",), "png": ("PNG",), "bmp": ("BMP",)}
# Modes every JPEG/PNG/BMP decoder takes; anything else is converted before sending.
_PLAIN_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA"})
# Pillow's own decode failures: it raises any of these for damaged data.
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
                  struct.error, IndexError, TypeError)


@dataclass(frozen=True, slots=True)
class LoadedImage:
    """An image ready to send. ``width``/``height`` are pixels of ``data``."""

    data: bytes
    sha256: str  # hex sha256 of the file's bytes: the audit identity of the source
    sent_sha256: str  # hex sha256 of ``data``
    width: int
    height: int
    format: str  # of ``data``: "jpeg" | "png" | "bmp"
    transformed: tuple[str, ...]  # () when ``data`` is the file as is


@dataclass(frozen=True, slots=True)
class Limits:
    """What the service takes: sides in px (``short_side`` None: no rule) and base64 bytes."""

    long_side: int
    short_side: int | None
    b64_max: int


V2_LIMITS = Limits(MAX_SIDE, None, IMAGE_B64_MAX)
#: v3: below 1920x1080 and 2 MiB of base64 (v3 contract §5).
V3_LIMITS = Limits(validate_v3.MAX_LONG_SIDE, validate_v3.MAX_SHORT_SIDE,
                   validate_v3.IMAGE_B64_MAX)


def limits_for(api: str) -> Limits:
    """The limits of protocol ``api`` ("v2" or "v3")."""
    return V3_LIMITS if api == "v3" else V2_LIMITS


def load_image(
    path: Path, *, root: Path | None = None, max_file_bytes: int = MAX_FILE_BYTES,
    fit: bool = True, limits: Limits = V2_LIMITS,
) -> LoadedImage:
    """Read and check the image at ``path``; raise :class:`ImageProblem` when unusable.

    ``root``: when given, a path that resolves (through symlinks) outside it is
    refused. ``max_file_bytes``: larger files are refused before reading.
    ``fit``: shrink images over the service's limits instead of refusing them.
    ``limits``: the protocol's (v2 by default; :data:`V3_LIMITS` for v3).
    """
    path = Path(path)
    if root is not None:
        _check_inside(path, Path(root))
    size = _regular_file_size(path)
    data = _read(path, size, max_file_bytes)
    fmt = _sniff(data)
    img = _decode(data, fmt)
    return _prepare(img, data, fmt, fit, limits)


# ------------------------------------------------------------------ the path and the file


def _check_inside(path: Path, root: Path) -> None:
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    if os.path.commonpath([real, real_root]) != real_root:
        raise ImageProblem(
            "outside_manifest_dir",
            f"the image resolves to {real}, outside the manifest's folder {real_root}; "
            "images must live under the manifest's folder",
        )


def _regular_file_size(path: Path) -> int:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageProblem("file_missing", "the image file does not exist; check the path "
                           "(relative paths are read from the manifest's folder)") from None
    except PermissionError:
        raise ImageProblem("file_unreadable", "a folder on the image path cannot be "
                           "entered (permission denied); fix its permissions") from None
    except OSError as exc:
        raise _stat_problem(exc) from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise ImageProblem("not_a_file", f"the image path is {kind}; point it at an image file")
    return st.st_size


def _stat_problem(exc: OSError) -> ImageProblem:
    if exc.errno == errno.ELOOP:
        return ImageProblem("symlink_loop", "the image path is a symbolic link that loops "
                            "back on itself; point it at a real file")
    if exc.errno in (errno.ENOTDIR, errno.ENAMETOOLONG):
        return ImageProblem("file_missing", f"the image file does not exist ({exc.strerror})")
    return ImageProblem("file_unreadable", f"the image file cannot be read: {exc.strerror}")


def _read(path: Path, size: int, max_file_bytes: int) -> bytes:
    if size == 0:
        raise ImageProblem("file_empty", "the image file is empty (0 bytes); re-export it")
    if size > max_file_bytes:
        raise ImageProblem(
            "file_too_large",
            f"the file is {_mib(size)}, over the {_mib(max_file_bytes)} limit; "
            "shrink or re-encode it",
        )
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_file_bytes + 1)
    except PermissionError:
        raise ImageProblem("file_unreadable", "the image file cannot be read (permission "
                           "denied); fix its permissions") from None
    except OSError as exc:
        raise _stat_problem(exc) from None
    if not data:  # it shrank between stat and read
        raise ImageProblem("file_empty", "the image file is empty (0 bytes); re-export it")
    if len(data) > max_file_bytes:
        raise ImageProblem("file_too_large", f"the file grew past {_mib(max_file_bytes)} "
                           "while being read")
    return data


def _mib(n: int) -> str:
    # Exact bytes as well: 10 MiB + 4 bytes must not read "10.0 MiB, over the 10.0 MiB".
    return f"{n / 2**20:.1f} MiB ({n:,} bytes)" if n >= 2**20 else f"{n:,} bytes"


# ------------------------------------------------------------------ the content


def _sniff(data: bytes) -> str:
    """"jpeg" | "png" | "bmp" from the magic bytes, else an ``image_format`` problem."""
    for magic, fmt in _MAGIC:
        if data.startswith(magic):
            return fmt
    kind = next((name for magic, name in _OTHER_MAGIC if data.startswith(magic)), None)
    if kind is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        kind = "a WebP"
    if kind is None and data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        kind = "a HEIC/AVIF"
    what = f"{kind} image" if kind else "not an image (its first bytes match no image format)"
    raise ImageProblem("image_format", f"the file is {what}, and the service takes only "
                       "JPEG, PNG or BMP; convert it to JPEG")


def _decode(data: bytes, fmt: str) -> Image.Image:
    """Open with the one decoder the magic bytes name and decode every pixel."""
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its two limits; here that is an error like any
            # other bomb. (catch_warnings is process-wide: racing threads can at worst
            # leave this one filter installed, which is the behaviour we want anyway.)
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=_PIL_FORMATS[fmt])
        if img.width * img.height > PIXEL_LIMIT:
            raise Image.DecompressionBombError(f"{img.width}x{img.height}")
        img.load()  # a lazy open would accept a truncated file
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageProblem("decompression_bomb", f"the image declares more than "
                           f"{PIXEL_LIMIT // 10**6} MP, which looks like a decompression "
                           "bomb; use a normal photo") from None
    except _DECODE_ERRORS as exc:
        raise ImageProblem("image_corrupt", f"the {fmt.upper()} file is truncated or "
                           f"damaged ({exc}); re-export or re-copy it") from None
    return img


# ------------------------------------------------------------------ what to send


def _prepare(img: Image.Image, data: bytes, fmt: str, fit: bool,
             limits: Limits = V2_LIMITS) -> LoadedImage:
    if min(img.size) < MIN_SIDE:
        raise ImageProblem("image_too_small", f"the image is {img.width}x{img.height} px; "
                           f"its shortest side must be at least {MIN_SIDE} px")
    transformed: list[str] = []
    if _orientation(img) != 1:
        img = ImageOps.exif_transpose(img)
        transformed.append("exif_rotated")
    if img.mode not in _PLAIN_MODES or (fmt == "png" and _png_bit_depth(data) == 16):
        img = _to_8bit(img)
        transformed.append("converted")
    out, out_fmt = data, fmt
    if transformed:
        out_fmt = "png" if transformed == ["converted"] and fmt != "jpeg" else "jpeg"
        out = _encode(img, out_fmt, quality=95)
    img, out, out_fmt, step = _fit(img, out, out_fmt, fit, limits)
    transformed += [step] if step else []
    sent = hashlib.sha256(out).hexdigest()
    source = sent if out is data else hashlib.sha256(data).hexdigest()
    return LoadedImage(out, source, sent, img.width, img.height, out_fmt, tuple(transformed))


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block must not sink a good photo
        return 1
    return value if isinstance(value, int) and 2 <= value <= 8 else 1


def _png_bit_depth(data: bytes) -> int:
    # IHDR is always the first chunk: 8 signature + 4 length + 4 type + 8 (w, h), then depth.
    return data[24] if len(data) > 24 else 8


def _to_8bit(img: Image.Image) -> Image.Image:
    """8-bit L/LA/RGB/RGBA pixels from any mode; 16-bit grey is scaled, not clipped."""
    if img.mode.startswith("I;16") or img.mode == "I":
        arr = np.asarray(img).astype(np.int64)
        peak = 65535 if img.mode != "I" or arr.max(initial=0) > 255 else 255
        return Image.fromarray((np.clip(arr, 0, peak) * 255 // peak).astype(np.uint8), "L")
    if img.mode in _PLAIN_MODES:  # a 16-bit-per-channel PNG Pillow already read as 8-bit
        return img.copy()
    return img.convert("RGBA" if "A" in img.getbands() else "RGB")


def _encode(img: Image.Image, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG")
    else:
        _flatten(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _flatten(img: Image.Image) -> Image.Image:
    """RGB or L pixels for JPEG: transparency is painted over white."""
    if img.mode in ("RGB", "L"):
        return img
    if img.mode in ("1",):
        return img.convert("L")
    rgba = img.convert("RGBA")
    canvas = Image.new("RGB", img.size, (255, 255, 255))
    canvas.paste(rgba, mask=rgba.getchannel("A"))
    return canvas


def _fit(
    img: Image.Image, out: bytes, fmt: str, fit: bool, limits: Limits = V2_LIMITS
) -> tuple[Image.Image, bytes, str, str | None]:
    """Shrink until the sides and the base64 size are within the service's limits."""
    longest, shortest = max(img.size), min(img.size)
    scale = min(1.0, limits.long_side / longest,
                limits.short_side / shortest if limits.short_side else 1.0)
    if scale >= 1.0 and _b64_len(out) <= limits.b64_max:
        return img, out, fmt, None
    if not fit:
        if scale < 1.0:
            rule = (f"its longest side must be at most {limits.long_side} px"
                    if limits.short_side is None else
                    f"it must fit within {limits.long_side}x{limits.short_side} px")
            raise ImageProblem("image_too_big",
                               f"the image is {img.width}x{img.height} px; {rule}")
        raise ImageProblem("image_too_large", f"the image is {_mib(_b64_len(out))} once "
                           f"base64-encoded, over the service's {_mib(limits.b64_max)}")
    return _shrink(img, scale, limits.b64_max)


def _shrink(
    img: Image.Image, scale: float, limit: int
) -> tuple[Image.Image, bytes, str, str | None]:
    for _ in range(8):
        size = (max(1, math.floor(img.width * scale)), max(1, math.floor(img.height * scale)))
        if min(size) < MIN_SIDE:
            break
        small = img.resize(size, Image.Resampling.LANCZOS) if scale < 1 else img
        out = _encode(small, "jpeg", quality=92)
        if _b64_len(out) <= limit:
            return small, out, "jpeg", "resized" if scale < 1 else "recompressed"
        # The encoded size is roughly proportional to the pixel count.
        scale *= 0.95 * math.sqrt(limit / _b64_len(out))
    raise ImageProblem("image_too_large", f"the {img.width}x{img.height} px image cannot be "
                       "shrunk within the service's limits; crop it around the face")


def _b64_len(data: bytes) -> int:
    return b64_size(len(data))
