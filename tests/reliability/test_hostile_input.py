"""Hostile input, end to end: one `faceflow enroll` over a manifest of bad rows and files.

The manifest itself is awkward (UTF-8 BOM, CRLF line ends, quoted commas in user_info)
and each row is one hostile case; every case is then asserted with its expected status
and reason slug. Manifest-level problems (a missing column, a header-only file) are
separate runs: they stop before any call, or do nothing, with exit codes 2 and 0.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image
from support.reliability import engine_env, face_crop, faces_per_uid, read_parts

from jobs.cli import main
from pipeline import variants as v

pytestmark = [pytest.mark.slow, pytest.mark.dlib]

GROUP = "rel_hostile"

#: uid -> (image path as written, user_info, group_id cell, status, reason or None).
#: reason None: a success; then ``TRANSFORMED`` says what the job had to do first.
CASES: dict[str, tuple[str, str, str, str, str | None]] = {
    "good": ("good.jpg", "Doe, John", "", "enrolled", None),  # quoted comma in the CSV
    "missing": ("nowhere.jpg", "i", "", "invalid_input", "file_missing"),
    "directory": ("adir", "i", "", "invalid_input", "not_a_file"),
    "zero_bytes": ("empty.jpg", "i", "", "invalid_input", "file_empty"),
    "truncated": ("truncated.jpg", "i", "", "invalid_input", "image_corrupt"),
    "text": ("notes.jpg", "i", "", "invalid_input", "image_format"),
    "bomb": ("bomb.png", "i", "", "invalid_input", "decompression_bomb"),
    "over_10mb": ("big.jpg", "i", "", "invalid_input", "file_too_large"),
    "tiny": ("tiny.png", "i", "", "invalid_input", "image_too_small"),
    "huge": ("huge.jpg", "i", "", "enrolled", None),
    "cmyk": ("cmyk.jpg", "i", "", "enrolled", None),
    "png16": ("grey16.png", "i", "", "enrolled", None),
    "gif": ("animated.gif", "i", "", "invalid_input", "image_format"),
    "exif": ("exif6.jpg", "i", "", "enrolled", None),
    "no_exif": ("turned.jpg", "i", "", "no_face", "no_face"),  # the same pixels, no EXIF
    "john smith": ("good.jpg", "i", "", "invalid_input", "uid_charset"),
    "jos\u00e9": ("good.jpg", "i", "", "invalid_input", "uid_charset"),
    "u" * 130: ("good.jpg", "i", "", "invalid_input", "uid_too_long"),
    "long_info": ("good.jpg", "\u4e2d" * 90, "", "invalid_input", "user_info_too_long"),
    "bad_group": ("good.jpg", "i", "staff-2024", "invalid_input", "group_id_charset"),
    "escape": ("../outside/escape.jpg", "i", "", "enrolled", None),  # documented: read
    "loop": ("loop.jpg", "i", "", "invalid_input", "symlink_loop"),
}
#: The duplicate of the "good" row (same uid, group and image) comes last.
DUPLICATE = ("good", "good.jpg", "again", "", "invalid_input", "duplicate_row")
TRANSFORMED = {"huge": "resized", "cmyk": "converted", "png16": "converted",
               "exif": "exif_rotated"}


def _files(folder: Path, samples: Path) -> None:
    """Write every image the cases name (the face is a small crop of obama_01)."""
    face = face_crop(samples, "obama_01.jpg")
    good = v.to_bytes(face)
    square = Image.new("RGB", (face.height, face.height), "white")
    square.paste(face, ((face.height - face.width) // 2, 0))
    made = {
        "good.jpg": good, "empty.jpg": b"", "truncated.jpg": v.corrupt_jpeg_bytes(good),
        "notes.jpg": v.text_as_jpg(), "bomb.png": v.decompression_bomb_png(),
        "big.jpg": b"\xff\xd8\xff" + b"\0" * (10 * 2**20 + 1),
        "tiny.png": v.to_bytes(face.resize((10, 10)), "PNG"),
        "huge.jpg": v.to_bytes(square.resize((5000, 5000), Image.Resampling.BICUBIC)),
        "cmyk.jpg": v.cmyk_jpeg(face.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
        "grey16.png": v.png16(face.crop((2, 0, face.width, face.height))),
        "animated.gif": v.animated_gif(face),
        "exif6.jpg": v.exif_rotated_jpeg(face.crop((4, 0, face.width, face.height)), 6),
        "turned.jpg": v.to_bytes(face.transpose(Image.Transpose.ROTATE_90)),
    }
    for name, data in made.items():
        (folder / name).write_bytes(data)
    (folder / "adir").mkdir()
    os.symlink("loop.jpg", folder / "loop.jpg")  # a link to itself
    outside = folder.parent / "outside"
    outside.mkdir()
    (outside / "escape.jpg").write_bytes(v.to_bytes(face.crop((6, 0, face.width, face.height))))


def _manifest(path: Path) -> Path:
    """The cases as CSV with a UTF-8 BOM, CRLF line ends and quoted fields."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(["uid", "image", "user_info", "group_id"])
    for uid, (image, info, group, _, _) in CASES.items():
        writer.writerow([uid, image, info, group])
    writer.writerow(DUPLICATE[:4])
    path.write_bytes(b"\xef\xbb\xbf" + text.getvalue().encode("utf-8"))
    return path


@pytest.fixture(scope="module")
def hostile(rel_engine: Any, samples_dir: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("hostile") / "photos"
    folder.mkdir()
    _files(folder, samples_dir)
    manifest = _manifest(folder / "members.csv")
    run_dir = folder.parent / "run"
    result = CliRunner().invoke(main, ["enroll", str(manifest), "--group", GROUP,
                                       "--run-dir", str(run_dir), "--concurrency", "4"],
                                env=engine_env(rel_engine))
    return {"result": result, "df": read_parts(run_dir).set_index("row"),
            "faces": faces_per_uid(rel_engine.store, GROUP), "store": rel_engine.store}


def test_the_run_finishes_with_one_outcome_per_row(hostile: dict[str, Any]) -> None:
    assert hostile["result"].exit_code == 1, hostile["result"].output  # some rows failed
    assert hostile["df"].index.tolist() == list(range(len(CASES) + 1))
    assert "Traceback" not in hostile["result"].output


@pytest.mark.parametrize("uid", list(CASES), ids=[u[:20] for u in CASES])
def test_each_case_gets_its_status_and_reason(hostile: dict[str, Any], uid: str) -> None:
    row = list(CASES).index(uid)
    rec = hostile["df"].loc[row]
    _, _, _, status, reason = CASES[uid]
    assert rec["uid"] == uid  # the BOM is not part of the first column's name
    assert rec["status"] == status, (rec["status"], list(rec["reasons"]), rec["error_msg"])
    if reason is not None:
        assert reason in list(rec["reasons"]), list(rec["reasons"])
    if status == "invalid_input":
        assert rec["attempts"] == 0 and rec["error_msg"]  # refused before any call, in words
        assert hostile["faces"].get(uid) is None
    if status == "enrolled":
        assert hostile["faces"][uid] == 1
        assert list(rec["transformed"]) == ([TRANSFORMED[uid]] if uid in TRANSFORMED else [])


def test_the_duplicate_row_is_refused_and_the_first_kept(hostile: dict[str, Any]) -> None:
    rec = hostile["df"].loc[len(CASES)]
    assert (rec["status"], list(rec["reasons"])) == (DUPLICATE[4], [DUPLICATE[5]])
    assert "row 0" in rec["error_msg"]
    assert hostile["faces"]["good"] == 1


def test_quoted_commas_and_crlf_reach_the_service_intact(hostile: dict[str, Any]) -> None:
    member = hostile["store"].membership(GROUP, "good")
    assert member is not None and member.user_info == "Doe, John"  # not split, no \r


def test_a_manifest_missing_a_column_stops_before_any_call(
    rel_engine: Any, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("uid,picture,user_info\nu1,a.jpg,i\n", encoding="utf-8")
    before = rel_engine.store.counts()
    out = CliRunner().invoke(main, ["enroll", str(bad), "--group", GROUP, "--run-dir",
                                    str(tmp_path / "run")], env=engine_env(rel_engine))
    assert out.exit_code == 2, out.output
    assert "line 1" in out.output and "missing required column 'image'" in out.output
    assert "Add or rename the column" in out.output  # the fix
    assert not (tmp_path / "run").exists() and rel_engine.store.counts() == before


def test_a_header_only_manifest_is_a_run_of_zero_rows(rel_engine: Any, tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_text("uid,image,user_info\n", encoding="utf-8")
    run_dir = tmp_path / "run"
    out = CliRunner().invoke(main, ["enroll", str(empty), "--group", GROUP,
                                    "--run-dir", str(run_dir)], env=engine_env(rel_engine))
    assert out.exit_code == 0, out.output
    assert "(0 rows)" in out.output
    assert pd.DataFrame(read_parts(run_dir)).empty


def test_images_root_refuses_paths_escaping_it_and_keeps_the_rest(
    rel_engine: Any, samples_dir: Path, tmp_path: Path
) -> None:
    """With --images-root the documented default (any readable file, the "escape" case
    above) turns into a refusal: a ``..`` path and a symlink out of the folder are both
    refused before any call; a file inside the folder is still enrolled."""
    face = face_crop(samples_dir, "obama_01.jpg")
    folder, outside = tmp_path / "photos", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    (folder / "in.jpg").write_bytes(v.to_bytes(face.crop((8, 0, face.width, face.height))))
    (outside / "out.jpg").write_bytes(v.to_bytes(face.crop((10, 0, face.width, face.height))))
    os.symlink(outside / "out.jpg", folder / "link.jpg")
    manifest = folder / "m.csv"
    manifest.write_text("uid,image,user_info\nroot_in,in.jpg,i\nroot_up,../outside/out.jpg,i\n"
                        "root_link,link.jpg,i\n", encoding="utf-8")
    run_dir, group = tmp_path / "run", "rel_root"
    out = CliRunner().invoke(main, ["enroll", str(manifest), "--group", group, "--run-dir",
                                    str(run_dir), "--images-root", str(folder)],
                             env=engine_env(rel_engine))
    assert out.exit_code == 1, out.output  # two rows refused
    df = read_parts(run_dir).set_index("uid")
    assert df.loc["root_in", "status"] == "enrolled"
    for uid in ("root_up", "root_link"):
        assert df.loc[uid, "status"] == "invalid_input"
        assert list(df.loc[uid, "reasons"]) == ["outside_manifest_dir"]
        assert df.loc[uid, "attempts"] == 0
    assert faces_per_uid(rel_engine.store, group) == {"root_in": 1}
