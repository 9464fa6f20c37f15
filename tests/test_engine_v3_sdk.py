"""Baidu's official Python SDK (``aip.AipFace`` of baidu-aip) drives the engine's v3 paths.

The SDK is pointed at the engine by rewriting its ``https://aip.baidubce.com`` URLs
(class attributes) on one instance; everything else is the SDK as published: its token
fetch, its JSON bodies, its query string. Every v3 call the SDK offers is made and the
reply checked against the documented shape (v3 contract §1.5, §3).
"""

from __future__ import annotations

import base64
import uuid
from pathlib import Path
from typing import Any

import pytest

aip = pytest.importorskip("aip", reason="baidu-aip is not installed (pip install baidu-aip)")

pytestmark = pytest.mark.dlib

BAIDU = "https://aip.baidubce.com"
ENVELOPE = {"error_code", "error_msg", "log_id", "timestamp", "cached", "result"}


def point_at(client: Any, url: str) -> Any:
    """Rewrite the SDK's service URLs (name-mangled class attributes) to ``url``."""
    for cls in type(client).__mro__:
        for attr, value in list(vars(cls).items()):
            if isinstance(value, str) and value.startswith(BAIDU):
                setattr(client, attr, url + value[len(BAIDU):])
    return client


@pytest.fixture(scope="module")
def sdk(engine):
    return point_at(aip.AipFace("faceflow-test", engine.api_key, engine.secret_key), engine.url)


@pytest.fixture(scope="module")
def photos(samples_dir: Path) -> dict[str, str]:
    names = {"obama": "obama_01.jpg", "obama2": "obama_02.jpg", "astronaut": "astronaut.png",
             "cat": "no_face_cat.png"}
    return {key: base64.b64encode((samples_dir / name).read_bytes()).decode()
            for key, name in names.items()}


def ok(reply: dict[str, Any]) -> Any:
    assert set(reply) == ENVELOPE, reply
    assert reply["error_code"] == 0 and reply["error_msg"] == "SUCCESS", reply
    assert isinstance(reply["log_id"], int) and reply["log_id"] >= 10**12
    assert reply["cached"] == 0
    return reply["result"]


def failed(reply: dict[str, Any], code: int) -> None:
    assert reply["error_code"] == code, reply
    if code > 100:
        assert set(reply) == ENVELOPE and reply["result"] is None


def group() -> str:
    return "sdk_" + uuid.uuid4().hex[:10]


def test_detect_shape_and_token(sdk, photos):
    result = ok(sdk.detect(photos["obama"], "BASE64",
                           {"face_field": "quality,landmark", "max_face_num": 2}))
    assert result["face_num"] == len(result["face_list"]) == 1
    face = result["face_list"][0]
    assert len(face["face_token"]) == 32 and int(face["face_token"], 16) >= 0
    assert set(face["location"]) == {"left", "top", "width", "height", "rotation"}
    assert set(face["angle"]) == {"yaw", "pitch", "roll"}
    assert "chin_contour" in face["quality"]["occlusion"]
    assert face["quality"]["completeness"] == 1
    assert len(face["landmark"]) == 4
    # the same picture yields the same token; the token itself can be detected
    again = ok(sdk.detect(photos["obama"], "BASE64"))["face_list"][0]
    assert again["face_token"] == face["face_token"]
    by_token = ok(sdk.detect(face["face_token"], "FACE_TOKEN"))
    assert by_token["face_list"][0]["face_token"] == face["face_token"]
    cropped = ok(sdk.detect(photos["obama"], "BASE64", {"display_corp_image": 1}))
    crop = base64.b64decode(cropped["face_list"][0]["corp_image_base64"])
    assert crop.startswith(b"\xff\xd8") and 1000 < len(crop) < len(photos["obama"])


def test_detect_refusals(sdk, photos):
    failed(sdk.detect(photos["cat"], "BASE64"), 222202)
    failed(sdk.detect(photos["obama"], "BASE64", {"face_field": "age,gender"}), 222017)
    failed(sdk.detect(photos["obama"], "BASE64", {"liveness_control": "NORMAL"}), 223119)
    failed(sdk.detect("0" * 32, "FACE_TOKEN"), 222209)
    failed(sdk.detect("http://example.invalid/a.jpg", "URL"), 222204)


def test_faceset_lifecycle(sdk, photos):
    g1, g2 = group(), group()
    uid = "o_" + uuid.uuid4().hex[:8]  # unique: the engine is shared by the session
    failed(sdk.getGroupUsers(g1), 223100)
    token = ok(sdk.detect(photos["obama"], "BASE64"))["face_list"][0]["face_token"]
    added = ok(sdk.addUser(token, "FACE_TOKEN", g1, uid, {"user_info": "Barack"}))
    assert added["face_token"] == token and set(added["location"]) >= {"left", "rotation"}
    failed(sdk.addUser(photos["obama"], "BASE64", g1, "someone_else"), 223105)
    second = ok(sdk.addUser(photos["obama2"], "BASE64", g1, uid))["face_token"]
    faces = ok(sdk.faceGetlist(uid, g1))["face_list"]
    assert [f["face_token"] for f in faces] == [token, second]
    assert all(len(f["ctime"]) == 19 for f in faces)
    assert ok(sdk.getUser(uid, g1))["user_list"] == [{"user_info": "Barack", "group_id": g1}]
    assert ok(sdk.getGroupUsers(g1))["user_id_list"] == [uid]
    failed(sdk.userCopy(uid, {"src_group_id": g1, "dst_group_id": g2}), 223111)
    assert ok(sdk.groupAdd(g2)) is None
    failed(sdk.groupAdd(g2), 223101)
    assert ok(sdk.userCopy(uid, {"src_group_id": g1, "dst_group_id": g2})) is None
    failed(sdk.userCopy(uid, {"src_group_id": g1, "dst_group_id": g2}), 223102)
    groups = ok(sdk.getGroupList({"length": 1000}))["group_id_list"]
    assert groups.index(g1) < groups.index(g2)
    assert {u["group_id"] for u in ok(sdk.getUser(uid, "@ALL"))["user_list"]} == {g1, g2}
    assert ok(sdk.faceDelete(uid, g1, second)) is None
    failed(sdk.faceDelete(uid, g1, second), 223106)
    updated = ok(sdk.updateUser(photos["obama2"], "BASE64", g2, uid))
    assert [f["face_token"] for f in ok(sdk.faceGetlist(uid, g2))["face_list"]] == [
        updated["face_token"]]
    failed(sdk.updateUser(photos["obama2"], "BASE64", g2, "nobody"), 223103)
    assert ok(sdk.deleteUser(g1, uid)) is None
    failed(sdk.getUser(uid, g1), 223103)
    assert ok(sdk.groupDelete(g2)) is None
    failed(sdk.getUser(uid, "@ALL"), 223103)
    assert ok(sdk.getGroupUsers(g1))["user_id_list"] == []  # explicit group outlives users


def test_search_multisearch_match(sdk, photos):
    g = group()
    ok(sdk.addUser(photos["obama"], "BASE64", g, "obama", {"user_info": "B"}))
    ok(sdk.addUser(photos["astronaut"], "BASE64", g, "astronaut"))
    found = ok(sdk.search(photos["obama2"], "BASE64", g, {"max_user_num": 5,
                                                          "match_threshold": 80}))
    assert len(found["face_token"]) == 32
    assert [u["user_id"] for u in found["user_list"]] == ["obama"]
    assert found["user_list"][0]["score"] >= 80 and found["user_list"][0]["user_info"] == "B"
    both = ok(sdk.search(photos["obama2"], "BASE64", g, {"max_user_num": 5}))["user_list"]
    assert [u["user_id"] for u in both] == ["obama", "astronaut"]
    assert both[0]["score"] > both[1]["score"]
    failed(sdk.search(photos["astronaut"], "BASE64", g, {"user_id": "obama",
                                                         "match_threshold": 80}), 222207)
    failed(sdk.search(photos["obama"], "BASE64", f"{g},{group()}"), 223100)
    many = ",".join(group() for _ in range(11))
    failed(sdk.search(photos["obama"], "BASE64", many), 223104)
    multi = ok(sdk.multiSearch(photos["obama"], "BASE64", g, {"max_face_num": 2}))
    assert multi["face_num"] == 1 and multi["face_list"][0]["user_list"][0]["user_id"] == "obama"
    token = found["face_token"]
    matched = ok(sdk.match([{"image": photos["obama"], "image_type": "BASE64"},
                            {"image": token, "image_type": "FACE_TOKEN"}]))
    assert matched["score"] >= 80
    assert matched["face_list"][1] == {"face_token": token}
    other = ok(sdk.match([{"image": photos["obama"], "image_type": "BASE64"},
                          {"image": photos["astronaut"], "image_type": "BASE64"}]))
    assert other["score"] < 80
    failed(sdk.match([{"image": photos["obama"], "image_type": "BASE64"}]), 222208)


def test_person_verify_and_idmatch_against_a_registered_person(sdk, photos, engine):
    from pipeline.engine.store import Person  # noqa: PLC0415

    number, name = "11010519491231002X", "奥巴马"  # a valid GB 11643 number; UTF-8 name
    token = ok(sdk.detect(photos["obama"], "BASE64"))["face_list"][0]["face_token"]
    held = engine.call_in_loop(lambda: engine.state.face_tokens.get(token))
    engine.store.put_person(Person(number, name, held.descriptor, held.sha256))
    same = ok(sdk.personVerify(photos["obama2"], "BASE64", number, name))
    other = ok(sdk.personVerify(photos["astronaut"], "BASE64", number, name))
    assert same["score"] >= 80 > other["score"]
    assert ok(sdk.facePersonIdmatchV3(number, name)) is None
    failed(sdk.facePersonIdmatchV3(number, "someone else"), 222351)
    failed(sdk.personVerify(photos["obama"], "BASE64", number, name,
                            {"liveness_control": "LOW"}), 223119)


def test_identity_and_liveness(sdk, photos, engine):
    failed(sdk.personVerify(photos["obama"], "BASE64", "110105194912310021", "x"), 222022)
    failed(sdk.personVerify(photos["obama"], "BASE64", "11010519491231002X", "x"), 222351)
    failed(sdk.personVerify(photos["obama"], "BASE64", "123", "x"), 222022)
    failed(sdk.facePersonIdmatchV3("11010519491231002X", "x"), 222351)
    reply = sdk.faceverify([{"image": photos["obama"], "image_type": "BASE64"}])
    assert set(reply) == {"error_code", "error_msg"} and reply["error_code"] == 3
    assert "liveness" in reply["error_msg"]
