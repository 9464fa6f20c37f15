"""The dlib models and the one function the worker processes run: :func:`analyse`.

Models: HOG frontal face detector (or the MMOD CNN detector with ``detector="cnn"``),
the 68-point shape predictor (pose, landmarks, qualities), the 5-point shape predictor
and the 128-d ResNet descriptor (aligned with the 5 points, as face_recognition does).
Model files come from the ``face_recognition_models`` package, located with
importlib (importing it would import pkg_resources).

Models are loaded once per worker process by :func:`init_worker`, never at import time:
a dlib detector shared between threads crashes the process, and the descriptor holds
the GIL, so the engine runs :func:`analyse` in a process pool sized to the cores.

Detection size: images whose longest side exceeds 1024 px are detected on a copy scaled
to 1024 (HOG finds faces from about 80 px, so faces of ~80/scale px are found); images
under 600 px are upsampled once by dlib. When the scaled copy shows no face, detection
is tried again at 2048 px so small faces in large photos are still found. Boxes are
mapped back to original pixels; landmarks, qualities and descriptors use the original.

``face_probability`` maps the detector score s (0 is dlib's decision threshold; true
faces typically score 0.5-3) with a logistic: p = 1 / (1 + exp(-3 (s + 0.25))), so
s = 0 gives 0.68, s = 0.5 gives 0.90 and s = 1 gives 0.98.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.engine.images import ImageProblem, decode_image
from pipeline.engine.pose import estimate_pose
from pipeline.engine.qualities import FaceQualities, measure_qualities

DETECT_SIDE = 1024
RETRY_SIDE = 2048
UPSAMPLE_BELOW = 400


@dataclass(frozen=True, slots=True)
class AnalyseOptions:
    """What to compute. ``max_faces``: keep the largest N faces (by box area)."""

    max_faces: int = 1
    qualities: bool = False
    descriptor: bool = False


@dataclass(frozen=True, slots=True)
class FaceAnalysis:
    """One face. Pixels of the original (upright) image; angles in degrees."""

    box: tuple[float, float, float, float]  # left, top, width, height
    score: float  # raw detector score
    probability: float  # 0-1, see the module docstring
    rotation_angle: int
    yaw: float
    pitch: float
    roll: float
    landmark: tuple[tuple[float, float], ...]  # image-left eye, image-right eye, nose, mouth
    qualities: FaceQualities | None
    descriptor: np.ndarray | None  # (128,) float32, unit length


@dataclass(frozen=True, slots=True)
class ImageAnalysis:
    """An analysed image: ``faces`` are the largest first; ``face_count`` counts all found."""

    width: int
    height: int
    sha256: str
    faces: tuple[FaceAnalysis, ...]
    face_count: int


@dataclass(frozen=True, slots=True)
class ImageRejected:
    """The image could not be used: the API error code and message to answer."""

    code: int
    message: str


def model_dir() -> Path:
    """Folder holding the dlib ``.dat`` files of face_recognition_models."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("face_recognition_models is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


class Models:
    """The loaded dlib models of one process. Not thread-safe: one per process."""

    def __init__(self, detector: str = "hog") -> None:
        import dlib  # imported here so `import pipeline.engine` stays light

        folder = model_dir()
        self.kind = detector
        if detector == "cnn":
            self.detector = dlib.cnn_face_detection_model_v1(
                str(folder / "mmod_human_face_detector.dat")
            )
        elif detector == "hog":
            self.detector = dlib.get_frontal_face_detector()
        else:
            raise ValueError(f"unknown detector {detector!r}: use hog or cnn")
        self.sp68 = dlib.shape_predictor(str(folder / "shape_predictor_68_face_landmarks.dat"))
        self.sp5 = dlib.shape_predictor(str(folder / "shape_predictor_5_face_landmarks.dat"))
        self.facerec = dlib.face_recognition_model_v1(
            str(folder / "dlib_face_recognition_resnet_model_v1.dat")
        )
        self.dlib = dlib


_MODELS: Models | None = None


def init_worker(detector: str = "hog") -> None:
    """Process-pool initializer: load the models once in this process.

    Also starts a watchdog: a worker whose engine was killed (SIGKILL skips the pool's
    shutdown) would otherwise live on, holding ~170 MB and its parent's pipes.
    """
    global _MODELS
    _watch_parent()
    if _MODELS is None or _MODELS.kind != detector:
        _MODELS = Models(detector)


def _watch_parent(period: float = 1.0) -> None:
    import os
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(period)
        os._exit(0)  # orphaned: the engine is gone, nobody will send work again

    threading.Thread(target=watch, name="faceflow-parent-watch", daemon=True).start()


def warm_up() -> int:
    """A no-op task that proves the worker loaded its models; returns its pid."""
    import os

    if _MODELS is None:
        init_worker()
    return os.getpid()


def analyse(data: bytes, options: AnalyseOptions) -> ImageAnalysis | ImageRejected:
    """Decode ``data`` and analyse its faces. Never raises for a bad image."""
    if _MODELS is None:
        init_worker()
    assert _MODELS is not None
    try:
        rgb = decode_image(data)
    except ImageProblem as problem:
        return ImageRejected(problem.code, problem.message)
    return analyse_array(_MODELS, rgb, options, hashlib.sha256(data).hexdigest())


def analyse_array(
    models: Models, rgb: np.ndarray, options: AnalyseOptions, sha256: str = ""
) -> ImageAnalysis:
    """Analyse an upright RGB array (see :func:`analyse`)."""
    found = detect_faces(models, rgb)
    found.sort(key=lambda item: -(item[0].width() * item[0].height()))  # type: ignore[attr-defined]
    faces = tuple(_describe(models, rgb, rect, score, options) for rect, score in
                  found[: max(0, options.max_faces)])
    height, width = rgb.shape[:2]
    return ImageAnalysis(width, height, sha256, faces, len(found))


def detect_faces(models: Models, rgb: np.ndarray) -> list[tuple[object, float]]:
    """Face rectangles (dlib.rectangle, original pixels) with detector scores."""
    longest = max(rgb.shape[:2])
    found = _detect_at(models, rgb, min(longest, DETECT_SIDE))
    if not found and longest > DETECT_SIDE:
        found = _detect_at(models, rgb, min(longest, RETRY_SIDE))
    return found


def _detect_at(models: Models, rgb: np.ndarray, side: int) -> list[tuple[object, float]]:
    height, width = rgb.shape[:2]
    scale = side / max(height, width)
    work = rgb
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        work = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
    upsample = 1 if max(work.shape[:2]) < UPSAMPLE_BELOW else 0
    if models.kind == "cnn":
        dets = models.detector(work, upsample)
        pairs = [(d.rect, float(d.confidence)) for d in dets]
    else:
        rects, scores, _ = models.detector.run(work, upsample, 0.0)
        pairs = list(zip(rects, scores, strict=True))
    return [(_scale_rect(models, rect, 1.0 / scale), score) for rect, score in pairs]


def _scale_rect(models: Models, rect: object, factor: float) -> object:
    if factor == 1.0:
        return rect
    return models.dlib.rectangle(
        round(rect.left() * factor), round(rect.top() * factor),  # type: ignore[attr-defined]
        round(rect.right() * factor), round(rect.bottom() * factor),  # type: ignore[attr-defined]
    )


def _describe(
    models: Models, rgb: np.ndarray, rect: object, score: float, options: AnalyseOptions
) -> FaceAnalysis:
    shape = models.sp68(rgb, rect)
    points = np.array([(p.x, p.y) for p in shape.parts()], dtype=float)
    height, width = rgb.shape[:2]
    pose = estimate_pose(points, (width, height))
    qualities = measure_qualities(rgb, points, _rect_box(rect)) if options.qualities else None
    descriptor = None
    if options.descriptor:
        shape5 = models.sp5(rgb, rect)
        descriptor = _unit(np.asarray(models.facerec.compute_face_descriptor(rgb, shape5)))
    return FaceAnalysis(
        box=_rect_box(rect),
        score=float(score),
        probability=face_probability(score),
        rotation_angle=int(round(_eye_line_angle(points))),
        yaw=pose.yaw,
        pitch=pose.pitch,
        roll=pose.roll,
        landmark=four_landmarks(points),
        qualities=qualities,
        descriptor=descriptor,
    )


def face_probability(score: float) -> float:
    """Detector score -> 0-1 (logistic, see the module docstring)."""
    return 1.0 / (1.0 + math.exp(-3.0 * (score + 0.25)))


def four_landmarks(points: np.ndarray) -> tuple[tuple[float, float], ...]:
    """Image-left eye centre, image-right eye centre, nose tip, mouth centre (68-point ids)."""
    groups = (points[36:42], points[42:48], points[30:31], points[48:60])
    return tuple((float(g[:, 0].mean()), float(g[:, 1].mean())) for g in groups)


def _eye_line_angle(points: np.ndarray) -> float:
    # Clockwise rotation of the face in the image: the eye line's angle (y points down).
    left, right = points[36:42].mean(axis=0), points[42:48].mean(axis=0)
    return math.degrees(math.atan2(right[1] - left[1], right[0] - left[0]))


def _rect_box(rect: object) -> tuple[float, float, float, float]:
    left, top = rect.left(), rect.top()  # type: ignore[attr-defined]
    return (float(left), float(top), float(rect.right() - left + 1),  # type: ignore[attr-defined]
            float(rect.bottom() - top + 1))  # type: ignore[attr-defined]


def _unit(vector: np.ndarray) -> np.ndarray:
    vec = vector.astype(np.float32)
    norm = float(np.linalg.norm(vec))
    return vec / norm if norm > 0 else vec
