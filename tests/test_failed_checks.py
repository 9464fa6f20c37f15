"""The words under a rejected thumbnail: each failed check with its value and bound."""

from __future__ import annotations

import pytest

from pipeline.enroll.gate import Thresholds, failed_checks

VALUES = {"yaw": 27.14, "pitch": -31.0, "roll": 3.0, "blur": 0.83, "illumination": 21.0,
          "completeness": 0.2, "occlusion_mouth": 0.91, "face_width": 80.0,
          "face_height": 90.0}


@pytest.mark.parametrize(("reason", "text"), [
    ("pose_yaw", "yaw 27.1 ≥ 20"),
    ("pose_pitch", "pitch -31.0 ≤ -20"),
    ("blur", "blur 0.83 ≥ 0.7"),
    ("illumination", "illumination 21 ≤ 40"),
    ("completeness", "completeness 0.20 ≤ 0.5"),
    ("occlusion_mouth", "mouth occlusion 0.91 ≥ 0.7"),
    ("face_too_small", "face 80x90 < 100x100 px"),
], ids=lambda v: v if isinstance(v, str) and " " not in v else None)
def test_each_check_says_value_and_bound(reason: str, text: str) -> None:
    assert failed_checks([reason], VALUES, Thresholds()) == [text]


def test_the_runs_own_bounds_and_missing_values() -> None:
    assert failed_checks(["pose_yaw", "pose_roll"], {"yaw": 27.1},
                         Thresholds(yaw_max=25)) == ["yaw 27.1 ≥ 25"]
    assert failed_checks(["no_face", "duplicate_row"], VALUES, Thresholds()) == []
