"""The `Task` interface: what a task declares so that every other part of sft can ask it."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from sft.options import check_options

if TYPE_CHECKING:  # only for annotations: the task modules import the heavy parts themselves
    from sft.data.processor import Processor
    from sft.models.heads import Head

log = logging.getLogger(__name__)


@dataclasses.dataclass
class NoOptions:
    """A task or head with no settings of its own."""


class Task:
    """One task: subclass it, set the class attributes, implement `make_processor` and `make_head`.

    Data settings shared by every task (files, splits, batch sizes, ...) are the data module's own;
    `DataOptions` holds only the keys this task adds (e.g. `label_separator` for multi-label), and
    `head_options` the `model.*` keys its head takes (e.g. `pooling`, `threshold`)."""

    name: ClassVar[str] = ""
    modality: ClassVar[str] = "text"  # the backbone kind it needs: text, image or causal_lm
    monitor: ClassVar[tuple[str, str]] = ("val/loss", "min")  # metric that picks best.ckpt, and its better direction
    DataOptions: ClassVar[type] = NoOptions
    HeadOptions: ClassVar[type] = NoOptions
    learned_keys: ClassVar[tuple[str, ...]] = ()  # head inputs learned from the training split, not set by users
    needs_tokenizer: ClassVar[bool] = True  # records are text, read through the backbone's tokenizer
    cache_examples: ClassVar[bool] = True  # encoded examples are worth keeping between runs ($SFT_CACHE/encoded)

    # -- options ---------------------------------------------------------------------------------
    def check_data_options(self, values: dict) -> Any:
        return check_options(self.DataOptions, values, "data", f"data.task={self.name}")

    def check_head_options(self, values: dict) -> Any:
        return check_options(self.HeadOptions, values, "model", f"the {self.name} head")

    def build_head(self, hidden_size: int, label_names: Sequence[str], values: dict) -> "Head":
        """The head from the module's flat head settings: the user's options (checked) and what was
        learned from the training split (`learned_keys`)."""
        learned = {k: v for k, v in values.items() if k in self.learned_keys}
        options = self.check_head_options({k: v for k, v in values.items() if k not in self.learned_keys})
        return self.make_head(hidden_size, label_names, options, learned)

    # -- the pieces --------------------------------------------------------------------------------
    def make_processor(self, settings: dict, options: Any, tokenizer: Any) -> "Processor":
        """The processor that reads, checks and encodes this task's records. `settings` holds the
        data module's shared keys (text_column, label_column, max_length, label_names, input_spec)."""
        raise NotImplementedError

    def make_head(self, hidden_size: int, label_names: Sequence[str], options: Any, learned: dict) -> "Head":
        """The head on top of the backbone; `learned` holds what the processor learned from the
        training split besides the label map (e.g. regression target statistics)."""
        raise NotImplementedError

    def logged_metrics(self, label_names: Sequence[str], options: Any) -> dict[str, set[str]]:
        """The metric names a run logs per stage (train, val, test), as its head declares them."""
        head = self.make_head(8, label_names, options, {})
        return {stage: head.metric_names(f"{stage}/", final=stage == "test") | {f"{stage}/loss"}
                for stage in ("train", "val", "test")}

    # -- after training ------------------------------------------------------------------------------
    def write_predictions(self, trainer, module, datamodule, path: Path, max_new_tokens: int = 128) -> dict[str, float]:
        """eval.py predictions_file: one JSON line per test record; returns extra metrics (if any)."""
        outputs = trainer.predict(module, datamodule=datamodule)
        rows = datamodule.processor.prediction_rows(datamodule.tables()["test"], outputs, list(module.label_names),
                                                    datamodule.encoded("test").examples)
        path.parent.mkdir(parents=True, exist_ok=True)
        count = 0
        with open(path, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
        log.info("Wrote %d predictions to %s", count, path)
        return {}

    def export(self, module, datamodule, out_dir: Path, request=None) -> None:
        """eval.py export_dir: write the model as a folder that loads without the training config
        (and, where a stock class expresses the head, without sft). `request`: a
        sft.export.card.ExportRequest (final metrics for the model card, export_onnx), or None."""
        from sft.errors import ConfigError

        raise ConfigError(f"export_dir: exporting {self.name} models is not supported")

    def __repr__(self) -> str:
        return f"<task {self.name}: {self.modality} backbone, monitor {self.monitor[0]} ({self.monitor[1]})>"


def text_settings(settings: dict) -> dict:
    """The shared data settings a text processor takes."""
    return {key: settings[key] for key in ("text_column", "text_pair_column", "label_column", "max_length",
                                           "label_names")}
