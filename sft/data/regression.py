"""Processor for text regression: one or several numeric targets per record.

`label_column` names one target column or a list of them (multi-output regression). With
`standardize_targets`, the mean and standard deviation of each target are learned from the
training split and handed to the head, which trains on standardized targets and reports
predictions and metrics in the original units.
"""

from __future__ import annotations

import math
from functools import partial

from sft.data.sources import DataError, Table
from sft.data.text_classification import TextClassificationProcessor


class RegressionProcessor(TextClassificationProcessor):
    def __init__(self, tokenizer, text_column: str, label_column, text_pair_column: str | None = None,
                 max_length: int = 128, label_names: list[str] | None = None, standardize_targets: bool = True):
        columns = [label_column] if isinstance(label_column, str) else [str(c) for c in label_column]
        if not columns:
            raise DataError("data.label_column: name at least one target column")
        super().__init__(tokenizer, text_column, columns[0], text_pair_column, max_length, label_names)
        self.target_columns = columns
        self.standardize_targets = standardize_targets

    def _columns(self, with_labels: bool) -> dict[str, str]:
        columns = super()._columns(with_labels=False)
        if with_labels:
            columns.update({f"data.label_column[{k}]": c for k, c in enumerate(self.target_columns)})
        return columns

    def targets_of(self, table: Table, index: int) -> list[float]:
        return self._targets(table.rows[index], partial(table.where, index))

    def _targets(self, row: dict, where) -> list[float]:
        """The row's targets; `where()` names it in an error (called only then: a streamed record's
        location costs a read)."""
        targets = []
        for column in self.target_columns:
            value = row.get(column)
            try:
                number = float(value.strip() if isinstance(value, str) else value)
            except (TypeError, ValueError):
                number = None
            if number is None or isinstance(value, bool) or not math.isfinite(number):
                raise DataError(f"{where()}: field {column!r} is {value!r}; expected a finite number")
            targets.append(number)
        return targets

    def fit(self, train: Table) -> list[str]:
        if self.label_names is None:
            train.require_columns(self._columns(with_labels=True))
            self.label_names = list(self.target_columns)
        return self.label_names

    def learned_head_options(self, train: Table) -> dict:
        """Per-target mean and standard deviation of the training split (when standardizing), in one
        pass over its records (Welford's update), so a streamed split needs no length."""
        if not self.standardize_targets:
            return {}
        count, means, squares = 0, [0.0] * len(self.target_columns), [0.0] * len(self.target_columns)
        for i, row in enumerate(train.rows):
            count += 1
            for k, value in enumerate(self._targets(row, partial(train.where, i))):
                delta = value - means[k]
                means[k] += delta / count
                squares[k] += delta * (value - means[k])
        if count == 0:
            raise DataError(f"{train.path}: no training records to learn the targets' mean and spread from")
        stds = [math.sqrt(square / count) for square in squares]
        # a constant target: nothing to scale
        return {"target_mean": means, "target_std": [std if std > 0 else 1.0 for std in stds]}

    def encode(self, table: Table, with_labels: bool = True):
        examples, report = super().encode(table, with_labels=False)
        if with_labels:
            table.require_columns(self._columns(with_labels=True))
            for i, example in enumerate(examples):
                example["labels"] = self.targets_of(table, i)
        return examples, report

    def prediction_rows(self, table: Table, outputs: list[dict], label_names: list[str], examples: list[dict]):
        """One dict per record: source, texts, gold targets and predictions, by target column."""
        row = 0
        for batch in outputs:
            for predicted in batch["prediction"].tolist():
                line = {"source": table.where(row), **self.record_fields(table, row, examples[row])}
                line["targets"] = dict(zip(label_names, self.targets_of(table, row)))
                line["prediction"] = dict(zip(label_names, (round(p, 6) for p in predicted)))
                yield line
                row += 1
