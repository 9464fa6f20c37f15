"""Head pose (yaw, pitch, roll in degrees) from the 68 dlib landmarks, numpy only.

Method: a perspective-n-point fit of a generic 3-D face (six points: nose tip, chin,
outer eye corners, mouth corners; the widely used model of Mallick's "Head pose
estimation using OpenCV and Dlib", units ~0.1 mm) to the matching landmarks. The camera
is a pinhole with focal length = the longest image side in pixels (about a 53 degree
field of view, a typical phone or webcam), aimed at the face (principal point on the nose
tip), so the angles are relative to the line of sight. The six
pose parameters (Rodrigues rotation vector + translation) are found by Levenberg-Marquardt
(Gauss-Newton with damping) on the reprojection error, starting from a frontal face at
the distance its eye span implies.

Angles, with the rotation decomposed as R = Rz(roll) @ Ry(yaw') @ Rx(pitch):

* ``yaw``: positive when the face turns towards the image's right (the nose moves right),
  -90..90;
* ``pitch``: positive when the head nods down, -90..90;
* ``roll``: positive clockwise in the image, -180..180.

A generic model and a guessed focal length make the angles approximate (a few degrees);
they are meant for the "each below 20 degrees" gate, not for measurement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: 68-landmark index -> generic 3-D point (x right, y up, z towards the viewer).
_MODEL_POINTS = {
    30: (0.0, 0.0, 0.0),  # nose tip
    8: (0.0, -420.0, -65.0),  # chin (lowered from -330 to dlib's point 8, see below)
    36: (-225.0, 170.0, -135.0),  # outer corner of the image-left eye
    45: (225.0, 170.0, -135.0),  # outer corner of the image-right eye
    48: (-150.0, -150.0, -125.0),  # image-left mouth corner
    54: (150.0, -150.0, -125.0),  # image-right mouth corner
}
_INDEXES = list(_MODEL_POINTS)
# Camera coordinates: x right, y down, z away from the camera.
_MODEL = np.array([(x, -y, -z) for x, y, z in _MODEL_POINTS.values()])


@dataclass(frozen=True, slots=True)
class Pose:
    """Head pose in degrees (see the module docstring for the signs)."""

    yaw: float
    pitch: float
    roll: float


def estimate_pose(points: np.ndarray, image_size: tuple[int, int]) -> Pose:
    """Pose from ``points``, the 68 landmarks as a (68, 2) array of pixel (x, y).

    ``image_size`` is (width, height) in pixels; it sets the assumed camera.
    """
    observed = np.asarray(points, dtype=float)[_INDEXES]
    focal = float(max(image_size))
    # Angles are wanted relative to the line of sight, not the optical axis: a subject
    # looking into a lens from the top of a portrait is frontal. So the principal point is
    # put on the face (its nose tip), as if the camera were aimed at it.
    centre = observed[0].copy()
    params = _solve(observed, focal, centre, _initial_guess(observed, focal, centre))
    return _angles(_rodrigues(params[:3]))


def _initial_guess(observed: np.ndarray, focal: float, centre: np.ndarray) -> np.ndarray:
    eye_span = max(float(np.linalg.norm(observed[3] - observed[2])), 1.0)
    depth = focal * 450.0 / eye_span
    tx, ty = (observed[0] - centre) * depth / focal
    return np.array([0.0, 0.0, 0.0, tx, ty, depth])


def _project(params: np.ndarray, focal: float, centre: np.ndarray) -> np.ndarray:
    cam = _MODEL @ _rodrigues(params[:3]).T + params[3:]
    z = np.maximum(cam[:, 2], 1e-6)
    return cam[:, :2] * (focal / z)[:, None] + centre


def _solve(
    observed: np.ndarray, focal: float, centre: np.ndarray, params: np.ndarray
) -> np.ndarray:
    damping = 1e-3
    error = _residual(params, observed, focal, centre)
    for _ in range(40):
        jac = _jacobian(params, observed, focal, centre)
        normal = jac.T @ jac
        step = np.linalg.solve(normal + damping * np.diag(np.diag(normal) + 1e-9), -jac.T @ error)
        trial = params + step
        trial_error = _residual(trial, observed, focal, centre)
        if trial_error @ trial_error < error @ error:
            params, error, damping = trial, trial_error, damping * 0.3
            if np.abs(step).max() < 1e-7 * max(1.0, abs(params[5])):
                break
        else:
            damping *= 10.0
    return params


def _residual(params: np.ndarray, observed: np.ndarray, focal: float, centre: np.ndarray):
    return (_project(params, focal, centre) - observed).ravel()


def _jacobian(params: np.ndarray, observed: np.ndarray, focal: float, centre: np.ndarray):
    # Numeric central differences: 6 parameters x 12 residuals is cheaper than deriving it.
    steps = np.array([1e-4, 1e-4, 1e-4, 1e-2, 1e-2, 1e-2]) * np.maximum(1.0, np.abs(params))
    cols = []
    for k, h in enumerate(steps):
        delta = np.zeros(6)
        delta[k] = h
        plus = _residual(params + delta, observed, focal, centre)
        minus = _residual(params - delta, observed, focal, centre)
        cols.append((plus - minus) / (2 * h))
    return np.stack(cols, axis=1)


def _rodrigues(rvec: np.ndarray) -> np.ndarray:
    theta = float(np.linalg.norm(rvec))
    if theta < 1e-12:
        return np.eye(3)
    k = rvec / theta
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * cross + (1 - np.cos(theta)) * cross @ cross


def _angles(rot: np.ndarray) -> Pose:
    yaw = np.degrees(np.arcsin(np.clip(-rot[2, 0], -1.0, 1.0)))
    pitch = np.degrees(np.arctan2(rot[2, 1], rot[2, 2]))
    roll = np.degrees(np.arctan2(rot[1, 0], rot[0, 0]))
    # Ry's positive direction moves the nose towards the image's left; flip it so a
    # positive yaw means a turn towards the image's right.
    return Pose(yaw=float(-yaw), pitch=float(pitch), roll=float(roll))
