"""The quality gate: every bound (just inside, equal, outside), loading, face choice."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from pipeline.api.errors import ConfigError
from pipeline.api.records import OCCLUSION_PARTS, Box, Face, Qualities
from pipeline.enroll.gate import (
    REASON_ORDER,
    REASON_TEXT,
    Thresholds,
    choose_face,
    judge_face,
)
from pipeline.enroll.thresholds import load_thresholds

ROOT = Path(__file__).resolve().parent.parent
GOOD_OCCLUSION = {part: 0.0 for part in OCCLUSION_PARTS}


def make_face(**kw: float) -> Face:
    """A face that passes every default check; keyword arguments change one metric."""
    occlusion = dict(GOOD_OCCLUSION)
    for part in OCCLUSION_PARTS:
        if f"occlusion_{part}" in kw:
            occlusion[part] = kw.pop(f"occlusion_{part}")
    qualities = Qualities(
        occlusion=occlusion, blur=kw.pop("blur", 0.01),
        illumination=kw.pop("illumination", 140.0),
        completeness=kw.pop("completeness", 1.0),
    )
    box = Box(10, 10, kw.pop("width", 180.0), kw.pop("height", 180.0))
    face = Face(location=box, face_probability=1.0, rotation_angle=0,
                yaw=kw.pop("yaw", 1.0), pitch=kw.pop("pitch", -2.0), roll=kw.pop("roll", 0.5),
                qualities=qualities)
    assert not kw, kw
    return face


# (metric, value, expected reason or None). Equal to a bound fails, except face size.
BOUNDS = [
    ("blur", 0.69, None), ("blur", 0.7, "blur"), ("blur", 0.71, "blur"),
    ("illumination", 41, None), ("illumination", 40, "illumination"),
    ("illumination", 39, "illumination"),
    ("completeness", 1, None), ("completeness", 0.5, "completeness"),
    ("completeness", 0, "completeness"),
    ("yaw", 19.9, None), ("yaw", 20, "pose_yaw"), ("yaw", -20, "pose_yaw"), ("yaw", -19.9, None),
    ("pitch", -19.9, None), ("pitch", -20, "pose_pitch"), ("pitch", 25, "pose_pitch"),
    ("roll", 19.9, None), ("roll", 20, "pose_roll"), ("roll", -30, "pose_roll"),
    ("width", 100, None), ("width", 99, "face_too_small"), ("height", 100, None),
    ("height", 99.5, "face_too_small"),
]
for _part, _bound in [("left_eye", 0.6), ("right_eye", 0.6), ("nose", 0.7), ("mouth", 0.7),
                      ("left_cheek", 0.8), ("right_cheek", 0.8), ("chin", 0.6)]:
    BOUNDS += [(f"occlusion_{_part}", round(_bound - 0.01, 2), None),
               (f"occlusion_{_part}", _bound, f"occlusion_{_part}"),
               (f"occlusion_{_part}", round(_bound + 0.01, 2), f"occlusion_{_part}")]


@pytest.mark.parametrize(
    ("metric", "value", "reason"), BOUNDS, ids=[f"{m}={v}" for m, v, _ in BOUNDS]
)
def test_each_default_bound(metric: str, value: float, reason: str | None) -> None:
    verdict = judge_face(make_face(**{metric: value}), Thresholds())
    assert verdict.reasons == ((reason,) if reason else ())
    assert verdict.passed is (reason is None)


def test_reasons_come_in_the_documented_order_and_metrics_are_flat() -> None:
    face = make_face(occlusion_chin=0.9, yaw=-45, blur=0.9, width=50, occlusion_left_eye=1)
    verdict = judge_face(face, Thresholds())
    assert verdict.reasons == ("face_too_small", "blur", "pose_yaw",
                               "occlusion_left_eye", "occlusion_chin")
    assert list(verdict.reasons) == [r for r in REASON_ORDER if r in verdict.reasons]
    assert (verdict.metrics.yaw, verdict.metrics.occlusion_chin) == (-45, 0.9)
    assert verdict.metrics.face_width == 50 and verdict.metrics.face_probability == 1.0


def test_no_qualities_still_judges_size_and_pose() -> None:
    face = dataclasses.replace(make_face(roll=33), qualities=None)
    verdict = judge_face(face, Thresholds())
    assert verdict.reasons == ("no_qualities", "pose_roll")
    assert verdict.metrics.blur is None and verdict.metrics.occlusion_nose is None


def test_missing_occlusion_part_is_not_judged_but_nan_fails() -> None:
    face = make_face()
    occ = {p: v for p, v in GOOD_OCCLUSION.items() if p != "nose"}
    q = dataclasses.replace(face.qualities, occlusion=occ, blur=float("nan"))
    verdict = judge_face(dataclasses.replace(face, qualities=q), Thresholds())
    assert verdict.reasons == ("blur",)
    assert verdict.metrics.occlusion_nose is None


# ---------------------------------------------------------------- loading thresholds


def test_example_toml_holds_the_defaults() -> None:
    assert load_thresholds(ROOT / "data" / "thresholds.example.toml") == Thresholds()
    assert load_thresholds() == Thresholds()


@pytest.mark.parametrize(
    ("alias", "part"),
    [("left_check", "left_cheek"), ("right_check", "right_cheek"), ("chin_contour", "chin")],
    ids=["left_check", "right_check", "chin_contour"],
)
def test_seed_spellings_are_aliases(tmp_path: Path, alias: str, part: str) -> None:
    path = tmp_path / "t.toml"
    path.write_text(f"[occlusion]\n{alias} = 0.33\n")
    thresholds = load_thresholds(path)
    assert thresholds.occlusion[part] == 0.33
    assert load_thresholds(overrides={f"occlusion.{alias}": "0.2"}).occlusion[part] == 0.2


def test_toml_values_and_face_size_forms(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text("blur = 0.5\nyaw = 15\ncompleteness = 0.4\nmin_face_size = [120, 80]\n"
                    "[occlusion]\nmouth = 0.65\n")
    t = load_thresholds(path)
    assert (t.blur_max, t.yaw_max, t.completeness_min) == (0.5, 15.0, 0.4)
    assert (t.min_face_width, t.min_face_height) == (120, 80)
    assert t.occlusion["mouth"] == 0.65 and t.occlusion["nose"] == 0.7
    path.write_text("min_face_size = 64\n")
    assert (load_thresholds(path).min_face_width, load_thresholds(path).min_face_height) == (64, 64)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("blurr = 0.5\n", "'blurr'"),
        ("blur = 'soft'\n", "'blur'"),
        ("blur = true\n", "'blur'"),
        ("yaw = -3\n", "'yaw'"),
        ("[occlusion]\near = 0.5\n", "'occlusion.ear'"),
        ("min_face_size = [1, 2, 3]\n", "min_face_size"),
        ("min_face_size = 99.5\n", "whole pixels"),
        ("blur = = 1\n", "not valid TOML"),
    ],
    ids=["unknown", "string", "bool", "negative", "unknown-part", "size-3", "size-frac", "syntax"],
)
def test_toml_errors_name_the_key(tmp_path: Path, body: str, needle: str) -> None:
    path = tmp_path / "t.toml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[")):
        load_thresholds(path)


def test_unknown_key_lists_the_valid_ones_and_missing_file_is_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_thresholds(overrides={"sharpness": "1"})
    assert "'sharpness'" in str(info.value) and "occlusion.mouth" in str(info.value)
    with pytest.raises(ConfigError, match="cannot read thresholds file"):
        load_thresholds(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("overrides", "field", "expected"),
    [
        ({"blur": "0.5"}, "blur_max", 0.5),
        ({"yaw": "15"}, "yaw_max", 15.0),
        ({"illumination": "60"}, "illumination_min", 60.0),
        ({"min_face_size": "120x90"}, "min_face_width", 120),
        ({"min_face_size": "80"}, "min_face_height", 80),
    ],
    ids=["blur", "yaw", "illumination", "size-wxh", "size-square"],
)
def test_overrides(overrides: dict[str, str], field: str, expected: float) -> None:
    assert getattr(load_thresholds(overrides=overrides), field) == expected


def test_override_beats_file_and_rejects_text(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text("blur = 0.5\n[occlusion]\nmouth = 0.6\n")
    t = load_thresholds(path, {"blur": "0.3", "occlusion.mouth": "0.55"})
    assert (t.blur_max, t.occlusion["mouth"]) == (0.3, 0.55)
    with pytest.raises(ConfigError, match="blur='high'.*not a number"):
        load_thresholds(overrides={"blur": "high"})


def test_thresholds_are_hashable_and_serialise() -> None:
    t = load_thresholds(overrides={"occlusion.nose": "0.5"})
    assert hash(t) == hash(load_thresholds(overrides={"occlusion.nose": "0.5"}))
    assert t != Thresholds()
    doc = json.loads(json.dumps(t.to_dict()))
    assert doc["occlusion"]["nose"] == 0.5 and list(doc["occlusion"]) == list(OCCLUSION_PARTS)
    assert doc["blur_max"] == 0.7 and doc["min_face_width"] == 100
    with pytest.raises(TypeError):
        t.occlusion["nose"] = 0.1  # type: ignore[index]


def test_custom_thresholds_change_the_verdict() -> None:
    face = make_face(blur=0.6)
    assert judge_face(face, Thresholds()).passed
    assert judge_face(face, load_thresholds(overrides={"blur": "0.5"})).reasons == ("blur",)


# ---------------------------------------------------------------- choosing a face


def test_choose_face_cases() -> None:
    t = Thresholds()
    small, big = make_face(width=120, height=120), make_face(width=300, height=300, blur=0.9)
    assert choose_face([], t).status == "no_face"
    assert choose_face([], t).reasons == ("no_face",)
    several = choose_face([small, big], t)
    assert (several.status, several.face, several.reasons) == (
        "multiple_faces", None, ("multiple_faces",))
    largest = choose_face([small, big], t, largest_face=True)
    assert (largest.status, largest.face, largest.reasons) == ("rejected_quality", big, ("blur",))
    one = choose_face([small], t)
    assert one.status == "ok" and one.face is small and one.verdict is not None


def test_reason_text_covers_every_slug_with_bounds() -> None:
    for slug in (*REASON_ORDER, "no_face", "multiple_faces"):
        assert REASON_TEXT[slug]
    assert REASON_TEXT["blur"] == "the face is blurred (blur >= 0.7)"
    assert "0.6" in REASON_TEXT["occlusion_chin"]
