"""Token classification (NER): a tag per word, entity-level metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sft.options import option
from sft.tasks import register_task
from sft.tasks.base import Task, text_settings
from sft.tasks.options import PerLabel
from sft.tasks.text_classification import export_text_model


@dataclass
class TokenDataOptions:
    tag_column: int = option(-1, "CoNLL files: column holding the tag (0 is the word; -1 the last column)")
    tag_scheme: Literal["auto", "BIO", "IOB2", "BIOES"] = option("auto", "tag scheme; auto: BIOES if any E-/S- tag occurs")
    label_all_subwords: bool = option(False, "train on every subword of a word (false: only its first)")
    stride: int = option(32, "subwords of context that neighbouring windows of one long sentence share", min=0)


@dataclass
class TokenHeadOptions:
    dropout: float = option(0.1, "dropout before the tag layer", min=0.0, below=1.0)
    label_smoothing: float = option(0.0, "cross-entropy label smoothing", min=0.0, below=1.0)
    class_weights: PerLabel = option(None, "per-tag loss weights: a list in label order or {tag: weight}")


@register_task
class TokenClassification(Task):
    name = "token_classification"
    modality = "text"
    monitor = ("val/entity_f1", "max")
    DataOptions = TokenDataOptions
    HeadOptions = TokenHeadOptions

    def make_processor(self, settings, options, tokenizer):
        from sft.data.token_classification import TokenClassificationProcessor

        return TokenClassificationProcessor(tokenizer, **text_settings(settings), tag_column=options.tag_column,
                                            tag_scheme=options.tag_scheme, label_all_subwords=options.label_all_subwords,
                                            stride=options.stride)

    def make_head(self, hidden_size, label_names, options, learned):
        from sft.models.token_head import TokenClassificationHead

        return TokenClassificationHead(hidden_size, label_names, options.dropout, options.label_smoothing,
                                       options.class_weights)

    def export(self, module, datamodule, out_dir, request=None):
        export_text_model(module, datamodule, out_dir, request)
