"""The quality gate: a detect reply's face + thresholds -> a verdict with named reasons.

Pure functions (the only I/O is reading a thresholds TOML file). Defaults follow
``baidu-face-v2.md`` §4 and its Contract:

- face size: box width >= 100 px AND height >= 100 px, else ``face_too_small``;
- completeness > 0.5 (1 = inside, 0 = cut by an edge), else ``completeness``;
- blur < 0.7 (0 = sharp, 1 = blurred), else ``blur``;
- illumination > 40 (grey level 0-255), else ``illumination``;
- abs(yaw), abs(pitch), abs(roll) < 20 degrees, else ``pose_yaw`` / ``pose_pitch`` /
  ``pose_roll``;
- occlusion per part (0-1) below its bound, else ``occlusion_<part>``.

A value equal to a bound fails (reject at ``>=`` for upper bounds, ``<=`` for lower
bounds). The face size is the one exception: the seed says "at least 100x100", so
exactly 100 passes. A reply without ``qualities`` fails with ``no_qualities`` (size and
pose are still judged: they come with every face). An occlusion part the service did
not report is not judged: the gate never invents a value.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.api.errors import ConfigError
from pipeline.api.records import OCCLUSION_PARTS, Face
from pipeline.runs.reasons import QUALITY_REASONS

#: Seed-spelled threshold keys (§4) -> the response field names.
OCCLUSION_ALIASES = {"left_check": "left_cheek", "right_check": "right_cheek",
                     "chin_contour": "chin"}

DEFAULT_OCCLUSION: dict[str, float] = {
    "left_eye": 0.6, "right_eye": 0.6, "nose": 0.7, "mouth": 0.7,
    "left_cheek": 0.8, "right_cheek": 0.8, "chin": 0.6,
}

#: Every reason :func:`judge_face` can give, in the order it gives them.
REASON_ORDER: tuple[str, ...] = (
    "face_too_small", "no_qualities", "completeness", "blur", "illumination",
    "pose_yaw", "pose_pitch", "pose_roll",
) + tuple(f"occlusion_{part}" for part in OCCLUSION_PARTS)

# Scalar TOML / --threshold keys -> Thresholds field. min_face_size is handled apart.
_SCALAR_KEYS = {
    "blur": "blur_max", "illumination": "illumination_min", "yaw": "yaw_max",
    "pitch": "pitch_max", "roll": "roll_max", "completeness": "completeness_min",
}


class FrozenMap(Mapping[str, float]):
    """A read-only, hashable ``str -> float`` mapping (keeps :class:`Thresholds` hashable)."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, float]) -> None:
        self._items = tuple(sorted((str(k), float(v)) for k, v in items.items()))

    def __getitem__(self, key: str) -> float:
        for name, value in self._items:
            if name == key:
                return value
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self) == dict(other)

    def __repr__(self) -> str:
        return f"FrozenMap({dict(self._items)!r})"


def _default_occlusion() -> FrozenMap:
    return FrozenMap(DEFAULT_OCCLUSION)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Bounds of the gate. Angles in degrees, sizes in pixels, the rest on the API's scales.

    ``*_max`` are upper bounds (the value must be strictly below), ``*_min`` lower
    bounds (strictly above), except ``min_face_width`` / ``min_face_height`` (at least).
    ``occlusion`` maps a response part name (``left_eye`` ... ``chin``) to its upper bound.
    """

    occlusion: Mapping[str, float] = field(default_factory=_default_occlusion)
    blur_max: float = 0.7
    illumination_min: float = 40.0
    yaw_max: float = 20.0
    pitch_max: float = 20.0
    roll_max: float = 20.0
    completeness_min: float = 0.5
    min_face_width: int = 100
    min_face_height: int = 100

    def __post_init__(self) -> None:
        if not isinstance(self.occlusion, FrozenMap):
            object.__setattr__(self, "occlusion", FrozenMap(self.occlusion))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form, for a run's settings.json (occlusion parts in API order)."""
        occ = {p: self.occlusion[p] for p in OCCLUSION_PARTS if p in self.occlusion}
        return {
            "occlusion": occ, "blur_max": self.blur_max,
            "illumination_min": self.illumination_min, "yaw_max": self.yaw_max,
            "pitch_max": self.pitch_max, "roll_max": self.roll_max,
            "completeness_min": self.completeness_min,
            "min_face_width": self.min_face_width, "min_face_height": self.min_face_height,
        }


def thresholds_from_dict(values: Mapping[str, Any]) -> Thresholds:
    """The inverse of :meth:`Thresholds.to_dict` (a run's ``run.json`` ``thresholds``)."""
    known = set(Thresholds.__dataclass_fields__)
    rest = {k: v for k, v in values.items() if k in known and k != "occlusion"}
    return Thresholds(occlusion=FrozenMap(values.get("occlusion") or DEFAULT_OCCLUSION), **rest)


# --------------------------------------------------------------------------- loading


def valid_keys() -> list[str]:
    """Every key a TOML file or ``--threshold KEY=VALUE`` accepts."""
    occ = [f"occlusion.{p}" for p in OCCLUSION_PARTS]
    occ += [f"occlusion.{a}" for a in OCCLUSION_ALIASES]
    return [*_SCALAR_KEYS, "min_face_size", *occ]


def build_thresholds(
    doc: Mapping[str, Any] | None = None, overrides: Mapping[str, str] | None = None,
    base: Thresholds | None = None, source: str = "the thresholds",
) -> Thresholds:
    """Defaults (or ``base``), then ``doc`` (a parsed TOML document named ``source``),
    then ``overrides`` (``--threshold`` texts, e.g. ``"occlusion.mouth": "0.6"``).

    Raises :class:`ConfigError` naming the bad key (and listing the valid ones) for an
    unknown key or a value that is not a non-negative number. Reading the file is
    :func:`pipeline.enroll.thresholds.load_thresholds`'s job: the gate does no I/O.
    """
    values: dict[str, Any] = {}
    occlusion = dict(DEFAULT_OCCLUSION)
    if base is not None:
        values = {k: v for k, v in base.to_dict().items() if k != "occlusion"}
        occlusion = dict(base.occlusion)
    if doc is not None:
        _apply(doc, values, occlusion, source=source)
    for key, text in (overrides or {}).items():
        _apply_one(key.strip(), _parse_number(key, text), values, occlusion, "--threshold")
    return Thresholds(occlusion=FrozenMap(occlusion), **values)


def _apply(doc: Mapping[str, Any], values: dict, occlusion: dict, source: str) -> None:
    for key, value in doc.items():
        if key == "occlusion" and isinstance(value, Mapping):
            for part, bound in value.items():
                _apply_one(f"occlusion.{part}", bound, values, occlusion, source)
        else:
            _apply_one(key, value, values, occlusion, source)


def _apply_one(key: str, value: object, values: dict, occlusion: dict, source: str) -> None:
    if key == "min_face_size":
        values["min_face_width"], values["min_face_height"] = _face_size(value, source)
        return
    if key.startswith("occlusion."):
        part = key.removeprefix("occlusion.")
        part = OCCLUSION_ALIASES.get(part, part)
        if part in OCCLUSION_PARTS:
            occlusion[part] = _number(key, value, source)
            return
    elif key in _SCALAR_KEYS:
        values[_SCALAR_KEYS[key]] = _number(key, value, source)
        return
    raise ConfigError(
        f"unknown threshold {key!r} in {source}; valid keys: {', '.join(valid_keys())}"
    )


def _number(key: str, value: object, source: str) -> float:
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
            or not math.isfinite(value) or value < 0):
        raise ConfigError(
            f"threshold {key!r} in {source} must be a non-negative number, got {value!r}"
        )
    return float(value)


def _face_size(value: object, source: str) -> tuple[int, int]:
    """``100`` (square) or ``[w, h]``; from the command line also ``"120x100"``/``"120,100"``."""
    if isinstance(value, str):
        try:
            parts = [float(p) for p in value.lower().replace("x", ",").split(",")]
        except ValueError:
            raise ConfigError(
                f"min_face_size in {source} must be N, WxH or W,H pixels, got {value!r}"
            ) from None
        value = parts[0] if len(parts) == 1 else parts
    pair = value if isinstance(value, list) and len(value) == 2 else [value, value]
    w, h = (_number("min_face_size", v, source) for v in pair)
    if w != int(w) or h != int(h):
        raise ConfigError(f"min_face_size in {source} must be whole pixels, got {value!r}")
    return int(w), int(h)


def _parse_number(key: str, text: object) -> object:
    if not isinstance(text, str) or key.strip() == "min_face_size":
        return text
    try:
        return float(text)
    except ValueError:
        raise ConfigError(
            f"--threshold {key}={text!r}: the value is not a number "
            f"(valid keys: {', '.join(valid_keys())})"
        ) from None


# --------------------------------------------------------------------------- judging


@dataclass(frozen=True, slots=True)
class QualityMetrics:
    """The numbers the gate looked at, flat (one Parquet column each); None = not reported."""

    blur: float | None = None
    illumination: float | None = None
    completeness: float | None = None
    yaw: float | None = None
    pitch: float | None = None
    roll: float | None = None
    occlusion_left_eye: float | None = None
    occlusion_right_eye: float | None = None
    occlusion_nose: float | None = None
    occlusion_mouth: float | None = None
    occlusion_left_cheek: float | None = None
    occlusion_right_cheek: float | None = None
    occlusion_chin: float | None = None
    face_width: float | None = None
    face_height: float | None = None
    face_probability: float | None = None


@dataclass(frozen=True, slots=True)
class QualityVerdict:
    """``passed`` is True iff ``reasons`` is empty; reasons follow :data:`REASON_ORDER`."""

    passed: bool
    reasons: tuple[str, ...]
    metrics: QualityMetrics


@dataclass(frozen=True, slots=True)
class FaceChoice:
    """Which face of a detect reply a row goes on with, and why (not)."""

    status: str  # "ok" | "no_face" | "multiple_faces" | "rejected_quality"
    face: Face | None
    verdict: QualityVerdict | None
    reasons: tuple[str, ...]


def metrics_of(face: Face) -> QualityMetrics:
    """Flatten a face's box, pose and qualities into :class:`QualityMetrics`."""
    q = face.qualities
    occ = {f"occlusion_{p}": _opt(q.occlusion.get(p)) for p in OCCLUSION_PARTS} if q else {}
    return QualityMetrics(
        blur=_opt(q.blur) if q else None,
        illumination=_opt(q.illumination) if q else None,
        completeness=_opt(q.completeness) if q else None,
        yaw=_opt(face.yaw), pitch=_opt(face.pitch), roll=_opt(face.roll),
        face_width=_opt(face.location.width), face_height=_opt(face.location.height),
        face_probability=_opt(face.face_probability),
        **occ,
    )


def judge_face(face: Face, thresholds: Thresholds) -> QualityVerdict:
    """Apply every check to one face; see the module docstring for the rules."""
    return judge_metrics(metrics_of(face), thresholds, has_qualities=face.qualities is not None)


def judge_metrics(m: QualityMetrics, thresholds: Thresholds, *, has_qualities: bool
                  ) -> QualityVerdict:
    """:func:`judge_face` on the flat numbers (what outcomes store): offline re-gating
    judges the same way. ``has_qualities`` False fails with ``no_qualities``."""
    t = thresholds
    failed = {
        "face_too_small": _below(m.face_width, t.min_face_width)
        or _below(m.face_height, t.min_face_height),
        "no_qualities": not has_qualities,
        "completeness": _not_above(m.completeness, t.completeness_min),
        "blur": _not_below(m.blur, t.blur_max),
        "illumination": _not_above(m.illumination, t.illumination_min),
        "pose_yaw": _not_below(_abs(m.yaw), t.yaw_max),
        "pose_pitch": _not_below(_abs(m.pitch), t.pitch_max),
        "pose_roll": _not_below(_abs(m.roll), t.roll_max),
    }
    for part in OCCLUSION_PARTS:
        bound = t.occlusion.get(part)
        value = getattr(m, f"occlusion_{part}")
        failed[f"occlusion_{part}"] = bound is not None and _not_below(value, bound)
    reasons = tuple(r for r in REASON_ORDER if failed.get(r))
    return QualityVerdict(passed=not reasons, reasons=reasons, metrics=m)


def choose_face(
    faces: Sequence[Face], thresholds: Thresholds, *, largest_face: bool = False
) -> FaceChoice:
    """0 faces -> ``no_face``; several -> ``multiple_faces`` unless ``largest_face``
    (then the largest box by area is judged; the first in reply order wins a tie);
    one -> judged. A judged face gives ``ok`` or ``rejected_quality``.
    """
    if not faces:
        return FaceChoice("no_face", None, None, ("no_face",))
    if len(faces) > 1 and not largest_face:
        return FaceChoice("multiple_faces", None, None, ("multiple_faces",))
    face = max(faces, key=lambda f: f.area)  # max() keeps the first of equal areas
    verdict = judge_face(face, thresholds)
    status = "ok" if verdict.passed else "rejected_quality"
    return FaceChoice(status, face, verdict, verdict.reasons)


# A missing value is not judged; a non-finite one (NaN) fails, since it proves nothing.
def _not_below(value: float | None, bound: float) -> bool:
    return value is not None and not value < bound


def _not_above(value: float | None, bound: float) -> bool:
    return value is not None and not value > bound


def _below(value: float | None, bound: float) -> bool:
    return value is not None and not value >= bound


def _abs(value: float | None) -> float | None:
    return None if value is None else abs(value)


def _opt(value: object) -> float | None:
    if value is None:
        return None
    try:
        return float(value)  # type: ignore[arg-type]  # whatever the service sent
    except (TypeError, ValueError):
        return math.nan  # present but not a number: judged as failing


# --------------------------------------------------------------------------- reasons

_PART_WORDS = {"left_eye": "left eye", "right_eye": "right eye", "nose": "nose",
               "mouth": "mouth", "left_cheek": "left cheek", "right_cheek": "right cheek",
               "chin": "chin"}


def reason_texts(t: Thresholds) -> dict[str, str]:
    """Reason slug -> the catalogue's sentence with the bound of ``t`` written after it."""
    bounds = {
        "face_too_small": f"{t.min_face_width}x{t.min_face_height} px",
        "completeness": f"completeness <= {t.completeness_min:g}",
        "blur": f"blur >= {t.blur_max:g}",
        "illumination": f"illumination <= {t.illumination_min:g}",
        "pose_yaw": f"|yaw| >= {t.yaw_max:g} degrees",
        "pose_pitch": f"|pitch| >= {t.pitch_max:g} degrees",
        "pose_roll": f"|roll| >= {t.roll_max:g} degrees",
        **{f"occlusion_{part}": f"occlusion >= {bound:g}" for part, bound in t.occlusion.items()},
    }
    return {slug: f"{text} ({bounds[slug]})" if slug in bounds else text
            for slug, text in QUALITY_REASONS.items()}


#: The outcome columns :func:`failed_checks` reads.
METRIC_KEYS: tuple[str, ...] = ("blur", "illumination", "completeness", "yaw", "pitch", "roll",
                                *(f"occlusion_{part}" for part in OCCLUSION_PARTS))


def failed_checks(reasons: Sequence[str], values: Mapping[str, Any], t: Thresholds
                  ) -> list[str]:
    """Each failed check of ``reasons`` as "value vs bound", e.g. ``"yaw 27.1 ≥ 20"``.

    ``values``: an outcome's metric columns (``yaw``, ``blur``, ``face_width``,
    ``occlusion_mouth``...). Reasons without a measured value are left out.
    """
    return [text for reason in reasons if (text := _check_text(reason, values, t))]


#: Checks of one value against one bound: reason -> (operator that failed, the
#: Thresholds field, format of the value).
_BOUNDS = {"completeness": ("≤", "completeness_min", ".2f"), "blur": ("≥", "blur_max", ".2f"),
           "illumination": ("≤", "illumination_min", ".0f")}


def _check_text(reason: str, values: Mapping[str, Any], t: Thresholds) -> str | None:
    if reason == "face_too_small":
        width = values.get("face_width")
        return None if width is None else (
            f"face {width:.0f}x{values.get('face_height') or 0:.0f} "
            f"< {t.min_face_width}x{t.min_face_height} px")
    if reason.startswith("pose_"):
        axis = reason.removeprefix("pose_")
        angle, limit = values.get(axis), float(getattr(t, f"{axis}_max"))
        if angle is None:
            return None
        op, shown = ("≤", -limit) if angle < 0 else ("≥", limit)
        return f"{axis} {float(angle):.1f} {op} {shown:g}"
    value = values.get(reason)
    if reason.startswith("occlusion_"):
        part = reason.removeprefix("occlusion_")
        bound = t.occlusion.get(part)
        return None if value is None or bound is None else (
            f"{_PART_WORDS.get(part, part)} occlusion {value:.2f} ≥ {bound:g}")
    if reason not in _BOUNDS or value is None:
        return None
    op, field_name, fmt = _BOUNDS[reason]
    return f"{reason} {value:{fmt}} {op} {getattr(t, field_name):g}"


#: Reason slug -> sentence at the default thresholds (the report's legend).
REASON_TEXT: dict[str, str] = reason_texts(Thresholds())
