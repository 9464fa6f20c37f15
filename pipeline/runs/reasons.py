"""The catalogue: every status an outcome row can have, and every reason slug with its
sentence. Jobs, reports and failures.csv take statuses and texts from here.

A row has one :class:`Status` and zero or more reason slugs (``reasons``). The slugs of
the protocol's own checks are :data:`pipeline.api.validate.REASON_TEXT` (the client
shares them with the engine, so they stay in ``api/``); they are part of
:data:`REASONS` too. Quality sentences carry no numbers here: the gate writes the
bounds in force after them (:func:`pipeline.enroll.gate.reason_texts`).
"""

from __future__ import annotations

from enum import StrEnum

from pipeline.api.validate import REASON_TEXT as _VALIDATE_REASONS

__all__ = ["IMAGE_REASONS", "QUALITY_REASONS", "REASONS", "ROW_REASONS", "STATUSES",
           "SUCCESS_STATUSES", "Status", "reason_text"]


class Status(StrEnum):
    """Every status, successes first; the order is the order of report tables.

    Members are ``str``: they compare, hash and are written to Parquet as their value.
    """

    ENROLLED = "enrolled"  # user add succeeded
    UPDATED = "updated"  # user update (or upsert) succeeded
    ALREADY_ENROLLED = "already_enrolled"  # the service already holds this image (216616)
    SKIPPED_KNOWN = "skipped_known"  # the ledger holds this (group, uid, image): not sent
    REJECTED_QUALITY = "rejected_quality"  # the quality gate refused the face
    NO_FACE = "no_face"  # detect found no face
    MULTIPLE_FACES = "multiple_faces"  # several faces and no rule to pick one
    INVALID_INPUT = "invalid_input"  # the row itself is wrong (image, uid, duplicate...)
    DUPLICATE_SUSPECT = "duplicate_suspect"  # --block-duplicates: another uid has the face
    FAILED = "failed"  # the service refused or never answered; see error_code, retryable


STATUSES: tuple[Status, ...] = tuple(Status)
SUCCESS_STATUSES: frozenset[str] = frozenset({
    Status.ENROLLED, Status.UPDATED, Status.ALREADY_ENROLLED, Status.SKIPPED_KNOWN})

#: Decoded pixels above which an image is refused as a decompression bomb (50 MP:
#: well over any camera photo a face service needs, and ~150 MB as RGB). Checked
#: from the header, before decoding; Pillow's own (larger) limit stays in force too.
PIXEL_LIMIT = 50_000_000

#: Reading a photo (pipeline.runs.images).
IMAGE_REASONS: dict[str, str] = {
    "file_missing": "the image file does not exist",
    "not_a_file": "the image path is a directory or another non-regular file",
    "file_unreadable": "the image file cannot be read (permission denied)",
    "symlink_loop": "the image path is a symbolic link that loops",
    "outside_manifest_dir": "the image path resolves outside the manifest's folder",
    "file_empty": "the image file is empty (0 bytes)",
    "file_too_large": "the image file is larger than the size limit",
    "image_format": "the file is not a JPEG, PNG or BMP image",
    "image_corrupt": "the image is truncated or cannot be decoded",
    "decompression_bomb": f"the image declares more than {PIXEL_LIMIT // 10**6} MP",
    "image_too_small": "the image's shortest side is under 15 px",
    "image_too_big": "the image's longest side is over 4096 px",
    "image_too_large": "the image is over 4 MiB once base64-encoded",
}

#: The quality gate (pipeline.enroll.gate); the gate adds the bound in force.
QUALITY_REASONS: dict[str, str] = {
    "no_face": "no face was found in the image",
    "multiple_faces": "the image shows several faces; send one face per image "
                      "(or allow the largest face)",
    "face_too_small": "the face is smaller than the minimum face size",
    "no_qualities": "the face service returned no quality data for the face",
    "completeness": "the face runs past the image edge",
    "blur": "the face is blurred",
    "illumination": "the face is too dark",
    "pose_yaw": "the head is turned sideways",
    "pose_pitch": "the head is tilted up or down",
    "pose_roll": "the head is tilted sideways",
    **{f"occlusion_{part}": f"the {words} is covered" for part, words in (
        ("left_eye", "left eye"), ("right_eye", "right eye"), ("nose", "nose"),
        ("mouth", "mouth"), ("left_cheek", "left cheek"), ("right_cheek", "right cheek"),
        ("chin", "chin"))},
    "server_quality": "the face service's own quality control (v3 --server-quality) "
                      "refused the face",
}

#: What a job decided about a row or a probe, beyond its image and its face.
ROW_REASONS: dict[str, str] = {
    "duplicate_row": "the same uid and image appear on an earlier row; the first is kept",
    "bad_action": "the action is not one of add, update or upsert",
    "image_missing": "the image cell is empty; write the photo's path",
    "uid_too_long_v3": "uid is longer than 48 bytes, v3's limit",
    "group_id_too_long_v3": "group_id is longer than 48 bytes, v3's limit",
    "user_not_found": "the uid is not in the group (update of an unknown uid)",
    "retries_exhausted": "the service kept failing (timeouts, server errors, rate limits) "
                         "until the retries ran out; rerun later",
    "refused_by_service": "the service refused the request as invalid",
    "library_state": "the face library is not in the state the call needs",
    "face_limit": "the uid holds the most faces the service allows in this group",
    "api_error": "the service answered with an error faceflow has no rule for",
    "internal_error": "faceflow failed on this row (a bug); see the log",
    "duplicate_of_other_uid": "another uid already holds this face (--block-duplicates)",
}

#: Every reason slug -> its sentence.
REASONS: dict[str, str] = {**_VALIDATE_REASONS, **IMAGE_REASONS, **QUALITY_REASONS,
                           **ROW_REASONS}


def reason_text(slug: str) -> str:
    """The sentence of a reason slug; the slug itself when it is not in the catalogue."""
    return REASONS.get(slug, slug)
