"""The local ID-photo registry behind person verify, and its CSV import.

Each person: ``id_card_number`` (18 characters: 17 digits and a check character, digit or
X, per GB 11643-1999: weights 7 9 10 5 8 4 2 1 6 3 7 9 10 5 8 4 2, sum mod 11 indexes
"10X98765432"), ``name``, the descriptor of the largest face of the ID photo and the
photo's sha256.

person verify answers 216100 (invalid param) for a malformed number, and 216611 (user not
exist) when the number is not registered or the name does not match the registered one.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

from pipeline.engine.models import AnalyseOptions, ImageRejected, analyse
from pipeline.engine.store import Person, Store

_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK = "10X98765432"


def valid_id_card_number(number: str) -> bool:
    """True for an 18-character GB 11643 number with a correct check character."""
    if len(number) != 18 or not number[:17].isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(number[:17], _WEIGHTS, strict=True))
    return number[17].upper() == _CHECK[total % 11]


@dataclass(frozen=True, slots=True)
class ImportReport:
    """Outcome of an import: rows stored, and (line, reason) for each row refused."""

    imported: int
    refused: tuple[tuple[int, str], ...]


def import_persons(csv_path: Path, store: Store) -> ImportReport:
    """Read ``id_card_number,name,photo`` rows (photo paths relative to the CSV) into ``store``.

    Bad rows are refused with a reason; good rows are stored (replacing an existing number).
    ValueError (naming the file and line) when the file as a whole cannot be read.
    """
    imported, refused = 0, []
    line = 1
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = {"id_card_number", "name", "photo"} - set(reader.fieldnames or ())
            if missing:
                raise ValueError(f"{csv_path}: missing columns {', '.join(sorted(missing))}; "
                                 "the header must be id_card_number,name,photo")
            for line, row in enumerate(reader, start=2):
                reason = _import_row(row, csv_path.parent, store)
                if reason:
                    refused.append((line, reason))
                else:
                    imported += 1
    except UnicodeDecodeError:
        raise ValueError(f"{csv_path}, line {_first_non_utf8_line(csv_path)}: the text is not "
                         "UTF-8; save the file as UTF-8") from None
    except csv.Error as exc:
        raise ValueError(f"{csv_path}, line {line + 1}: not a readable CSV ({exc})") from None
    return ImportReport(imported, tuple(refused))


def _first_non_utf8_line(path: Path) -> int:
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 1


def _import_row(row: dict[str, str], folder: Path, store: Store) -> str | None:
    number, name = (row.get("id_card_number") or "").strip(), (row.get("name") or "").strip()
    if not valid_id_card_number(number):
        return f"invalid id_card_number {number!r}"
    if not name:
        return "empty name"
    photo = folder / (row.get("photo") or "").strip()
    try:
        data = photo.read_bytes()
    except OSError as exc:
        return f"cannot read photo {photo}: {exc.strerror}"
    result = analyse(data, AnalyseOptions(max_faces=1, descriptor=True))
    if isinstance(result, ImageRejected):
        return f"{photo.name}: {result.message}"
    if not result.faces or result.faces[0].descriptor is None:
        return f"{photo.name}: no face found"
    sha = hashlib.sha256(data).hexdigest()
    store.put_person(Person(number.upper(), name, result.faces[0].descriptor, sha))
    return None
