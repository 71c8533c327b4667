"""Read users' record files by extension, remembering where each record came from.

Every record keeps a location ("train.csv:12", "data.parquet row 7") so that any later
error about it can name the file and the line.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from sft.data.conll import read_conll
from sft.errors import DataError

__all__ = ["DataError", "Table", "read_table"]

FORMATS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
           ".conll": "conll", ".iob": "conll", ".bio": "conll"}
COMPRESSIONS = {".gz": gzip.open, ".bz2": bz2.open}


@dataclass
class Table:
    """Records of one file, each with the location it was read from."""

    path: str
    rows: list[dict[str, Any]]
    locations: list[str]
    columns: list[str] = field(default_factory=list)
    label_order: Optional[list[str]] = None  # the source's own class order (array data sets), if it has one

    def __len__(self) -> int:
        return len(self.rows)

    def where(self, index: int) -> str:
        return self.locations[index]

    def subset(self, indices: list[int]) -> "Table":
        return Table(self.path, [self.rows[i] for i in indices], [self.locations[i] for i in indices], self.columns,
                     self.label_order)

    def require_columns(self, columns: dict[str, str]) -> None:
        """`columns` maps config key -> column name; every named column must exist."""
        for key, column in columns.items():
            if column is not None and column not in self.columns:
                raise DataError(
                    f"{self.path}: no column {column!r} (set by {key}); the file has columns {self.columns}. "
                    f"Set {key}=<one of those>."
                )


def file_format(path: Path) -> tuple[str, Any]:
    suffixes = [s.lower() for s in path.suffixes]
    opener = open
    if suffixes and suffixes[-1] in COMPRESSIONS:
        opener = COMPRESSIONS[suffixes[-1]]
        suffixes = suffixes[:-1]
    if not suffixes or suffixes[-1] not in FORMATS:
        raise DataError(
            f"{path}: unknown file type {''.join(path.suffixes) or '(no extension)'}; expected one of "
            f"{', '.join(sorted(FORMATS))} (optionally compressed as .gz or .bz2)"
        )
    return FORMATS[suffixes[-1]], opener


def _read_delimited(path: Path, opener, delimiter: str) -> Iterator[tuple[str, dict]]:
    with opener(path, "rt", encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            return
        start = reader.line_num + 1  # a record starts on the line after the previous one ended
        for values in reader:
            if not values:  # a blank line: no record, but it counts for the next record's line number
                start = reader.line_num + 1
                continue
            if len(values) > len(header):
                raise DataError(
                    f"{path}:{start}: {len(values)} fields, the header has "
                    f"{len(header)}; quote fields that contain the delimiter"
                )
            row = dict(zip(header, values))
            for column in header[len(values):]:
                row.setdefault(column, None)  # a short row leaves its last fields missing
            yield f"{path}:{start}", row
            start = reader.line_num + 1


def _read_jsonl(path: Path, opener) -> Iterator[tuple[str, dict]]:
    with opener(path, "rt", encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{number}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{number}: expected a JSON object per line, got {type(record).__name__}")
            yield f"{path}:{number}", record


def _read_json(path: Path, opener) -> Iterator[tuple[str, dict]]:
    with opener(path, "rt", encoding="utf-8-sig") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]} as written by many exporters
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects (or JSONL), got {type(data).__name__}")
    for number, record in enumerate(data, start=1):
        if not isinstance(record, dict):
            raise DataError(f"{path} record {number}: expected a JSON object, got {type(record).__name__}")
        yield f"{path} record {number}", record


def _read_parquet(path: Path) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for a broken file
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    for number, record in enumerate(rows, start=1):
        yield f"{path} row {number}", record


def decode_error(path: Path, opener, error: UnicodeDecodeError) -> DataError:
    """A DataError naming the file, line and byte of the first text that is not UTF-8."""
    line_number, column = None, None
    try:
        with opener(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    line_number, column, bad = number, e.start + 1, raw[e.start:e.start + 1]
                    break
    except OSError:
        pass
    where = f"{path}:{line_number}" if line_number else str(path)
    at = f" (byte 0x{bad.hex()} at column {column})" if line_number else f" ({error.reason})"
    return DataError(f"{where}: not valid UTF-8 text{at}; save the file as UTF-8 (for example "
                     f"`iconv -f latin1 -t utf-8 {path.name} > utf8-{path.name}`)")


def read_table(path: str | Path, key: str = "data file") -> Table:
    """All records of one file; `key` is the config key that named it, for error messages."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{key}: file not found: {path} (resolved to {path.absolute()})")
    if path.is_dir():
        raise DataError(f"{key}: {path} is a folder; expected a file")
    kind, opener = file_format(path)
    if kind in ("csv", "tsv"):
        records = _read_delimited(path, opener, "," if kind == "csv" else "\t")
    elif kind == "jsonl":
        records = _read_jsonl(path, opener)
    elif kind == "json":
        records = _read_json(path, opener)
    elif kind == "conll":
        records = read_conll(path, opener)
    else:
        records = _read_parquet(path)
    rows, locations, columns = [], [], {}
    try:
        for location, record in records:
            locations.append(location)
            rows.append(record)
            for column in record:
                columns.setdefault(column, None)
    except UnicodeDecodeError as error:
        raise decode_error(path, opener, error) from None
    if not rows:
        raise DataError(f"{key}: {path} holds no records")
    return Table(str(path), rows, locations, list(columns))


def read_class_folder(root: Path, key: str, suffixes, kind: str, layout: str) -> Table:
    """A folder with one subfolder per class: a record {path, label} per file with one of `suffixes`
    (other files are counted and reported, hidden ones skipped)."""
    import logging
    import os

    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{key}: {root} has no class subfolders; expected {layout}")
    rows, locations, ignored = [], [], 0
    for label in classes:
        for dirpath, dirnames, filenames in os.walk(root / label):
            dirnames.sort()
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                if Path(name).suffix.lower() not in suffixes:
                    ignored += 1
                    continue
                path = os.path.join(dirpath, name)
                rows.append({"path": path, "label": label})
                locations.append(path)
    if ignored:
        logging.getLogger(__name__).warning("%s: ignored %d files without an %s extension (%s)", root, ignored, kind,
                                            ", ".join(sorted(suffixes)))
    if not rows:
        raise DataError(f"{key}: {root} holds no {kind} files under its class folders {classes}")
    return Table(str(root), rows, locations, ["path", "label"])
