"""The processor interface: how a task's records become examples, batches and prediction rows.

The data module calls only these methods; a task's processor overrides what it needs and inherits
the rest (a no-op or the single-label behaviour).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Optional

from sft.data.sources import DataError, Table, read_table

if TYPE_CHECKING:
    from sft.data.examples import Examples


class Processor:
    label_names: Optional[list[str]] = None
    step_normalized: bool = False  # training batches carry their optimizer step's supervised-token count
    index_fields: tuple[str, ...] = ("row",)  # example fields that hold the index of their record in the table
    # fit() sets nothing but label_names, from the training records and the settings: the data module
    # may then keep the label map between launches, keyed by the records' fingerprint.
    fit_sets_only_label_names: bool = False

    # -- reading and learning from the training split --------------------------------------------
    def read_source(self, path, key: str, encoding: str = "utf-8") -> Table:
        """The records of one source (files; image and audio tasks also read folders and arrays)."""
        return read_table(path, key, encoding)

    def fit(self, train: Table) -> list[str]:
        """Build the label map from the training records (unless one was given) and return it."""
        raise NotImplementedError

    def learned_head_options(self, train: Table) -> dict:
        """What the head needs learned from the training split besides the label map."""
        return {}

    # -- encoding ---------------------------------------------------------------------------------
    def encode(self, table: Table) -> tuple[list[dict], Any]:
        """(examples, report): the report has `as_dict()` and optionally `summary()`."""
        raise NotImplementedError

    def audit_cached(self, table: Table) -> None:
        """Log what encoding would log, for a split read from the encode cache."""

    def for_workers(self) -> "Processor":
        """The processor that encodes the batches after the first (e.g. without the audit log)."""
        return self

    def check_encoded(self, table: Table, count: int, report: Any) -> None:
        """Called once a whole split is encoded: a split that kept no example is an error."""
        if count == 0:
            raise DataError(f"{table.path}: no example was kept (see data_report: {report.as_dict()})")

    def arrange(self, split: str, examples: Examples) -> Examples:
        """The examples as the split's dataset holds them (e.g. packed rows for training)."""
        return examples

    def supervised_count(self, example: dict) -> int:
        """Tokens an example contributes to the loss (only for step_normalized processors)."""
        raise NotImplementedError

    # -- batches ------------------------------------------------------------------------------------
    def make_collator(self, pad_to_multiple_of: Optional[int], train: bool = False):
        raise NotImplementedError

    def batch_source(self, table: Table):
        """A function that completes a batch's examples from the split's records before collation
        (e.g. image bytes kept in the source's Arrow file, read per batch rather than copied into
        the examples); None when the examples are complete."""
        return None

    def on_device(self, batch: dict, train: bool) -> dict:
        """Finish a batch once it is on the training device (e.g. normalize and mix images)."""
        return batch

    # -- state saved in checkpoints ------------------------------------------------------------------
    def checkpoint_state(self) -> Optional[dict]:
        """What a checkpoint must hold to rebuild identical inputs later (e.g. the chat template)."""
        return None

    def restore_checkpoint_state(self, state: dict) -> None:
        pass

    def export_options(self) -> Optional[dict]:
        """Processor settings an export needs to encode inputs as training did."""
        return None

    # -- predictions ----------------------------------------------------------------------------------
    def record_fields(self, table: Table, index: int, example: dict) -> dict:
        """The input fields of a record for its prediction row."""
        return {}

    def prediction_rows(self, table: Table, outputs: list[dict], label_names: list[str],
                        examples: list[dict]) -> Iterator[dict]:
        """One row per test record: its source, input, gold label, prediction, probabilities and,
        where the head gives them, the top-k labels (single-label classification)."""
        row = 0
        for batch in outputs:
            top = (zip(batch["top_k_indices"].tolist(), batch["top_k_probabilities"].tolist())
                   if "top_k_indices" in batch else None)
            for probabilities, predicted in zip(batch["probabilities"].tolist(), batch["prediction"].tolist()):
                index = examples[row].get("row", row)  # skipped records (bad images) leave gaps in the table
                line = {"source": table.where(index), **self.record_fields(table, index, examples[row])}
                line["label"] = table.rows[index].get(self.label_column)
                line["prediction"] = label_names[predicted]
                line["probabilities"] = {name: round(p, 6) for name, p in zip(label_names, probabilities)}
                if top is not None:
                    indices, values = next(top)
                    line["top_k"] = [{"label": label_names[i], "probability": round(p, 6)} for i, p in zip(indices, values)]
                yield line
                row += 1
