"""Audio classification: one label per clip (language, keyword, speaker, ...), Hugging Face speech encoders."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sft.options import option
from sft.tasks import register_task
from sft.tasks.base import Task
from sft.tasks.options import PerLabel


@dataclass
class AudioDataOptions:
    audio_column: str = option("path", "field holding the clip path in CSV/JSONL files (relative to that file)")
    on_bad_audio: Literal["error", "skip"] = option("error", "a missing, empty, truncated or undecodable file: error, or skip and count it")
    max_seconds: float = option(10.0, "clips are cut (train: random window, eval: the start) or zero-padded to this length", above=0.0)
    augment: dict = option(help="training-only augmentation (sft.data.audio.AUGMENT_DEFAULTS)", default_factory=dict)


@dataclass
class AudioHeadOptions:
    pooling: Literal["mean", "mean_with_padding", "attention"] = option(
        "mean", "mean over the clip's frames, mean over the whole max_seconds window (padding included; Whisper "
        "exports as a stock WhisperForAudioClassification), or learned attention pooling")
    dropout: float = option(0.1, "dropout before the classification layer", min=0.0, below=1.0)
    label_smoothing: float = option(0.0, "cross-entropy label smoothing", min=0.0, below=1.0)
    class_weights: PerLabel = option(None, "per-class loss weights: a list in label order or {label: weight}")
    top_k: int = option(5, "top-k accuracy and the top-k labels of prediction rows", min=1)


@register_task
class AudioClassification(Task):
    name = "audio_classification"
    modality = "audio"
    monitor = ("val/loss", "min")
    DataOptions = AudioDataOptions
    HeadOptions = AudioHeadOptions
    needs_tokenizer = False
    cache_examples = False  # clips are decoded per batch, in the DataLoader workers

    def make_processor(self, settings, options, tokenizer):
        from sft.data.audio import AudioClassificationProcessor
        from sft.options import as_dict

        return AudioClassificationProcessor(settings["input_spec"], label_column=settings["label_column"],
                                            label_names=settings["label_names"], **as_dict(options))

    def make_head(self, hidden_size, label_names, options, learned):
        from sft.models.audio_head import AudioClassificationHead

        return AudioClassificationHead(hidden_size, label_names, options.pooling, options.dropout,
                                       options.label_smoothing, options.class_weights, options.top_k)

    def export(self, module, datamodule, out_dir, request=None):
        from sft.export.formats import export_audio

        export_audio(module, datamodule, out_dir, request)
