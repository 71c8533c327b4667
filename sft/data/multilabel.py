"""Processor for multi-label classification: each record holds a set of labels.

The label field is a list (JSON, JSONL, Parquet) or a string joined by `label_separator`
(CSV, TSV). Each example gets a multi-hot float vector over the label map.
"""

from __future__ import annotations

from sft.data.sources import DataError, Table
from sft.data.text_classification import TextClassificationProcessor, in_source_order, label_key


class MultiLabelProcessor(TextClassificationProcessor):
    def __init__(self, tokenizer, text_column: str, label_column: str, text_pair_column: str | None = None,
                 max_length: int = 128, label_names: list[str] | None = None, label_separator: str | None = "|",
                 allow_empty_labels: bool = False):
        super().__init__(tokenizer, text_column, label_column, text_pair_column, max_length, label_names)
        self.label_separator = label_separator
        self.allow_empty_labels = allow_empty_labels

    def labels_of(self, table: Table, index: int) -> list[str]:
        value = table.rows[index].get(self.label_column)
        if value is None:
            values = []
        elif isinstance(value, (list, tuple)):
            values = list(value)
        elif isinstance(value, str):
            values = value.split(self.label_separator) if self.label_separator else [value]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            values = [value]
        else:
            raise DataError(f"{table.where(index)}: field {self.label_column!r} holds {type(value).__name__}; expected a "
                            f"list of labels or a string of labels joined by data.label_separator={self.label_separator!r}")
        keys = [key for key in (label_key(v) for v in values) if key is not None]
        if not keys and not self.allow_empty_labels:
            raise DataError(f"{table.where(index)}: field {self.label_column!r} holds no labels; every record needs at least "
                            f"one (set data.allow_empty_labels=true if records may have none)")
        return keys

    def fit(self, train: Table) -> list[str]:
        if self.label_names is None:
            train.require_columns(self._columns(with_labels=True))
            keys = set()
            for batch in train.in_batches():
                for i in range(len(batch)):
                    keys.update(self.labels_of(batch, i))
            if len(keys) < 2:
                raise DataError(f"{train.path}: field {self.label_column!r} has only the labels {sorted(keys)}; "
                                f"multi-label classification needs at least two")
            self.label_names = in_source_order(train.class_order(self.label_column), keys)
        return self.label_names

    def encode(self, table: Table, with_labels: bool = True):
        examples, report = super().encode(table, with_labels=False)
        if with_labels:
            table.require_columns(self._columns(with_labels=True))
            index = {name: k for k, name in enumerate(self.label_names)}
            for i, example in enumerate(examples):
                target = [0.0] * len(self.label_names)
                for key in self.labels_of(table, i):
                    if key not in index:
                        raise DataError(f"{table.where(i)}: label {key!r} in field {self.label_column!r} never occurs in "
                                        f"the training data; known labels: {self.label_names}")
                    target[index[key]] = 1.0
                example["labels"] = target
        return examples, report

    def prediction_rows(self, table: Table, outputs: list[dict], label_names: list[str], examples: list[dict]):
        """One dict per record: source, texts, gold labels, predicted labels, per-label probabilities."""
        row = 0
        for batch in outputs:
            for probabilities, predicted in zip(batch["probabilities"].tolist(), batch["prediction"].tolist()):
                line = {"source": table.where(row), **self.record_fields(table, row, examples[row])}
                line["labels"] = self.labels_of(table, row)
                line["prediction"] = [name for name, on in zip(label_names, predicted) if on]
                line["probabilities"] = {name: round(p, 6) for name, p in zip(label_names, probabilities)}
                yield line
                row += 1
