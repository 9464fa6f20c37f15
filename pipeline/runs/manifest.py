"""Manifest files -> validated rows, streamed in batches in bounded memory.

A manifest lists one registration per row. Formats, by extension: CSV (``.csv``),
Parquet (``.parquet``, ``.pq``), JSON Lines (``.jsonl``, ``.ndjson``; one object per
line, blank lines ignored). Columns (matched ignoring case and surrounding spaces):

- ``image`` (required): path of the photo; relative paths are read from the
  manifest's folder. Paths are normalised (``a/../b``) but symlinks are not followed.
- ``uid`` (required): the user id, always text (CSV cells are never type-inferred,
  so ``007`` stays ``007``).
- ``group_id``: else the default group (``--group``); one of the two is required.
- ``user_info``: else ``""``.
- ``action``: ``add`` / ``update`` / ``upsert``, else the default mode.

Any other column is kept as text in :attr:`ManifestRow.columns` (failures.csv
repeats them). :func:`open_manifest` makes one streaming pass that finds every
problem of the file as a whole (raising :class:`ManifestError` with the line)
before any API call. Problems of one row (an empty ``uid`` cell, a bad action) are
not manifest errors: the runner reports them on that row.

Duplicates: a row whose (uid, group_id, resolved image path) equals an earlier
row's is a duplicate of it. The pass keeps 4 bytes per row (a 32-bit hash) plus
20 bytes per row whose hash is shared; those rows alone are hashed again (64-bit
BLAKE2b) in a second, parse-only pass, which runs only when some hash is shared.
Rows with an empty ``uid`` or ``image`` are never duplicates (they fail on their own).

Text encodings: UTF-8 by default (a BOM is accepted). Another ``encoding``
(``gb18030``, ``gbk``, ``utf-16``...) is transcoded once to a temporary UTF-8 copy
that the readers use; the fingerprint stays the original file's. When UTF-8
decoding fails, the error names the encoding the bytes most likely are.

CSV separators: ``,`` by default; with no ``delimiter`` given, a header that
names ``image`` and ``uid`` only when split on ``;`` or a tab selects that
separator (:attr:`Manifest.delimiter_detected` says so).

Windows paths: a backslash in an ``image`` cell is a path separator
(``photos\\a.jpg`` is ``photos/a.jpg``); an absolute Windows path (``C:\\...``)
cannot be read here, and :func:`windows_drive_path` lets the runner say so.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import os
import re
import stat
import tempfile
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from pipeline.api.errors import ManifestError

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl",
           ".ndjson": "jsonl"}
REQUIRED_COLUMNS = ("image", "uid")
KNOWN_COLUMNS = ("image", "uid", "group_id", "user_info", "action")
_WHAT = {"image": "the path of the photo", "uid": "the user id to register"}
# CSV bytes parsed per block; also roughly the memory a batch of text takes.
_CSV_BLOCK = 1 << 18  # measured: 1 MiB blocks cost ~90 MB of RSS, 256 KiB ~25 MB
_PARQUET_BATCH = 32_768
_JSONL_BATCH = 16_384
_READ_CHUNK = 1 << 20
_BOM = b"\xef\xbb\xbf"
#: Separators a header is tried with when none is given, after the comma.
_OTHER_DELIMITERS = (";", "\t")
_DELIMITER_NAMES = {",": "','", ";": "';'", "\t": "tab"}
_WINDOWS_DRIVE = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")


def windows_drive_path(image: str) -> bool:
    """True for an absolute Windows path (``C:\\photos\\a.jpg``, ``\\\\server\\share``)."""
    return bool(_WINDOWS_DRIVE.match(image))


def check_encoding(encoding: str) -> str:
    """The codec's canonical name; ValueError naming some valid ones when unknown."""
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise ValueError(f"--encoding {encoding!r}: unknown encoding; use utf-8 (the default), "
                         "gb18030, gbk, big5, utf-16, cp1252...") from None


def check_delimiter(delimiter: str | None) -> str | None:
    """One character (``\\t`` or ``tab`` for a tab); ValueError otherwise."""
    if delimiter is None:
        return None
    text = {"\\t": "\t", "tab": "\t", "TAB": "\t"}.get(delimiter, delimiter)
    if len(text) != 1 or text in "\"\r\n":
        raise ValueError(f"--delimiter {delimiter!r}: give one character, e.g. ';' or tab")
    return text


@dataclass(frozen=True, slots=True)
class ManifestRow:
    """One data row of a manifest, with the defaults applied."""

    row: int  # 0-based index among data rows: the row's identity across resumes
    line: int  # 1-based line where the record starts (Parquet: row + 1)
    image: str  # as written
    image_path: Path  # absolute and normalised, symlinks not resolved
    uid: str
    group_id: str  # the cell, else the default group, else ""
    user_info: str
    action: str  # the cell stripped and lower-cased, else the default; not validated
    columns: dict[str, str]  # every original column's value as text


@dataclass(frozen=True, slots=True)
class KeyChunk:
    """Consecutive rows as columns (:meth:`Manifest.key_chunks`): ``rows`` and ``lines``
    as numpy arrays, the rest Arrow text arrays with the defaults applied; ``image_path``
    is :attr:`ManifestRow.image_path` as text, ``action`` stripped and lower-cased."""

    rows: np.ndarray
    lines: np.ndarray
    uid: pa.Array
    group_id: pa.Array
    image: pa.Array
    image_path: pa.Array
    action: pa.Array


@dataclass(frozen=True, slots=True)
class _Chunk:
    """Rows as text columns (no nulls): ``rows`` holds their row numbers (ascending,
    consecutive unless a reader was asked for ``wanted`` rows only) and ``lines``
    the line where each starts."""

    rows: np.ndarray
    columns: dict[str, pa.Array]
    lines: np.ndarray

    @property
    def start(self) -> int:
        return int(self.rows[0])

    @property
    def num_rows(self) -> int:
        return len(self.rows)


class _Reader(Protocol):
    """One file format's reader (_CsvReader, _ParquetReader, _JsonlReader)."""

    columns: list[str]

    def chunks(self, only: Sequence[str] | None, start_row: int,
               wanted: np.ndarray | None = None) -> Iterator[_Chunk]: ...

    def finish(self, scan: _Scan) -> None: ...


class Manifest:
    """An opened, validated manifest. Re-reads the file on each :meth:`batches` call."""

    def __init__(self, path: Path, fmt: str, reader: _Reader, fingerprint: str, num_rows: int,
                 names: dict[str, str], defaults: tuple[str, str]) -> None:
        self.path = path
        self.format = fmt
        self.folder = path.parent
        self._inside = str(path.parent).rstrip("/") + "/"
        self.columns: list[str] = list(reader.columns)
        self.fingerprint = fingerprint
        self.num_rows = num_rows
        self._reader = reader
        self._names = names  # canonical name -> column name in the file
        self._default_group, self._default_action = defaults
        #: The text encoding read (the codec's name) and the CSV separator.
        self.encoding = "utf-8"
        self.delimiter: str | None = getattr(reader, "delimiter", None)
        #: True when the separator was found from the header (no ``delimiter`` given).
        self.delimiter_detected: bool = getattr(reader, "detected", False)
        self._dup_rows = np.empty(0, np.int64)  # sorted duplicate rows
        self._dup_of = np.empty(0, np.int64)  # ... and the earlier row each repeats

    @property
    def image_column(self) -> str:
        """The file's name of the ``image`` column (as written in the header)."""
        return self._names["image"]

    @property
    def num_duplicates(self) -> int:
        """How many rows repeat an earlier row's (uid, group_id, image path)."""
        return len(self._dup_rows)

    def row_is_duplicate_of(self, row: int) -> int | None:
        """The earlier row this row repeats, or None (also for rows out of range)."""
        i = int(np.searchsorted(self._dup_rows, row))
        if i < len(self._dup_rows) and self._dup_rows[i] == row:
            return int(self._dup_of[i])
        return None

    def batches(self, size: int = 1024, start_row: int = 0) -> Iterator[list[ManifestRow]]:
        """Rows ``start_row``, ``start_row + 1``, ... in file order, ``size`` at a time
        (the last batch may be shorter). CSV and JSONL are re-read from the top to
        skip to ``start_row``; Parquet skips whole row groups."""
        if size < 1:
            raise ValueError("batch size must be at least 1")
        pending: list[ManifestRow] = []
        for chunk in self._reader.chunks(None, start_row):
            for row in self._rows(chunk, start_row):
                pending.append(row)
                if len(pending) == size:
                    yield pending
                    pending = []
        if pending:
            yield pending

    def _rows(self, chunk: _Chunk, start_row: int) -> Iterator[ManifestRow]:
        skip = int(np.searchsorted(chunk.rows, start_row))
        names = list(chunk.columns)
        # An empty column stands in for optional columns the file lacks.
        values = [chunk.columns[n].slice(skip).to_pylist() for n in names] + [[""] * (
            chunk.num_rows - skip)]
        at = {key: names.index(col) for key, col in self._names.items() if col in names}
        image_at, uid_at = at.get("image", -1), at.get("uid", -1)
        group_at, info_at, action_at = (at.get(k, -1) for k in ("group_id", "user_info",
                                                                  "action"))
        group, mode = self._default_group, self._default_action
        for row, line, *cells in zip(chunk.rows[skip:].tolist(), chunk.lines[skip:].tolist(),
                                     *values, strict=True):
            image = cells[image_at]
            yield ManifestRow(row, line, image, self._image_path(image), cells[uid_at],
                              cells[group_at] or group, cells[info_at],
                              cells[action_at].strip().lower() or mode,
                              dict(zip(names, cells, strict=False)))  # not the stand-in

    def duplicate_mask(self, rows: np.ndarray) -> np.ndarray:
        """For each row number in ``rows``: True when it repeats an earlier row."""
        return np.isin(rows, self._dup_rows)

    def key_chunks(self) -> Iterator[KeyChunk]:
        """Every row's key fields as Arrow text columns, chunk by chunk, without making a
        :class:`ManifestRow` per row: for bulk decisions over millions of rows (a
        ledger's "already enrolled"). The values equal the ManifestRow fields."""
        for chunk in self._reader.chunks(None, 0):
            yield self._key_chunk(chunk)

    def _key_chunk(self, chunk: _Chunk) -> KeyChunk:
        n = chunk.num_rows
        empty = pa.array([""] * n, pa.string())

        def column(key: str) -> pa.Array:
            name = self._names.get(key)
            return chunk.columns.get(name, empty) if name is not None else empty

        group, action = column("group_id"), column("action")
        if self._default_group:
            group = pc.if_else(pc.equal(group, ""), self._default_group, group)
        action = pc.utf8_lower(pc.utf8_trim_whitespace(action))
        action = pc.if_else(pc.equal(action, ""), self._default_action, action)
        image = column("image")
        return KeyChunk(chunk.rows, chunk.lines, column("uid"), group, image,
                        self._image_paths(image), action)

    def _image_paths(self, image: pa.Array) -> pa.Array:
        """:meth:`_image_path` of every cell, as text; Python only for the odd ones."""
        odd = pc.or_(pc.or_(pc.match_substring_regex(image, r"^[/.]|^$|/$"),
                            pc.match_substring(image, "//")), pc.match_substring(image, "/."))
        plain = pc.binary_join_element_wise(self._inside, image, "")
        if not pc.any(odd).as_py():
            return plain
        slow = [str(self._image_path(x)) if o else p for x, o, p in
                zip(image.to_pylist(), odd.to_pylist(), plain.to_pylist(), strict=True)]
        return pa.array(slow, pa.string())

    def _image_path(self, image: str) -> Path:
        """``normpath(join(folder, image))`` as a Path; symlinks are left as they are.
        Backslashes are path separators (paths written on Windows)."""
        if "\\" in image:
            image = image.replace("\\", "/")
        plain = not (image[:1] in ("", "/", ".") or image.endswith("/") or "//" in image
                     or "/." in image)
        if plain:  # nothing to normalise: skipping normpath halves the cost
            return Path(self._inside + image)
        return Path(os.path.normpath(os.path.join(self.folder, image)))


def open_manifest(
    path: str | Path, *, default_group: str | None = None, default_action: str = "add",
    encoding: str = "utf-8", delimiter: str | None = None,
) -> Manifest:
    """Open and validate a manifest (one streaming pass, two when rows share a hash).

    Raises :class:`ManifestError` (with the 1-based line when one is to blame) for a
    missing, unreadable or empty file, an unknown extension, a missing ``image`` /
    ``uid`` column, no ``group_id`` column and no ``default_group``, and any CSV, JSON
    or text-decoding error. A CSV with only its header, an empty JSONL file and a
    Parquet file without rows are valid manifests with 0 rows. ``encoding`` (CSV and
    JSONL; default UTF-8) and ``delimiter`` (CSV; default: ``,``, or ``;``/tab when
    the header says so) are described in the module docstring.
    """
    p = Path(os.path.abspath(path))
    fmt = _check_file(p)
    try:
        codec = check_encoding(encoding)
        delimiter = check_delimiter(delimiter)
    except ValueError as exc:
        raise ManifestError(str(p), str(exc)) from None
    source, fingerprint = p, None
    if fmt != "parquet" and codec not in ("utf-8", "utf-8-sig"):
        source, fingerprint = _transcode(p, codec)
    try:
        manifest = _open(p, source, fmt, default_group, default_action, delimiter)
    except BaseException:
        if source != p:
            source.unlink(missing_ok=True)
        raise
    if source != p:
        assert fingerprint is not None
        manifest.fingerprint = f"sha256:{fingerprint}"
        manifest.encoding = codec
        weakref.finalize(manifest, _unlink, str(source))
    return manifest


def _open(p: Path, source: Path, fmt: str, default_group: str | None, default_action: str,
          delimiter: str | None) -> Manifest:
    """Validate ``source`` (``p`` itself, or its UTF-8 copy); errors name ``p``."""
    try:
        reader = _READERS[fmt](source, delimiter) if fmt == "csv" else _READERS[fmt](source)
        scan = _scan_bytes(source, count_lines=fmt == "csv")
        only = None  # the columns the pass reads (None: all; only Parquet reads fewer)
        if reader.columns is not None:  # CSV and Parquet: check the columns before reading on
            only = _key_columns(_column_names(p, reader.columns, default_group, _line(fmt),
                                              getattr(reader, "hint", "")))
        keys = _KeyBuilder(p.parent, default_group or "")
        hashes = _RowHashes()
        num_rows = 0
        for chunk in reader.chunks(only, 0):
            hashes.add(chunk.start, *keys.build(chunk))
            num_rows += chunk.num_rows
        reader.finish(scan)
        names = _column_names(p, reader.columns, default_group, _line(fmt))
    except ManifestError as exc:
        if exc.path == str(p):
            raise
        raise ManifestError(str(p), exc.message, exc.line) from None
    manifest = Manifest(p, fmt, reader, f"sha256:{scan.sha256}", num_rows, names,
                        (default_group or "", default_action))
    rows, h1 = hashes.shared_rows()
    if len(rows):
        manifest._dup_rows, manifest._dup_of = _confirm_duplicates(
            reader, keys, rows, h1, _key_columns(names))
    return manifest


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _transcode(p: Path, encoding: str) -> tuple[Path, str]:
    """A temporary UTF-8 copy of ``p`` (read as ``encoding``) and the sha256 of ``p``.

    The copy keeps the line ends, so line numbers are the original's. ManifestError
    naming the line of the first byte that is not ``encoding``.
    """
    decoder = codecs.getincrementaldecoder(encoding)("strict")
    digest, lines = hashlib.sha256(), 0
    fd, name = tempfile.mkstemp(prefix="faceflow-manifest-", suffix=p.suffix)
    try:
        with p.open("rb") as src, os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            while block := src.read(_READ_CHUNK):
                digest.update(block)
                try:
                    text = decoder.decode(block)
                except UnicodeDecodeError as exc:
                    head = exc.object[:exc.start].decode(encoding, "replace")
                    raise ManifestError(str(p), f"the text is not {encoding}; pass the "
                                        "file's encoding with --encoding, or save it as "
                                        "UTF-8", lines + _line_ends(head) + 1) from None
                lines += _line_ends(text)
                out.write(text)
            out.write(decoder.decode(b"", final=True))
    except BaseException:
        _unlink(name)
        raise
    return Path(name), digest.hexdigest()


# ------------------------------------------------------------------ file and columns


def _check_file(p: Path) -> str:
    """The format of ``p`` from its extension, after checking it is a readable file."""
    try:
        mode = p.stat().st_mode
        if stat.S_ISDIR(mode):
            raise ManifestError(str(p), "this is a directory; pass the manifest file itself")
        if not stat.S_ISREG(mode):
            raise ManifestError(str(p), "not a regular file; pass the manifest file itself")
        with p.open("rb"):
            pass
    except FileNotFoundError:
        raise ManifestError(str(p), "file not found") from None
    except PermissionError:
        raise ManifestError(str(p), "cannot read the file (permission denied)") from None
    except OSError as exc:
        raise ManifestError(str(p), f"cannot read the file: {exc.strerror}") from None
    fmt = FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise ManifestError(str(p), f"unknown manifest type {p.suffix or '(no extension)'!r}; "
                            "use .csv, .parquet / .pq or .jsonl / .ndjson")
    return fmt


def _line(fmt: str) -> int | None:
    """Where column problems are: the CSV header line; JSONL and Parquet have none."""
    return 1 if fmt == "csv" else None


def _canonical(name: str) -> str:
    return name.replace("\ufeff", "").strip().lower()


def _column_names(
    p: Path, columns: Sequence[str], default_group: str | None, line: int | None,
    hint: str = "",
) -> dict[str, str]:
    """Canonical name -> the file's column name; ManifestError for missing or doubled ones."""
    names: dict[str, str] = {}
    for col in columns:
        key = _canonical(col)
        if key in KNOWN_COLUMNS and key in names:
            raise ManifestError(str(p), f"columns {names[key]!r} and {col!r} both name "
                                f"{key!r}; keep one of them", line)
        if key in KNOWN_COLUMNS:
            names[key] = col
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing and columns:
        found = ", ".join(repr(c) for c in columns) or "none"
        need = "; ".join(f"{c!r} ({_WHAT[c]})" for c in missing)
        fix = hint or "Add or rename the column"
        raise ManifestError(str(p), f"missing required column {need}; the columns found are "
                            f"{found}. {fix}", line)
    if missing:  # no column at all: an empty JSONL file has nothing to register
        names.update({c: c for c in missing})
    elif "group_id" not in names and not default_group:
        raise ManifestError(str(p), "no group for the rows: add a group_id column or pass "
                            "--group G", line)
    return names


def _key_columns(names: dict[str, str]) -> list[str]:
    return [names[c] for c in ("image", "uid", "group_id") if c in names]


@dataclass(frozen=True, slots=True)
class _Scan:
    sha256: str
    lines: int  # physical lines (\n, \r\n or \r end one); 0 when not counted
    trailing_blank: int  # empty lines at the very end of the file


def _scan_bytes(p: Path, *, count_lines: bool) -> _Scan:
    """SHA-256 of the file, streamed, and (for CSV) its physical line count."""
    digest, lines, tail, prev_cr = hashlib.sha256(), 0, b"", False
    with p.open("rb") as fh:
        while block := fh.read(_READ_CHUNK):
            digest.update(block)
            if count_lines:
                # \r\n is one line end, also when a block boundary splits it.
                crlf = block.count(b"\r\n") + (prev_cr and block[:1] == b"\n")
                lines += block.count(b"\n") + block.count(b"\r") - crlf
                prev_cr = block[-1:] == b"\r"
                tail = (tail + block)[-4096:]
    if tail and tail[-1:] not in (b"\n", b"\r"):
        lines += 1  # the last line has no line end
    run = tail[len(tail.rstrip(b"\r\n")):]
    ends = run.count(b"\n") + run.count(b"\r") - run.count(b"\r\n")
    return _Scan(digest.hexdigest(), lines, max(0, ends - 1))


# ------------------------------------------------------------------ CSV


class _CsvReader:
    """pyarrow's streaming CSV reader, every column read as text.

    pyarrow reports no line numbers, so they are counted: a record starts one line
    after the previous one plus the line ends inside its quoted cells. Blank lines
    are skipped by pyarrow and invisible in the data; when the file has any (other
    than at its end) the lines are taken from Python's csv module instead.
    """

    def __init__(self, p: Path, delimiter: str | None = None) -> None:
        self.path = p
        self.exact_lines = False
        self.detected = False
        self.hint = ""  # a better separator, when the header says so
        self.delimiter = delimiter or ","
        if delimiter is None:
            self._detect()
        try:
            read = pcsv.ReadOptions(block_size=_CSV_BLOCK, use_threads=False)
            with pcsv.open_csv(p, read_options=read, parse_options=self._parse(),
                               memory_pool=pa.system_memory_pool()) as probe:
                self.columns: list[str] = probe.schema.names
        except pa.ArrowInvalid as exc:
            if "Empty CSV file" in str(exc):
                raise ManifestError(str(p), "the file is empty; a CSV manifest needs at least "
                                    "its header line, e.g. image,uid,group_id") from None
            raise _diagnose_csv(p, str(exc), self.delimiter) from None
        except UnicodeDecodeError as exc:  # in the header names
            raise _diagnose_csv(p, str(exc), self.delimiter) from None
        if not self.detected:
            self._suggest()
        dupes = {c for c in self.columns if self.columns.count(c) > 1}
        if dupes:
            raise ManifestError(str(p), f"column {sorted(dupes)[0]!r} appears more than once "
                                "in the header; rename or drop the copies", 1)
        self.first_line = 1 + sum(_line_ends(c) for c in self.columns) + 1
        self._accounted = 0

    def _detect(self) -> None:
        """Choose ``;`` or tab when only that separator makes the header name image and uid."""
        header = _header_line(self.path)
        if header is None or _has_key_columns(header, ","):
            return
        for other in _OTHER_DELIMITERS:
            if _has_key_columns(header, other):
                self.delimiter, self.detected = other, True
                return

    def _parse(self) -> pcsv.ParseOptions:
        return pcsv.ParseOptions(delimiter=self.delimiter, newlines_in_values=True)

    def _suggest(self) -> None:
        """With the separator given: would another one make the header right?"""
        header = _header_line(self.path)
        for other in (",", *_OTHER_DELIMITERS):
            if header is not None and other != self.delimiter and _has_key_columns(header, other):
                self.hint = (f"The header looks separated by {_DELIMITER_NAMES[other]}, not "
                             f"{_DELIMITER_NAMES.get(self.delimiter, repr(self.delimiter))}: "
                             f"pass --delimiter {_DELIMITER_NAMES[other]}")
                return

    def _open(self) -> pcsv.CSVStreamingReader:
        convert = pcsv.ConvertOptions(column_types={c: pa.string() for c in self.columns},
                                      strings_can_be_null=False)
        read = pcsv.ReadOptions(block_size=_CSV_BLOCK)
        # The system allocator hands freed blocks back; mimalloc keeps them (more RSS).
        return pcsv.open_csv(self.path, read_options=read, parse_options=self._parse(),
                             convert_options=convert, memory_pool=pa.system_memory_pool())

    def chunks(self, only: Sequence[str] | None, start_row: int,
               wanted: np.ndarray | None = None) -> Iterator[_Chunk]:
        del only, wanted  # line counting needs every column of every row
        exact = _csv_record_lines(self.path, self.delimiter) if self.exact_lines else None
        row, line = 0, self.first_line
        try:
            with self._open() as stream:
                for batch in stream:
                    n = batch.num_rows
                    cols = dict(zip(self.columns, batch.columns, strict=True))
                    extra = _row_line_ends(cols.values(), n)
                    lines = line + np.arange(n) + np.concatenate(([0], np.cumsum(extra)[:-1]))
                    if exact is not None:
                        lines = np.fromiter(islice(exact, n), np.int64, n)
                    row, line = row + n, line + n + int(extra.sum())
                    if row > start_row and n:
                        yield _Chunk(np.arange(row - n, row), cols, lines)
        except pa.ArrowInvalid as exc:
            raise _diagnose_csv(self.path, str(exc), self.delimiter) from None
        self._accounted = line - 1

    def finish(self, scan: _Scan) -> None:
        """After the first pass: are the counted lines the file's? Else count exactly."""
        self.exact_lines = self._accounted + scan.trailing_blank != scan.lines


def _line_ends(text: str) -> int:
    return text.count("\n") + text.count("\r") - text.count("\r\n")


def _row_line_ends(columns: Iterable[pa.Array], n: int) -> np.ndarray:
    """Line ends inside each row's cells (quoted newlines), as an int64 array."""
    total = np.zeros(n, np.int64)
    for col in columns:
        raw = col.buffers()[2]
        data = np.frombuffer(raw, np.uint8) if raw is not None else np.empty(0, np.uint8)
        if not (np.any(data == 10) or np.any(data == 13)):  # most batches: no \n, no \r
            continue
        for needle, sign in (("\n", 1), ("\r", 1), ("\r\n", -1)):
            total += sign * pc.count_substring(col, needle).to_numpy(zero_copy_only=False)
    return total


def _decoded_lines(p: Path) -> Iterator[str]:
    """The file's lines as text, raising ManifestError at the first one not UTF-8."""
    with p.open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            if number == 1:
                raw = raw.removeprefix(_BOM)
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ManifestError(str(p), f"the text is not UTF-8 (byte {exc.start + 1} of "
                                    f"the line); {_encoding_hint(p)}", number) from None


#: Likely encodings of a file that is not UTF-8, in the order they are tried, and the
#: words that say where such files come from.
_LIKELY = (("gb18030", "GB18030/GBK, what Excel on a Chinese system saves as CSV"),
           ("big5", "Big5 (traditional Chinese)"), ("shift_jis", "Shift JIS (Japanese)"))


def _encoding_hint(p: Path) -> str:
    """"it looks like X: pass --encoding x, or save the file as UTF-8"."""
    with p.open("rb") as fh:
        sample = fh.read(1 << 16)
    guess = _likely_encoding(sample)
    return f"it looks like {guess[1]}: pass --encoding {guess[0]}, or save the file as UTF-8"


def _likely_encoding(sample: bytes) -> tuple[str, str]:
    """(codec, description) of the encoding ``sample`` (a file's first bytes) most likely has."""
    if sample.startswith((b"\xff\xfe", b"\xfe\xff")) or sample.count(b"\x00") > len(sample) // 4:
        return "utf-16", "UTF-16 (Excel's \"Unicode text\")"
    for codec, words in _LIKELY:
        decoder = codecs.getincrementaldecoder(codec)("strict")
        try:
            text = decoder.decode(sample)  # a character cut at the end stays buffered
        except UnicodeDecodeError:
            continue
        if any("\u3000" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" for ch in text):
            return codec, words
    return "cp1252", "Windows-1252 (Western European)"


def _header_line(p: Path) -> str | None:
    """The first line as text (None when it is not UTF-8: the readers report that)."""
    with p.open("rb") as fh:
        raw = fh.readline(1 << 16).removeprefix(_BOM)
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        return None


def _has_key_columns(header: str, delimiter: str) -> bool:
    names = {_canonical(c) for c in next(csv.reader([header], delimiter=delimiter), [])}
    return all(c in names for c in REQUIRED_COLUMNS)


def _csv_records(p: Path, delimiter: str = ",") -> Iterator[tuple[int, list[str]]]:
    """(start line, fields) of every non-blank record, header included, by Python's csv."""
    reader = csv.reader(_decoded_lines(p), delimiter=delimiter)
    previous = 0
    try:
        for fields in reader:
            start, previous = previous + 1, reader.line_num
            if fields:
                yield start, fields
    except csv.Error as exc:
        raise ManifestError(str(p), f"CSV syntax error: {exc}", previous + 1) from None


def _csv_record_lines(p: Path, delimiter: str = ",") -> Iterator[int]:
    records = _csv_records(p, delimiter)
    next(records, None)  # the header
    return (start for start, _ in records)


def _diagnose_csv(p: Path, arrow_message: str, delimiter: str = ",") -> ManifestError:
    """pyarrow failed without saying where: find the line with Python's csv module."""
    width = None
    for start, fields in _csv_records(p, delimiter):
        if width is None:
            width = len(fields)
        elif len(fields) != width:
            hint = ("a quoted cell opened here is never closed" if any("\n" in f for f in fields)
                    else "quote cells that contain commas")
            return ManifestError(str(p), f"expected {width} fields like the header, found "
                                 f"{len(fields)}; {hint}", start)
    return ManifestError(str(p), f"the CSV cannot be parsed: {arrow_message}")


# ------------------------------------------------------------------ Parquet


class _ParquetReader:
    """Parquet row groups, batch by batch; non-text columns are cast to text."""

    def __init__(self, p: Path) -> None:
        self.path = p
        try:
            # Buffered reads stream a row group instead of loading whole column chunks.
            self._file = pq.ParquetFile(p, buffer_size=1 << 20, pre_buffer=False)
        except (pa.ArrowException, OSError) as exc:
            raise ManifestError(str(p), f"not a readable Parquet file ({exc})") from None
        self.columns: list[str] = self._file.schema_arrow.names
        dupes = {c for c in self.columns if self.columns.count(c) > 1}
        if dupes:
            raise ManifestError(str(p), f"column {sorted(dupes)[0]!r} appears more than once")

    def chunks(self, only: Sequence[str] | None, start_row: int,
               wanted: np.ndarray | None = None) -> Iterator[_Chunk]:
        del wanted  # whole row groups are read anyway
        row = 0
        meta = self._file.metadata
        for group in range(meta.num_row_groups):
            size = meta.row_group(group).num_rows
            if row + size <= start_row:
                row += size  # skipped without reading
                continue
            yield from self._group(group, row, only)
            row += size

    def _group(self, group: int, row: int, only: Sequence[str] | None) -> Iterator[_Chunk]:
        names = list(only) if only is not None else self.columns
        try:
            # Single-threaded decoding: measured 40 MB less RSS, for no loss on 2 cores.
            for batch in self._file.iter_batches(_PARQUET_BATCH, row_groups=[group],
                                                 columns=names, use_threads=False):
                cols = {n: _as_text(batch.column(n)) for n in names}
                rows = np.arange(row, row + batch.num_rows)
                if len(rows):
                    yield _Chunk(rows, cols, rows + 1)
                row += batch.num_rows
        except (pa.ArrowException, OSError) as exc:
            raise ManifestError(str(self.path), f"cannot read row group {group}: {exc}",
                                row + 1) from None

    def finish(self, scan: _Scan) -> None:
        pass


def _as_text(arr: pa.Array) -> pa.Array:
    """Any Arrow column as non-null UTF-8 text: numbers as written, nested values as JSON."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if not pa.types.is_string(arr.type):
        try:
            arr = pc.cast(arr, pa.string())
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
            arr = pa.array([None if v is None else _json_text(v) for v in arr.to_pylist()],
                           pa.string())
    return pc.fill_null(arr, "")


def _json_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, ensure_ascii=False, default=str)


# ------------------------------------------------------------------ JSON Lines


class _JsonlReader:
    """One JSON object per line, parsed with :mod:`json`; blank lines are skipped.

    The columns are the keys in order of first appearance, known after the first pass.
    """

    def __init__(self, p: Path) -> None:
        self.path = p
        self.columns: list[str] | None = None
        self._seen: dict[str, None] = {}  # keys in order of first appearance

    def chunks(self, only: Sequence[str] | None, start_row: int,
               wanted: np.ndarray | None = None) -> Iterator[_Chunk]:
        """Rows from ``start_row`` on; with ``wanted`` (sorted rows), only those are parsed."""
        del only
        want = None if wanted is None else set(wanted.tolist())
        row, objs, rows, lines = 0, [], [], []
        for number, text in enumerate(_decoded_lines(self.path), 1):
            if not text.strip():
                continue
            if row >= start_row and (want is None or row in want):
                objs.append(self._parse(text, number))
                rows.append(row)
                lines.append(number)
            row += 1
            if len(objs) == _JSONL_BATCH:
                yield self._chunk(rows, objs, lines)
                objs, rows, lines = [], [], []
        if objs:
            yield self._chunk(rows, objs, lines)

    def _parse(self, text: str, number: int) -> dict[str, Any]:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestError(str(self.path), f"invalid JSON: {exc.msg} (column "
                                f"{exc.colno})", number) from None
        if not isinstance(obj, dict):
            kind = type(obj).__name__.replace("dict", "object").replace("list", "array")
            raise ManifestError(str(self.path), f"each line must be a JSON object "
                                f"{{...}}, this one is a JSON {kind}", number)
        if self.columns is None and not self._seen.keys() >= obj.keys():
            self._seen.update(dict.fromkeys(obj))
        return obj

    def _chunk(self, rows: list[int], objs: list[dict[str, Any]], lines: list[int]) -> _Chunk:
        names = self.columns if self.columns is not None else list(self._seen)
        cols = {n: pa.array([_cell(o.get(n)) for o in objs], pa.string()) for n in names}
        return _Chunk(np.asarray(rows, np.int64), cols, np.asarray(lines, np.int64))

    def finish(self, scan: _Scan) -> None:
        self.columns = list(self._seen)


def _cell(value: object) -> str:
    if type(value) is str:  # the common case first
        return value
    return "" if value is None else _json_text(value)


_READERS: dict[str, Any] = {"csv": _CsvReader, "parquet": _ParquetReader, "jsonl": _JsonlReader}


# ------------------------------------------------------------------ duplicates


class _KeyBuilder:
    """Each row's identity ``uid \x1f group_id \x1f image path``, vectorised.

    The path is ``normpath(join(folder, image))`` as in :attr:`ManifestRow.image_path`,
    written relative to the manifest's folder when it lies inside it (shorter to hash;
    the same file spelt ``a.jpg``, ``./a.jpg`` or ``/abs/folder/a.jpg`` gets one key).
    Python's ``normpath`` only runs on the rare paths holding ``//``, ``/./``,
    ``/../`` or ending in ``/``.
    """

    def __init__(self, folder: Path, default_group: str) -> None:
        self.folder = str(folder)
        self.inside = str(folder).rstrip("/") + "/"
        self.default_group = default_group

    def build(self, chunk: _Chunk) -> tuple[np.ndarray, pa.Array]:
        """(a bool mask of the rows with a uid and an image, those rows' keys)."""
        # Looked up per chunk: JSONL discovers its keys as it goes.
        names = {_canonical(c): c for c in chunk.columns}
        empty = pa.array([""] * chunk.num_rows, pa.string())
        image = chunk.columns.get(names.get("image", ""), empty)
        uid = chunk.columns.get(names.get("uid", ""), empty)
        group = chunk.columns.get(names.get("group_id", ""))
        if group is None:
            group = pa.array([self.default_group] * chunk.num_rows, pa.string())
        elif self.default_group:
            group = pc.if_else(pc.equal(group, ""), self.default_group, group)
        valid = pc.and_(pc.not_equal(uid, ""), pc.not_equal(image, ""))
        key = pc.binary_join_element_wise(uid, group, self._paths(image), "\x1f")
        return valid.to_numpy(zero_copy_only=False), key.filter(valid)

    def _paths(self, image: pa.Array) -> pa.Array:
        if pc.any(pc.match_substring(image, "\\")).as_py():
            image = pc.replace_substring(image, "\\", "/")
        if pc.any(pc.starts_with(image, "./")).as_py():
            image = pc.replace_substring_regex(image, r"^(\./)+", "")
        if _maybe_odd(image):
            odd = pc.or_(pc.match_substring_regex(image, r"//|/\.\.?/|^\.\.?/|^\.\.?$"),
                         pc.match_substring_regex(image, r"/(\.\.?)?$"))
            if pc.any(odd).as_py():
                return self._normalise(image)
        if not pc.any(pc.starts_with(image, self.inside)).as_py():
            return image
        tail = pc.utf8_slice_codeunits(image, len(self.inside))
        return pc.if_else(pc.starts_with(image, self.inside), tail, image)

    def _normalise(self, image: pa.Array) -> pa.Array:
        folder, inside = self.folder, self.inside
        paths = [os.path.normpath(os.path.join(folder, p)).removeprefix(inside)
                 for p in image.to_pylist()]
        return pa.array(paths, pa.string())


def _maybe_odd(image: pa.Array) -> bool:
    """A cheap test on the raw bytes: can any path hold ``//``, ``/.``, lead with ``.``
    or end with ``/``? (False means normalising changes none of them.)"""
    raw = image.buffers()[2]
    if raw is None:
        return False
    data = np.frombuffer(raw, np.uint8)
    after_slash = data[1:][data[:-1] == ord("/")]
    if np.any((after_slash == ord("/")) | (after_slash == ord("."))):
        return True
    return bool(pc.any(pc.starts_with(image, ".")).as_py()
                or pc.any(pc.ends_with(image, "/")).as_py())


_K = 0x100000001B3  # the polynomial's base: any odd number works modulo 2**64
_K_INV = pow(_K, -1, 2**64)


def _power_tables(n: int, _cache: dict[str, np.ndarray] = {}) -> tuple[np.ndarray, np.ndarray]:  # noqa: B006,E501
    """K**j and K**-j modulo 2**64 for j in 0..n-1 (grown on demand, shared)."""
    if len(_cache.get("pw", ())) < n:
        size = max(n, 1 << 16)
        for name, base in (("pw", _K), ("inv", _K_INV)):
            table = np.empty(size, np.uint64)
            table[0] = 1
            table[1:] = np.cumprod(np.full(size - 1, base, np.uint64))
            _cache[name] = table
    return _cache["pw"], _cache["inv"]


def _row_hash(keys: pa.Array, step: int = 4096) -> np.ndarray:
    """A 32-bit hash of each string, never 0 (0 marks "no key" in :class:`_RowHashes`).

    A polynomial over the bytes modulo 2**64, then splitmix64's finaliser, folded to
    32 bits: 4 bytes a row. At 10M rows some 10^4 pairs of rows share a hash by
    chance; the second pass tells them apart, so this costs time, never accuracy.
    """
    out = np.empty(len(keys), np.uint32)
    for start in range(0, len(keys), step):
        h = _hash_slice(keys.slice(start, step))
        out[start:start + step] = (h ^ (h >> np.uint64(32))).astype(np.uint32)
    return out | np.uint32(1)


def _hash_slice(keys: pa.Array) -> np.ndarray:
    n = len(keys)
    if n == 0:
        return np.empty(0, np.uint64)
    raw = np.frombuffer(keys.buffers()[1], np.int32)[keys.offset:keys.offset + n + 1]
    base = int(raw[0])
    offsets = (raw - base).astype(np.int64)
    data = np.frombuffer(keys.buffers()[2], np.uint8)[base:base + int(offsets[-1])]
    pw, inv = _power_tables(len(data) + 1)
    # prefix[j] = sum of (byte_i + 1) * K**i for i < j; a key's hash is its slice of
    # that sum shifted back to start at K**0. uint64 arithmetic wraps, as intended.
    terms = data.astype(np.uint64)
    terms += np.uint64(1)
    terms *= pw[: len(data)]
    prefix = np.zeros(len(data) + 1, np.uint64)
    np.cumsum(terms, out=prefix[1:])
    h = (prefix[offsets[1:]] - prefix[offsets[:-1]]) * inv[offsets[:-1]]
    h ^= np.diff(offsets).astype(np.uint64)
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return h


class _RowHashes:
    """Every row's 32-bit key hash in row order (0 = no key): 4 bytes a row."""

    def __init__(self) -> None:
        self.parts: list[tuple[int, np.ndarray]] = []  # (first row, hashes)

    def add(self, start: int, valid: np.ndarray, keys: pa.Array) -> None:
        hashes = np.zeros(len(valid), np.uint32)
        hashes[valid] = _row_hash(keys)
        self.parts.append((start, hashes))

    def shared_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, their hashes) of every row whose hash another row has too, by row."""
        shared = self._shared_values()
        rows, hashes = [np.empty(0, np.int64)], [np.empty(0, np.uint32)]
        if not len(shared):
            self.parts = []
            return rows[0], hashes[0]
        for start, part in self.parts:
            # searchsorted, not np.isin: isin re-sorts ``shared`` for every part.
            at = np.minimum(np.searchsorted(shared, part), len(shared) - 1)
            hit = shared[at] == part
            if hit.any():
                rows.append(start + np.flatnonzero(hit))
                hashes.append(part[hit])
        self.parts = []
        return np.concatenate(rows), np.concatenate(hashes)

    def _shared_values(self) -> np.ndarray:
        # Sorting all hashes at once would need a second copy of them; 1/16 at a
        # time (split by the top 4 bits) keeps the extra memory to 1/16.
        found = []
        for bucket in range(16):
            values = np.concatenate([p[(p >> np.uint32(28)) == bucket] for _, p in self.parts]
                                    + [np.empty(0, np.uint32)])
            values = values[values != 0]
            values.sort()
            found.append(np.unique(values[1:][values[1:] == values[:-1]]))
        return np.concatenate(found)


def _confirm_duplicates(
    reader: _Reader, keys: _KeyBuilder, rows: np.ndarray, h1: np.ndarray, only: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Re-read only the rows whose 32-bit hash is shared, and group them by (that hash,
    a 64-bit BLAKE2b hash of the key): exact for any practical purpose.

    Returns (duplicate rows ascending, the first row of each one's group).
    """
    h2 = np.zeros(len(rows), np.uint64)
    for chunk in reader.chunks(only, int(rows[0]), wanted=rows):
        at = np.minimum(np.searchsorted(rows, chunk.rows), len(rows) - 1)
        hit = rows[at] == chunk.rows
        if not hit.any():
            continue
        local = np.flatnonzero(hit)
        take = pa.array(local)
        picked = _Chunk(chunk.rows[local], {n: c.take(take) for n, c in chunk.columns.items()},
                        chunk.lines[local])
        texts = keys.build(picked)[1].to_pylist()  # every picked row has a key
        h2[at[hit]] = [_blake64(t) for t in texts]
    return _group_duplicates(rows, h1, h2)


def _blake64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _group_duplicates(
    rows: np.ndarray, h1: np.ndarray, h2: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((rows, h2, h1))  # by key, then by row: each group's first row leads
    rows, h1, h2 = rows[order], h1[order], h2[order]
    same = np.zeros(len(rows), bool)
    same[1:] = (h1[1:] == h1[:-1]) & (h2[1:] == h2[:-1])
    leader = np.maximum.accumulate(np.where(same, 0, np.arange(len(rows))))
    dup_rows, dup_of = rows[same], rows[leader][same]
    order = np.argsort(dup_rows)
    return dup_rows[order], dup_of[order]
