"""Text classification head: pool the sequence, dropout, one linear layer; cross-entropy."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from sft.errors import ConfigError
from sft.labels import key_map
from sft.models.heads import POOLINGS, Head, flatten_per_label, per_label_names, per_label_tensor, pool


class SequenceClassificationHead(Head):
    """Pool the sequence, dropout, one linear layer to the label logits; cross-entropy loss."""

    def __init__(self, hidden_size: int, label_names: Sequence[str], pooling: str = "cls", dropout: float = 0.1,
                 label_smoothing: float = 0.0, class_weights: Any = None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"model.pooling={pooling!r} is not one of {POOLINGS}")
        self.label_names = [str(n) for n in label_names]
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, len(self.label_names))
        self.loss_fn = nn.CrossEntropyLoss(weight=per_label_tensor(class_weights, self.label_names, "model.class_weights"),
                                           label_smoothing=label_smoothing)

    def forward(self, features: torch.Tensor, batch: dict) -> torch.Tensor:
        return self.classifier(self.dropout(pool(features, batch["attention_mask"], self.pooling)))

    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        return self.loss_fn(logits.float(), batch["labels"])

    def make_metrics(self, prefix: str, final: bool = False) -> MetricCollection:
        n = len(self.label_names)
        metrics = {"acc": MulticlassAccuracy(n, average="micro"), "f1": MulticlassF1Score(n, average="macro")}
        if final:
            metrics["f1_per_class"] = MulticlassF1Score(n, average=None)
        return MetricCollection(metrics, prefix=prefix)

    def metric_names(self, prefix: str, final: bool = False) -> set[str]:
        return {f"{prefix}acc", f"{prefix}f1"} | (per_label_names(prefix, "f1_", self.label_names) if final else set())

    def update_metrics(self, metrics: MetricCollection, logits: torch.Tensor, batch: dict) -> None:
        metrics.update(logits.detach(), batch["labels"])

    def flatten_metrics(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return flatten_per_label(values, "f1_per_class", self.label_names)

    def label_keys(self) -> dict[str, str]:
        return key_map(self.label_names)

    def predict(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        probabilities = logits.float().softmax(-1)
        return {"probabilities": probabilities, "prediction": probabilities.argmax(-1)}
