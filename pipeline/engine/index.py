"""In-memory search index: one matrix of unit descriptors per group.

Rebuilt from the store at start; every write's :class:`~pipeline.engine.store.Change` is
applied after its transaction commits. Rows are appended into over-allocated arrays
(amortised O(1) adds); removals compact the group's arrays (O(faces in group)).

Search computes all distances of the probe to the group's faces with one matrix-vector
product (d² = 2 - 2 cos for unit vectors), then keeps the best face per user.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.engine.store import Change, FaceRow

DIM = 128


@dataclass(frozen=True, slots=True)
class Hit:
    """One user found by a search: its distances, nearest first."""

    group_id: str
    uid: str
    distances: tuple[float, ...]


class _Group:
    __slots__ = ("ids", "uids", "matrix", "size")

    def __init__(self) -> None:
        self.ids = np.zeros(16, dtype=np.int64)
        self.uids = np.empty(16, dtype=object)
        self.matrix = np.zeros((16, DIM), dtype=np.float32)
        self.size = 0

    def add(self, face_id: int, uid: str, descriptor: np.ndarray) -> None:
        if self.size == len(self.ids):
            grow = max(16, self.size)
            self.ids = np.concatenate([self.ids, np.zeros(grow, dtype=np.int64)])
            self.uids = np.concatenate([self.uids, np.empty(grow, dtype=object)])
            self.matrix = np.concatenate([self.matrix, np.zeros((grow, DIM), np.float32)])
        self.ids[self.size] = face_id
        self.uids[self.size] = uid
        self.matrix[self.size] = descriptor
        self.size += 1

    def remove(self, face_ids: set[int]) -> None:
        keep = ~np.isin(self.ids[: self.size], list(face_ids))
        n = int(keep.sum())
        self.ids[:n] = self.ids[: self.size][keep]
        self.uids[:n] = self.uids[: self.size][keep]
        self.matrix[:n] = self.matrix[: self.size][keep]
        self.size = n


class SearchIndex:
    """Descriptors by group, searchable by user. Not thread-safe: use from one thread."""

    def __init__(self) -> None:
        self._groups: dict[str, _Group] = {}
        self._group_of: dict[int, str] = {}

    def load(self, faces: Iterable[FaceRow]) -> None:
        """Add many faces (the rebuild at start)."""
        for face in faces:
            self._add(face)

    def apply(self, change: Change) -> None:
        """Follow one committed write."""
        by_group: dict[str, set[int]] = {}
        for face_id in change.removed:
            group = self._group_of.pop(face_id, None)
            if group is not None:
                by_group.setdefault(group, set()).add(face_id)
        for group, ids in by_group.items():
            self._groups[group].remove(ids)
        for face in change.added:
            self._add(face)

    def _add(self, face: FaceRow) -> None:
        self._groups.setdefault(face.group_id, _Group()).add(
            face.face_id, face.uid, face.descriptor
        )
        self._group_of[face.face_id] = face.group_id

    def size(self, group_id: str | None = None) -> int:
        """Faces indexed in one group, or in all."""
        if group_id is not None:
            group = self._groups.get(group_id)
            return group.size if group else 0
        return sum(g.size for g in self._groups.values())

    def search(
        self, probe: np.ndarray, groups: Sequence[str], top_users: int, per_user: int = 1
    ) -> list[Hit]:
        """The ``top_users`` nearest (group, uid) pairs over ``groups``, nearest first.

        Each hit carries up to ``per_user`` distances of that user's faces, nearest first.
        """
        hits: list[Hit] = []
        for name in dict.fromkeys(groups):
            group = self._groups.get(name)
            if group is not None and group.size:
                hits += _search_group(name, group, probe, top_users, per_user)
        hits.sort(key=lambda hit: hit.distances[0])
        return hits[:top_users]

    def distances_of(self, probe: np.ndarray, group_id: str, uid: str) -> list[float]:
        """Distances from the probe to every face of one user in one group, nearest first."""
        group = self._groups.get(group_id)
        if group is None:
            return []
        mask = group.uids[: group.size] == uid
        return sorted(_distances(group.matrix[: group.size][mask], probe).tolist())


def _cosines(matrix: np.ndarray, probe: np.ndarray) -> np.ndarray:
    # einsum, not `@`: measured in the engine's loop thread, OpenBLAS's threaded gemv took
    # 7-16 ms for 10k faces (its worker threads contend with the model processes), while
    # numpy's own single-threaded SIMD loop takes 0.5 ms (10k) and ~5 ms (100k).
    return np.einsum("ij,j->i", matrix, probe.astype(np.float32))


def _distances(matrix: np.ndarray, probe: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum(0.0, 2.0 - 2.0 * _cosines(matrix, probe)))


def _search_group(
    name: str, group: _Group, probe: np.ndarray, top_users: int, per_user: int
) -> list[Hit]:
    # Rank by cosine (one matrix-vector product); distances only for the candidates.
    cos = _cosines(group.matrix[: group.size], probe)
    uids = group.uids[: group.size]
    # Look at the nearest faces first, widening until enough distinct users are seen.
    want = min(group.size, max(32, 8 * top_users * per_user))
    while True:
        if want < group.size:
            nearest = np.argpartition(-cos, want - 1)[:want]
        else:
            nearest = np.arange(group.size)
        nearest = nearest[np.argsort(-cos[nearest], kind="stable")]
        dist = np.sqrt(np.maximum(0.0, 2.0 - 2.0 * cos[nearest]))
        found = rank_users(zip(uids[nearest], dist.tolist(), strict=True), top_users, per_user)
        if len(found) >= top_users or want >= group.size:
            break
        want = min(group.size, want * 4)
    return [Hit(name, uid, ds) for uid, ds in found]


def rank_users(
    nearest: Iterable[tuple[str, float]], top_users: int, per_user: int
) -> list[tuple[str, tuple[float, ...]]]:
    """The best-face-per-user rule, shared by every store's search.

    ``nearest``: (uid, distance) of faces, nearest first. Returns up to ``top_users``
    users ordered by their nearest face, each with up to ``per_user`` distances, nearest
    first. Fewer than ``top_users`` means the faces seen held fewer users (widen).
    """
    found: dict[str, list[float]] = {}
    for uid, d in nearest:
        found.setdefault(uid, []).append(float(d))
    ranked = sorted(found.items(), key=lambda item: item[1][0])[:top_users]
    return [(uid, tuple(ds[:per_user])) for uid, ds in ranked]
