"""Pair accuracy on a labelled photo folder (the dev set ../shared/faces and its labels.csv).

Used by the calibration test and benchmarks/engine.py. 1:1 pairs use distinct
single-face photos only: derived copies (crops, rescales, format changes of another file)
are left out, as are multi-face and no-face photos, and pairs of crops of one source
photo (``SAME_SOURCE``) are not compared with each other.
"""

from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass
from pathlib import Path

#: Files that are copies of another file in the dev set (README "Duplicates").
DERIVED = frozenset({
    "barack_obama_01_crop_small.jpg", "barack_obama_01_letterbox_240p.jpg",
    "barack_obama_01_partial_face.jpg", "barack_obama_02_rgba.png",
})
#: Crops of one White House photo: never paired with each other.
SAME_SOURCE = frozenset({"barack_obama_03.jpg", "joe_biden_01.jpg", "obama_and_biden.jpg"})


@dataclass(frozen=True, slots=True)
class LabelledPhoto:
    path: Path
    identity: str
    faces_expected: int


@dataclass(frozen=True, slots=True)
class Pair:
    a: Path
    b: Path
    genuine: bool


def load_labels(folder: Path) -> list[LabelledPhoto]:
    """Rows of ``labels.csv`` (file, identity, faces_expected), in file order."""
    with open(folder / "labels.csv", newline="", encoding="utf-8") as handle:
        return [LabelledPhoto(folder / row["file"], row["identity"], int(row["faces_expected"]))
                for row in csv.DictReader(handle)]


def pair_photos(photos: list[LabelledPhoto]) -> list[LabelledPhoto]:
    """The photos that take part in 1:1 pairs: one face, one known identity, not derived."""
    return [p for p in photos if p.faces_expected == 1 and p.path.name not in DERIVED
            and not p.identity.startswith("__") and ";" not in p.identity]


def distinct_pairs(photos: list[LabelledPhoto]) -> list[Pair]:
    """Every pair of :func:`pair_photos` (genuine = same identity), minus same-source crops."""
    pairs = []
    for a, b in itertools.combinations(pair_photos(photos), 2):
        if a.path.name in SAME_SOURCE and b.path.name in SAME_SOURCE:
            continue
        pairs.append(Pair(a.path, b.path, a.identity == b.identity))
    return pairs


@dataclass(frozen=True, slots=True)
class PairRates:
    """At a score threshold: genuine pairs accepted (TAR) and impostor pairs accepted (FAR)."""

    genuine: int
    impostor: int
    true_accepts: int
    false_accepts: int

    @property
    def tar(self) -> float:
        return self.true_accepts / self.genuine if self.genuine else 0.0

    @property
    def far(self) -> float:
        return self.false_accepts / self.impostor if self.impostor else 0.0


def pair_rates(scored: list[tuple[Pair, float]], threshold: float) -> PairRates:
    """Rates for (pair, score) results; a pair is accepted when score >= threshold."""
    genuine = [s for p, s in scored if p.genuine]
    impostor = [s for p, s in scored if not p.genuine]
    return PairRates(len(genuine), len(impostor), sum(s >= threshold for s in genuine),
                     sum(s >= threshold for s in impostor))


# -- calibration (benchmarks/calibration.py, pipeline/engine/scoring.py) -----------------------

#: Dev-set files whose licence its README states: public domain (White House, NASA, US Navy)
#: or a named copyright holder (press and TV stills, used to measure only, never shipped).
#: Files of unknown licence are left out, and so is kit_harington_and_rose_leslie.jpg (which
#: face is whom would need the model being calibrated).
STATED_LICENCE = frozenset({
    "barack_obama_01.jpg", "barack_obama_02.jpg", "barack_obama_03.jpg", "joe_biden_01.jpg",
    "eileen_collins_astronaut.png", "grace_hopper.jpg", "kit_harington_02.jpeg",
    "alex_lacamoire_03.jpg", "group_friends_cast_6_faces.jpg", "group_3_faces_tracking_js.jpg",
})


@dataclass(frozen=True, slots=True)
class LabelledFace:
    """One face of a photo: ``identity`` is ``file#i`` for the faces of an unnamed group."""

    source: str
    identity: str
    index: int


def labelled_faces(photo: LabelledPhoto, faces_found: int) -> list[LabelledFace]:
    """The faces of ``photo`` usable for calibration: one for a single named person, every
    face found for a group of unnamed people (each a different person), none otherwise."""
    name = photo.path.name
    if photo.identity == "__multiple__":
        return [LabelledFace(name, f"{name}#{i}", i) for i in range(faces_found)]
    if photo.identity.startswith("__") or ";" in photo.identity or not faces_found:
        return []
    return [LabelledFace(name, photo.identity, 0)]


def face_pairs(faces: list[LabelledFace]) -> list[tuple[LabelledFace, LabelledFace, bool]]:
    """Every pair (a, b, same person) except crops of one source photo and a face with itself."""
    out = []
    for a, b in itertools.combinations(faces, 2):
        if a.source in SAME_SOURCE and b.source in SAME_SOURCE:
            continue
        out.append((a, b, a.identity == b.identity))
    return out


def normal_fit(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (the different-person distance model)."""
    if len(values) < 2:
        raise ValueError("need at least two distances to fit")
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, var ** 0.5


def roc_points(scored: list[tuple[bool, float]], thresholds: list[float]) -> list[dict]:
    """TAR/FAR at each score threshold for (same person, score) results."""
    genuine = [s for same, s in scored if same]
    impostor = [s for same, s in scored if not same]
    out = []
    for t in thresholds:
        ta, fa = sum(s >= t for s in genuine), sum(s >= t for s in impostor)
        out.append({"score": t, "genuine_pairs": len(genuine), "true_accepts": ta,
                    "impostor_pairs": len(impostor), "false_accepts": fa,
                    "TAR": round(ta / len(genuine), 4) if genuine else None,
                    "FAR": round(fa / len(impostor), 6) if impostor else None})
    return out
