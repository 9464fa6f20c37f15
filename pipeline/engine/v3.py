"""The engine's v3 interfaces (``/rest/2.0/face/v3/...``): ``(state, params) -> result``.

They serve the same faceset and models as the v2 interfaces (interfaces.py); the app
(app.py) wraps each result in the v3 envelope. Errors raise
:class:`~pipeline.engine.params.Failure` with v3 codes (v3 contract §6).

face_tokens (v3 contract §2.1): a face's token is :func:`~pipeline.engine.store.face_token_of`
(picture sha256 + descriptor), so the same picture yields the same token and a detect
token equals the registration token of that face. Tokens issued by detect, search,
multi-search and match are held in memory (:class:`FaceTokens`) with the face's
descriptor and qualities for 60 minutes of the engine's clock; registration tokens are
found in the store forever. A ``FACE_TOKEN`` write therefore needs no model work: the
picture's bytes went up once, with detect.

Project decisions (the contract's, §2-§4, and the engine's own):

* The engine computes no liveness, spoofing, age, gender, expression, face shape,
  glasses, emotion, eye status, mask, face type or 150-point landmarks, and never invents
  them: such ``face_field`` values answer ``222017 ... not supported by the faceflow
  engine``; ``liveness_control`` other than NONE answers ``223119 liveness control item
  error`` saying so; faceverify answers ``3 Unsupported openapi method``.
  ``spoofing_control`` is accepted and never rejects (contract §2.4). ``beauty`` and
  ``race`` are accepted and ignored, ``landmark72`` is an alias of ``landmark`` (the
  4 points; the 68-point model does not map honestly onto Baidu's 72).
* ``quality_control`` applies the contract's level table (§4.1) with strict
  comparisons, in the contract's order of codes (§4.3), to the face used.
* ``image_type=URL`` answers 222204 (the engine has no network access).
* user add creates a missing group; 20 faces per user and group (the 21st: 222210);
  a face_token already in the group for any user (the same picture) answers 223105,
  and so does a re-encoded copy of one of the user's own faces (a descriptor within
  ``scoring.same_image_distance()``, as v2's 216616).
* ``display_corp_image=1`` adds ``corp_image_base64`` to each face: the face box cut
  from the picture (EXIF orientation applied), as JPEG; ``max_face_num`` is then at
  most 5 (GEN). For a FACE_TOKEN picture there are no pixels to cut: 222001.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from pipeline.engine import v3params as P
from pipeline.engine.images import decode_image
from pipeline.engine.models import AnalyseOptions, FaceAnalysis, ImageAnalysis
from pipeline.engine.params import Failure
from pipeline.engine.persons import valid_id_card_number
from pipeline.engine.qualities import FaceQualities
from pipeline.engine.scoring import distance, same_image_distance, score_from_distance
from pipeline.engine.store import FaceRow, face_token_of
from pipeline.engine.tokens import FaceTokens, TokenFace

if TYPE_CHECKING:
    from pipeline.engine.state import EngineState

Params = Mapping[str, Any]
Result = dict[str, Any] | None

FACE_LIMIT = 20
UNSUPPORTED_FIELDS = ("age", "expression", "face_shape", "gender", "glasses", "eye_status",
                      "emotion", "face_type", "mask", "spoofing", "landmark150", "liveness")
IGNORED_FIELDS = ("beauty", "race")
DETECT_FIELDS = ("quality", "landmark", "landmark72")
#: quality_control level -> (max occlusion per part, max blur, min illumination,
#: min completeness) (v3 contract §4.1).
QUALITY_LEVELS = {"LOW": (0.8, 0.8, 20, 0), "NORMAL": (0.6, 0.6, 40, 0),
                  "HIGH": (0.2, 0.2, 100, 1)}
#: occlusion parts in the order they are checked, with their failure codes (§4.3).
OCCLUSION_CODES = (("left_eye", 223121), ("right_eye", 223122), ("left_cheek", 223123),
                   ("right_cheek", 223124), ("chin_contour", 223125), ("nose", 223126),
                   ("mouth", 223127))


def _tokens(state: EngineState) -> FaceTokens:
    return state.face_tokens


# -- shared pieces ---------------------------------------------------------------------


def _location(face: FaceAnalysis) -> dict[str, Any]:
    left, top, width, height = face.box
    return {"left": round(left, 2), "top": round(top, 2), "width": round(width, 2),
            "height": round(height, 2), "rotation": face.rotation_angle}


def _token_face(face: FaceAnalysis, sha256: str) -> TokenFace:
    assert face.descriptor is not None
    return TokenFace(face_token_of(sha256, face.descriptor), sha256, face.descriptor,
                     face.qualities, _location(face))


def _sorted_faces(image: ImageAnalysis, sort_type: int) -> list[FaceAnalysis]:
    faces = list(image.faces)  # largest first
    if sort_type == 1:  # nearest to the picture's centre first (contract §2.5)
        cx, cy = image.width / 2, image.height / 2
        faces.sort(key=lambda f: (f.box[0] + f.box[2] / 2 - cx) ** 2
                   + (f.box[1] + f.box[3] / 2 - cy) ** 2)
    return faces


async def _analyse(state: EngineState, data: bytes, faces: int) -> ImageAnalysis:
    return await state.analyse(data, AnalyseOptions(max_faces=faces, qualities=True,
                                                     descriptor=True))


async def _picture(state: EngineState, params: Params, *, faces: int = 1,
                   sort_type: int = 0) -> list[TokenFace]:
    """The faces of the request's picture (``image`` + ``image_type``), in sort order.

    BASE64: analysed (every face found becomes a 60-min token); FACE_TOKEN: the one face
    the token stands for. No face -> 222202; unknown/expired token -> 222209.
    """
    image_type = P.one_of(params, "image_type", P.IMAGE_TYPES, "")
    value = P.required(params, "image")
    if image_type == "URL":
        raise Failure(222204, "the faceflow engine has no network access; send BASE64")
    if image_type == "FACE_TOKEN":
        return [_resolve_token(state, P.face_token(value))]
    data = P.image_bytes(value)
    # face_sort_type 1 needs every face to find the central one.
    image = await _analyse(state, data, max(faces, 20) if sort_type == 1 else faces)
    if not image.faces:
        raise Failure(222202)
    found = [_token_face(f, image.sha256) for f in _sorted_faces(image, sort_type)]
    tokens = _tokens(state)
    for face in found:
        tokens.put(face)
    return found[:faces]


def _resolve_token(state: EngineState, token: str) -> TokenFace:
    face = _tokens(state).get(token)
    if face is not None:
        return face
    row = state.store.face_by_token(token)
    if row is None:
        raise Failure(222209)
    # A registration token: no qualities were kept with it (quality_control sees none).
    return TokenFace(token, row.sha256, row.descriptor, None,
                     {"left": 0.0, "top": 0.0, "width": 0.0, "height": 0.0, "rotation": 0})


def _occlusion(q: FaceQualities) -> dict[str, float]:
    return {("chin_contour" if part == "chin" else part): value
            for part, value in q.occlusion.items()}


def quality_json(q: FaceQualities) -> dict[str, Any]:
    return {"occlusion": _occlusion(q), "blur": q.blur, "illumination": q.illumination,
            "completeness": q.completeness}


def _controls(params: Params) -> str:
    """The request's quality_control level; liveness_control other than NONE is refused
    (the engine computes no liveness), spoofing_control is accepted and ignored."""
    quality = P.one_of(params, "quality_control", P.LEVELS, "NONE")
    liveness = P.one_of(params, "liveness_control", P.LEVELS, "NONE")
    P.one_of(params, "spoofing_control", P.LEVELS, "NONE")
    if liveness != "NONE":
        raise Failure(223119, "liveness_control is not supported by the faceflow engine "
                      "(it computes no liveness); send NONE")
    return quality


def quality_failure(q: FaceQualities | None, level: str) -> Failure | None:
    """The first failed check of ``level`` (strict comparisons, contract §4.3), or None."""
    if level == "NONE":
        return None
    if q is None:
        return Failure(223118, "this face_token carries no quality values; send the picture")
    occ_max, blur_max, light_min, complete_min = QUALITY_LEVELS[level]
    occlusion = _occlusion(q)
    for part, code in OCCLUSION_CODES:
        if occlusion.get(part, 0.0) > occ_max:
            return Failure(code, f"{part} occlusion {occlusion[part]:.2f} > {occ_max} ({level})")
    if q.blur > blur_max:
        return Failure(223114, f"blur {q.blur:.2f} > {blur_max} ({level})")
    if q.illumination < light_min:
        return Failure(223115, f"illumination {q.illumination} < {light_min} ({level})")
    if q.completeness < complete_min:
        return Failure(223116, f"completeness {q.completeness} < {complete_min} ({level})")
    return None


def _gate(face: TokenFace, level: str) -> None:
    failure = quality_failure(face.qualities, level)
    if failure is not None:
        raise failure


def _score(dist: float) -> float:
    return round(float(score_from_distance(dist)), 4)


def _require_group(state: EngineState, group: str, code: int = 223100) -> None:
    if not state.store.group_exists(group):
        raise Failure(code)


def _info(state: EngineState, group: str, uid: str) -> str:
    member = state.store.membership(group, uid)
    return member.user_info if member else ""


# -- detect, match -----------------------------------------------------------------------


def _face_fields(params: Params) -> list[str]:
    fields = [f.strip().lower() for f in P.text(params, "face_field").split(",") if f.strip()]
    unsupported = [f for f in fields if f in UNSUPPORTED_FIELDS]
    if unsupported:
        raise Failure(222017, f"{','.join(unsupported)} "
                      f"{'is' if len(unsupported) == 1 else 'are'} not supported by the "
                      "faceflow engine")
    unknown = [f for f in fields if f not in DETECT_FIELDS + IGNORED_FIELDS]
    if unknown:
        raise Failure(222017, f"unknown face_field {','.join(unknown)}")
    return fields


async def detect(state: EngineState, params: Params) -> Result:
    fields = _face_fields(params)
    max_faces = P.integer(params, "max_face_num", 1, 1, 20)
    sort_type = P.integer(params, "face_sort_type", 0, 0, 1)
    crop = P.integer(params, "display_corp_image", 0, 0, 1) == 1
    if crop and max_faces > 5:
        raise Failure(222016, "max_face_num is at most 5 with display_corp_image=1")
    P.one_of(params, "face_type", P.FACE_TYPES, "LIVE")
    _controls(params)  # liveness_control refused; quality_control is not a detect option
    image_type = P.one_of(params, "image_type", P.IMAGE_TYPES, "")
    if crop and image_type == "FACE_TOKEN":
        raise Failure(222001, "display_corp_image needs the picture (BASE64), not a face_token")
    if image_type != "BASE64":
        held = await _picture(state, params)
        return {"face_num": 1, "face_list": [_token_json(held[0], fields)]}
    data = P.image_bytes(P.required(params, "image"))
    image = await _analyse(state, data, 20 if sort_type == 1 else max_faces)
    if not image.faces:
        raise Failure(222202)
    faces = _sorted_faces(image, sort_type)[:max_faces]
    tokens = _tokens(state)
    result = []
    for face in faces:
        token_face = _token_face(face, image.sha256)
        tokens.put(token_face)
        result.append(_face_json(face, token_face.token, fields))
    if crop:
        crops = await asyncio.to_thread(_crops, data, [f.box for f in faces])
        for item, text in zip(result, crops, strict=True):
            item["corp_image_base64"] = text
    return {"face_num": len(result), "face_list": result}


def _crops(data: bytes, boxes: list[tuple[float, float, float, float]]) -> list[str]:
    """Each box cut from the (upright) picture, as base64 JPEG text."""
    rgb = decode_image(data)
    height, width = rgb.shape[:2]
    out = []
    for left, top, box_w, box_h in boxes:
        x0, y0 = max(0, int(left)), max(0, int(top))
        x1, y1 = min(width, int(left + box_w)), min(height, int(top + box_h))
        buf = io.BytesIO()
        Image.fromarray(rgb[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)]).save(buf, "JPEG",
                                                                         quality=90)
        out.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return out


def _face_json(face: FaceAnalysis, token: str, fields: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "face_token": token, "location": _location(face),
        "face_probability": round(face.probability, 6),
        "angle": {"yaw": round(face.yaw, 4), "pitch": round(face.pitch, 4),
                  "roll": round(face.roll, 4)},
    }
    if "landmark" in fields or "landmark72" in fields:
        out["landmark"] = [{"x": round(x, 2), "y": round(y, 2)} for x, y in face.landmark]
    if "quality" in fields and face.qualities is not None:
        out["quality"] = quality_json(face.qualities)
    return out


def _token_json(face: TokenFace, fields: list[str]) -> dict[str, Any]:
    # detect of a FACE_TOKEN: what the token holds (no pose or landmarks are kept).
    out: dict[str, Any] = {"face_token": face.token, "location": face.location}
    if "quality" in fields and face.qualities is not None:
        out["quality"] = quality_json(face.qualities)
    return out


async def match(state: EngineState, params: object) -> Result:
    if not isinstance(params, list) or len(params) != 2 or not all(
            isinstance(item, Mapping) for item in params):
        raise Failure(222208, "send a JSON array of exactly two image objects")
    faces = []
    for item in params:
        level = _controls(item)
        P.one_of(item, "face_type", P.FACE_TYPES + ("HYBRID",), "LIVE")
        sort_type = P.integer(item, "face_sort_type", 0, 0, 1)
        face = (await _picture(state, item, sort_type=sort_type))[0]
        _gate(face, level)
        faces.append(face)
    score = _score(distance(faces[0].descriptor, faces[1].descriptor))
    return {"score": score, "face_list": [{"face_token": f.token} for f in faces]}


# -- search, multi-search ----------------------------------------------------------------


def _search_groups(state: EngineState, params: Params) -> list[str]:
    groups = P.group_id_list(params)
    for group in groups:
        _require_group(state, group)
    return groups


async def search(state: EngineState, params: Params) -> Result:
    groups = _search_groups(state, params)
    level = _controls(params)
    top = P.integer(params, "max_user_num", 1, 1, 50)
    threshold = P.integer(params, "match_threshold", 0, 0, 100)
    sort_type = P.integer(params, "face_sort_type", 0, 0, 1)
    uid = P.ident(params, "user_id") if params.get("user_id") not in (None, "") else None
    if uid is not None and not any(state.store.membership(g, uid) for g in groups):
        raise Failure(223103)
    face = (await _picture(state, params, sort_type=sort_type))[0]
    _gate(face, level)
    users = _ranked(state, face.descriptor, groups, top, threshold, uid)
    if not users:
        raise Failure(222207)
    return {"face_token": face.token, "user_list": users}


def _ranked(state: EngineState, probe: np.ndarray, groups: list[str], top: int,
            threshold: int, uid: str | None) -> list[dict[str, Any]]:
    """Users (best face each) scoring >= threshold, best first; ties by group, user."""
    if uid is not None:
        pairs = [(g, uid, min(dists)) for g in groups
                 if (dists := state.index.distances_of(probe, g, uid))]
    else:
        pairs = [(h.group_id, h.uid, h.distances[0])
                 for h in state.index.search(probe, groups, top, per_user=1)]
    scored = sorted(((-_score(d), g, u) for g, u, d in pairs))
    return [{"group_id": g, "user_id": u, "user_info": _info(state, g, u), "score": -s}
            for s, g, u in scored if -s >= threshold][:top]


async def multi_search(state: EngineState, params: Params) -> Result:
    groups = _search_groups(state, params)
    level = _controls(params)
    faces_wanted = P.integer(params, "max_face_num", 1, 1, 10)
    top = P.integer(params, "max_user_num", 1, 1, 20)
    threshold = P.integer(params, "match_threshold", 80, 0, 100)
    faces = await _picture(state, params, faces=faces_wanted)
    kept = [f for f in faces if quality_failure(f.qualities, level) is None]
    if not kept:
        _gate(faces[0], level)  # every face dropped: the largest face's failure
    result = [{"face_token": f.token, "location": f.location,
               "user_list": _ranked(state, f.descriptor, groups, top, threshold, None)}
              for f in kept]
    if not any(item["user_list"] for item in result):
        raise Failure(222207)
    return {"face_num": len(result), "face_list": result}


# -- the face library ---------------------------------------------------------------------


async def user_add(state: EngineState, params: Params) -> Result:
    action = P.one_of(params, "action_type", ("APPEND", "REPLACE"), "APPEND")
    return await _register(state, params, replace=action == "REPLACE", must_exist=False)


async def user_update(state: EngineState, params: Params) -> Result:
    action = P.one_of(params, "action_type", ("UPDATE", "REPLACE"), "UPDATE")
    return await _register(state, params, replace=True, must_exist=action == "UPDATE")


async def _register(state: EngineState, params: Params, *, replace: bool,
                    must_exist: bool) -> Result:
    group, uid = P.ident(params, "group_id"), P.ident(params, "user_id")
    info = P.user_info(params)
    level = _controls(params)
    sort_type = P.integer(params, "face_sort_type", 0, 0, 1)
    if must_exist and state.store.membership(group, uid) is None:
        raise Failure(223103)
    face = (await _picture(state, params, sort_type=sort_type))[0]
    _gate(face, level)
    # Checked after the await, with no await until the write: the loop runs one call at
    # a time, so two adds of one face cannot both pass.
    member = state.store.membership(group, uid)
    if must_exist and member is None:
        raise Failure(223103)
    _refuse_duplicate(state, group, uid, replace, face)
    if not replace and member is not None and len(state.store.faces_of(group, uid)) >= FACE_LIMIT:
        raise Failure(222210, f"{uid} has {FACE_LIMIT} faces in {group}")
    if not state.store.group_exists(group):
        state.store.add_group(group)
    keep = info if info is not None else (member.user_info if member else "")
    change = state.store.add_face([group], uid, keep, face.sha256, face.descriptor,
                                  replace=replace)
    state.apply(change)
    location = face.location
    return {"face_token": change.added[0].face_token, "location": location}


def _refuse_duplicate(state: EngineState, group: str, uid: str, replace: bool,
                      face: TokenFace) -> None:
    """223105 when the group holds this face_token for any user (the same picture), or,
    as v2 does, a re-encoded copy (descriptor within the model's same-image bound) for
    this user.
    REPLACE may re-register the user's own face."""
    for hit in state.index.search(face.descriptor, [group], 3, per_user=1):
        if hit.distances[0] >= same_image_distance() or (replace and hit.uid == uid):
            continue
        if hit.uid == uid or any(f.face_token == face.token
                                 for f in state.store.faces_of(group, hit.uid)):
            raise Failure(223105)


async def face_delete(state: EngineState, params: Params) -> Result:
    uid, group = P.ident(params, "user_id"), P.ident(params, "group_id")
    token = P.face_token(P.required(params, "face_token"))
    if state.store.membership(group, uid) is None:
        raise Failure(223103)
    rows = [f for f in state.store.faces_of(group, uid) if f.face_token == token]
    if not rows:
        raise Failure(223106)
    for row in rows:
        state.apply(state.store.delete_face(row.face_id))
    return None


async def user_get(state: EngineState, params: Params) -> Result:
    uid, group = P.ident(params, "user_id"), P.ident(params, "group_id", allow_all=True)
    members = state.store.memberships(uid)
    if group != P.ALL_GROUPS:
        members = [m for m in members if m.group_id == group]
    if not members:
        raise Failure(223103)
    return {"user_list": [{"user_info": m.user_info, "group_id": m.group_id} for m in members]}


async def face_getlist(state: EngineState, params: Params) -> Result:
    uid, group = P.ident(params, "user_id"), P.ident(params, "group_id")
    faces = state.store.faces_of(group, uid)
    if not faces:
        raise Failure(223103)
    return {"face_list": [{"face_token": f.face_token, "ctime": _ctime(f)} for f in faces]}


def _ctime(face: FaceRow) -> str:
    return datetime.fromtimestamp(face.created).strftime("%Y-%m-%d %H:%M:%S")


async def group_getusers(state: EngineState, params: Params) -> Result:
    group = P.ident(params, "group_id")
    start = P.integer(params, "start", 0, 0, 2**31)
    length = P.integer(params, "length", 100, 1, 1000)
    _require_group(state, group)
    return {"user_id_list": state.store.users_by_age(group, start, length)}


async def user_copy(state: EngineState, params: Params) -> Result:
    uid = P.ident(params, "user_id")
    src, dst = P.ident(params, "src_group_id"), P.ident(params, "dst_group_id")
    _require_group(state, src)
    _require_group(state, dst, 223111)
    if state.store.membership(src, uid) is None:
        raise Failure(223103)
    if state.store.membership(dst, uid) is not None:
        raise Failure(223102)
    state.apply(state.store.copy_user(src, [dst], uid))
    return None


async def user_delete(state: EngineState, params: Params) -> Result:
    uid, group = P.ident(params, "user_id"), P.ident(params, "group_id", allow_all=True)
    if group == P.ALL_GROUPS:
        if not state.store.memberships(uid):
            raise Failure(223103)
        state.apply(state.store.delete_user(uid, None))
        return None
    if state.store.membership(group, uid) is None:
        raise Failure(223103)
    state.apply(state.store.delete_user(uid, group))
    return None


async def group_add(state: EngineState, params: Params) -> Result:
    if not state.store.add_group(P.ident(params, "group_id")):
        raise Failure(223101)
    return None


async def group_delete(state: EngineState, params: Params) -> Result:
    group = P.ident(params, "group_id")
    _require_group(state, group)
    state.apply(state.store.delete_group(group))
    return None


async def group_getlist(state: EngineState, params: Params) -> Result:
    start = P.integer(params, "start", 0, 0, 2**31)
    length = P.integer(params, "length", 100, 1, 1000)
    return {"group_id_list": state.store.group_ids(start, length)}


# -- identity --------------------------------------------------------------------------


def _person(state: EngineState, params: Params):
    number = P.required(params, "id_card_number").strip()
    name = P.required(params, "name").strip()
    if not valid_id_card_number(number):
        raise Failure(222022, "id_card_number is not a valid 18-character ID number")
    person = state.store.person(number.upper())
    if person is None or person.name != name:
        raise Failure(222351)
    return person


async def person_verify(state: EngineState, params: Params) -> Result:
    level = _controls(params)
    person = _person(state, params)
    face = (await _picture(state, params))[0]
    _gate(face, level)
    return {"score": _score(distance(face.descriptor, person.descriptor))}


async def person_idmatch(state: EngineState, params: Params) -> Result:
    _person(state, params)
    return None


async def faceverify(state: EngineState, params: object) -> Result:
    raise Failure(3, "faceverify (online liveness) is not supported by the faceflow engine, "
                  "which computes no liveness")


#: interface name -> (path under /rest/2.0/face/v3/, handler, body is a JSON array)
V3_INTERFACES: dict[str, tuple[str, Callable[..., Any], bool]] = {
    "detect": ("detect", detect, False),
    "match": ("match", match, True),
    "search": ("search", search, False),
    "multi-search": ("multi-search", multi_search, False),
    "user_add": ("faceset/user/add", user_add, False),
    "user_update": ("faceset/user/update", user_update, False),
    "face_delete": ("faceset/face/delete", face_delete, False),
    "user_get": ("faceset/user/get", user_get, False),
    "face_getlist": ("faceset/face/getlist", face_getlist, False),
    "group_getusers": ("faceset/group/getusers", group_getusers, False),
    "user_copy": ("faceset/user/copy", user_copy, False),
    "user_delete": ("faceset/user/delete", user_delete, False),
    "group_add": ("faceset/group/add", group_add, False),
    "group_delete": ("faceset/group/delete", group_delete, False),
    "group_getlist": ("faceset/group/getlist", group_getlist, False),
    "person_verify": ("person/verify", person_verify, False),
    "person_idmatch": ("person/idmatch", person_idmatch, False),
    "faceverify": ("faceverify", faceverify, True),
}
