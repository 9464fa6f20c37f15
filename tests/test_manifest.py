"""Manifests: three formats read alike, line numbers, clear errors, duplicates, batches."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.api.errors import ManifestError
from pipeline.runs import manifest as manifest_mod
from pipeline.runs.manifest import Manifest, ManifestRow, open_manifest

ROWS = [
    {"image": "photos/a.jpg", "uid": "007", "group_id": "staff", "user_info": "Ann, \"A\"",
     "action": "Update", "badge": "12"},
    {"image": "/abs/b.png", "uid": "u_2", "group_id": "", "user_info": "", "action": "",
     "badge": ""},
    {"image": "./photos/../c.jpg", "uid": "", "group_id": "vip", "user_info": "line1\nline2",
     "action": "upsert", "badge": "x"},
]


def write_csv(path: Path, rows: list[dict[str, str]], newline: str = "\n",
              bom: bool = False) -> Path:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator=newline)
    writer.writeheader()
    writer.writerows(rows)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + buf.getvalue().encode())
    return path


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_parquet(path: Path, rows: list[dict[str, object]], row_group_size: int = 1000) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path


def all_rows(m: Manifest, **kw: int) -> list[ManifestRow]:
    return [row for batch in m.batches(**kw) for row in batch]


def error(path: Path, **kw: object) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        open_manifest(path, **kw)  # type: ignore[arg-type]
    return info.value


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize("fmt", ["csv", "parquet", "pq", "jsonl", "ndjson"])
def test_formats_read_alike(tmp_path: Path, fmt: str) -> None:
    writer = {"csv": write_csv, "parquet": write_parquet, "pq": write_parquet,
              "jsonl": write_jsonl, "ndjson": write_jsonl}[fmt]
    m = open_manifest(writer(tmp_path / f"m.{fmt}", ROWS), default_group="default")
    assert m.format == {"pq": "parquet", "ndjson": "jsonl"}.get(fmt, fmt)
    assert m.columns == list(ROWS[0]) and m.num_rows == 3
    rows = all_rows(m)
    assert [r.row for r in rows] == [0, 1, 2]
    assert [r.uid for r in rows] == ["007", "u_2", ""]
    assert [r.group_id for r in rows] == ["staff", "default", "vip"]
    assert [r.action for r in rows] == ["update", "add", "upsert"]
    assert [r.user_info for r in rows] == ['Ann, "A"', "", "line1\nline2"]
    assert [r.image_path for r in rows] == [tmp_path / "photos/a.jpg", Path("/abs/b.png"),
                                           tmp_path / "c.jpg"]
    assert rows[0].columns == ROWS[0] and rows[0].image == "photos/a.jpg"
    assert m.fingerprint == "sha256:" + hashlib.sha256(m.path.read_bytes()).hexdigest()


def test_line_numbers_per_format(tmp_path: Path) -> None:
    csv_rows = all_rows(open_manifest(write_csv(tmp_path / "m.csv", ROWS), default_group="g"))
    assert [r.line for r in csv_rows] == [2, 3, 4]  # row 2's cell spans lines 4-5
    path = tmp_path / "m.jsonl"
    path.write_text("\n" + json.dumps(ROWS[0]) + "\n\n   \n" + json.dumps(ROWS[1]) + "\n")
    assert [r.line for r in all_rows(open_manifest(path, default_group="g"))] == [2, 5]
    pq_rows = all_rows(open_manifest(write_parquet(tmp_path / "m.parquet", ROWS),
                                     default_group="g"))
    assert [r.line for r in pq_rows] == [1, 2, 3]


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("bom", [False, True], ids=["plain", "bom"])
def test_csv_bom_crlf_quoted_commas_and_newlines(tmp_path: Path, newline: str, bom: bool) -> None:
    eol = newline.encode()
    body = (b"image,uid,group_id,note" + eol
            + b'a.jpg,1,g,"one, two"' + eol
            + b'"b' + eol + b'c.jpg",2,g,"x' + eol + eol + b'y"' + eol
            + b"d.jpg,3,g,last" + eol)
    path = tmp_path / "m.csv"
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + body)
    m = open_manifest(path)
    rows = all_rows(m)
    assert m.columns[0] == "image" and [r.uid for r in rows] == ["1", "2", "3"]
    assert [r.line for r in rows] == [2, 3, 7]
    assert rows[0].columns["note"] == "one, two"
    assert rows[1].image == "b" + newline + "c.jpg"
    assert rows[1].columns["note"] == "x" + newline + newline + "y"


def test_blank_lines_in_csv_keep_line_numbers_right(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text('\nimage,uid,group_id\n\na.jpg,1,g\n"b\nb.jpg",2,g\n\n\nc.jpg,3,g\n\n')
    rows = all_rows(open_manifest(path))
    assert [(r.uid, r.line) for r in rows] == [("1", 4), ("2", 5), ("3", 9)]


def test_uid_stays_text(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("image,uid,group_id,user_info\na.jpg,007,010,1e3\nb.jpg,0x1F,g,NaN\n")
    rows = all_rows(open_manifest(path))
    assert [(r.uid, r.group_id, r.user_info) for r in rows] == [
        ("007", "010", "1e3"), ("0x1F", "g", "NaN")]
    # Typed Parquet and JSON columns come out as text too.
    pq.write_table(pa.table({"image": ["a.jpg"], "uid": pa.array([7], pa.int64()),
                             "score": [1.5]}), tmp_path / "m.parquet")
    row = all_rows(open_manifest(tmp_path / "m.parquet", default_group="g"))[0]
    assert (row.uid, row.columns["score"]) == ("7", "1.5")
    write_jsonl(tmp_path / "m.jsonl", [{"image": "a.jpg", "uid": 7, "group_id": None,
                                        "tags": ["x"], "ok": True}])
    row = all_rows(open_manifest(tmp_path / "m.jsonl", default_group="g"))[0]
    assert (row.uid, row.group_id, row.columns["tags"], row.columns["ok"]) == (
        "7", "g", '["x"]', "true")


def test_column_names_ignore_case_and_spaces(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(" Image ,UID,Group_ID,Action\na.jpg,1,g,ADD\n")
    row = all_rows(open_manifest(path))[0]
    assert (row.image, row.uid, row.group_id, row.action) == ("a.jpg", "1", "g", "add")
    assert list(row.columns) == [" Image ", "UID", "Group_ID", "Action"]


def test_defaults_for_group_and_action(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("image,uid\na.jpg,1\n")
    row = all_rows(open_manifest(path, default_group="night", default_action="upsert"))[0]
    assert (row.group_id, row.action, row.user_info) == ("night", "upsert", "")


def test_relative_paths_resolve_against_the_manifest_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "sub" / "link")
    path = tmp_path / "sub" / "m.csv"
    path.write_text("image,uid\na.jpg,1\n../b.jpg,2\nlink/c.jpg,3\n")
    cwd = os.getcwd()
    try:
        os.chdir("/")
        rows = all_rows(open_manifest(os.path.relpath(path, "/"), default_group="g"))
    finally:
        os.chdir(cwd)
    assert [r.image_path for r in rows] == [
        tmp_path / "sub" / "a.jpg", tmp_path / "b.jpg", tmp_path / "sub" / "link" / "c.jpg"]


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("name", "body", "line", "needle"),
    [
        ("m.csv", "image,uid,group_id\na,1,g\nb,2,g,extra\n", 3, "expected 3 fields"),
        ("m.csv", 'image,uid,group_id\n"a\nb",1,g\nc,2\n', 4, "found 2"),
        ("m.csv", 'image,uid,group_id\na,1,g\n"b,2,g\nc,3,g\n', 3, "never closed"),
        ("m.csv", b"image,uid,group_id\na,1,g\nb,\xff\xfe,g\n", 3, "not UTF-8"),
        ("m.csv", b"image,uid,group_id\xe9\na,1,g\n", 1, "not UTF-8"),
        ("m.jsonl", '{"image": "a", "uid": "1"}\n{"image": "b", uid: 2}\n', 2, "invalid JSON"),
        ("m.jsonl", '{"image": "a", "uid": "1"}\n\n["b", "2"]\n', 3, "JSON array"),
        ("m.jsonl", b'{"image": "a", "uid": "1"}\n{"image": "\xff"}\n', 2, "not UTF-8"),
    ],
    ids=["csv-ragged", "csv-ragged-after-multiline", "csv-open-quote", "csv-utf8",
         "csv-utf8-header", "json-syntax", "json-array", "json-utf8"],
)
def test_errors_name_the_line(tmp_path: Path, name: str, body: str | bytes, line: int,
                              needle: str) -> None:
    path = tmp_path / name
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    err = error(path, default_group="g")
    assert err.line == line and needle in err.message
    assert f"line {line}" in str(err)


def test_missing_column_names_it_and_what_was_found(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("image,user_id\na.jpg,1\n")
    err = error(path, default_group="g")
    assert "'uid'" in err.message and "'user_id'" in err.message and err.line == 1
    write_jsonl(tmp_path / "m.jsonl", [{"uid": "1"}])
    assert "'image'" in error(tmp_path / "m.jsonl", default_group="g").message
    write_parquet(tmp_path / "m.parquet", [{"photo": "a"}])
    assert "'image'" in error(tmp_path / "m.parquet", default_group="g").message


def test_group_required_without_default(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "m.csv", [{"image": "a.jpg", "uid": "1"}])
    assert "add a group_id column or pass --group G" in error(path).message
    assert open_manifest(path, default_group="g").num_rows == 1


def test_header_only_is_an_empty_run_but_an_empty_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("image,uid,group_id\n")
    m = open_manifest(path)
    assert (m.num_rows, m.columns, all_rows(m)) == (0, ["image", "uid", "group_id"], [])
    path.write_text("")
    assert "empty" in error(path).message
    path.write_bytes(b"\xef\xbb\xbf\n\n")
    assert "empty" in error(path).message
    pq.write_table(pa.table({"image": pa.array([], pa.string()),
                             "uid": pa.array([], pa.string())}), tmp_path / "m.parquet")
    assert open_manifest(tmp_path / "m.parquet", default_group="g").num_rows == 0
    (tmp_path / "m.jsonl").write_text("")  # JSONL has no header: no lines = no rows
    assert open_manifest(tmp_path / "m.jsonl").num_rows == 0


@pytest.mark.parametrize(
    ("setup", "needle"),
    [("missing", "file not found"), ("dir", "directory"), ("ext", "unknown manifest type"),
     ("parquet", "not a readable Parquet"), ("dupcol", "appears more than once"),
     ("twocols", "both name 'uid'")],
)
def test_file_level_errors(tmp_path: Path, setup: str, needle: str) -> None:
    path = {"missing": tmp_path / "absent.csv", "dir": tmp_path / "d.csv",
            "ext": tmp_path / "m.txt", "parquet": tmp_path / "m.parquet",
            "dupcol": tmp_path / "m.csv", "twocols": tmp_path / "m.csv"}[setup]
    if setup == "dir":
        path.mkdir()
    elif setup == "dupcol":
        path.write_text("image,uid,uid\na,1,2\n")
    elif setup == "twocols":
        path.write_text("image,uid,UID\na,1,2\n")
    elif setup != "missing":
        path.write_text("image,uid\na,1\n")
    assert needle in error(path, default_group="g").message


# ---------------------------------------------------------------- duplicates


def test_duplicates_by_uid_group_and_resolved_path(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(
        "image,uid,group_id\n"
        "a.jpg,1,g\n"          # 0
        "./a.jpg,1,g\n"        # 1 same file, other spelling -> dup of 0
        "a.jpg,1,h\n"          # 2 other group
        "a.jpg,2,g\n"          # 3 other uid
        f"{tmp_path}/x/../a.jpg,1,g\n"  # 4 absolute spelling -> dup of 0
        "a.jpg,1,\n"           # 5 empty group -> default "g" -> dup of 0
        ",1,g\n,1,g\n"         # 6, 7 empty image: never duplicates
        "b.jpg,,g\nb.jpg,,g\n"  # 8, 9 empty uid: never duplicates
        "a.jpg,2,g\n"          # 10 dup of 3
    )
    m = open_manifest(path, default_group="g")
    found = {row: m.row_is_duplicate_of(row) for row in range(m.num_rows)}
    assert {r: d for r, d in found.items() if d is not None} == {1: 0, 4: 0, 5: 0, 10: 3}
    assert m.num_duplicates == 4 and m.row_is_duplicate_of(99) is None


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_shared_hashes_are_confirmed_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             fmt: str) -> None:
    """Force every row onto one hash: only true repeats may come out as duplicates."""
    monkeypatch.setattr(manifest_mod, "_row_hash", lambda keys: np.ones(len(keys), np.uint32))
    writer = {"csv": write_csv, "parquet": write_parquet, "jsonl": write_jsonl}[fmt]
    path = writer(tmp_path / f"m.{fmt}", [
        {"image": f"{i % 3}.jpg", "uid": str(i % 2), "group_id": "g"} for i in range(8)])
    m = open_manifest(path)
    # keys cycle with period 6: rows 6 and 7 repeat rows 0 and 1.
    assert [m.row_is_duplicate_of(r) for r in range(8)] == [None] * 6 + [0, 1]


# ---------------------------------------------------------------- batches


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_ten_thousand_rows_in_batches_and_resume(tmp_path: Path, fmt: str) -> None:
    rows = [{"image": f"img/{i:05d}.jpg", "uid": f"{i:05d}", "group_id": "g",
             "note": "a\nb" if i % 1000 == 7 else ""} for i in range(10_000)]
    rows[9_999] = dict(rows[5], note="")  # one duplicate at the very end
    writer = {"csv": write_csv, "parquet": write_parquet, "jsonl": write_jsonl}[fmt]
    m = open_manifest(writer(tmp_path / f"m.{fmt}", rows))
    assert m.num_rows == 10_000 and m.row_is_duplicate_of(9_999) == 5
    sizes = [len(b) for b in m.batches(size=3000)]
    assert sizes == [3000, 3000, 3000, 1000]
    tail = all_rows(m, size=1024, start_row=6_543)
    assert len(tail) == 3_457 and tail[0].row == 6_543 and tail[0].uid == "06543"
    assert [r.row for r in tail] == list(range(6_543, 10_000))
    if fmt == "csv":  # rows 7, 1007, ... span two lines each
        assert tail[0].line == 6_543 + 2 + 7 and tail[-1].line == 9_999 + 2 + 10
    assert all_rows(m, start_row=10_000) == []


def test_batch_size_must_be_positive(tmp_path: Path) -> None:
    m = open_manifest(write_csv(tmp_path / "m.csv", ROWS), default_group="g")
    with pytest.raises(ValueError):
        next(m.batches(size=0))
