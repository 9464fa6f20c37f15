"""The calibrated score curve (pipeline/engine/scoring.py) and the calibration helpers
(pipeline/engine/evaluation.py), on made-up numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.engine import scoring
from pipeline.engine.evaluation import (
    LabelledPhoto,
    face_pairs,
    labelled_faces,
    normal_fit,
    roc_points,
)


@pytest.mark.parametrize(("score", "far"), scoring.SCORE_FAR,
                         ids=[f"{s:g}" for s, _ in scoring.SCORE_FAR])
def test_each_anchor_score_sits_at_its_modelled_false_accept_rate(score: float, far: float):
    d = scoring.DLIB.distance_at_far(far)
    assert scoring.score_from_distance(d) == pytest.approx(score)
    assert scoring.DLIB.far_at_distance(d) == pytest.approx(far, rel=1e-6)
    assert score == pytest.approx(40 - 10 * np.log10(far))


def test_curve_is_monotone_and_bounded():
    d = np.linspace(-0.1, 2.0, 400)
    scores = scoring.score_from_distance(d)
    assert np.all(np.diff(scores) <= 0)
    assert scores.max() == 100.0 and scores.min() == 0.0
    assert scoring.score_from_distance(0.0) == 100.0
    assert scoring.score_from_distance(scoring.ZERO_DISTANCE) == 0.0


def test_old_bound_no_longer_reaches_80_and_copies_still_score_high():
    # The old mapping put 80 at 0.42 (raw 0.6): the model puts FAR ~2e-3 there.
    assert scoring.score_from_distance(0.42) < 70
    assert scoring.DLIB.far_at_distance(0.42) > 1e-3
    assert scoring.score_from_distance(scoring.SAME_IMAGE_DISTANCE) > 98
    assert scoring.score_from_distance(scoring.MATCH_DISTANCE) == pytest.approx(80.0)


def test_another_calibration_moves_the_anchors():
    wide = scoring.Calibration("wide", impostor_mean=0.8, impostor_sd=0.1)
    assert wide.distance_at_far(1e-4) > scoring.DLIB.distance_at_far(1e-4)
    assert scoring.score_from_distance(0.4, wide) > scoring.score_from_distance(0.4)


def test_normal_fit_and_roc_points():
    mean, sd = normal_fit([1.0, 2.0, 3.0])
    assert (mean, sd) == pytest.approx((2.0, 1.0))
    with pytest.raises(ValueError):
        normal_fit([1.0])
    points = roc_points([(True, 95.0), (True, 75.0), (False, 81.0), (False, 10.0)], [80.0])
    assert points == [{"score": 80.0, "genuine_pairs": 2, "true_accepts": 1,
                       "impostor_pairs": 2, "false_accepts": 1, "TAR": 0.5, "FAR": 0.5}]


def test_group_faces_are_distinct_people_and_same_source_crops_are_not_paired():
    group = LabelledPhoto(Path("g.jpg"), "__multiple__", 3)
    obama = LabelledPhoto(Path("barack_obama_03.jpg"), "barack_obama", 1)
    biden = LabelledPhoto(Path("joe_biden_01.jpg"), "joe_biden", 1)
    none = LabelledPhoto(Path("cat.png"), "__none__", 0)
    faces = (labelled_faces(group, 2) + labelled_faces(obama, 1) + labelled_faces(biden, 1)
             + labelled_faces(none, 1) + labelled_faces(obama, 0))
    assert [f.identity for f in faces] == ["g.jpg#0", "g.jpg#1", "barack_obama", "joe_biden"]
    pairs = face_pairs(faces)
    assert len(pairs) == 5  # 6 pairs minus the two crops of one White House photo
    assert not any(same for _, _, same in pairs)
