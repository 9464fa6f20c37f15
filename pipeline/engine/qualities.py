"""Face quality measures of the engine: blur, illumination, completeness, occlusion.

All measures except completeness are taken on a *normalised face crop*: the region
around the 68 landmarks, resized so the outer eye corners (points 36 and 45) are
``EYE_SPAN`` = 64 px apart. This makes them independent of the photo's resolution
(a small face upsampled to that size is honestly blurrier than a large one).

* ``blur`` (0 sharp .. 1 blurred): the no-reference blur metric of Crete et al. (2007,
  "The blur effect: perception and estimation with a new no-reference perceptual blur
  metric"): the crop is re-blurred with a 9-tap box filter along rows and columns and the
  loss of neighbour differences is measured; a sharp image loses much (value near 0.2-0.4
  on faces), an already blurred one little (near 1). The raw value b is then stretched
  linearly so the reference threshold is meaningful: ``blur = clip((b - 0.25) / 0.5, 0, 1)``.
  Calibrated on data/samples: sharp photos give ~0.1-0.45, a Gaussian blur of 3 px on the
  normalised face (about 1/20 of the eye span) exceeds 0.7.
* ``illumination`` (0-255, integer): mean luma Y = 0.299 R + 0.587 G + 0.114 B (the Y of
  YUV, as the reference says) over the inner face: from the eyes to the mouth, between the
  outer eye corners.
* ``completeness`` (1 = face fully inside the image, 0 = cut; contract §4): 1 when all 68
  landmarks lie inside the image and the detector box sticks out by at most 10 % of its
  width or height on any side.
* ``occlusion`` per part (0 clear .. 1 covered): the face's own skin colour is the median
  (Y, Cb, Cr) of the seven part regions together (robust while under half of them are
  covered). A pixel "is not skin" when its chroma is more than ``CHROMA_TOL`` from the
  skin chroma, its luma is under half or over twice the skin luma, or it is flat (no
  texture: a local gradient under ``FLAT_GRADIENT`` grey levels, as a solid patch or a
  uniform mask is). The part's non-skin fraction f is compared with the fraction a
  clear part of that kind shows anyway (eyes have whites and pupils, lips differ from
  skin): ``occlusion = clip((f - base) / (1 - base) / 0.9, 0, 1)``. Calibrated so that the
  clear faces in data/samples stay under ~0.35 and a solid patch over the mouth exceeds
  0.7. It is a colour/texture heuristic: a cover of exactly skin colour and texture is not
  seen, and hair or a beard counts as occlusion (as it does for the real service).

``type`` (human vs cartoon) is not computed: the engine has no model for it and never
invents values, so ``qualities.type`` is omitted from replies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipeline.api.records import OCCLUSION_PARTS

EYE_SPAN = 64.0
CHROMA_TOL = 14.0
FLAT_GRADIENT = 1.0
#: Non-skin fraction a clear part shows anyway (calibrated on data/samples).
OCCLUSION_BASE = {
    "left_eye": 0.45,
    "right_eye": 0.45,
    "nose": 0.15,
    "mouth": 0.35,
    "left_cheek": 0.15,
    "right_cheek": 0.15,
    "chin": 0.25,
}


@dataclass(frozen=True, slots=True)
class FaceQualities:
    """Quality of one face; units and meanings in the module docstring."""

    blur: float
    illumination: int
    completeness: int
    occlusion: dict[str, float]


@dataclass(frozen=True, slots=True)
class _Crop:
    pixels: np.ndarray  # (h, w, 3) float RGB of the normalised face crop
    points: np.ndarray  # (68, 2) landmarks in crop pixels


def measure_qualities(
    rgb: np.ndarray, points: np.ndarray, box: tuple[float, float, float, float]
) -> FaceQualities:
    """Qualities of the face with 68 ``points`` and detector ``box`` in the image ``rgb``."""
    crop = normalised_crop(rgb, points)
    luma = _luma(crop.pixels)
    return FaceQualities(
        blur=round(blur_score(luma, crop.points), 4),
        illumination=int(round(_inner_face_mean(luma, crop.points))),
        completeness=completeness(rgb.shape[1], rgb.shape[0], points, box),
        occlusion=occlusion(crop),
    )


def normalised_crop(rgb: np.ndarray, points: np.ndarray) -> _Crop:
    """The landmark region (plus a margin of 15 %) scaled to an eye span of ``EYE_SPAN``."""
    span = max(float(np.linalg.norm(points[45] - points[36])), 4.0)
    scale = EYE_SPAN / span
    low, high = points.min(axis=0), points.max(axis=0)
    margin = (high - low) * 0.15
    height, width = rgb.shape[:2]
    x0, y0 = np.maximum(np.floor(low - margin), 0).astype(int)
    x1, y1 = np.minimum(np.ceil(high + margin), (width, height)).astype(int)
    x1, y1 = max(x1, x0 + 2), max(y1, y0 + 2)
    region = Image.fromarray(rgb[y0:y1, x0:x1])
    size = (max(2, round((x1 - x0) * scale)), max(2, round((y1 - y0) * scale)))
    pixels = np.asarray(region.resize(size, Image.Resampling.BILINEAR), dtype=np.float64)
    return _Crop(pixels, (points - (x0, y0)) * scale)


def blur_score(luma: np.ndarray, points: np.ndarray) -> float:
    """Crete blur on the inner face of the crop, stretched to the 0.7 reference threshold."""
    x0, y0, x1, y1 = _clip_rect(_inner_rect(points), luma.shape)
    patch = luma[y0:y1, x0:x1]
    if min(patch.shape) < 12:
        return 1.0
    raw = max(_crete(patch, axis=0), _crete(patch, axis=1))
    return float(np.clip((raw - 0.25) / 0.5, 0.0, 1.0))


def _crete(img: np.ndarray, axis: int) -> float:
    kernel = np.ones(9) / 9.0
    blurred = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), axis, img)
    sharp_diff = np.abs(np.diff(img, axis=axis))
    blur_diff = np.abs(np.diff(blurred, axis=axis))
    # Ignore the borders where the box filter runs off the patch.
    sharp_diff, blur_diff = _trim(sharp_diff, axis), _trim(blur_diff, axis)
    total = sharp_diff.sum()
    if total <= 1e-9:
        return 1.0
    lost = np.maximum(0.0, sharp_diff - blur_diff).sum()
    return float((total - lost) / total)


def _trim(arr: np.ndarray, axis: int, n: int = 5) -> np.ndarray:
    index = [slice(None), slice(None)]
    index[axis] = slice(n, -n)
    return arr[tuple(index)]


def completeness(
    width: int, height: int, points: np.ndarray, box: tuple[float, float, float, float]
) -> int:
    """1 when the face lies inside the image (see the module docstring), else 0."""
    inside = bool(
        (points[:, 0] >= 0).all() and (points[:, 0] <= width - 1).all()
        and (points[:, 1] >= 0).all() and (points[:, 1] <= height - 1).all()
    )
    left, top, box_w, box_h = box
    slack_x, slack_y = 0.1 * box_w, 0.1 * box_h
    boxed = (
        left >= -slack_x and top >= -slack_y
        and left + box_w <= width + slack_x and top + box_h <= height + slack_y
    )
    return int(inside and boxed)


def occlusion(crop: _Crop) -> dict[str, float]:
    """Occlusion 0-1 per part of ``OCCLUSION_PARTS`` (method in the module docstring)."""
    ycc = _ycbcr(crop.pixels)
    grad = _gradient(ycc[..., 0])
    regions = {part: _clip_rect(_part_rect(part, crop.points), ycc.shape) for part in
               OCCLUSION_PARTS}
    samples = np.concatenate([_pixels(ycc, rect).reshape(-1, 3) for rect in regions.values()])
    skin = np.median(samples, axis=0)
    result = {}
    for part, rect in regions.items():
        fraction = _non_skin_fraction(_pixels(ycc, rect), _pixels(grad, rect), skin)
        base = OCCLUSION_BASE[part]
        result[part] = round(float(np.clip((fraction - base) / (1 - base) / 0.9, 0, 1)), 4)
    return result


def _non_skin_fraction(ycc: np.ndarray, grad: np.ndarray, skin: np.ndarray) -> float:
    if ycc.size == 0:
        return 1.0
    chroma = np.hypot(ycc[..., 1] - skin[1], ycc[..., 2] - skin[2]) > CHROMA_TOL
    luma = ycc[..., 0] / max(skin[0], 1.0)
    off = chroma | (luma < 0.5) | (luma > 2.0) | (grad < FLAT_GRADIENT)
    return float(off.mean())


def _part_rect(part: str, p: np.ndarray) -> tuple[float, float, float, float]:
    """Region of a part as (x0, y0, x1, y1) in crop pixels, from the 68 landmarks.

    "left" and "right" are the image's left and right.
    """
    if part in ("left_eye", "right_eye"):
        eye = p[36:42] if part == "left_eye" else p[42:48]
        return _grow(eye, 0.25, 0.8)
    if part == "nose":
        return (p[31, 0], p[28, 1], p[35, 0], p[33, 1])
    if part == "mouth":
        return _grow(p[48:60], 0.15, 0.3)
    if part in ("left_cheek", "right_cheek"):
        jaw, inner = (p[2], p[31]) if part == "left_cheek" else (p[14], p[35])
        x0, x1 = sorted((jaw[0] + 0.25 * (inner[0] - jaw[0]), jaw[0] + 0.85 * (inner[0] - jaw[0])))
        return (x0, p[41, 1] + 0.3 * (p[33, 1] - p[41, 1]), x1, p[33, 1])
    # chin: between the lower lip and the jaw's lowest point
    drop = p[8, 1] - p[57, 1]
    return (p[7, 0], p[57, 1] + 0.25 * drop, p[9, 0], p[8, 1] - 0.1 * drop)


def _grow(pts: np.ndarray, fx: float, fy: float) -> tuple[float, float, float, float]:
    (x0, y0), (x1, y1) = pts.min(axis=0), pts.max(axis=0)
    dx, dy = (x1 - x0) * fx, max(y1 - y0, 2.0) * fy
    return (x0 - dx, y0 - dy, x1 + dx, y1 + dy)


def _inner_rect(p: np.ndarray) -> tuple[float, float, float, float]:
    return (p[36, 0], min(p[37, 1], p[44, 1]), p[45, 0], p[57, 1])


def _clip_rect(rect: tuple[float, float, float, float], shape: tuple[int, ...]):
    height, width = shape[:2]
    x0, y0, x1, y1 = rect
    ix0, iy0 = int(np.clip(np.floor(x0), 0, width - 1)), int(np.clip(np.floor(y0), 0, height - 1))
    ix1, iy1 = int(np.clip(np.ceil(x1), ix0 + 1, width)), int(np.clip(np.ceil(y1), iy0 + 1, height))
    return ix0, iy0, ix1, iy1


def _pixels(arr: np.ndarray, rect: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = rect
    return arr[y0:y1, x0:x1]


def _inner_face_mean(luma: np.ndarray, points: np.ndarray) -> float:
    x0, y0, x1, y1 = _clip_rect(_inner_rect(points), luma.shape)
    return float(luma[y0:y1, x0:x1].mean())


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _ycbcr(rgb: np.ndarray) -> np.ndarray:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return np.stack([y, cb, cr], axis=-1)


def _gradient(luma: np.ndarray) -> np.ndarray:
    # Largest absolute difference to the right/lower neighbour: 0 inside a solid patch.
    gx = np.abs(np.diff(luma, axis=1, append=luma[:, -1:]))
    gy = np.abs(np.diff(luma, axis=0, append=luma[-1:, :]))
    return np.maximum(gx, gy)
