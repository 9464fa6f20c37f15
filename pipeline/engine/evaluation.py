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
