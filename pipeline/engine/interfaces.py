"""The fifteen face interfaces of the engine: ``(state, params) -> reply dict``.

Each function validates its parameters (params.py), runs the models through
``state.analyse`` (a process pool), reads or writes the store in one transaction and
returns the reply without ``log_id`` (added by the app). Errors raise
:class:`~pipeline.engine.params.Failure`.

Project decisions where the reference is silent (contract §3, §6, §7):

* Attributes the engine cannot compute are never invented. detect ``face_fields`` age,
  beauty, expression, faceshape, gender, glasses (and faceliveness anywhere: identify /
  verify / multi-identify ``ext_fields``, match ``image_liveness``, person verify
  ``faceliveness=use``) answer 216102 "service not support: face_fields age,gender are
  not supported by the faceflow engine". faceverify (liveness) always answers 216102.
  ``landmark`` returns the 4 points; ``landmark72`` is omitted (the 68-point model does
  not map honestly onto Baidu's 72 points). ``qualities.type`` is omitted.
* detect with no face answers result_num 0 (not an error). ``result_num`` is the number
  of faces returned (<= max_face_num, largest first); ``max_face_num`` is 1-50.
* match compares every pair i < j of 2-10 images (more -> 216103), each image's largest
  face; an image without a face -> 216402. ``types`` is validated and ignored.
* identify / multi-identify over groups where no user exists -> 216618. identify returns
  per user the scores of its nearest faces (up to 5), best first; multi-identify one score.
* user add: duplicate = same sha256 of the decoded image bytes, or a descriptor within
  0.04 of one of the uid's faces in that group (a re-encoded copy) -> 216616 "image exist".
  The largest face of the image is registered.
* group getusers of an unknown or empty group answers result_num 0 (216618 is kept for
  identify). group deleteuser of a uid not in a named group -> 216611.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.engine import params as P
from pipeline.engine.models import AnalyseOptions, FaceAnalysis, ImageAnalysis
from pipeline.engine.params import Failure
from pipeline.engine.persons import valid_id_card_number
from pipeline.engine.scoring import distance, same_image_distance, score_from_distance

if TYPE_CHECKING:
    from pipeline.engine.state import EngineState

Params = Mapping[str, str]
Reply = dict[str, Any]

UNSUPPORTED_FIELDS = ("age", "beauty", "expression", "faceshape", "gender", "glasses",
                      "faceliveness", "race", "emotion", "mask", "eye_status", "liveness")
DETECT_FIELDS = ("landmark", "qualities")
PERSON_THRESHOLDS = {"left_eye": 0.6, "right_eye": 0.6, "nose": 0.7, "mouth": 0.7,
                     "left_cheek": 0.8, "right_cheek": 0.8, "chin": 0.8, "blur": 0.7,
                     "illumination": 30.0, "completeness": 0.0}


# -- shared pieces -------------------------------------------------------------------------


def _check_fields(fields: list[str], allowed: tuple[str, ...], what: str) -> None:
    unsupported = [f for f in fields if f in UNSUPPORTED_FIELDS]
    if unsupported:
        raise P.not_supported(unsupported, what)
    unknown = [f for f in fields if f not in allowed]
    if unknown:
        raise Failure(216100, f"{what} {','.join(unknown)} unknown")


def _no_liveness(params: Params, name: str = "ext_fields") -> None:
    _check_fields(P.field_list(params, name), (), name)


async def _probe(state: EngineState, data: bytes, faces: int = 1) -> ImageAnalysis:
    result = await state.analyse(data, AnalyseOptions(max_faces=faces, descriptor=True))
    if not result.faces:
        raise Failure(216402)
    return result


def _location(face: FaceAnalysis, width: int, height: int) -> dict[str, int]:
    # Boxes may run past the image (a cut face); the reference types them uint32.
    left, top, box_w, box_h = face.box
    x0, y0 = max(0, int(left)), max(0, int(top))
    x1, y1 = min(width, int(left + box_w)), min(height, int(top + box_h))
    return {"left": x0, "top": y0, "width": max(0, x1 - x0), "height": max(0, y1 - y0)}


def qualities_json(face: FaceAnalysis) -> dict[str, Any]:
    q = face.qualities
    assert q is not None
    return {"occlusion": dict(q.occlusion), "blur": q.blur,
            "illumination": q.illumination, "completeness": q.completeness}


def _face_json(face: FaceAnalysis, image: ImageAnalysis, fields: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "location": _location(face, image.width, image.height),
        "face_probability": round(face.probability, 6),
        "rotation_angle": face.rotation_angle,
        "yaw": round(face.yaw, 4),
        "pitch": round(face.pitch, 4),
        "roll": round(face.roll, 4),
    }
    if "landmark" in fields:
        out["landmark"] = [{"x": round(x, 2), "y": round(y, 2)} for x, y in face.landmark]
    if "qualities" in fields:
        out["qualities"] = qualities_json(face)
    return out


def _vec(face: FaceAnalysis) -> np.ndarray:
    # Faces analysed with descriptor=True always carry one.
    assert face.descriptor is not None
    return face.descriptor


def _score(dist: float) -> float:
    return round(float(score_from_distance(dist)), 4)


def _existing_groups(state: EngineState, groups: list[str]) -> list[str]:
    present = [g for g in groups if state.index.size(g)]
    if not present:
        raise Failure(216618)
    return present


def _member_info(state: EngineState, group: str, uid: str) -> str:
    member = state.store.membership(group, uid)
    return member.user_info if member else ""


# -- detect, match ---------------------------------------------------------------------


async def detect(state: EngineState, params: Params) -> Reply:
    fields = P.field_list(params, "face_fields")
    _check_fields(fields, DETECT_FIELDS, "face_fields")
    max_faces = P.optional_int(params, "max_face_num", 1, 1, 50)
    data = P.image_param(params)
    options = AnalyseOptions(max_faces=max_faces, qualities="qualities" in fields)
    image = await state.analyse(data, options)
    result = [_face_json(face, image, fields) for face in image.faces]
    return {"result_num": len(result), "result": result}


async def match(state: EngineState, params: Params) -> Reply:
    _check_fields(P.field_list(params, "image_liveness"), (), "image_liveness")
    ext = P.field_list(params, "ext_fields")
    _check_fields(ext, ("qualities",), "ext_fields")
    _check_types(params.get("types", ""))
    texts = _split_images(P.required(params, "images"))
    images = [await _probe_match(state, P.image_bytes(t, P.MATCH_LIMIT), "qualities" in ext, i)
              for i, t in enumerate(texts)]
    faces = [img.faces[0] for img in images]
    result = [
        {"index_i": i, "index_j": j, "score": _score(distance(_vec(faces[i]), _vec(faces[j])))}
        for i in range(len(faces)) for j in range(i + 1, len(faces))
    ]
    reply: Reply = {"result_num": len(result), "result": result}
    if ext:
        reply["ext_info"] = [{"qualities": qualities_json(face)} for face in faces]
    return reply


def _split_images(raw: str) -> list[str]:
    if len(raw) > P.MATCH_LIMIT:
        raise Failure(216202, "images are over 20M in total")
    texts = [t for t in raw.split(",") if t.strip()]
    if len(texts) < 2:
        raise Failure(216614)
    if len(texts) > 10:
        raise Failure(216103, "at most 10 images per match")
    return texts


def _check_types(raw: str) -> None:
    if raw and any(t.strip() not in ("7", "12", "13") for t in raw.split(",")):
        raise Failure(216100, "types must be a comma list of 7, 12 or 13")


async def _probe_match(state: EngineState, data: bytes, qualities: bool, i: int):
    options = AnalyseOptions(max_faces=1, qualities=qualities, descriptor=True)
    image = await state.analyse(data, options)
    if not image.faces:
        raise Failure(216402, f"no face in image {i}")
    return image


# -- identify, verify, multi-identify -----------------------------------------------------


async def identify(state: EngineState, params: Params) -> Reply:
    _no_liveness(params)
    groups = P.group_list(params)
    top = P.optional_int(params, "user_top_num", 1, 1, 5)
    data = P.image_param(params)
    present = _existing_groups(state, groups)
    probe = _vec((await _probe(state, data)).faces[0])
    hits = state.index.search(probe, present, top, per_user=5)
    result = [{"group_id": h.group_id, "uid": h.uid,
               "user_info": _member_info(state, h.group_id, h.uid),
               "scores": [_score(d) for d in h.distances]} for h in hits]
    return {"result_num": len(result), "result": result}


async def verify(state: EngineState, params: Params) -> Reply:
    _no_liveness(params)
    uid = P.uid_param(params)
    groups = P.group_list(params)
    top = P.optional_int(params, "top_num", 1, 1, 100)
    data = P.image_param(params)
    if not any(state.store.membership(g, uid) for g in groups):
        raise Failure(216611)
    probe = _vec((await _probe(state, data)).faces[0])
    dists = sorted(d for g in groups for d in state.index.distances_of(probe, g, uid))
    result = [_score(d) for d in dists[:top]]
    return {"result_num": len(result), "result": result}


async def multi_identify(state: EngineState, params: Params) -> Reply:
    _no_liveness(params)
    groups = P.group_list(params)
    faces_wanted = P.optional_int(params, "detect_top_num", 1, 1, 10)
    top = P.optional_int(params, "user_top_num", 1, 1, 20)
    data = P.image_param(params)
    present = _existing_groups(state, groups)
    image = await _probe(state, data, faces_wanted)
    result = []
    for face in image.faces:
        position = {**_location(face, image.width, image.height),
                    "degree": face.rotation_angle, "prob": round(face.probability, 6)}
        for hit in state.index.search(_vec(face), present, top, per_user=1):
            result.append({"group_id": hit.group_id, "uid": hit.uid,
                           "user_info": _member_info(state, hit.group_id, hit.uid),
                           "position": position, "scores": [_score(hit.distances[0])]})
    return {"result_num": len(result), "result": result}


# -- faceset writes ----------------------------------------------------------------------


async def user_add(state: EngineState, params: Params) -> Reply:
    uid, info = P.uid_param(params), P.user_info_param(params)
    groups = P.group_list(params)
    action = params.get("action_type", "") or "append"
    if action not in ("append", "replace"):
        raise Failure(216100, "action_type must be append or replace")
    data = P.image_param(params, limit=P.ADD_IMAGE_LIMIT)
    await _register(state, uid, info, groups, data, replace=action == "replace")
    return {}


async def user_update(state: EngineState, params: Params) -> Reply:
    uid, info = P.uid_param(params), P.user_info_param(params)
    groups = P.group_list(params, single=True)
    action = params.get("action_type", "") or "append"
    if action not in ("append", "replace"):
        raise Failure(216100, "action_type must be replace")
    data = P.image_param(params)
    if state.store.membership(groups[0], uid) is None and action != "replace":
        raise Failure(216612)
    await _register(state, uid, info, groups, data, replace=True)
    return {}


async def _register(
    state: EngineState, uid: str, info: str, groups: list[str], data: bytes, replace: bool
) -> None:
    sha = hashlib.sha256(data).hexdigest()
    if not replace:
        _refuse_duplicate(state, uid, groups, sha, None)  # cheap path: no model work
    face = (await _probe(state, data)).faces[0]
    # Checked again after the await: a concurrent add of the same image may have landed.
    if not replace:
        _refuse_duplicate(state, uid, groups, sha, face.descriptor)
    state.apply(state.store.add_face(groups, uid, info, sha, _vec(face), replace=replace))


def _refuse_duplicate(
    state: EngineState, uid: str, groups: list[str], sha: str, descriptor: np.ndarray | None
) -> None:
    for group in groups:
        for face in state.store.faces_of(group, uid):
            same = face.sha256 == sha or (
                descriptor is not None and distance(face.descriptor, descriptor)
                < same_image_distance())
            if same:
                raise Failure(216616)


async def user_delete(state: EngineState, params: Params) -> Reply:
    uid = P.uid_param(params)
    group = params.get("group_id") or None
    if group is not None:
        group = P.group_list(params, single=True)[0]
        if state.store.membership(group, uid) is None:
            raise Failure(216612)
    elif not state.store.memberships(uid):
        raise Failure(216612)
    state.apply(state.store.delete_user(uid, group))
    return {}


async def user_get(state: EngineState, params: Params) -> Reply:
    uid = P.uid_param(params)
    group = params.get("group_id") or None
    members = state.store.memberships(uid)
    if group is not None:
        group = P.group_list(params, single=True)[0]
        members = [m for m in members if m.group_id == group]
    if not members:
        raise Failure(216611)
    result = [{"uid": m.uid, "user_info": m.user_info, "group_id": m.group_id}
              for m in members]
    return {"result_num": len(result), "result": result}


async def group_getlist(state: EngineState, params: Params) -> Reply:
    start = P.optional_int(params, "start", 0, 0, 2**31)
    num = P.optional_int(params, "num", 100, 1, 1000)
    groups = state.store.groups(start, num)
    return {"result_num": len(groups), "result": groups}


async def group_getusers(state: EngineState, params: Params) -> Reply:
    group = P.group_list(params, single=True)[0]
    start = P.optional_int(params, "start", 0, 0, 2**31)
    num = P.optional_int(params, "num", 100, 1, 1000)
    users = state.store.group_users(group, start, num)
    result = [{"uid": m.uid, "user_info": m.user_info} for m in users]
    return {"result_num": len(result), "result": result}


async def group_adduser(state: EngineState, params: Params) -> Reply:
    src = P.group_list(params, "src_group_id", single=True)[0]
    targets = P.group_list(params)
    uid = P.uid_param(params)
    if state.store.membership(src, uid) is None:
        raise Failure(216611)
    if any(state.store.membership(g, uid) for g in targets):
        raise _already_add()
    state.apply(state.store.copy_user(src, targets, uid))
    return {}


def _already_add() -> Failure:
    failure = Failure(216100)
    failure.message = "already add"  # the reference's exact message (errors.ALREADY_ADD_MSG)
    return failure


async def group_deleteuser(state: EngineState, params: Params) -> Reply:
    groups = P.group_list(params)
    uid = P.uid_param(params)
    members = {m.group_id for m in state.store.memberships(uid)}
    if not members or any(g not in members for g in groups):
        raise Failure(216611)
    if members <= set(groups):
        raise Failure(216619)
    for group in groups:
        state.apply(state.store.delete_user(uid, group))
    return {}


# -- person verify, faceverify -----------------------------------------------------------


async def person_verify(state: EngineState, params: Params) -> Reply:
    if params.get("faceliveness", "") == "use":
        raise P.not_supported(["faceliveness"], "faceliveness=use")
    ext = P.field_list(params, "ext_fields")
    _check_fields(ext, ("qualities",), "ext_fields")
    number, name = P.required(params, "id_card_number").strip(), P.required(params, "name")
    if not valid_id_card_number(number):
        raise Failure(216100, "id_card_number is not a valid 18-character ID number")
    check = params.get("quality", "") == "use"
    thresholds = _quality_conf(params.get("quality_conf", "")) if check else {}
    data = P.image_param(params)
    person = state.store.person(number.upper())
    if person is None or person.name != name.strip():
        raise Failure(216611)
    options = AnalyseOptions(max_faces=1, qualities=check or bool(ext), descriptor=True)
    image = await state.analyse(data, options)
    if not image.faces:
        raise Failure(216402)
    face = image.faces[0]
    if check:
        _quality_gate(face, thresholds)
    reply: Reply = {"result": round(_score(distance(_vec(face), person.descriptor)) / 100, 6)}
    if ext:
        reply["ext_info"] = {"qualities": qualities_json(face)}
    return reply


def _quality_conf(raw: str) -> dict[str, float]:
    thresholds = dict(PERSON_THRESHOLDS)
    if not raw:
        return thresholds
    try:
        conf = json.loads(raw)
        assert isinstance(conf, dict)
        thresholds.update({str(k): float(v) for k, v in conf.items() if k in thresholds})
    except (ValueError, TypeError, AssertionError):
        raise Failure(216100, "quality_conf must be a JSON object of numbers") from None
    return thresholds


def _quality_gate(face: FaceAnalysis, limits: dict[str, float]) -> None:
    q = face.qualities
    assert q is not None
    failed = [f"{part} occlusion {value:.2f} >= {limits[part]}"
              for part, value in q.occlusion.items() if value >= limits[part]]
    if q.blur >= limits["blur"]:
        failed.append(f"blur {q.blur:.2f} >= {limits['blur']}")
    if q.illumination <= limits["illumination"]:
        failed.append(f"illumination {q.illumination} <= {limits['illumination']}")
    if q.completeness <= limits["completeness"]:
        failed.append("face runs past the image edge")
    if failed:
        raise Failure(216100, "quality check failed: " + "; ".join(failed))


async def faceverify(state: EngineState, params: Params) -> Reply:
    raise Failure(216102, "faceverify (liveness) is not supported by the faceflow engine")


#: interface name -> (path under /rest/2.0/face/v2/, handler)
INTERFACES = {
    "detect": ("detect", detect),
    "match": ("match", match),
    "identify": ("identify", identify),
    "verify": ("verify", verify),
    "multi-identify": ("multi-identify", multi_identify),
    "user_add": ("faceset/user/add", user_add),
    "user_update": ("faceset/user/update", user_update),
    "user_delete": ("faceset/user/delete", user_delete),
    "user_get": ("faceset/user/get", user_get),
    "group_getlist": ("faceset/group/getlist", group_getlist),
    "group_getusers": ("faceset/group/getusers", group_getusers),
    "group_adduser": ("faceset/group/adduser", group_adduser),
    "group_deleteuser": ("faceset/group/deleteuser", group_deleteuser),
    "person_verify": ("person/verify", person_verify),
    "faceverify": ("faceverify", faceverify),
}
