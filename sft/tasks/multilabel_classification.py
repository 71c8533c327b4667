"""Multi-label classification: a set of labels per record, one sigmoid per label."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from sft.options import option
from sft.tasks import register_task
from sft.tasks.base import Task, text_settings
from sft.tasks.options import PerLabel, PooledHeadOptions
from sft.tasks.text_classification import export_text_model


@dataclass
class MultiLabelDataOptions:
    label_separator: Optional[str] = option("|", "splits a string of labels; null: the whole string is one label")
    allow_empty_labels: bool = option(False, "accept records with no label at all")


@dataclass
class MultiLabelHeadOptions(PooledHeadOptions):
    threshold: float = option(0.5, "predict a label when its probability is above this", above=0.0, below=1.0)
    pos_weight: PerLabel = option(None, "BCE weight of positives: a list in label order or {label: weight}")


@register_task
class MultiLabelClassification(Task):
    name = "multilabel_classification"
    modality = "text"
    monitor = ("val/micro_f1", "max")
    DataOptions = MultiLabelDataOptions
    HeadOptions = MultiLabelHeadOptions

    def make_processor(self, settings, options, tokenizer):
        from sft.data.multilabel import MultiLabelProcessor

        return MultiLabelProcessor(tokenizer, **text_settings(settings), label_separator=options.label_separator,
                                   allow_empty_labels=options.allow_empty_labels)

    def make_head(self, hidden_size, label_names, options, learned):
        from sft.models.multilabel_head import MultiLabelHead

        return MultiLabelHead(hidden_size, label_names, options.pooling, options.dropout, options.threshold,
                              options.pos_weight)

    def export(self, module, datamodule, out_dir, request=None):
        export_text_model(module, datamodule, out_dir, request)
