"""Text regression: one or several numeric targets per record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sft.options import option
from sft.tasks import register_task
from sft.tasks.base import Task, text_settings
from sft.tasks.options import PooledHeadOptions
from sft.tasks.text_classification import export_text_model


@dataclass
class RegressionDataOptions:
    standardize_targets: bool = option(True, "train on (target - mean) / std of the training split")


@dataclass
class RegressionHeadOptions(PooledHeadOptions):
    regression_loss: Literal["mse", "huber"] = option("mse", "mse or huber")
    huber_delta: float = option(1.0, "where the Huber loss turns from squared to linear (standardized units)", above=0.0)


@register_task
class TextRegression(Task):
    name = "text_regression"
    modality = "text"
    monitor = ("val/mse", "min")
    DataOptions = RegressionDataOptions
    HeadOptions = RegressionHeadOptions
    learned_keys = ("target_mean", "target_std")

    def make_processor(self, settings, options, tokenizer):
        from sft.data.regression import RegressionProcessor

        return RegressionProcessor(tokenizer, **text_settings(settings), standardize_targets=options.standardize_targets)

    def make_head(self, hidden_size, label_names, options, learned):
        from sft.models.regression_head import RegressionHead

        return RegressionHead(hidden_size, label_names, options.pooling, options.dropout, options.regression_loss,
                              options.huber_delta, learned.get("target_mean"), learned.get("target_std"))

    def export(self, module, datamodule, out_dir, request=None):
        export_text_model(module, datamodule, out_dir, request)
