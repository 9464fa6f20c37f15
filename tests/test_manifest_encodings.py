"""Manifests as exported on day one: GB18030/GBK and UTF-16 text, ';' and tab
separators, Windows paths (issue 17)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.api.errors import ManifestError
from pipeline.runs.manifest import Manifest, ManifestRow, open_manifest, windows_drive_path

CHINESE = "image,uid,user_info\nphotos/张三.jpg,u1,张三 销售部\nphotos/李四.jpg,u2,李四\n"


def rows_of(m: Manifest) -> list[ManifestRow]:
    return [row for batch in m.batches() for row in batch]


def failure(path: Path, **kw: object) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        open_manifest(path, default_group="g", **kw)  # type: ignore[arg-type]
    return info.value


@pytest.mark.parametrize("codec", ["gb18030", "gbk", "utf-16", "big5"])
def test_encoding_reads_the_text_and_keeps_the_original_fingerprint(tmp_path: Path,
                                                                    codec: str) -> None:
    text = CHINESE
    if codec == "big5":  # traditional characters only
        text = "image,uid,user_info\nphotos/陳大文.jpg,u1,陳大文 銷售部\nphotos/李四.jpg,u2,李四\n"
    path = tmp_path / "m.csv"
    path.write_bytes(text.replace("\n", "\r\n").encode(codec))
    m = open_manifest(path, default_group="g", encoding=codec)
    rows = rows_of(m)
    assert [r.user_info for r in rows] == [line.split(",")[2] for line in
                                           text.splitlines()[1:]]
    assert [r.line for r in rows] == [2, 3]
    assert rows[0].image_path == tmp_path / text.splitlines()[1].split(",")[0]
    import hashlib

    assert m.fingerprint == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert m.path == path  # errors and run.json name the user's file, not the copy


def test_utf8_failure_names_the_likely_encoding_and_the_flag(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes(CHINESE.encode("gbk"))
    exc = failure(path)
    assert exc.line == 2
    assert "GB18030/GBK" in exc.message and "--encoding gb18030" in exc.message
    utf16 = tmp_path / "u.csv"
    utf16.write_bytes(CHINESE.encode("utf-16"))
    assert "--encoding utf-16" in failure(utf16).message


def test_jsonl_in_gbk(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes('{"image": "a.jpg", "uid": "u1", "user_info": "王五"}\n'.encode("gbk"))
    assert "--encoding gb18030" in failure(path).message
    assert rows_of(open_manifest(path, default_group="g", encoding="gbk"))[0].user_info == "王五"


def test_bytes_that_are_not_the_given_encoding_name_their_line(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes("image,uid\na.jpg,u1\n".encode() + "b.jpg,张\n".encode("gbk")
                     + b"c.jpg,\x80\xff\n")
    exc = failure(path, encoding="gbk")
    assert exc.line == 4 and "not gbk" in exc.message and exc.path == str(path)


def test_unknown_encoding_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(CHINESE)
    assert "unknown encoding" in failure(path, encoding="klingon").message


@pytest.mark.parametrize("sep", [";", "\t"], ids=["semicolon", "tab"])
def test_semicolon_and_tab_are_detected_from_the_header(tmp_path: Path, sep: str) -> None:
    path = tmp_path / "m.csv"
    path.write_text(f"image{sep}uid{sep}user_info\na.jpg{sep}u1{sep}x, y\nb.jpg{sep}u2{sep}\n")
    m = open_manifest(path, default_group="g")
    assert m.delimiter == sep and m.delimiter_detected
    assert [(r.image, r.uid, r.user_info) for r in rows_of(m)] == [("a.jpg", "u1", "x, y"),
                                                                     ("b.jpg", "u2", "")]


def test_a_given_delimiter_is_used_and_a_wrong_one_gets_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("image;uid\na.jpg;u1\n")
    m = open_manifest(path, default_group="g", delimiter=";")
    assert not m.delimiter_detected and rows_of(m)[0].uid == "u1"
    exc = failure(path, delimiter=",")
    assert exc.line == 1 and "--delimiter ';'" in exc.message
    assert "one character" in failure(path, delimiter=";;").message


def test_comma_stays_the_default(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("image,uid,note\na.jpg,u1,a;b\n")
    m = open_manifest(path, default_group="g")
    assert m.delimiter == "," and not m.delimiter_detected
    assert rows_of(m)[0].columns["note"] == "a;b"


def test_backslashes_in_relative_paths_are_separators(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("image,uid\nphotos\\a.jpg,u1\n.\\photos\\a.jpg,u1\nphotos/b.jpg,u2\n")
    m = open_manifest(path, default_group="g")
    rows = rows_of(m)
    assert rows[0].image == "photos\\a.jpg"  # as written
    assert rows[0].image_path == rows[1].image_path == tmp_path / "photos" / "a.jpg"
    assert m.row_is_duplicate_of(1) == 0  # the same file spelt two ways


@pytest.mark.parametrize("image, drive", [("C:\\photos\\a.jpg", True), ("c:/photos/a.jpg", True),
                                          ("\\\\server\\share\\a.jpg", True),
                                          ("photos\\a.jpg", False), ("/abs/a.jpg", False)])
def test_windows_drive_paths_are_recognised(image: str, drive: bool) -> None:
    assert windows_drive_path(image) is drive
