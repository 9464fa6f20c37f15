"""Quality measures, pose, scores and the search index, on generated degradations.

The models run in this process (no HTTP): one ``Models`` for the module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipeline import variants as v
from pipeline.engine import models as M
from pipeline.engine.index import SearchIndex
from pipeline.engine.pose import _INDEXES, _MODEL, _rodrigues, estimate_pose
from pipeline.engine.scoring import MATCH_DISTANCE, score_from_distance
from pipeline.engine.store import Change, FaceRow

pytestmark = pytest.mark.dlib
OPTIONS = M.AnalyseOptions(max_faces=1, qualities=True)


@pytest.fixture(scope="module")
def models() -> M.Models:
    return M.Models()


@pytest.fixture(scope="module")
def obama(samples_dir: Path) -> Image.Image:
    return Image.open(samples_dir / "obama_01.jpg").convert("RGB")


def _face(models: M.Models, img: Image.Image) -> M.FaceAnalysis:
    faces = M.analyse_array(models, np.asarray(img.convert("RGB")), OPTIONS).faces
    assert faces, "no face found"
    return faces[0]


@pytest.fixture(scope="module")
def reference(models: M.Models, obama: Image.Image) -> M.FaceAnalysis:
    return _face(models, obama)


@pytest.mark.parametrize("name", ["obama_01.jpg", "obama_02.jpg", "biden_01.jpg",
                                  "astronaut.png"])
def test_normal_photos_pass_the_reference_thresholds(
    models: M.Models, samples_dir: Path, name: str
) -> None:
    q = _face(models, Image.open(samples_dir / name)).qualities
    assert q is not None
    assert q.blur < 0.7 and q.illumination > 40 and q.completeness == 1
    assert max(q.occlusion.values()) < 0.6


def test_more_blur_gives_higher_blur(models: M.Models, obama: Image.Image,
                                     reference: M.FaceAnalysis) -> None:
    width = reference.box[2]
    values = [_face(models, v.blurred(obama, width * k)).qualities.blur  # type: ignore[union-attr]
              for k in (0.0, 0.01, 0.05)]
    assert values[0] < values[1] < values[2]
    assert values[0] < 0.7 < values[2]  # a strong blur fails the reference gate


def test_darker_gives_lower_illumination(models: M.Models, obama: Image.Image) -> None:
    values = [_face(models, v.darkened(obama, f)).qualities.illumination  # type: ignore
              for f in (1.0, 0.5, 0.15)]
    assert values[0] > values[1] > values[2]
    assert values[0] > 40 > values[2]


@pytest.mark.parametrize("source", ["variant", "sample"])
def test_face_cut_by_the_border_is_incomplete(
    models: M.Models, obama: Image.Image, reference: M.FaceAnalysis, samples_dir: Path,
    source: str,
) -> None:
    img = (v.cropped_through_face(obama, reference.box) if source == "variant"
           else Image.open(samples_dir / "obama_partial_face.jpg"))
    assert _face(models, img).qualities.completeness == 0  # type: ignore[union-attr]
    assert reference.qualities.completeness == 1  # type: ignore[union-attr]


@pytest.mark.parametrize("colour", [(40, 90, 160), (128, 128, 128), (235, 235, 235)],
                         ids=["blue-mask", "grey-patch", "white-mask"])
def test_covered_mouth_is_occluded(models: M.Models, obama: Image.Image,
                                   reference: M.FaceAnalysis, colour: tuple) -> None:
    q = _face(models, v.mouth_covered(obama, reference.box, colour=colour)).qualities
    assert q is not None and reference.qualities is not None
    assert q.occlusion["mouth"] > 0.7
    assert q.occlusion["mouth"] > reference.qualities.occlusion["mouth"] + 0.5
    assert q.occlusion["left_eye"] < 0.6 and q.occlusion["right_eye"] < 0.6


def test_turned_head_has_larger_yaw(models: M.Models, obama: Image.Image,
                                    reference: M.FaceAnalysis) -> None:
    turned = _face(models, v.turned(obama, reference.box, squeeze=0.5))
    assert abs(reference.yaw) < 10
    assert abs(turned.yaw) > abs(reference.yaw) + 15


@pytest.mark.parametrize("angle", [-20, 12])
def test_rotation_gives_roll_and_rotation_angle(models: M.Models, obama: Image.Image,
                                                angle: int) -> None:
    face = _face(models, obama.rotate(-angle, expand=True, fillcolor="white"))
    assert face.roll == pytest.approx(angle, abs=4)
    assert face.rotation_angle == pytest.approx(angle, abs=4)


@pytest.mark.parametrize(("yaw", "pitch", "roll"), [(0, 0, 0), (25, 0, 0), (-15, 10, 5),
                                                     (5, -12, -20)])
def test_pose_recovers_a_synthetic_projection(yaw: float, pitch: float, roll: float) -> None:
    # Project the generic model with a known pose, then estimate it back.
    def rot(axis: int, degrees: float) -> np.ndarray:
        vec = np.zeros(3)
        vec[axis] = np.radians(degrees)
        return _rodrigues(vec)

    rotation = rot(2, roll) @ rot(1, -yaw) @ rot(0, pitch)
    cam = _MODEL @ rotation.T + np.array([0.0, 0.0, 4000.0])
    focal, size = 1000.0, (1000, 1000)
    nose = cam[0, :2] * focal / cam[0, 2] + 500
    # The estimator aims the camera at the nose tip; put the nose at the image centre.
    projected = cam[:, :2] * focal / cam[:, 2:3] + 500 - nose + 500
    points = np.zeros((68, 2))
    points[_INDEXES] = projected
    pose = estimate_pose(points, size)
    assert (pose.yaw, pose.pitch, pose.roll) == pytest.approx((yaw, pitch, roll), abs=1.5)


def test_score_function_anchor_points() -> None:  # see also tests/test_scoring.py
    assert score_from_distance(0.0) == 100.0
    assert score_from_distance(MATCH_DISTANCE) == pytest.approx(80.0)
    assert score_from_distance(1.5) == 0.0
    scores = score_from_distance(np.linspace(0, 1.2, 25))
    assert np.all(np.diff(scores) <= 0)  # monotone: nearer is never scored lower


def test_index_search_best_user_first_and_follows_removals() -> None:
    rng = np.random.default_rng(3)
    vecs = rng.normal(size=(50, 128)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    index = SearchIndex()
    rows = [FaceRow(i + 1, "g", f"u{i % 25}", "", vecs[i]) for i in range(50)]
    index.load(rows)
    hits = index.search(vecs[7], ["g", "absent"], top_users=3, per_user=2)
    assert hits[0].uid == "u7" and hits[0].distances[0] == pytest.approx(0.0, abs=1e-3)
    assert len({h.uid for h in hits}) == 3
    assert list(hits[0].distances) == sorted(hits[0].distances)
    index.apply(Change(removed=(8, 33)))  # both faces of u7
    assert index.search(vecs[7], ["g"], top_users=1)[0].uid != "u7"
    assert index.size("g") == 48


def test_analyse_rejects_bad_bytes_without_raising() -> None:
    result: Any = M.analyse(v.text_as_jpg(), OPTIONS)
    assert isinstance(result, M.ImageRejected) and result.code == 216201
