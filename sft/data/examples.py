"""Encoded examples: tokenized once with batched, multi-process `Dataset.map` into Arrow files.

A split's examples live in memory-mapped Arrow files, never as a list of Python dicts, so a
million records cost disk and a little page cache, not tens of gigabytes of objects. Each
batch of records is encoded by the task's processor (the same `encode` that names a bad
record's file and line); `data.num_proc` processes share the work.

With `data.cache_encoded` the files are kept under $SFT_CACHE/encoded/<split>-<key>/, where
the key covers everything that shaped them (see sft.data.encode_cache): a second launch on
unchanged data reads them back in milliseconds. The folder is bounded (SFT_ENCODED_CACHE_GB,
default 20): the entries used least recently are removed first; deleting it is always safe.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from sft.data.encode_cache import evict_least_recent
from sft.data.sources import ArrowTable, Table

log = logging.getLogger(__name__)

SUPERVISED = "__supervised"  # tokens an example adds to the loss (causal_lm), kept for the step sampler
BATCH_RECORDS = 1000  # records per encode call in Dataset.map
PARALLEL_FROM = 20_000  # smaller splits encode in this process: a worker pool costs more than it saves


# -- example sets ------------------------------------------------------------------------------------
class Examples(Sequence):
    """A split's encoded examples: indexable, sliceable and iterable dicts, plus the per-example
    lengths and supervised-token counts that samplers and packing need without decoding rows."""

    def lengths(self) -> np.ndarray:
        return np.asarray([len(example["input_ids"]) for example in self], dtype=np.int64)

    def supervised(self, count) -> np.ndarray:
        """Supervised tokens per example; `count(example)` is the processor's rule."""
        return np.asarray([count(example) for example in self], dtype=np.int64)


class ListExamples(Examples):
    """Examples of a small in-memory source (folders, arrays), kept as they were encoded."""

    def __init__(self, examples: list[dict]):
        self.items = examples

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index):  # type: ignore[override]
        return self.items[index]

    def __iter__(self) -> Iterator[dict]:
        return iter(self.items)


class ArrowExamples(Examples):
    """Examples in a memory-mapped Arrow dataset; rows come back as dicts of Python values."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.visible = [c for c in dataset.column_names if not c.startswith("__")]
        self._rows = dataset.select_columns(self.visible)

    def __len__(self) -> int:
        return len(self.dataset)

    def _dicts(self, columns: dict[str, list]) -> list[dict]:
        return [dict(zip(columns, values)) for values in zip(*columns.values())]

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return self._dicts(self._rows[index])
        return self._rows[int(index)]

    def many(self, indices: Sequence[int]) -> list[dict]:
        """Several rows in one Arrow read (a DataLoader batch)."""
        return self._dicts(self._rows[list(map(int, indices))])

    def __iter__(self) -> Iterator[dict]:
        for batch in self._rows.iter(batch_size=2000):
            yield from self._dicts(batch)

    def _per_row(self, values) -> np.ndarray:
        """One number per row of the underlying table, taken for this dataset's rows (in Arrow and
        numpy: reading the column through the dataset makes a Python object per row)."""
        values = values.to_numpy(zero_copy_only=False).astype(np.int64)
        indices = self.dataset._indices  # a selection of the underlying table (none after map)
        return values if indices is None else values[indices.column(0).to_numpy()]

    def lengths(self) -> np.ndarray:
        import pyarrow.compute as pc

        return self._per_row(pc.list_value_length(self.dataset.data.column("input_ids")))

    def supervised(self, count) -> np.ndarray:
        if SUPERVISED in self.dataset.column_names:
            return self._per_row(self.dataset.data.column(SUPERVISED))
        return super().supervised(count)


class PackedExamples(Examples):
    """Training rows that each hold several examples (causal_lm packing), built on access from a
    plan of member indices; each member keeps its own position ids, restarting at 0."""

    def __init__(self, base: Examples, rows: list[list[int]]):
        self.base = base
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def _row(self, members: list[int]) -> dict:
        items = self.base.many(members) if isinstance(self.base, ArrowExamples) else [self.base[i] for i in members]
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for item in items:
            ids += item["input_ids"]
            labels += item["labels"]
            positions += range(len(item["input_ids"]))
        return {"input_ids": ids, "labels": labels, "position_ids": positions, "documents": len(members)}

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self._row(members) for members in self.rows[index]]
        return self._row(self.rows[index])

    def __iter__(self) -> Iterator[dict]:
        return (self._row(members) for members in self.rows)

    def lengths(self) -> np.ndarray:
        base = self.base.lengths()
        return np.asarray([base[members].sum() for members in self.rows], dtype=np.int64)

    def supervised(self, count) -> np.ndarray:
        base = self.base.supervised(count)
        return np.asarray([base[members].sum() for members in self.rows], dtype=np.int64)


# -- reports -----------------------------------------------------------------------------------------
def merge_reports(first: Any, second: Any) -> Any:
    """The report of two batches' encodes as one: counts add up, lists join, settings (fields
    named in the report's `SETTINGS`, strings, flags) keep the first batch's value."""
    if first is None:
        return second
    merged = {}
    settings = set(getattr(first, "SETTINGS", ()))
    for f in dataclasses.fields(first):
        a, b = getattr(first, f.name), getattr(second, f.name)
        if f.name in settings or isinstance(a, (str, bool)) or a is None:
            merged[f.name] = a if a not in (None, "") else b
        elif dataclasses.is_dataclass(a):
            merged[f.name] = merge_reports(a, b)
        elif isinstance(a, list):
            merged[f.name] = a + b
        else:
            merged[f.name] = a + b
    return type(first)(**merged)


# -- encoding ----------------------------------------------------------------------------------------
class EncodeBatch:
    """The function `Dataset.map` runs on each batch of records (in worker processes too): encode
    them with the processor as a small in-memory table, map the examples' record indices back to
    the split, and leave the batch's report in `reports_dir`."""

    def __init__(self, processor, table: ArrowTable, reports_dir: str, keys: list[str]):
        self.processor = processor
        self.table = table
        self.reports_dir = reports_dir
        self.keys = keys

    def __call__(self, batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        records = self.table.in_memory(batch)
        examples, report = self.processor.encode(records)
        for example in examples:
            for name in self.processor.index_fields:
                if name in example:
                    example[name] = indices[example[name]]
        with open(os.path.join(self.reports_dir, f"{indices[0]:012d}.pkl"), "wb") as f:
            pickle.dump(report, f)
        columns = {key: [example[key] for example in examples] for key in self.keys}
        if self.processor.step_normalized:
            columns[SUPERVISED] = [self.processor.supervised_count(example) for example in examples]
        return columns


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _scratch_dir() -> Path:
    """A folder for splits that are not cached, removed when this process ends (the open memory
    maps stay valid after the files are unlinked)."""
    from sft.assets import cache_root

    root = cache_root() / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=root, prefix=f"{os.getpid()}-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def load_entry(entry: Path) -> Optional[tuple[ArrowExamples, Any]]:
    """A cached split (its Arrow files and report), or None when absent or unreadable."""
    from datasets import Dataset, concatenate_datasets

    try:
        with open(entry / "report.pkl", "rb") as f:
            manifest = pickle.load(f)
        parts = [Dataset.from_file(str(entry / name)) for name in manifest["files"]]
        os.utime(entry)  # recently used: evicted last
    except Exception:  # absent, partly deleted or from another version: encode again
        return None
    dataset = parts[0] if len(parts) == 1 else concatenate_datasets(parts)
    return ArrowExamples(dataset), manifest["report"]


def encode_table(processor, table: Table, split: str, entry: Optional[Path], num_proc: Optional[int]):
    """(examples, report) of one split: read from the cache entry when present, else encoded with
    `Dataset.map` (batched; `num_proc` processes, default the CPUs available) into it."""
    if not isinstance(table, ArrowTable):  # folders, arrays: small, encoded as they are
        examples, report = processor.encode(table)
        return ListExamples(examples), report
    if entry is not None:
        cached = load_entry(entry)
        if cached is not None:
            log.info("[data] %s: encoded examples read from %s (data.cache_encoded)", split, entry)
            processor.audit_cached(table)
            return cached
        shutil.rmtree(entry, ignore_errors=True)  # a torn or outdated entry (complete ones are renamed into place)
    # The first batch in this process: its errors surface at once, it shows the audit, and its
    # examples tell the Arrow columns.
    probe, _ = processor.encode(table.in_memory(table.dataset[:min(len(table), 64)]))
    keys = list(probe[0]) if probe else []
    processes = num_proc if num_proc is not None else cpu_count()
    processes = max(1, min(processes, len(table) // BATCH_RECORDS)) if len(table) >= PARALLEL_FROM else 1
    root = entry.parent if entry is not None else _scratch_dir()
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=root, prefix=f"{split}-building-"))
    reports = work / "reports"
    reports.mkdir()
    try:
        import datasets

        quiet = len(table) < PARALLEL_FROM
        if quiet:
            datasets.disable_progress_bars()
        try:
            encoded = table.dataset.map(
                EncodeBatch(processor.for_workers(), table, str(reports), keys), batched=True,
                batch_size=BATCH_RECORDS, with_indices=True, remove_columns=table.dataset.column_names,
                num_proc=processes if processes > 1 else None, cache_file_name=str(work / "examples.arrow"),
                load_from_cache_file=False, new_fingerprint=work.name, desc=f"[data] encoding {split}")
        finally:
            if quiet:
                datasets.enable_progress_bars()
        report = None
        for part in sorted(reports.iterdir()):
            with open(part, "rb") as f:
                report = merge_reports(report, pickle.load(f))
        processor.check_encoded(table, len(encoded), report)
        files = [Path(c["filename"]).name for c in encoded.cache_files]
        with open(work / "report.pkl", "wb") as f:
            pickle.dump({"files": files, "report": report}, f)
        shutil.rmtree(reports)
        if entry is None:
            return ArrowExamples(encoded), report
        try:
            os.rename(work, entry)  # whole entries only; another rank may have written it first
        except OSError:
            shutil.rmtree(work, ignore_errors=True)
        cached = load_entry(entry)
        if cached is None:
            raise RuntimeError(f"could not read back the encoded split {entry}")
        evict(entry.parent, keep=entry)
        return cached
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def evict(root: Path, keep: Path) -> None:
    """Remove the least recently used entries until the folder is under SFT_ENCODED_CACHE_GB."""
    entries = []
    for entry in root.iterdir():
        if entry.is_dir() and "-building-" not in entry.name:
            size = sum(f.stat().st_size for f in entry.iterdir() if f.is_file())
            entries.append((entry.stat().st_mtime, size, entry))
    evict_least_recent(entries, keep, "SFT_ENCODED_CACHE_GB", lambda entry: shutil.rmtree(entry, ignore_errors=True),
                       "encoded split")
