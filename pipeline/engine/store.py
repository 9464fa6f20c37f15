"""The engine's durable state in SQLite: users, groups, faces, persons, tokens.

Model: a *membership* is one (group_id, uid) pair with its own ``user_info`` (user get
answers one record per group, so user_info is per group); each membership owns its
faces (descriptor + sha256 of the image bytes). group adduser copies faces into the new
membership. For v2 a group exists while it has a membership; v3 also creates groups
explicitly (``add_group``: the ``groups`` table), and such a group outlives its last user
until ``delete_group``. Writes through the v2 paths never touch the ``groups`` table.

Durability: WAL journal with ``synchronous=FULL``. In WAL mode NORMAL never corrupts the
file but may drop the last commits on power loss; FULL fsyncs the WAL on every commit,
so a write the engine has acknowledged survives kill -9 and power loss. Each API write
is one transaction (``with self._tx()``), so a crash leaves it wholly done or not done.

Thread safety: one connection, guarded by a lock, so tests may read counts from another
thread while the server runs.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS memberships (
    group_id TEXT NOT NULL, uid TEXT NOT NULL, user_info TEXT NOT NULL,
    created REAL NOT NULL, PRIMARY KEY (group_id, uid));
CREATE INDEX IF NOT EXISTS memberships_uid ON memberships (uid);
CREATE TABLE IF NOT EXISTS faces (
    face_id INTEGER PRIMARY KEY AUTOINCREMENT, group_id TEXT NOT NULL, uid TEXT NOT NULL,
    sha256 TEXT NOT NULL, descriptor BLOB NOT NULL, created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS faces_member ON faces (group_id, uid);
CREATE TABLE IF NOT EXISTS persons (
    id_card_number TEXT PRIMARY KEY, name TEXT NOT NULL, descriptor BLOB NOT NULL,
    sha256 TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (token TEXT PRIMARY KEY, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS groups (group_id TEXT PRIMARY KEY, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class ModelMismatchError(ValueError):
    """The faceset's descriptors come from another model than the engine's."""

    def __init__(self, path: Path, stored: str, wanted: str) -> None:
        super().__init__(
            f"the faceset in {path} was enrolled with the {stored} model; this engine runs "
            f"{wanted} and their descriptors are not comparable: start it with "
            f"--model {stored}, or use another --data-dir for {wanted}")
        self.stored, self.wanted = stored, wanted


@dataclass(frozen=True, slots=True)
class Membership:
    group_id: str
    uid: str
    user_info: str


@dataclass(frozen=True, slots=True)
class FaceRow:
    """A stored face; ``descriptor`` is a (128,) float32 unit vector; ``created`` epoch s;
    ``face_token`` the v3 registration token (:func:`face_token_of`)."""

    face_id: int
    group_id: str
    uid: str
    sha256: str
    descriptor: np.ndarray
    created: float = 0.0
    face_token: str = ""


@dataclass(frozen=True, slots=True)
class Change:
    """What a write did to the faces, for the in-memory index to follow."""

    added: tuple[FaceRow, ...] = ()
    removed: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Person:
    id_card_number: str
    name: str
    descriptor: np.ndarray
    sha256: str


class Store:
    """SQLite-backed faceset at ``path`` (created when missing)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._add_face_tokens()

    def _add_face_tokens(self) -> None:
        # Files written before v3 have no face_token column: add it and fill it in.
        with self._tx() as db:
            columns = [row[1] for row in db.execute("PRAGMA table_info(faces)")]
            if "face_token" not in columns:
                db.execute("ALTER TABLE faces ADD COLUMN face_token TEXT NOT NULL DEFAULT ''")
                rows = db.execute("SELECT face_id, sha256, descriptor FROM faces").fetchall()
                db.executemany("UPDATE faces SET face_token=? WHERE face_id=?",
                               [(face_token_of(sha, blob), fid) for fid, sha, blob in rows])
            db.execute("CREATE INDEX IF NOT EXISTS faces_token ON faces (face_token)")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- reads ---------------------------------------------------------------------

    def memberships(self, uid: str) -> list[Membership]:
        """Every group the uid is in, ordered by group_id."""
        rows = self._query(
            "SELECT group_id, uid, user_info FROM memberships WHERE uid=? ORDER BY group_id",
            (uid,),
        )
        return [Membership(*row) for row in rows]

    def membership(self, group_id: str, uid: str) -> Membership | None:
        rows = self._query(
            "SELECT group_id, uid, user_info FROM memberships WHERE group_id=? AND uid=?",
            (group_id, uid),
        )
        return Membership(*rows[0]) if rows else None

    def groups(self, start: int = 0, num: int = 100) -> list[str]:
        """Group ids in sorted order, ``num`` of them from index ``start``."""
        rows = self._query(
            "SELECT DISTINCT group_id FROM memberships ORDER BY group_id LIMIT ? OFFSET ?",
            (num, start),
        )
        return [row[0] for row in rows]

    def group_users(self, group_id: str, start: int = 0, num: int = 100) -> list[Membership]:
        """Users of a group ordered by uid."""
        rows = self._query(
            "SELECT group_id, uid, user_info FROM memberships WHERE group_id=? "
            "ORDER BY uid LIMIT ? OFFSET ?",
            (group_id, num, start),
        )
        return [Membership(*row) for row in rows]

    def faces_of(self, group_id: str, uid: str) -> list[FaceRow]:
        """The uid's faces in one group, oldest first."""
        rows = self._query(
            "SELECT face_id, group_id, uid, sha256, descriptor, created, face_token FROM faces "
            "WHERE group_id=? AND uid=? ORDER BY face_id",
            (group_id, uid),
        )
        return [_face(row) for row in rows]

    def face_by_token(self, face_token: str) -> FaceRow | None:
        """The oldest stored face with this registration token (any group), or None."""
        rows = self._query(
            "SELECT face_id, group_id, uid, sha256, descriptor, created, face_token FROM faces "
            "WHERE face_token=? ORDER BY face_id LIMIT 1",
            (face_token,),
        )
        return _face(rows[0]) if rows else None

    def group_exists(self, group_id: str) -> bool:
        """True for a group created explicitly (v3) or holding a membership."""
        rows = self._query(
            "SELECT EXISTS (SELECT 1 FROM groups WHERE group_id=?)"
            " OR EXISTS (SELECT 1 FROM memberships WHERE group_id=?)",
            (group_id, group_id),
        )
        return bool(rows[0][0])

    def group_ids(self, start: int = 0, length: int = 100) -> list[str]:
        """Every group (explicit or with members) in creation order, ``length`` from ``start``.

        A group's creation time is its ``groups`` row's, else its oldest membership's.
        """
        rows = self._query(
            "SELECT group_id, MIN(created) AS c FROM ("
            " SELECT group_id, created FROM groups"
            " UNION ALL SELECT group_id, created FROM memberships)"
            " GROUP BY group_id ORDER BY c, group_id LIMIT ? OFFSET ?",
            (length, start),
        )
        return [row[0] for row in rows]

    def users_by_age(self, group_id: str, start: int = 0, length: int = 100) -> list[str]:
        """User ids of a group in registration order (v3 group getusers)."""
        rows = self._query(
            "SELECT uid FROM memberships WHERE group_id=? ORDER BY created, uid LIMIT ? OFFSET ?",
            (group_id, length, start),
        )
        return [row[0] for row in rows]

    def all_faces(self) -> list[FaceRow]:
        """Every stored face, in face_id order (to rebuild the index at start)."""
        rows = self._query(
            "SELECT face_id, group_id, uid, sha256, descriptor, created, face_token FROM faces "
            "ORDER BY face_id"
        )
        return [_face(row) for row in rows]

    def counts(self) -> dict[str, int]:
        """users (distinct uids), memberships, groups, faces, persons."""
        sql = (
            "SELECT (SELECT COUNT(DISTINCT uid) FROM memberships),"
            " (SELECT COUNT(*) FROM memberships),"
            " (SELECT COUNT(DISTINCT group_id) FROM memberships),"
            " (SELECT COUNT(*) FROM faces), (SELECT COUNT(*) FROM persons)"
        )
        users, members, groups, faces, persons = self._query(sql)[0]
        return {"users": users, "memberships": members, "groups": groups,
                "faces": faces, "persons": persons}

    def claim_model(self, model: str) -> None:
        """Record that this faceset's descriptors come from ``model``, or refuse with
        :class:`ModelMismatchError` when it holds another's. Files written before the model
        was recorded are dlib's (the only model then) once they hold a face or person."""
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key='model'").fetchone()
            stored = row[0] if row else None
            if stored is None:
                used = db.execute("SELECT EXISTS(SELECT 1 FROM faces) OR "
                                  "EXISTS(SELECT 1 FROM persons)").fetchone()[0]
                stored = "dlib" if used else model
                db.execute("INSERT INTO meta (key, value) VALUES ('model', ?)", (stored,))
        if stored != model:
            raise ModelMismatchError(self.path, stored, model)

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` answer ("ok" when sound)."""
        return str(self._query("PRAGMA integrity_check")[0][0])

    # -- writes (one transaction each) ---------------------------------------------

    def add_face(
        self, groups: Sequence[str], uid: str, user_info: str, sha256: str,
        descriptor: np.ndarray, replace: bool = False,
    ) -> Change:
        """Add one face to ``uid`` in every group (creating memberships).

        ``replace``: first drop the uid's existing faces in those groups.
        """
        added: list[FaceRow] = []
        removed: list[int] = []
        with self._tx() as db:
            for group in groups:
                if replace:
                    removed += _delete_faces(db, group, uid)
                _upsert_membership(db, group, uid, user_info)
                added.append(_insert_face(db, group, uid, sha256, descriptor))
        return Change(tuple(added), tuple(removed))

    def delete_user(self, uid: str, group_id: str | None = None) -> Change:
        """Remove the uid from one group or from all; returns the faces removed."""
        removed: list[int] = []
        with self._tx() as db:
            groups = [group_id] if group_id else [m.group_id for m in self.memberships(uid)]
            for group in groups:
                removed += _delete_faces(db, group, uid)
                db.execute("DELETE FROM memberships WHERE group_id=? AND uid=?", (group, uid))
        return Change(removed=tuple(removed))

    def copy_user(self, src_group: str, targets: Sequence[str], uid: str) -> Change:
        """Copy the uid's membership (user_info + faces) from ``src_group`` into ``targets``."""
        source = self.membership(src_group, uid)
        assert source is not None
        faces = self.faces_of(src_group, uid)
        added: list[FaceRow] = []
        with self._tx() as db:
            for group in targets:
                _upsert_membership(db, group, uid, source.user_info)
                added += [_insert_face(db, group, uid, f.sha256, f.descriptor) for f in faces]
        return Change(tuple(added))

    def delete_face(self, face_id: int) -> Change:
        """Remove one face; a membership left without faces is removed too (v3 face delete)."""
        with self._tx() as db:
            row = db.execute("SELECT group_id, uid FROM faces WHERE face_id=?",
                             (face_id,)).fetchone()
            if row is None:
                return Change()
            db.execute("DELETE FROM faces WHERE face_id=?", (face_id,))
            left = db.execute("SELECT COUNT(*) FROM faces WHERE group_id=? AND uid=?",
                              row).fetchone()[0]
            if not left:
                db.execute("DELETE FROM memberships WHERE group_id=? AND uid=?", row)
        return Change(removed=(face_id,))

    def add_group(self, group_id: str) -> bool:
        """Create an empty group (v3 group add); False when it already exists."""
        with self._tx() as db:
            if self.group_exists(group_id):
                return False
            db.execute("INSERT INTO groups VALUES (?, ?)", (group_id, time.time()))
        return True

    def delete_group(self, group_id: str) -> Change:
        """Remove a group with every membership and face in it (v3 group delete)."""
        with self._tx() as db:
            ids = [r[0] for r in db.execute("SELECT face_id FROM faces WHERE group_id=?",
                                            (group_id,))]
            db.execute("DELETE FROM faces WHERE group_id=?", (group_id,))
            db.execute("DELETE FROM memberships WHERE group_id=?", (group_id,))
            db.execute("DELETE FROM groups WHERE group_id=?", (group_id,))
        return Change(removed=tuple(ids))

    def seed_faces(self, group_id: str, items: Sequence[tuple[str, str, np.ndarray]]) -> Change:
        """Bulk fast path for benchmarks: (uid, user_info, descriptor) rows, one transaction."""
        added: list[FaceRow] = []
        with self._tx() as db:
            for uid, info, descriptor in items:
                _upsert_membership(db, group_id, uid, info)
                added.append(_insert_face(db, group_id, uid, "", descriptor))
        return Change(tuple(added))

    # -- persons and tokens ----------------------------------------------------------

    def put_person(self, person: Person) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO persons VALUES (?, ?, ?, ?)",
                (person.id_card_number, person.name, _blob(person.descriptor), person.sha256),
            )

    def person(self, id_card_number: str) -> Person | None:
        rows = self._query(
            "SELECT id_card_number, name, descriptor, sha256 FROM persons "
            "WHERE id_card_number=?",
            (id_card_number,),
        )
        if not rows:
            return None
        number, name, blob, sha = rows[0]
        return Person(number, name, np.frombuffer(blob, dtype=np.float32).copy(), sha)

    def put_token(self, token: str, expires: float) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO tokens VALUES (?, ?)", (token, expires))

    def token_expiry(self, token: str) -> float | None:
        """Wall-clock expiry (epoch seconds) of a token, or None when unknown."""
        rows = self._query("SELECT expires FROM tokens WHERE token=?", (token,))
        return float(rows[0][0]) if rows else None


def _blob(descriptor: np.ndarray) -> bytes:
    return np.asarray(descriptor, dtype=np.float32).tobytes()


def face_token_of(sha256: str, descriptor: np.ndarray | bytes) -> str:
    """The v3 face_token of a face: 32 hex digits from the picture's sha256 and the face's
    descriptor, so the same picture always yields the same token (v3 contract §2.1), a
    detect token equals the registration token of the same face, and a copy keeps it."""
    blob = descriptor if isinstance(descriptor, bytes) else _blob(descriptor)
    return hashlib.md5(sha256.encode() + blob, usedforsecurity=False).hexdigest()


def _face(row: tuple) -> FaceRow:
    face_id, group, uid, sha, blob, created, token = row
    return FaceRow(face_id, group, uid, sha, np.frombuffer(blob, dtype=np.float32).copy(),
                   float(created), token)


def _upsert_membership(db: sqlite3.Connection, group: str, uid: str, info: str) -> None:
    db.execute(
        "INSERT INTO memberships VALUES (?, ?, ?, ?) "
        "ON CONFLICT (group_id, uid) DO UPDATE SET user_info=excluded.user_info",
        (group, uid, info, time.time()),
    )


def _insert_face(
    db: sqlite3.Connection, group: str, uid: str, sha: str, descriptor: np.ndarray
) -> FaceRow:
    now, blob = time.time(), _blob(descriptor)
    token = face_token_of(sha, blob)
    cur = db.execute(
        "INSERT INTO faces (group_id, uid, sha256, descriptor, created, face_token) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (group, uid, sha, blob, now, token),
    )
    vec = np.asarray(descriptor, dtype=np.float32)
    return FaceRow(int(cur.lastrowid or 0), group, uid, sha, vec, now, token)


def _delete_faces(db: sqlite3.Connection, group: str, uid: str) -> list[int]:
    ids = [r[0] for r in db.execute(
        "SELECT face_id FROM faces WHERE group_id=? AND uid=?", (group, uid))]
    db.execute("DELETE FROM faces WHERE group_id=? AND uid=?", (group, uid))
    return ids
