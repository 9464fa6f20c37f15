"""pipeline.variants: each generated degradation does what its name says."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image, ImageOps

from pipeline import variants

BOX = (60, 50, 100, 120)


@pytest.fixture()
def photo() -> Image.Image:
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
    return Image.fromarray(noise, "RGB")


def _sharpness(img: Image.Image) -> float:
    grey = np.asarray(img.convert("L"), dtype=float)
    return float(np.abs(np.diff(grey, axis=1)).mean())


def test_blurred_is_smoother(photo: Image.Image) -> None:
    assert _sharpness(variants.blurred(photo, 4)) < _sharpness(photo) / 3


def test_darkened_is_darker(photo: Image.Image) -> None:
    before = np.asarray(photo.convert("L")).mean()
    after = np.asarray(variants.darkened(photo, 0.2).convert("L")).mean()
    assert after == pytest.approx(before * 0.2, rel=0.1)


def test_cropped_through_face_cuts_the_box(photo: Image.Image) -> None:
    out = variants.cropped_through_face(photo, BOX)
    assert out.width == photo.width - (BOX[0] + 25)
    assert out.height == photo.height


def test_tiny_and_huge_sizes(photo: Image.Image) -> None:
    assert max(variants.tiny(photo, 80).size) == 80
    assert max(variants.huge(photo, 5000).size) == 5000


def test_turned_squeezes_half_the_face(photo: Image.Image) -> None:
    out = variants.turned(photo, BOX, squeeze=0.5)
    half = (BOX[0] + BOX[2] + BOX[2] // 4) - (BOX[0] + BOX[2] // 2)
    assert out.width == photo.width - half + int(half * 0.5)


def test_mouth_covered_paints_a_patch(photo: Image.Image) -> None:
    out = np.asarray(variants.mouth_covered(photo, BOX, colour=(1, 2, 3)))
    assert tuple(out[BOX[1] + 100, BOX[0] + 50]) == (1, 2, 3)
    assert tuple(out[BOX[1] + 10, BOX[0] + 50]) != (1, 2, 3)


def test_two_faces_side_by_side(photo: Image.Image) -> None:
    out = variants.two_faces(photo, photo.resize((160, 120)), gap=10)
    assert out.size == (160 + 10 + 160, 120)


def test_corrupt_jpeg_does_not_load(photo: Image.Image) -> None:
    data = variants.corrupt_jpeg_bytes(variants.to_bytes(photo))
    with pytest.raises(OSError):
        Image.open(io.BytesIO(data)).load()


def test_text_is_not_an_image() -> None:
    with pytest.raises(OSError):
        Image.open(io.BytesIO(variants.text_as_jpg()))


@pytest.mark.parametrize("orientation", [3, 6, 8], ids=["rot180", "rot90cw", "rot90ccw"])
def test_exif_rotation_round_trips(photo: Image.Image, orientation: int) -> None:
    data = variants.exif_rotated_jpeg(photo, orientation)
    stored = Image.open(io.BytesIO(data))
    upright = ImageOps.exif_transpose(stored)
    assert upright.size == photo.size
    assert stored.size == (photo.size if orientation == 3 else photo.size[::-1])


def test_decompression_bomb_is_small_and_refused() -> None:
    data = variants.decompression_bomb_png()
    assert len(data) < 2048
    with warnings.catch_warnings(), pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(data))


def test_format_helpers(photo: Image.Image) -> None:
    assert Image.open(io.BytesIO(variants.cmyk_jpeg(photo))).mode == "CMYK"
    assert Image.open(io.BytesIO(variants.png16(photo))).mode.startswith("I")
    gif = Image.open(io.BytesIO(variants.animated_gif(photo)))
    assert gif.is_animated and gif.n_frames == 3
