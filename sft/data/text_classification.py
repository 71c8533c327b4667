"""Processor for text classification: texts (or text pairs) and one label per record."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sft.data.collators import PaddingCollator
from sft.data.coverage import UnknownTokens, count_unknown
from sft.data.processor import Processor
from sft.data.rust_tokenizer import untruncated_ids
from sft.data.sources import DataError, Table

log = logging.getLogger(__name__)


def label_key(value) -> str | None:
    """Labels compare as strings, so 1 (JSON), "1" (CSV) and 1.0 (Parquet) are one label."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def sorted_labels(keys: set[str]) -> list[str]:
    """Integer-like labels in numeric order (so 0..K-1 keep their ids), others alphabetically."""
    try:
        return sorted(keys, key=int)
    except ValueError:
        return sorted(keys)


def in_source_order(order: list[str] | None, keys: set[str]) -> list[str]:
    """The label map of the training labels `keys`: in the source's own class order where it has one
    (a ClassLabel feature; classes the training split lacks are left out), else as `sorted_labels`."""
    if not order:
        return sorted_labels(keys)
    return [key for key in (label_key(name) for name in order) if key in keys]


def label_id(table: Table, i: int, column: str, index: dict[str, int]) -> int:
    """The id of record i's label in the training label map `index`; an empty or unseen label is
    an error naming the record's file and line."""
    key = label_key(table.rows[i].get(column))
    if key is None:
        raise DataError(f"{table.where(i)}: field {column!r} is empty; expected one of {list(index)}")
    if key not in index:
        raise DataError(f"{table.where(i)}: label {key!r} in field {column!r} never occurs in the "
                        f"training data; known labels: {list(index)}")
    return index[key]


@dataclass
class EncodeReport:
    records: int = 0
    truncated: int = 0
    tokens: int = 0
    unknown: UnknownTokens = field(default_factory=UnknownTokens)

    def as_dict(self) -> dict:
        return {"records": self.records, "truncated": self.truncated, "mean_tokens": round(self.tokens / max(self.records, 1), 1),
                "unknown_tokens": self.unknown.as_dict()}


class TextClassificationProcessor(Processor):
    fit_sets_only_label_names = True
    def __init__(self, tokenizer, text_column: str, label_column: str, text_pair_column: str | None = None,
                 max_length: int = 128, label_names: list[str] | None = None):
        self.tokenizer = tokenizer
        self.text_column = text_column
        self.text_pair_column = text_pair_column
        self.label_column = label_column
        self.max_length = max_length
        self.label_names = list(label_names) if label_names is not None else None

    def make_collator(self, pad_to_multiple_of: int | None, train: bool = False):
        return PaddingCollator(self.tokenizer.pad_token_id, pad_to_multiple_of)

    def record_fields(self, table: Table, index: int, example: dict) -> dict:
        fields = {"text": table.rows[index].get(self.text_column)}
        if self.text_pair_column:
            fields["text_pair"] = table.rows[index].get(self.text_pair_column)
        return fields

    def _columns(self, with_labels: bool) -> dict[str, str]:
        columns = {"data.text_column": self.text_column, "data.text_pair_column": self.text_pair_column}
        if with_labels:
            columns["data.label_column"] = self.label_column
        return columns

    def fit(self, train: Table) -> list[str]:
        """Builds the label map from the training records (unless one was given)."""
        if self.label_names is None:
            train.require_columns(self._columns(with_labels=True))
            keys = set()
            for i, row in enumerate(train.rows):
                key = label_key(row.get(self.label_column))
                if key is None:
                    raise DataError(f"{train.where(i)}: field {self.label_column!r} is empty; every training record needs a label")
                keys.add(key)
            if len(keys) < 2:
                raise DataError(f"{train.path}: field {self.label_column!r} has only the label {sorted(keys)}; "
                                f"classification needs at least two")
            self.label_names = in_source_order(train.class_order(self.label_column), keys)
        return self.label_names

    def _texts(self, table: Table, column: str) -> list[str]:
        texts = []
        for i, row in enumerate(table.rows):
            value = row.get(column)
            if value is None:
                raise DataError(f"{table.where(i)}: field {column!r} is missing or null; expected text")
            texts.append(str(value))
        return texts

    def encode(self, table: Table, with_labels: bool = True) -> tuple[list[dict], EncodeReport]:
        assert self.label_names is not None, "fit() builds the label map before encode()"
        table.require_columns(self._columns(with_labels))
        texts = self._texts(table, self.text_column)
        pairs = self._texts(table, self.text_pair_column) if self.text_pair_column else None
        # Tokenize untruncated first (cheap with a fast tokenizer) so truncation can be counted.
        full = untruncated_ids(self.tokenizer, texts, pairs)
        too_long = [i for i, ids in enumerate(full["input_ids"]) if len(ids) > self.max_length]
        if too_long:
            cut = self.tokenizer([texts[i] for i in too_long], [pairs[i] for i in too_long] if pairs else None,
                                 truncation=True, max_length=self.max_length)
            for j, i in enumerate(too_long):
                for name in full.keys():
                    full[name][i] = cut[name][j]
        index = {name: k for k, name in enumerate(self.label_names)}
        examples, report = [], EncodeReport(records=len(texts), truncated=len(too_long))
        for i in range(len(texts)):
            example = {"input_ids": full["input_ids"][i]}
            if "token_type_ids" in full:
                example["token_type_ids"] = full["token_type_ids"][i]
            if with_labels:
                example["labels"] = label_id(table, i, self.label_column, index)
            report.tokens += len(example["input_ids"])
            examples.append(example)
        report.unknown = count_unknown(self.tokenizer, (example["input_ids"] for example in examples))
        return examples, report
