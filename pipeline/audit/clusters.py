"""Clusters of "same person" edges: a union-find over integer nodes, and the cluster record.

The audit's nodes are the rows of its plan (one photo each); an edge says "these
two photos show the same person" (same bytes, or a confirmed match). A cluster is
a connected component: a set of photos, and through them a set of uids. Two uids
in one cluster are probably one person enrolled twice.

:data:`CLUSTER_SCHEMA` is the one schema ``clusters.parquet`` is written with;
``tests/test_audit_clusters.py`` checks that it and :class:`Cluster` agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa

CLUSTER_SCHEMA = pa.schema(
    [
        pa.field("cluster", pa.int64(), nullable=False),
        pa.field("uids", pa.list_(pa.string()), nullable=False),
        pa.field("images", pa.list_(pa.string()), nullable=False),
        pa.field("size", pa.int64(), nullable=False),
    ],
    metadata={"faceflow.record": "pipeline.clusters.Cluster"},
)


@dataclass(frozen=True, slots=True)
class Cluster:
    """One connected component that holds at least one finding.

    ``cluster`` is 1-based, numbered in order of the component's first plan row.
    ``uids`` are distinct, in order of first appearance; ``images`` are the
    photos (paths as written in the input), in plan order; ``size`` is the
    number of distinct uids (the number of identities the component merges).
    """

    cluster: int
    uids: tuple[str, ...]
    images: tuple[str, ...]
    size: int


class UnionFind:
    """Disjoint sets over the integers ``0 .. n-1`` (path halving, union by size).

    Both operations are amortised near O(1), so clustering n photos with e edges
    costs O(n + e), never O(n^2).
    """

    __slots__ = ("_parent", "_size")

    def __init__(self, n: int) -> None:
        self._parent: list[int] = list(range(n))
        self._size: list[int] = [1] * n

    def __len__(self) -> int:
        return len(self._parent)

    def find(self, x: int) -> int:
        parent = self._parent
        while parent[x] != x:
            # Path halving: point every other node at its grandparent as we walk up,
            # which keeps trees flat without a second pass or recursion.
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> bool:
        """Join the sets of ``a`` and ``b``; False when they were already one set."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        if self._size[ra] < self._size[rb]:
            ra, rb = rb, ra
        self._parent[rb] = ra
        self._size[ra] += self._size[rb]
        return True

    def connected(self, a: int, b: int) -> bool:
        return self.find(a) == self.find(b)


def components(n: int, edges: Iterable[tuple[int, int]]) -> list[list[int]]:
    """The connected components of ``n`` nodes joined by ``edges``.

    Every node appears in exactly one component (isolated nodes alone). Each
    component is sorted ascending, and components are ordered by their smallest node.
    """
    uf = UnionFind(n)
    for a, b in edges:
        uf.union(a, b)
    groups: dict[int, list[int]] = {}
    for node in range(n):
        groups.setdefault(uf.find(node), []).append(node)
    return sorted(groups.values(), key=lambda members: members[0])
