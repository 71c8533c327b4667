"""Multi-label head: one sigmoid per label, binary cross-entropy, a decision threshold."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MultilabelExactMatch, MultilabelF1Score

from sft.errors import ConfigError
from sft.labels import key_map
from sft.models.heads import POOLINGS, Head, flatten_per_label, per_label_names, per_label_tensor, pool


class MultiLabelHead(Head):
    """Pool, dropout, linear to one logit per label; BCE-with-logits (optional `pos_weight`);
    a label is predicted when its probability is above `threshold`."""

    def __init__(self, hidden_size: int, label_names: Sequence[str], pooling: str = "cls", dropout: float = 0.1,
                 threshold: float = 0.5, pos_weight: Any = None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"model.pooling={pooling!r} is not one of {POOLINGS}")
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"model.threshold={threshold} must lie between 0 and 1")
        self.label_names = [str(n) for n in label_names]
        self.pooling = pooling
        self.threshold = float(threshold)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, len(self.label_names))
        self.loss_fn = nn.BCEWithLogitsLoss(pos_weight=per_label_tensor(pos_weight, self.label_names, "model.pos_weight"))

    def forward(self, features: torch.Tensor, batch: dict) -> torch.Tensor:
        return self.classifier(self.dropout(pool(features, batch["attention_mask"], self.pooling)))

    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        return self.loss_fn(logits.float(), batch["labels"].float())

    def make_metrics(self, prefix: str, final: bool = False) -> MetricCollection:
        n, t = len(self.label_names), self.threshold
        metrics = {"micro_f1": MultilabelF1Score(n, threshold=t, average="micro"),
                   "macro_f1": MultilabelF1Score(n, threshold=t, average="macro"),
                   "exact_match": MultilabelExactMatch(n, threshold=t)}
        if final:
            metrics["f1_per_label"] = MultilabelF1Score(n, threshold=t, average=None)
        return MetricCollection(metrics, prefix=prefix)

    def metric_names(self, prefix: str, final: bool = False) -> set[str]:
        names = {f"{prefix}micro_f1", f"{prefix}macro_f1", f"{prefix}exact_match"}
        return names | (per_label_names(prefix, "f1_", self.label_names) if final else set())

    def update_metrics(self, metrics: MetricCollection, logits: torch.Tensor, batch: dict) -> None:
        metrics.update(logits.detach().float().sigmoid(), batch["labels"].long())

    def flatten_metrics(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return flatten_per_label(values, "f1_per_label", self.label_names)

    def label_keys(self) -> dict[str, str]:
        return key_map(self.label_names)

    def predict(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        probabilities = logits.float().sigmoid()
        return {"probabilities": probabilities, "prediction": (probabilities > self.threshold).long()}
