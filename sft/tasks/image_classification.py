"""Image classification: one label per image, timm or Hugging Face backbones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from sft.options import option
from sft.tasks import register_task
from sft.tasks.base import Task
from sft.tasks.options import PerLabel


@dataclass
class ImageDataOptions:
    image_column: str = option("path", "field holding the image path in CSV/JSONL files (relative to that file)")
    on_bad_image: Literal["error", "skip"] = option("error", "a missing or unreadable image: error, or skip and count it")
    image_size: Optional[int] = option(None, "input side in pixels (null: the backbone's)", min=1)
    mean: Optional[list[float]] = option(None, "normalization mean per channel (null: the backbone's)")
    std: Optional[list[float]] = option(None, "normalization std per channel (null: the backbone's)")
    interpolation: Optional[Literal["bilinear", "bicubic", "nearest"]] = option(None, "resize interpolation")
    crop_pct: Optional[float] = option(None, "eval: resize to image_size / crop_pct, then center crop", above=0.0, max=1.0)
    train_transforms: dict = option(help="the torchvision v2 training pipeline", default_factory=dict)
    mixup_alpha: float = option(0.0, "MixUp Beta(alpha, alpha) on training batches (0: off)", min=0.0)
    cutmix_alpha: float = option(0.0, "CutMix Beta(alpha, alpha) on training batches (0: off)", min=0.0)


@dataclass
class ImageHeadOptions:
    dropout: float = option(0.2, "dropout before the classification layer", min=0.0, below=1.0)
    label_smoothing: float = option(0.1, "cross-entropy label smoothing (also on MixUp/CutMix targets)", min=0.0, below=1.0)
    class_weights: PerLabel = option(None, "per-class loss weights: a list in label order or {label: weight}")
    top_k: int = option(5, "top-k accuracy and the top-k labels of prediction rows", min=1)


@register_task
class ImageClassification(Task):
    name = "image_classification"
    modality = "image"
    monitor = ("val/loss", "min")
    DataOptions = ImageDataOptions
    HeadOptions = ImageHeadOptions
    needs_tokenizer = False
    cache_examples = False  # images are decoded per batch anyway

    def make_processor(self, settings, options, tokenizer):
        from sft.data.images import ImageClassificationProcessor
        from sft.options import as_dict

        return ImageClassificationProcessor(label_column=settings["label_column"], label_names=settings["label_names"],
                                            input_spec=settings["input_spec"], **as_dict(options))

    def make_head(self, hidden_size, label_names, options, learned):
        from sft.models.image_head import ImageClassificationHead

        return ImageClassificationHead(hidden_size, label_names, options.dropout, options.label_smoothing,
                                       options.class_weights, options.top_k)

    def export(self, module, datamodule, out_dir, request=None):
        from sft.export.formats import export_image

        export_image(module, datamodule, out_dir, request)
