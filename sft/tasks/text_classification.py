"""Text classification: single texts or sentence pairs, one label each."""

from __future__ import annotations

from pathlib import Path

from sft.tasks import register_task
from sft.tasks.base import Task, text_settings
from sft.tasks.options import TextClassificationHeadOptions


def export_text_model(module, datamodule, out_dir: Path, request=None) -> None:
    """A stock transformers folder where the head folds into one (sft.export.stock), else sft's layout."""
    from sft.export.formats import export_text

    export_text(module, datamodule, out_dir, request)


@register_task
class TextClassification(Task):
    name = "text_classification"
    modality = "text"
    monitor = ("val/acc", "max")
    HeadOptions = TextClassificationHeadOptions

    def make_processor(self, settings, options, tokenizer):
        from sft.data.text_classification import TextClassificationProcessor

        return TextClassificationProcessor(tokenizer, **text_settings(settings))

    def make_head(self, hidden_size, label_names, options, learned):
        from sft.models.classification_head import SequenceClassificationHead

        return SequenceClassificationHead(hidden_size, label_names, options.pooling, options.dropout,
                                          options.label_smoothing, options.class_weights)

    def export(self, module, datamodule, out_dir, request=None):
        export_text_model(module, datamodule, out_dir, request)
