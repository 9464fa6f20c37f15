"""The inline duplicate block of ``enroll --block-duplicates``: is this face already
enrolled under another uid?

Per row, after the quality gate and before the write:

1. ``identify`` the photo in the row's groups (``user_top_num`` 5, so the row's own
   uid, when it is enrolled already, cannot hide another one);
2. the best *other* uid scoring >= ``bound`` is a candidate. As the audit does, it is
   confirmed with one ``match``: the photo against up to :data:`CONFIRM_PHOTOS`
   photos of that uid which the ledger knows (its recorded image paths). The match
   score decides. A candidate the ledger holds no readable photo of is reported on
   the identify score alone, with the reason ``not_confirmed``.

Cost: one identify per row, plus one match when it hits. An empty group (216618) has
no duplicates. API errors propagate to the caller (the row's outcome).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.api.errors import EmptyGroupError

#: Known photos of the candidate uid sent with the probe in the confirming match.
CONFIRM_PHOTOS = 2
#: identify's user_top_num: the row's own uid may take one of the places.
TOP_USERS = 5

if TYPE_CHECKING:
    from pipeline.frame.faceapi import FaceApi
    from pipeline.ledger.base import Ledger
    from pipeline.runs.manifest import ManifestRow


@dataclass(frozen=True, slots=True)
class DuplicateCheck:
    """What the check found. ``uid`` None: no other uid at or above the bound.

    ``score`` 0-100: the match score when confirmed, else identify's best.
    ``attempts`` counts the HTTP requests sent (identify and match, retries included).
    """

    uid: str | None
    group_id: str | None
    score: float | None
    identify_log_id: int | None
    match_log_id: int | None
    attempts: int
    reasons: tuple[str, ...] = ()
    message: str | None = None


async def find_duplicate(client: FaceApi, row: ManifestRow, data: bytes, *, bound: float,
                         ledger: Ledger | None = None, endpoint: str = "") -> DuplicateCheck:
    """Identify ``data`` in ``row.group_id`` and confirm the best other uid (module doc)."""
    try:
        found = await client.identify(row.group_id, data, user_top_num=TOP_USERS)
    except EmptyGroupError as exc:
        return DuplicateCheck(None, None, None, exc.log_id, None, exc.attempts)
    others = sorted((c for c in found.candidates if c.uid != row.uid and c.best >= bound),
                    key=lambda c: -c.best)
    if not others:
        return DuplicateCheck(None, None, None, found.log_id, None, found.attempts)
    best = others[0]
    photos = await _known_photos(ledger, endpoint, best.group_id, best.uid)
    if not photos:
        return DuplicateCheck(
            best.uid, best.group_id, float(best.best), found.log_id, None, found.attempts,
            ("duplicate_of_other_uid", "not_confirmed"),
            f"identify: uid {best.uid} (group {best.group_id}) scores {best.best:.1f} >= "
            f"{bound:g}; not confirmed by match (the ledger holds no photo of that uid)")
    matched = await client.match([data, *photos])
    score = max((p.score for p in matched.pairs if 0 in (p.index_i, p.index_j)), default=0.0)
    attempts = found.attempts + matched.attempts
    if score < bound:  # identify's hit did not hold up against the uid's own photos
        return DuplicateCheck(None, None, None, found.log_id, matched.log_id, attempts)
    return DuplicateCheck(
        best.uid, best.group_id, float(score), found.log_id, matched.log_id, attempts,
        ("duplicate_of_other_uid",),
        f"uid {best.uid} (group {best.group_id}) holds this face: match {score:.1f} >= "
        f"{bound:g} (identify {best.best:.1f})")


async def _known_photos(ledger: Ledger | None, endpoint: str, group: str, uid: str
                       ) -> list[bytes]:
    """Up to CONFIRM_PHOTOS readable photos the ledger recorded for ``uid`` in ``group``
    (the bytes enroll sent: :func:`pipeline.images.load_image`)."""
    if ledger is None:
        return []
    from pipeline.runs.images import ImageProblem, load_image  # noqa: PLC0415

    faces = await asyncio.to_thread(lambda: list(ledger.faces(endpoint, group, uid)))
    photos: list[bytes] = []
    for face in faces:
        if len(photos) == CONFIRM_PHOTOS or not face.image_path:
            break
        try:
            photos.append((await asyncio.to_thread(load_image, Path(face.image_path))).data)
        except ImageProblem:
            continue
    return photos
