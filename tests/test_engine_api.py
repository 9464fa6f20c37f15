"""The engine over real HTTP: token flow, every interface's shape and error codes, bad input.

One session engine (conftest ``engine``); each test uses its own group ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image
from support.engine_http import Api, b64

from jobs.cli import main
from pipeline import variants as v
from pipeline.engine.persons import valid_id_card_number

pytestmark = pytest.mark.dlib


@pytest.fixture(scope="module")
def photos(samples_dir: Path) -> dict[str, Any]:
    """Base64 of the sample photos used below, and a few PIL images."""
    names = ["obama_01.jpg", "obama_02.jpg", "biden_01.jpg", "astronaut.png",
             "no_face_coffee.png"]
    out: dict[str, Any] = {n.split(".")[0]: b64(samples_dir / n) for n in names}
    out["img_obama"] = Image.open(samples_dir / "obama_01.jpg").convert("RGB")
    out["img_biden"] = Image.open(samples_dir / "biden_01.jpg").convert("RGB")
    return out


@pytest.fixture()
async def api(engine: Any):
    async with Api(engine) as client:
        yield client


# -- token flow -----------------------------------------------------------------------


async def test_token_reply_has_the_documented_fields(api: Api) -> None:
    status, body = await api.get_token()
    assert status == 200
    assert "brain_all_scope" in body["scope"].split()
    assert isinstance(body["expires_in"], int) and body["expires_in"] == 2592000
    for key in ("access_token", "refresh_token", "session_key", "session_secret"):
        assert isinstance(body[key], str) and body[key]


@pytest.mark.parametrize("which", ["client_id", "client_secret"])
async def test_bad_credentials_get_401_invalid_client(api: Api, which: str) -> None:
    status, body = await api.get_token(**{which: "wrong"})
    assert status == 401
    assert body["error"] == "invalid_client"
    if which == "client_id":
        assert body["error_description"] == "unknown client id"


@pytest.mark.parametrize("token", ["", "24.not-a-real-token"], ids=["missing", "unknown"])
async def test_missing_or_unknown_token_is_110(api: Api, token: str, photos: dict) -> None:
    reply = await api.call("faceset/group/getlist", token=token)
    assert reply["error_code"] == 110
    assert reply["log_id"] > 0


# -- detect -----------------------------------------------------------------------------


async def test_detect_returns_documented_shape(api: Api, photos: dict) -> None:
    reply = await api.call("detect", image=photos["obama_01"], face_fields="landmark,qualities")
    assert reply["result_num"] == 1 and len(reply["result"]) == 1
    face = reply["result"][0]
    assert set(face["location"]) == {"left", "top", "width", "height"}
    assert all(isinstance(x, int) for x in face["location"].values())
    assert 0.9 < face["face_probability"] <= 1.0
    assert abs(face["yaw"]) < 20 and abs(face["pitch"]) < 20 and abs(face["roll"]) < 20
    assert len(face["landmark"]) == 4 and "landmark72" not in face
    left_eye, right_eye, nose, mouth = face["landmark"]
    assert left_eye["x"] < nose["x"] < right_eye["x"] and nose["y"] < mouth["y"]
    qualities = face["qualities"]
    assert "type" not in qualities  # never invented
    assert set(qualities["occlusion"]) == {"left_eye", "right_eye", "nose", "mouth",
                                           "left_cheek", "right_cheek", "chin"}
    assert qualities["completeness"] == 1 and qualities["blur"] < 0.7
    assert qualities["illumination"] > 40


async def test_detect_without_fields_is_minimal(api: Api, photos: dict) -> None:
    face = (await api.call("detect", image=photos["obama_01"]))["result"][0]
    assert "qualities" not in face and "landmark" not in face


async def test_detect_no_face_is_an_empty_result(api: Api, photos: dict) -> None:
    reply = await api.call("detect", image=photos["no_face_coffee"])
    assert reply["result_num"] == 0 and reply["result"] == []


async def test_detect_max_face_num_keeps_the_largest(api: Api, photos: dict) -> None:
    both = b64(v.two_faces(photos["img_obama"], photos["img_biden"]))
    one = await api.call("detect", image=both)
    many = await api.call("detect", image=both, max_face_num="5")
    assert one["result_num"] == 1 and many["result_num"] == 2
    areas = [f["location"]["width"] * f["location"]["height"] for f in many["result"]]
    assert areas == sorted(areas, reverse=True)
    assert one["result"][0]["location"] == many["result"][0]["location"]


@pytest.mark.parametrize(
    "make",
    [v.cmyk_jpeg, v.png16, v.animated_gif, lambda im: v.exif_rotated_jpeg(im, 6),
     lambda im: v.to_bytes(im.convert("RGBA"), "PNG"), lambda im: v.to_bytes(im, "BMP")],
    ids=["cmyk", "png16", "animated-gif", "exif-rotated", "rgba-png", "bmp"],
)
async def test_image_formats_are_decoded(api: Api, photos: dict, make: Any) -> None:
    small = v.tiny(photos["img_obama"], 500)
    reply = await api.call("detect", image=b64(make(small)))
    assert reply["result_num"] == 1
    # EXIF orientation is honoured: the face stays upright (eyes above the mouth).
    assert abs(reply["result"][0]["rotation_angle"]) < 15


# -- bad input, unsupported ---------------------------------------------------------------


def _bad_images(photos: dict) -> list[tuple[str, str, int]]:
    img = photos["img_obama"]
    return [
        ("bad-base64", "%%% not base64 %%%", 216200),
        ("text-file", b64(v.text_as_jpg()), 216201),
        ("truncated-jpeg", b64(v.corrupt_jpeg_bytes(v.to_bytes(img))), 216201),
        ("decompression-bomb", b64(v.decompression_bomb_png()), 216202),
        ("too-small", b64(img.resize((12, 14))), 216202),
        ("too-large", b64(v.huge(img.resize((200, 250)), 4200)), 216202),
    ]


@pytest.mark.parametrize("case", range(6), ids=["bad-base64", "text-file", "truncated-jpeg",
                                                 "decompression-bomb", "too-small", "too-large"])
async def test_bad_images_get_their_codes_and_write_nothing(
    api: Api, engine: Any, photos: dict, case: int
) -> None:
    _, image, code = _bad_images(photos)[case]
    before = engine.store.counts()
    detect = await api.call("detect", image=image)
    add = await api.call("faceset/user/add", uid="bad_input", user_info="x",
                         group_id="bad_input_group", image=image)
    assert detect["error_code"] == code and add["error_code"] == code
    assert detect["log_id"] != add["log_id"]
    assert engine.store.counts() == before


@pytest.mark.parametrize(
    ("path", "fields", "code"),
    [
        ("detect", {}, 216101),
        ("detect", {"image": "QUJD", "max_face_num": "many"}, 216100),
        ("detect", {"image": "QUJD", "face_fields": "sparkle"}, 216100),
        ("identify", {"image": "QUJD", "group_id": "bad group!"}, 216100),
        ("faceset/user/add", {"uid": "bad uid", "user_info": "x", "group_id": "g",
                              "image": "QUJD"}, 216100),
        ("faceset/user/add", {"uid": "u", "user_info": "x" * 300, "group_id": "g",
                              "image": "QUJD"}, 216100),
        ("faceset/user/get", {}, 216101),
    ],
    ids=["missing-image", "bad-int", "unknown-field", "bad-group", "bad-uid",
         "long-user-info", "missing-uid"],
)
async def test_malformed_parameters(api: Api, path: str, fields: dict, code: int) -> None:
    reply = await api.call(path, **fields)
    assert reply["error_code"] == code


@pytest.mark.parametrize(
    ("path", "fields", "named"),
    [
        ("detect", {"face_fields": "age,gender,qualities"}, "age,gender"),
        ("identify", {"group_id": "g", "ext_fields": "faceliveness"}, "faceliveness"),
        ("verify", {"uid": "u", "group_id": "g", "ext_fields": "faceliveness"}, "faceliveness"),
        ("match", {"image_liveness": ",faceliveness"}, "faceliveness"),
        ("faceverify", {}, "faceverify"),
        ("person/verify", {"id_card_number": "x", "name": "n", "faceliveness": "use"},
         "faceliveness"),
    ],
    ids=["detect-attributes", "identify-liveness", "verify-liveness", "match-liveness",
         "faceverify", "person-liveness"],
)
async def test_unsupported_attributes_are_216102(
    api: Api, photos: dict, path: str, fields: dict, named: str
) -> None:
    image_field = {"images": photos["obama_01"] + "," + photos["obama_02"]} if path == "match" \
        else {"image": photos["obama_01"]}
    reply = await api.call(path, **image_field, **fields)
    assert reply["error_code"] == 216102
    assert reply["error_msg"].startswith("service not support")
    assert named in reply["error_msg"] and "faceflow engine" in reply["error_msg"]


async def test_unknown_path_answers_json_with_log_id(api: Api) -> None:
    reply = await api.call("faceset/user/rename", uid="x")
    assert reply["error_code"] == 216102 and reply["log_id"] > 0


async def test_oversized_body_is_refused_as_json(api: Api) -> None:
    reply = await api.call("detect", image="A" * (26 * 2**20))
    assert reply["error_code"] == 216103


# -- match, identify, verify ----------------------------------------------------------


async def test_match_scores_every_pair(api: Api, photos: dict) -> None:
    images = ",".join([photos["obama_01"], photos["obama_02"], photos["biden_01"]])
    reply = await api.call("match", images=images)
    pairs = {(p["index_i"], p["index_j"]): p["score"] for p in reply["result"]}
    assert reply["result_num"] == 3 and set(pairs) == {(0, 1), (0, 2), (1, 2)}
    assert pairs[(0, 1)] >= 80 > max(pairs[(0, 2)], pairs[(1, 2)])


@pytest.mark.parametrize(("which", "code"), [("one", 216614), ("no-face", 216402)])
async def test_match_errors(api: Api, photos: dict, which: str, code: int) -> None:
    images = photos["obama_01"] if which == "one" else \
        photos["obama_01"] + "," + photos["no_face_coffee"]
    assert (await api.call("match", images=images))["error_code"] == code


async def test_faceset_lifecycle(api: Api, engine: Any, photos: dict) -> None:
    add = await api.call("faceset/user/add", uid="life_obama", user_info="Barack",
                         group_id="life_a,life_b", image=photos["obama_01"])
    assert set(add) == {"log_id"}
    again = await api.call("faceset/user/add", uid="life_obama", user_info="Barack",
                           group_id="life_a", image=photos["obama_01"])
    assert again["error_code"] == 216616 and again["error_msg"] == "image exist"
    await api.call("faceset/user/add", uid="life_biden", user_info="Joe", group_id="life_a",
                   image=photos["biden_01"])
    got = await api.call("faceset/user/get", uid="life_obama")
    assert got["result_num"] == 2
    assert {r["group_id"] for r in got["result"]} == {"life_a", "life_b"}
    assert all(r["uid"] == "life_obama" and r["user_info"] == "Barack" for r in got["result"])

    found = await api.call("identify", group_id="life_a", image=photos["obama_02"],
                           user_top_num="2")
    assert [r["uid"] for r in found["result"]] == ["life_obama", "life_biden"]
    assert found["result"][0]["scores"][0] >= 80 > found["result"][1]["scores"][0]
    verified = await api.call("verify", uid="life_obama", group_id="life_a",
                              image=photos["obama_02"])
    assert verified["result_num"] == 1 and verified["result"][0] >= 80
    multi = await api.call("multi-identify", group_id="life_a", image=photos["obama_02"])
    assert multi["result_num"] == len(multi["result"]) == 1
    assert set(multi["result"][0]["position"]) >= {"left", "top", "width", "height", "degree"}

    users = await api.call("faceset/group/getusers", group_id="life_a")
    assert [u["uid"] for u in users["result"]] == ["life_biden", "life_obama"]
    listed = await api.call("faceset/group/getlist", start="0", num="1000")
    assert {"life_a", "life_b"} <= set(listed["result"])


async def test_group_copy_and_removal(api: Api, photos: dict) -> None:
    await api.call("faceset/user/add", uid="joe", user_info="Joe", group_id="copy_src",
                   image=photos["biden_01"])
    copy = await api.call("faceset/group/adduser", src_group_id="copy_src",
                          group_id="copy_dst", uid="joe")
    assert "error_code" not in copy
    dup = await api.call("faceset/group/adduser", src_group_id="copy_src",
                         group_id="copy_dst", uid="joe")
    assert (dup["error_code"], dup["error_msg"]) == (216100, "already add")
    missing = await api.call("faceset/group/adduser", src_group_id="copy_src",
                             group_id="copy_dst", uid="nobody")
    assert missing["error_code"] == 216611
    # The copy carries the faces: identify finds joe in the new group.
    found = await api.call("identify", group_id="copy_dst", image=photos["biden_01"])
    assert found["result"][0]["uid"] == "joe"
    assert "error_code" not in await api.call("faceset/group/deleteuser", group_id="copy_dst",
                                              uid="joe")
    last = await api.call("faceset/group/deleteuser", group_id="copy_src", uid="joe")
    assert last["error_code"] == 216619


async def test_delete_and_update_codes(api: Api, engine: Any, photos: dict) -> None:
    assert (await api.call("faceset/user/delete", uid="ghost"))["error_code"] == 216612
    assert (await api.call("faceset/user/get", uid="ghost"))["error_code"] == 216611
    update = await api.call("faceset/user/update", uid="ghost", user_info="x",
                            group_id="upd", image=photos["obama_01"])
    assert update["error_code"] == 216612
    replace = await api.call("faceset/user/update", uid="ghost", user_info="x",
                             group_id="upd", image=photos["obama_01"], action_type="replace")
    assert "error_code" not in replace
    before = engine.store.counts()["faces"]
    await api.call("faceset/user/update", uid="ghost", user_info="y", group_id="upd",
                   image=photos["obama_02"])
    assert engine.store.counts()["faces"] == before  # replaced, not appended
    assert "error_code" not in await api.call("faceset/user/delete", uid="ghost")
    assert (await api.call("faceset/user/get", uid="ghost"))["error_code"] == 216611
    assert (await api.call("verify", uid="ghost", group_id="upd",
                           image=photos["obama_01"]))["error_code"] == 216611


async def test_identify_in_empty_group_is_216618(api: Api, photos: dict) -> None:
    reply = await api.call("identify", group_id="nobody_here", image=photos["obama_01"])
    assert reply["error_code"] == 216618
    users = await api.call("faceset/group/getusers", group_id="nobody_here")
    assert users["result_num"] == 0


async def test_add_without_face_is_216402(api: Api, engine: Any, photos: dict) -> None:
    before = engine.store.counts()
    reply = await api.call("faceset/user/add", uid="cup", user_info="coffee",
                           group_id="noface", image=photos["no_face_coffee"])
    assert reply["error_code"] == 216402
    assert engine.store.counts() == before


# -- person verify ----------------------------------------------------------------------


def _id_number(prefix17: str) -> str:
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    total = sum(int(d) * w for d, w in zip(prefix17, weights, strict=True))
    return prefix17 + "10X98765432"[total % 11]


async def test_person_verify(api: Api, engine: Any, photos: dict, samples_dir: Path,
                             tmp_path: Path) -> None:
    number = _id_number("11010519491231002")
    csv_path = tmp_path / "persons.csv"
    csv_path.write_text(f"id_card_number,name,photo\n{number},Barack,"
                        f"{samples_dir / 'obama_01.jpg'}\n12345,Bad,none.jpg\n")
    where = (["--store", engine.config.store_url] if engine.config.store_url
             else ["--data-dir", str(engine.data_dir)])
    result = CliRunner().invoke(main, ["engine", "import-persons", str(csv_path), *where])
    assert result.exit_code == 1 and "imported 1 person(s), refused 1" in result.output
    same = await api.call("person/verify", image=photos["obama_02"], id_card_number=number,
                          name="Barack")
    other = await api.call("person/verify", image=photos["biden_01"], id_card_number=number,
                           name="Barack")
    assert same["result"] >= 0.8 > other["result"]
    bad = await api.call("person/verify", image=photos["obama_02"], id_card_number="123",
                         name="Barack")
    assert bad["error_code"] == 216100
    unknown = await api.call("person/verify", image=photos["obama_02"],
                             id_card_number=_id_number("11010519491231003"), name="Barack")
    assert unknown["error_code"] == 216611
    blurred = b64(v.blurred(photos["img_obama"], 12))
    gated = await api.call("person/verify", image=blurred, id_card_number=number,
                           name="Barack", quality="use")
    assert gated["error_code"] == 216100 and "blur" in gated["error_msg"]


@pytest.mark.parametrize(
    ("number", "valid"),
    [("11010519491231002X", True), ("110105194912310021", False), ("1101051949123100", False),
     ("11010519491231002x", True), ("A1010519491231002X", False)],
)
def test_id_card_checksum(number: str, valid: bool) -> None:
    assert valid_id_card_number(number) is valid
