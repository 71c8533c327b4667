"""Read users' records, remembering where each record came from.

Files (CSV, TSV, JSON, JSONL, Parquet, CoNLL; plain, .gz or .bz2; one, a list or a glob of
shards) are parsed once by the readers below and written to a memory-mapped Arrow file under
$SFT_CACHE/records/, keyed by the files' path, size and modification time: a second launch on
unchanged files reads nothing again, and a million records cost disk, not memory. The file list
of a class folder (images, audio) goes there too. The folder is bounded (SFT_RECORDS_CACHE_GB,
default 20): the files used least recently go first. Folders written by `Dataset.save_to_disk` and
Hugging Face datasets (`hf:OWNER/NAME`) are Arrow already.

Every record keeps a location ("train.csv:12", "data.parquet row 7", "hf:imdb train row 3") so
that any later error about it can name the file and the line.
"""

from __future__ import annotations

import bz2
import contextlib
import csv
import functools
import glob
import gzip
import hashlib
import json
import logging
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

from sft.data.conll import read_conll
from sft.data.encode_cache import evict_least_recent
from sft.errors import DataError

__all__ = ["ArrowTable", "DataError", "StreamTable", "Table", "read_table", "expand_files"]

log = logging.getLogger(__name__)
RECORDS_FORMAT = 1  # bump when the stored layout of read records changes

FORMATS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet",
           ".conll": "conll", ".iob": "conll", ".bio": "conll"}
COMPRESSIONS = {".gz": gzip.open, ".bz2": bz2.open}


@dataclass
class Table:
    """Records of a small source held in memory (decoded arrays, a few records built in code, one
    batch of an ArrowTable), each with the location it was read from. Files, class folders and
    Hugging Face datasets are read into an `ArrowTable` instead, which has the same interface."""

    path: str
    rows: Sequence[dict[str, Any]]
    locations: list[str]
    columns: list[str] = field(default_factory=list)
    label_order: Optional[list[str]] = None  # the source's own class order (array data sets), if it has one

    def __len__(self) -> int:
        return len(self.rows)

    def where(self, index: int) -> str:
        return self.locations[index]

    def subset(self, indices: Sequence[int]) -> "Table":
        return Table(self.path, [self.rows[i] for i in indices], [self.locations[i] for i in indices], self.columns,
                     self.label_order)

    def fingerprint(self) -> Optional[str]:
        """What identifies these records for the encode cache (None: not cached)."""
        return None

    def class_order(self, column: str) -> Optional[list[str]]:
        """The source's own order of the classes in `column`, if it has one (an array data set's
        label_names, a Hugging Face ClassLabel feature): the label map keeps it."""
        return self.label_order

    def column_values(self, column: str) -> Iterator[Any]:
        """Every record's value of one field, in order (reading no other field where the source allows)."""
        return (row.get(column) for row in self.rows)

    def in_batches(self, size: int = 2000) -> Iterator["Table"]:
        """The records as consecutive in-memory Tables of up to `size`: what a loop that looks at
        each record (and names it in errors) reads, one read per batch rather than per record."""
        for start in range(0, len(self), size):
            yield self.subset(range(start, min(start + size, len(self))))

    def require_columns(self, columns: dict[str, Optional[str]]) -> None:
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


def _read_delimited(path: Path, opener, delimiter: str, encoding: str) -> Iterator[tuple[str, dict]]:
    with opener(path, "rt", encoding=encoding, newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            return
        start = reader.line_num + 1  # a record starts on the line after the previous one ended
        name, width = str(path), len(header)
        for values in reader:
            if not values:  # a blank line: no record, but it counts for the next record's line number
                start = reader.line_num + 1
                continue
            if len(values) > width:
                raise DataError(f"{path}:{start}: {len(values)} fields, the header has {width}; quote fields "
                                f"that contain the delimiter")
            row = dict(zip(header, values))
            if len(values) < width:
                for column in header[len(values):]:
                    row.setdefault(column, None)  # a short row leaves its last fields missing
            yield f"{name}:{start}", row
            start = reader.line_num + 1


def _lone_surrogate_field(value: Any, field: Optional[str] = None) -> Optional[str]:
    """The (top-level) field of the first string in `value` holding half of a UTF-16 surrogate pair:
    JSON's escapes can write one (`\\ud83d` alone), Python's parser keeps it, and no encoder or
    tokenizer takes it as text."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return field or "the record"
    elif isinstance(value, dict):
        for key, item in value.items():
            found = _lone_surrogate_field(item, field or str(key))
            if found:
                return found
    elif isinstance(value, list):
        for item in value:
            found = _lone_surrogate_field(item, field)
            if found:
                return found
    return None


def _check_surrogates(record: Any, where: str, text: Optional[str] = None) -> None:
    """A DataError naming the record and field when a string of it is not text (see above); only
    looked into when its JSON `text`, where given, writes a \\u escape of a surrogate."""
    if text is not None and "\\ud" not in text and "\\uD" not in text:
        return
    field = _lone_surrogate_field(record)
    if field:
        raise DataError(f"{where}: field {field!r} holds half of a UTF-16 surrogate pair (a \\uD800-\\uDFFF escape "
                        "without its other half, often an emoji cut in two), which is not text; fix or drop the record")


def _read_jsonl(path: Path, opener, encoding: str, wanted: Optional[Callable[[], bool]] = None,
                with_text: bool = False) -> Iterator[tuple]:
    """(location, record) per non-blank line, and the line itself `with_text`; a line `wanted()`
    declines is yielded unparsed, with None."""
    with opener(path, "rt", encoding=encoding) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            if wanted is not None and not wanted():
                yield "", None
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{number}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{number}: expected a JSON object per line, got {type(record).__name__}")
            _check_surrogates(record, f"{path}:{number}", line)
            yield (f"{path}:{number}", record, line.rstrip()) if with_text else (f"{path}:{number}", record)


def _read_json(path: Path, opener, encoding: str) -> Iterator[tuple[str, dict]]:
    with opener(path, "rt", encoding=encoding) as f:
        try:
            text = f.read()
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]} as written by many exporters
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects (or JSONL), got {type(data).__name__}")
    escapes_surrogates = "\\ud" in text or "\\uD" in text
    for number, record in enumerate(data, start=1):
        if not isinstance(record, dict):
            raise DataError(f"{path} record {number}: expected a JSON object, got {type(record).__name__}")
        if escapes_surrogates:
            _check_surrogates(record, f"{path} record {number}")
        yield f"{path} record {number}", record


def _read_parquet(path: Path) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=10_000)
        number = 0
        for batch in batches:
            for record in batch.to_pylist():
                number += 1
                yield f"{path} row {number}", record
    except (OSError, ValueError) as e:  # pyarrow's errors for a broken file derive from these
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None


def decode_error(path: Path, opener, error: UnicodeDecodeError, encoding: str = "utf-8") -> DataError:
    """A DataError naming the file, line and byte of the first text that is not in `encoding`."""
    line_number, column = None, None
    try:
        with opener(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    raw.decode(encoding)
                except UnicodeDecodeError as e:
                    line_number, column, bad = number, e.start + 1, raw[e.start:e.start + 1]
                    break
    except OSError:
        pass
    where = f"{path}:{line_number}" if line_number else str(path)
    at = f" (byte 0x{bad.hex()} at column {column})" if line_number else f" ({error.reason})"
    name = "UTF-8" if encoding.lower().replace("_", "-") in ("utf-8", "utf8", "utf-8-sig") else encoding
    return DataError(f"{where}: not valid {name} text{at}; set data.encoding to the file's encoding (for "
                     f"example data.encoding=latin-1) or save it as UTF-8 (`iconv -f latin1 -t utf-8 {path.name} > "
                     f"utf8-{path.name}`)")


def iter_records(path: Path, encoding: str = "utf-8", wanted: Optional[Callable[[], bool]] = None,
                 with_text: bool = False) -> Iterator[tuple]:
    """(location, record) for each record of one file, parsed by its extension. `wanted`, where
    given, is asked before each JSONL record is parsed; one it declines comes as ("", None),
    unparsed (a stream shard passing over the other shards' records). `with_text` adds the
    record's JSON text where the file holds it (a JSONL line), else None."""
    kind, opener = file_format(path)
    text_encoding = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    records: Iterator[tuple]
    if kind in ("csv", "tsv"):
        records = _read_delimited(path, opener, "," if kind == "csv" else "\t", text_encoding)
    elif kind == "jsonl":
        records = _read_jsonl(path, opener, text_encoding, wanted, with_text)
    elif kind == "json":
        records = _read_json(path, opener, text_encoding)
    elif kind == "conll":
        records = read_conll(path, opener, text_encoding)
    else:
        records = _read_parquet(path)
    if with_text and kind != "jsonl":
        records = ((where, record, None) for where, record in records)
    try:
        yield from records
    except UnicodeDecodeError as error:
        raise decode_error(path, opener, error, encoding) from None


GLOB_CHARACTERS = set("*?[")


def expand_files(value: Union[str, Path, Sequence], key: str) -> list[Path]:
    """The files a data.*_file setting names: one path, a glob (`shards/train-*.parquet`) or a list
    of either, in the order given (a glob's matches sorted)."""
    items = [value] if isinstance(value, (str, Path)) else list(value)
    if not items:
        raise DataError(f"{key}: an empty list; expected a file, a glob or a list of files")
    files: list[Path] = []
    for item in items:
        text = str(item)
        if GLOB_CHARACTERS & set(text) and not Path(text).exists():
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise DataError(f"{key}: the pattern {text!r} matches no file (resolved to {Path(text).absolute()})")
            files += [Path(m) for m in matches]
        else:
            files.append(Path(text))
    return files


def read_table(path: Union[str, Path, Sequence], key: str = "data file", encoding: str = "utf-8") -> "Table":
    """All records of one file, a glob or a list of files (or a saved Hugging Face dataset folder),
    as a memory-mapped ArrowTable; `key` is the config key that named them, for error messages."""
    files = expand_files(path, key)
    tables = []
    for file in files:
        if not file.exists():
            raise DataError(f"{key}: not found: {file} (resolved to {file.absolute()}); expected a file, a folder or a glob")
        if file.is_dir():
            if not is_saved_dataset(file):
                raise DataError(f"{key}: {file} is a folder; expected a file (or a folder written by "
                                f"Dataset.save_to_disk)")
            tables.append(read_saved_dataset(file, key))
        else:
            tables.append(read_records_file(file, key, encoding))
    if len(tables) == 1:
        return tables[0]
    return ArrowTable.concatenate(tables, str(path) if isinstance(path, (str, Path)) else ",".join(map(str, path)))


# -- Arrow-backed tables -------------------------------------------------------------------------------
WHERE, RECORD, ROW = "__where", "__record", "__row"


def class_name(classes: list[str], value) -> Any:
    """A ClassLabel id as its class name (a list of ids, as a List(ClassLabel) column holds them, as
    a list of names); an id outside the classes (-1: unlabelled) is an empty label."""
    if isinstance(value, list):
        return [class_name(classes, v) for v in value]
    return classes[value] if isinstance(value, int) and 0 <= value < len(classes) else None


def class_label_names(feature) -> Optional[list[str]]:
    """The class names of a ClassLabel feature, or of a list of them (NER tags, multi-label sets)."""
    if type(feature).__name__ in ("Sequence", "List", "LargeList"):
        feature = getattr(feature, "feature", None)
    return list(feature.names) if type(feature).__name__ == "ClassLabel" else None


class ArrowRows(Sequence):
    """The records of an ArrowTable as a read-only sequence of dicts, decoded on access."""

    def __init__(self, table: "ArrowTable"):
        self.table = table

    def __len__(self) -> int:
        return len(self.table.dataset)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return self.table.decode_batch(self.table.dataset[index])[0]
        if index < 0:
            index += len(self)
        return self.table.decode_batch(self.table.dataset[index:index + 1])[0][0]

    def __iter__(self) -> Iterator[dict]:
        for batch in self.table.dataset.iter(batch_size=2000):
            yield from self.table.decode_batch(batch)[0]

    def __eq__(self, other) -> bool:  # compares as the list of records it stands for
        if isinstance(other, (list, tuple, ArrowRows)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


class ArrowTable(Table):
    """Records in a memory-mapped Arrow dataset (`datasets.Dataset`). Two layouts:
    read from files: the JSON text of each record and its location (`__record`, `__where`);
    a Hugging Face dataset: its own typed columns and the original row number (`__row`). Its
    ClassLabel columns (`class_names`) read as the class names, not their ids."""

    def __init__(self, path: str, dataset, columns: list[str], origin: Optional[str] = None,
                 class_names: Optional[dict[str, list[str]]] = None, fingerprint: Optional[str] = None):
        self.path = path
        self.dataset = dataset
        self.columns = list(columns)
        self.origin = origin  # Hugging Face datasets: what a location names before "row N"
        self.class_names = dict(class_names or {})
        self.label_order = None
        self._fingerprint = fingerprint or dataset._fingerprint
        self._locations = None  # the location column, selected on the first where()
        self.rows = ArrowRows(self)

    def __len__(self) -> int:
        return len(self.dataset)

    def decode_batch(self, batch: dict[str, list]) -> tuple[list[dict], list[str]]:
        """(records, locations) of a batch of the Arrow columns, as `Dataset.map` or slicing gives it."""
        if RECORD in batch:
            return [json.loads(text) for text in batch[RECORD]], list(batch[WHERE])
        names = [c for c in batch if c != ROW]
        records = [dict(zip(names, values)) for values in zip(*(batch[c] for c in names))]
        for column, classes in self.class_names.items():
            for record in records:
                record[column] = class_name(classes, record.get(column))
        return records, [f"{self.origin} row {row + 1}" for row in batch[ROW]]

    def column_values(self, column: str) -> Iterator[Any]:
        if RECORD in self.dataset.column_names:
            yield from super().column_values(column)
            return
        classes = self.class_names.get(column)
        for batch in self.dataset.select_columns([column]).iter(batch_size=2000):
            yield from (class_name(classes, value) for value in batch[column]) if classes else batch[column]

    @property  # type: ignore[override]
    def locations(self) -> list[str]:
        """Every record's location (reads the whole location column: for tests and small tables)."""
        if WHERE in self.dataset.column_names:
            return list(self.dataset[WHERE])
        return [f"{self.origin} row {row + 1}" for row in self.dataset[ROW]]

    def where(self, index: int) -> str:
        if index < 0:
            index += len(self)
        column = WHERE if WHERE in self.dataset.column_names else ROW
        if self._locations is None:  # selecting a column costs a millisecond: once per table
            self._locations = self.dataset.select_columns([column])
        value = self._locations[index][column]
        return value if column == WHERE else f"{self.origin} row {value + 1}"

    def in_batches(self, size: int = 2000) -> Iterator[Table]:
        for batch in self.dataset.iter(batch_size=size):
            yield self.in_memory(batch)

    def in_memory(self, batch: dict[str, list]) -> Table:
        """A plain Table of one batch of this table's Arrow columns (what processors encode)."""
        records, locations = self.decode_batch(batch)
        return Table(self.path, records, locations, self.columns)

    def subset(self, indices: Sequence[int]) -> "ArrowTable":
        import numpy as np

        positions = np.asarray(indices, dtype=np.int64)
        digest = hashlib.sha256(self._fingerprint.encode() + positions.tobytes()).hexdigest()[:32]
        return ArrowTable(self.path, self.dataset.select(positions, new_fingerprint=digest), self.columns, self.origin,
                          self.class_names, digest)

    def fingerprint(self) -> Optional[str]:
        return self._fingerprint

    def class_order(self, column: str) -> Optional[list[str]]:
        return self.class_names.get(column)

    @staticmethod
    def concatenate(tables: list["ArrowTable"], path: str) -> "ArrowTable":
        from datasets import concatenate_datasets

        layouts = {RECORD in t.dataset.column_names for t in tables}
        if len(layouts) > 1:
            raise DataError(f"{path}: mixes record files with saved datasets; list one kind")
        if False in layouts:  # typed columns: one location column for all shards
            origins = {t.origin for t in tables}
            if len(origins) > 1:
                tables = [t.with_locations() for t in tables]
        columns: dict[str, None] = {}
        for t in tables:
            columns.update(dict.fromkeys(t.columns))
        digest = hashlib.sha256("".join(t._fingerprint for t in tables).encode()).hexdigest()[:32]
        first = tables[0]
        return ArrowTable(path, concatenate_datasets([t.dataset for t in tables]), list(columns), first.origin,
                          first.class_names, digest)

    def with_locations(self) -> "ArrowTable":
        """The same records in the file layout (JSON records and locations), so that shards of
        different origins can be joined."""
        from datasets import Dataset

        where = [f"{self.origin} row {row + 1}" for row in self.dataset[ROW]]
        records = [json.dumps(r, ensure_ascii=False, default=str) for r in self.rows]
        dataset = Dataset.from_dict({WHERE: where, RECORD: records})
        return ArrowTable(self.path, dataset, self.columns, None, self.class_names, self._fingerprint)


SPEED_PROBE_ITEMS = 32  # items checked one by one to tell fast storage from slow
SLOW_CHECK_SECONDS = 2e-4  # a check slower than this on average: waiting on storage or C code, use threads


def check_each(items: Sequence, check: Callable[[Any], Any], workers: int) -> list:
    """`check` of each item, in order (the up-front checks of media files): in this process while
    the checks come fast, as they do for files in the page cache (threads would only contend for
    the interpreter); on `workers` threads when the first ones average over SLOW_CHECK_SECONDS,
    i.e. when waiting on storage (a network file system, a cold disk) or on decoding in C takes
    the time."""
    probe = list(items[:SPEED_PROBE_ITEMS])
    started = time.perf_counter()
    results = [check(item) for item in probe]
    rest = items[len(probe):]
    if probe and workers > 1 and (time.perf_counter() - started) / len(probe) > SLOW_CHECK_SECONDS:
        with ThreadPoolExecutor(workers) as pool:
            return results + list(pool.map(check, rest))
    return results + [check(item) for item in rest]


@functools.lru_cache(maxsize=64)
def _listing_folder(source: str) -> str:
    return source if os.path.isdir(source) else os.path.dirname(source)


def listed_path(source: str, path: str) -> str:
    """A media path as a source lists it: absolute, or relative to the source's folder (a class
    folder) or to the folder of the file that lists it."""
    return path if os.path.isabs(path) else os.path.join(_listing_folder(source), path)


def is_embedded(value) -> bool:
    """A Hugging Face Image or Audio value read undecoded: {"bytes": ..., "path": ...}."""
    return isinstance(value, dict) and "bytes" in value and "path" in value


def media_column(table: Table, configured: str) -> str:
    """`configured` (data.image_column, data.audio_column); where the source has no such field, its
    first column of embedded media (a Hugging Face Image or Audio column)."""
    if configured in table.columns or not len(table.rows):
        return configured
    first = table.rows[0]
    return next((c for c in table.columns if is_embedded(first.get(c))), configured)


def embedded_bytes(table: Table, column: str, field: str) -> Optional["EmbeddedBytes"]:
    """The batch completer of a split whose `column` holds embedded media (None: it holds paths)."""
    if not isinstance(table, ArrowTable) or ROW not in table.dataset.column_names or not len(table):
        return None
    return EmbeddedBytes(table, column, field) if is_embedded(table.rows[0].get(column)) else None


class EmbeddedBytes:
    """Completes a batch of examples whose media (images, clips) are bytes in the split's Arrow
    file, so that they need not be copied into the examples: one read of those rows' `column`
    per batch (in the DataLoader worker) puts the bytes under `field`, and the record's location
    under `where` for errors. Examples still to complete hold None under `field`."""

    def __init__(self, table: ArrowTable, column: str, field: str):
        self.origin = table.origin
        self.rows = table.dataset.select_columns([column, ROW])
        self.column, self.field = column, field

    def __call__(self, items: list[dict]) -> list[dict]:
        wanted = [k for k, item in enumerate(items) if item[self.field] is None]
        if not wanted:
            return items
        read = self.rows[[items[k]["row"] for k in wanted]]
        items = list(items)
        for k, value, row in zip(wanted, read[self.column], read[ROW]):
            items[k] = {**items[k], self.field: value["bytes"], "where": f"{self.origin} row {row + 1}"}
        return items


class StreamRows:
    """The records of a StreamTable, read from the files on each pass (no length, no random access)."""

    def __init__(self, table: "StreamTable"):
        self.table = table

    def __iter__(self) -> Iterator[dict]:
        return (record for _, record in self.table.records())

    def __getitem__(self, index):
        if isinstance(index, slice) and index.start in (None, 0) and index.stop is not None:
            return self.table.head(index.stop).rows
        return self.table.head(index + 1).rows[index]

    def __len__(self) -> int:
        raise DataError(f"{self.table.path}: a streamed source (data.streaming=true) has no length")


class StreamTable(Table):
    """Records read lazily from files on each pass (data.streaming=true): nothing is stored, so the
    files may be larger than memory or disk. Locations are those of the file readers."""

    def __init__(self, files: list[Path], key: str, encoding: str = "utf-8"):
        self.files = files
        self.key = key
        self.encoding = encoding
        self.path = str(files[0]) if len(files) == 1 else ",".join(map(str, files))
        self.label_order = None
        for file in files:
            if not file.is_file():
                raise DataError(f"{key}: not found: {file} (resolved to {file.absolute()}); streaming reads files")
        first = next(self.records(), None)
        if first is None:
            raise DataError(f"{key}: {self.path} holds no records")
        self.columns = list(first[1])
        self.rows = StreamRows(self)  # type: ignore[assignment]

    def records(self, shard: int = 0, shards: int = 1, limit: Optional[int] = None) -> Iterator[tuple[str, dict]]:
        """The records i (counted over all the files) with i mod `shards` == `shard`, of the first
        `limit`; JSONL lines of other shards are passed over without being parsed."""
        position = [0]  # the index of the record being read

        def mine() -> bool:
            return position[0] % shards == shard

        for file in self.files:
            for where, record in iter_records(file, self.encoding, mine if shards > 1 else None):
                if limit is not None and position[0] >= limit:
                    return
                if mine():
                    yield where, record
                position[0] += 1

    def head(self, count: int) -> Table:
        """The first `count` records, in memory."""
        rows, locations = [], []
        for location, record in self.records():
            if len(rows) == count:
                break
            rows.append(record)
            locations.append(location)
        return Table(self.path, rows, locations, self.columns)

    def __len__(self) -> int:
        raise DataError(f"{self.path}: a streamed source (data.streaming=true) has no length")

    def in_batches(self, size: int = 2000) -> Iterator[Table]:
        rows: list[dict] = []
        locations: list[str] = []
        for location, record in self.records():
            rows.append(record)
            locations.append(location)
            if len(rows) == size:
                yield Table(self.path, rows, locations, self.columns)
                rows, locations = [], []
        if rows:
            yield Table(self.path, rows, locations, self.columns)

    def where(self, index: int) -> str:
        return self.head(index + 1).where(index)

    def subset(self, indices: Sequence[int]) -> Table:
        head = self.head(max(indices) + 1 if len(indices) else 0)
        return head.subset([i for i in indices if i < len(head)])


def _records_cache_file(path: Path, encoding: str) -> Path:
    from sft.assets import cache_root

    stat = path.stat()
    key = json.dumps([RECORDS_FORMAT, str(path.absolute()), stat.st_size, stat.st_mtime_ns, encoding])
    return cache_root() / "records" / f"{path.name}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.arrow"


def _write_records(records: Iterator[tuple[str, dict, Optional[str]]], folder: Path, prefix: str,
                   with_digest: bool = False) -> tuple[str, int, list[str], str]:
    """Write (location, record, its JSON text or None) as an Arrow stream to a temporary file in
    `folder`, 20,000 at a time: (its path, the record count, the field names seen, a digest of the
    records when `with_digest`, else ""). A record's own text (a JSONL line) is kept as it is:
    encoding the parsed record again would give the same record back, at a third of the read's cost."""
    import pyarrow as pa

    folder.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([(WHERE, pa.string()), (RECORD, pa.large_string())])
    columns: dict[str, None] = {}
    count = 0
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".tmp")
    os.close(fd)
    try:
        with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            where: list[str] = []
            texts: list[str] = []
            to_json = json.JSONEncoder(ensure_ascii=False, default=str).encode  # json.dumps would build one per record

            def flush() -> None:
                writer.write_batch(pa.record_batch([where, texts], schema=schema))
                if with_digest:
                    digest.update("\0".join(where + texts).encode())
                where.clear()
                texts.clear()

            for location, record, text in records:
                where.append(location)
                texts.append(to_json(record) if text is None else text)
                if len(columns) < 10_000:
                    columns.update(dict.fromkeys(record))
                count += 1
                if len(where) == 20_000:
                    flush()
            if where:
                flush()
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp, count, list(columns), digest.hexdigest() if with_digest else ""


def _keep_records(tmp: str, target: Path, meta: dict) -> None:
    """Move a written records file into place with its description; complete entries only, so a
    reader sees the whole file or none (another process may have written it first). Then the
    folder's least recently used files go while it holds more than SFT_RECORDS_CACHE_GB."""
    try:
        target.with_suffix(".json").write_text(json.dumps(meta))
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    entries = []
    for stored in target.parent.glob("*.arrow"):
        try:
            stat = stored.stat()
        except FileNotFoundError:  # removed by another process meanwhile
            continue
        entries.append((stat.st_mtime, stat.st_size, stored))
    evict_least_recent(entries, target, "SFT_RECORDS_CACHE_GB", _remove_records, "records file")


def _remove_records(stored: Path) -> None:
    stored.unlink(missing_ok=True)  # a process reading it keeps its memory map
    stored.with_suffix(".json").unlink(missing_ok=True)


def _records_table(path: str, target: Path) -> ArrowTable:
    from datasets import Dataset

    meta = json.loads(target.with_suffix(".json").read_text())
    with contextlib.suppress(OSError):  # a cache shared read-only is used, not refreshed
        os.utime(target)  # recently used: evicted last
    return ArrowTable(path, Dataset.from_file(str(target)), meta["columns"], fingerprint=target.stem)


def read_records_file(path: Path, key: str, encoding: str = "utf-8") -> ArrowTable:
    """One file's records as an ArrowTable, parsed once and kept in $SFT_CACHE/records/."""
    target = _records_cache_file(path, encoding)
    if not (target.is_file() and target.with_suffix(".json").is_file()):
        tmp, count, columns, _ = _write_records(iter_records(path, encoding, with_text=True), target.parent, target.name)
        if count == 0:
            Path(tmp).unlink(missing_ok=True)
            raise DataError(f"{key}: {path} holds no records")
        _keep_records(tmp, target, {"columns": columns, "records": count, "file": str(path)})
        log.debug("%s: %d records read into %s", path, count, target)
    return _records_table(str(path), target)


def is_saved_dataset(folder: Path) -> bool:
    """A folder written by Dataset.save_to_disk (state.json) or DatasetDict.save_to_disk (dataset_dict.json)."""
    return (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()


def hf_table(dataset, origin: str, path: str) -> ArrowTable:
    """An ArrowTable over a `datasets.Dataset`, each row located as "<origin> row N"."""
    import numpy as np

    if ROW not in dataset.column_names:
        dataset = dataset.add_column(ROW, np.arange(len(dataset), dtype=np.int64),
                                     new_fingerprint=hashlib.sha256(f"{dataset._fingerprint}{ROW}".encode()).hexdigest()[:32])
    features = getattr(dataset, "features", None) or {}
    for name, feature in list(features.items()):
        # Image and Audio columns stay encoded ({"bytes", "path"}): the tasks decode them per batch, in the workers
        if type(feature).__name__ in ("Image", "Audio") and getattr(feature, "decode", False):
            dataset = dataset.cast_column(name, type(feature)(decode=False))
    # ClassLabel columns (and lists of them): read as names, in the dataset's own class order
    class_names = {name: names for name, names in ((n, class_label_names(f)) for n, f in features.items()) if names}
    columns = [c for c in dataset.column_names if c != ROW]
    if not len(dataset):
        raise DataError(f"{origin}: holds no records")
    return ArrowTable(path, dataset, columns, origin, class_names)


def read_saved_dataset(folder: Path, key: str, split: str = "train") -> ArrowTable:
    """A folder written by `save_to_disk`: a Dataset, or split `split` of a DatasetDict."""
    from datasets import load_from_disk

    try:
        loaded = load_from_disk(str(folder))
    except Exception as e:  # datasets raises several types for a broken folder
        raise DataError(f"{key}: {folder} is not a readable saved dataset ({type(e).__name__}: {e})") from None
    if hasattr(loaded, "keys"):  # a DatasetDict
        if split not in loaded:
            raise DataError(f"{key}: {folder} has the splits {sorted(loaded)}, not {split!r}; set data.train_split "
                            f"(and data.val_split, data.test_split) to the ones to use")
        return hf_table(loaded[split], f"{folder} [{split}]", str(folder))
    return hf_table(loaded, str(folder), str(folder))


def load_hf_dataset(name: str, config: Optional[str], key: str = "data.dataset") -> dict:
    """The splits of the Hugging Face dataset `name` (without the hf: prefix) as {split: Dataset}: from
    the hub, or offline (HF_DATASETS_OFFLINE=1 / HF_HUB_OFFLINE=1) from the local datasets cache."""
    import datasets

    try:
        loaded = datasets.load_dataset(name, config)
    except Exception as e:  # not on the hub and not cached, no network, a wrong config: all end here
        offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        raise DataError(
            f"{key}=hf:{name}{f' (data.dataset_config={config})' if config else ''}: neither the Hugging Face hub"
            f"{' (offline mode is on)' if offline else ''} nor the local datasets cache "
            f"({datasets.config.HF_DATASETS_CACHE}) has it ({type(e).__name__}: {str(e).splitlines()[0][:300]}). "
            f"Point at local files instead: data.train_file=PATH (CSV, JSONL, Parquet, a glob of shards, or a folder "
            f"written by save_to_disk), with data.val_file and data.test_file") from None
    return dict(loaded)


def saved_dataset_splits(folder: Path) -> list[str]:
    """The split names of a DatasetDict folder ([] for a single Dataset)."""
    index = folder / "dataset_dict.json"
    return list(json.loads(index.read_text()).get("splits", [])) if index.is_file() else []


def read_class_folder(root: Path, key: str, suffixes, kind: str, layout: str) -> ArrowTable:
    """A folder with one subfolder per class: a record {path, label} per file with one of `suffixes`
    (other files are counted and reported, hidden ones skipped). The listing is written to an
    Arrow file under $SFT_CACHE/records/ as it is walked, keyed by its contents, so that a
    million files cost disk, not memory, and an unchanged folder keeps its fingerprint."""
    from sft.assets import cache_root

    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{key}: {root} has no class subfolders; expected {layout}")
    ignored = 0

    def files() -> Iterator[tuple[str, dict, None]]:
        nonlocal ignored
        for label in classes:
            for dirpath, dirnames, filenames in os.walk(root / label):
                dirnames.sort()
                for name in sorted(filenames):
                    if name.startswith("."):
                        continue
                    if os.path.splitext(name)[1].lower() not in suffixes:
                        ignored += 1
                        continue
                    path = os.path.join(dirpath, name)
                    yield path, {"path": path, "label": label}, None

    folder = cache_root() / "records"
    tmp, count, _, digest = _write_records(files(), folder, f"{root.name}-listing", with_digest=True)
    if ignored:
        log.warning("%s: ignored %d files without an %s extension (%s)", root, ignored, kind, ", ".join(sorted(suffixes)))
    if not count:
        Path(tmp).unlink(missing_ok=True)
        raise DataError(f"{key}: {root} holds no {kind} files under its class folders {classes}")
    name = hashlib.sha256(json.dumps([RECORDS_FORMAT, str(root.absolute()), digest]).encode()).hexdigest()[:24]
    target = folder / f"{root.name}-listing-{name}.arrow"
    if target.is_file() and target.with_suffix(".json").is_file():
        Path(tmp).unlink(missing_ok=True)  # the same listing as a launch before
    else:
        _keep_records(tmp, target, {"columns": ["path", "label"], "records": count, "folder": str(root)})
    return _records_table(str(root), target)
