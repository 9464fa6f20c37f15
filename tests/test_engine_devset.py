"""Calibration on the labelled dev set ../shared/faces (skipped when it is absent).

Same-person pairs of distinct photos should score >= 80, different people < 80, and the
detector should count the faces of most photos right. Thresholds allow a miss or two:
these 29 files are for development, not the evaluation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.engine import models as M
from pipeline.engine.evaluation import distinct_pairs, load_labels, pair_photos, pair_rates
from pipeline.engine.scoring import pair_score

pytestmark = [pytest.mark.dlib, pytest.mark.devset]


@pytest.fixture(scope="module")
def analysed(devset_dir: Path) -> dict[Path, M.ImageAnalysis]:
    options = M.AnalyseOptions(max_faces=10, descriptor=False)
    out = {}
    for photo in load_labels(devset_dir):
        result = M.analyse(photo.path.read_bytes(), options)
        assert isinstance(result, M.ImageAnalysis), photo.path.name
        out[photo.path] = result
    return out


def test_same_person_scores_80_or_more_and_others_less(devset_dir: Path) -> None:
    photos = load_labels(devset_dir)
    options = M.AnalyseOptions(max_faces=1, descriptor=True)
    descriptors: dict[Path, np.ndarray] = {}
    for photo in pair_photos(photos):
        result = M.analyse(photo.path.read_bytes(), options)
        if isinstance(result, M.ImageAnalysis) and result.faces:
            descriptors[photo.path] = result.faces[0].descriptor  # type: ignore[assignment]
    scored = [(p, pair_score(descriptors[p.a], descriptors[p.b]))
              for p in distinct_pairs(photos) if p.a in descriptors and p.b in descriptors]
    rates = pair_rates(scored, 80.0)
    assert rates.genuine >= 10 and rates.impostor >= 100
    assert rates.tar >= 0.9, rates
    assert rates.far <= 0.02, rates


def test_face_counts_match_the_labels(devset_dir: Path, analysed: dict) -> None:
    photos = load_labels(devset_dir)
    right = [p.path.name for p in photos if analysed[p.path].face_count == p.faces_expected]
    assert len(right) >= len(photos) - 2, sorted(set(p.path.name for p in photos) - set(right))
    no_face = [p for p in photos if p.faces_expected == 0]
    assert all(analysed[p.path].face_count == 0 for p in no_face)
