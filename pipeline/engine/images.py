"""Image decoding for the engine: bytes -> upright RGB numpy array, or a coded rejection.

Rules (contract §2, §5):

* base64 text that is empty or not valid standard base64 -> 216200 ``empty image``;
* bytes Pillow cannot identify, or a file that fails to decode (truncated JPEG) -> 216201
  ``image format error``; accepted formats are JPEG (and MPO), PNG, BMP and GIF
  (animated: the first frame);
* shortest side under 15 px, longest side over 4096 px, or a decompression bomb
  (Pillow's DecompressionBombWarning is treated as an error) -> 216202 ``image size error``.
  Sizes are checked from the header, before any pixel is decoded.

EXIF orientation is applied (ImageOps.exif_transpose). Every mode becomes 8-bit RGB:
16-bit greyscale is scaled by 1/257, transparency is composited over white, CMYK and
palette images are converted by Pillow.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

import numpy as np
from PIL import Image, ImageOps

MIN_SIDE = 15
MAX_SIDE = 4096
ACCEPTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "GIF"})


class ImageRefused(Exception):
    """An image the engine refuses, with the API error code to answer."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def decode_base64(text: str) -> bytes:
    """Strict standard base64 (whitespace tolerated) -> bytes; 216200 when empty or bad."""
    compact = "".join(text.split())
    if not compact:
        raise ImageRefused(216200, "empty image")
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise ImageRefused(216200, "empty image: the image is not valid base64") from None
    if not data:
        raise ImageRefused(216200, "empty image")
    return data


def decode_image(data: bytes) -> np.ndarray:
    """File bytes -> (height, width, 3) uint8 RGB array, upright; raises :class:`ImageRefused`."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = _open(data)
        _check_size(img.size)
        try:
            img.load()
            img = ImageOps.exif_transpose(img)
        except Image.DecompressionBombWarning:
            raise ImageRefused(216202, "image size error: too many pixels") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageRefused(216201, f"image format error: cannot decode ({exc})") from None
    return np.ascontiguousarray(_to_rgb(img))


def _open(data: bytes) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRefused(216202, "image size error: too many pixels") from None
    except (OSError, SyntaxError, ValueError):
        raise ImageRefused(216201, "image format error: not a jpg, png or bmp image") from None
    if img.format not in ACCEPTED_FORMATS:
        raise ImageRefused(216201, f"image format error: {img.format} is not jpg, png or bmp")
    return img


def _check_size(size: tuple[int, int]) -> None:
    if min(size) < MIN_SIDE or max(size) > MAX_SIDE:
        raise ImageRefused(
            216202,
            f"image size error: {size[0]}x{size[1]} px; sides must be "
            f"{MIN_SIDE}-{MAX_SIDE} px",
        )


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        grey = np.asarray(img, dtype=np.float64)
        # 16-bit samples span 0-65535; plain "I" PNGs hold the same range.
        return np.repeat((np.clip(grey / 257.0, 0, 255)).astype(np.uint8)[..., None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(canvas, rgba)
    return np.asarray(img.convert("RGB"))
