"""v3 face tokens: what a ``face_token`` from detect, search or match stands for, kept
for an hour (:data:`TOKEN_TTL`) so later calls can use the face without its picture."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.engine.qualities import FaceQualities

TOKEN_TTL = 3600.0


@dataclass(frozen=True, slots=True)
class TokenFace:
    """A face the engine can use without its picture: what a face_token stands for."""

    token: str
    sha256: str
    descriptor: np.ndarray
    qualities: FaceQualities | None
    location: dict[str, Any]


class FaceTokens:
    """Tokens issued by detect/search/match: kept ``ttl`` seconds of ``now()``, at most
    ``capacity`` (the oldest go first). Thread-safe: with the shared store the
    interfaces run on several threads."""

    __slots__ = ("_now", "_ttl", "_capacity", "_items", "_lock")

    def __init__(self, now: Callable[[], float], ttl: float = TOKEN_TTL,
                 capacity: int = 200_000) -> None:
        self._now, self._ttl, self._capacity = now, ttl, capacity
        self._items: OrderedDict[str, tuple[float, TokenFace]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, face: TokenFace) -> None:
        # A re-issued token lives 60 min from its latest issue (same picture, same token).
        with self._lock:
            self._items.pop(face.token, None)
            self._items[face.token] = (self._now() + self._ttl, face)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)

    def get(self, token: str) -> TokenFace | None:
        with self._lock:
            item = self._items.get(token)
            if item is None:
                return None
            if item[0] <= self._now():
                del self._items[token]
                return None
            return item[1]
