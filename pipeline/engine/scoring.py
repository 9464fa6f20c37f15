"""Similarity scores from descriptor distances.

Descriptors are dlib's 128-d ResNet vectors scaled to unit length (raw ones have norms of
1.3-1.5), compared by Euclidean distance d (0..2). dlib's usual decision threshold is 0.6
on raw descriptors, which is d = 0.42 on unit ones (0.6 / 1.42, the typical raw norm).
On ../shared/faces the distinct same-person pairs reach at most 0.36 and different
people start at 0.47, so 0.42 also sits in the measured gap.

Score (0-100, contract §2: >= 80 means the same person), piecewise linear in d:

* d <= 0.42:  score = 100 - 20 * d / 0.42    (100 at d = 0, 80 at the threshold)
* d >  0.42:  score = 80 * (1.0 - d) / 0.58  (down to 0 at d = 1.0, clipped at 0)

Person verify uses the same scale divided by 100 (threshold 0.8).
"""

from __future__ import annotations

import numpy as np

MATCH_DISTANCE = 0.42
ZERO_DISTANCE = 1.0
#: Below this distance two descriptors are the same image (re-encoded or resized copy).
SAME_IMAGE_DISTANCE = 0.04


def score_from_distance(distance: np.ndarray | float) -> np.ndarray | float:
    """0-100 similarity for unit-descriptor distances (scalar or array)."""
    d = np.asarray(distance, dtype=np.float64)
    near = 100.0 - 20.0 * d / MATCH_DISTANCE
    far = 80.0 * (ZERO_DISTANCE - d) / (ZERO_DISTANCE - MATCH_DISTANCE)
    score = np.clip(np.where(d <= MATCH_DISTANCE, near, far), 0.0, 100.0)
    return float(score) if score.ndim == 0 else score


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance of two descriptors."""
    return float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))


def pair_score(a: np.ndarray, b: np.ndarray) -> float:
    """Rounded 0-100 score of two descriptors (as match reports it)."""
    return round(float(score_from_distance(distance(a, b))), 4)
