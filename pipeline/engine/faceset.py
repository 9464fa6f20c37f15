"""What the engine needs of its faceset: the :class:`FaceStore` and :class:`FaceIndex`
protocols, and :func:`open_faceset`.

Two backends implement both:

* embedded (default, ``--data-dir``): :class:`pipeline.engine.store.Store` (SQLite) and
  :class:`pipeline.engine.index.SearchIndex` (numpy, in memory, rebuilt at start and
  told of every write through :meth:`FaceIndex.apply`);
* shared (``--store postgresql://...``): :class:`pipeline.engine.pgstore.PgStore` and
  :class:`pipeline.engine.pgstore.PgIndex` (the database is the index; ``apply`` does
  nothing), for any number of engine replicas.

The interfaces (v2 and v3) use only these methods, so they do not know which backend
they talk to; mypy checks that both backends have every method (:func:`open_faceset`
returns them as the protocols). A new store method goes here and into both backends,
and tests/test_engine_stores.py runs the same tests on both.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from pipeline.engine.index import Hit, SearchIndex
from pipeline.engine.store import (
    Change,
    FaceRow,
    Membership,
    ModelMismatchError,
    Person,
    Store,
)

if TYPE_CHECKING:
    from pipeline.engine.config import EngineConfig


class FaceStore(Protocol):
    """Users, groups, faces, persons and tokens; every write one transaction."""

    def close(self) -> None: ...

    # reads
    def memberships(self, uid: str) -> list[Membership]: ...
    def membership(self, group_id: str, uid: str) -> Membership | None: ...
    def groups(self, start: int = 0, num: int = 100) -> list[str]: ...
    def group_users(self, group_id: str, start: int = 0, num: int = 100
                    ) -> list[Membership]: ...
    def faces_of(self, group_id: str, uid: str) -> list[FaceRow]: ...
    def face_by_token(self, face_token: str) -> FaceRow | None: ...
    def group_exists(self, group_id: str) -> bool: ...
    def group_ids(self, start: int = 0, length: int = 100) -> list[str]: ...
    def users_by_age(self, group_id: str, start: int = 0, length: int = 100) -> list[str]: ...
    def all_faces(self) -> list[FaceRow]: ...
    def counts(self) -> dict[str, int]: ...
    def integrity_check(self) -> str: ...

    # writes
    def add_face(self, groups: Sequence[str], uid: str, user_info: str, sha256: str,
                 descriptor: np.ndarray, replace: bool = False) -> Change: ...
    def delete_user(self, uid: str, group_id: str | None = None) -> Change: ...
    def copy_user(self, src_group: str, targets: Sequence[str], uid: str) -> Change: ...
    def delete_face(self, face_id: int) -> Change: ...
    def add_group(self, group_id: str) -> bool: ...
    def delete_group(self, group_id: str) -> Change: ...
    def seed_faces(self, group_id: str, items: Sequence[tuple[str, str, np.ndarray]]
                   ) -> Change: ...

    # persons and tokens
    def put_person(self, person: Person) -> None: ...
    def person(self, id_card_number: str) -> Person | None: ...
    def put_token(self, token: str, expires: float) -> None: ...
    def token_expiry(self, token: str) -> float | None: ...


class FaceIndex(Protocol):
    """Search by descriptor; follows the store's writes (``apply``)."""

    def load(self, faces: Iterable[FaceRow]) -> None: ...
    def apply(self, change: Change) -> None: ...
    def size(self, group_id: str | None = None) -> int: ...
    def search(self, probe: np.ndarray, groups: Sequence[str], top_users: int,
               per_user: int = 1) -> list[Hit]: ...
    def distances_of(self, probe: np.ndarray, group_id: str, uid: str) -> list[float]: ...


def open_faceset(config: EngineConfig) -> tuple[FaceStore, FaceIndex]:
    """(store, index) of one engine: SQLite + in-memory index, or PostgreSQL for both."""
    if config.store_url:
        from pipeline.engine.pgstore import PgIndex, PgStore  # noqa: PLC0415

        if config.model != "dlib":
            raise ValueError(f"--model {config.model} keeps its faceset in --data-dir only: "
                             "the shared PostgreSQL store holds dlib descriptors")
        pg = PgStore(config.store_url)
        return pg, PgIndex(pg)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(config.data_dir / "faceset.sqlite3")
    try:
        store.claim_model(config.model)
    except ModelMismatchError:
        store.close()
        raise
    index = SearchIndex()
    index.load(store.all_faces())
    return store, index
