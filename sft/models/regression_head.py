"""Regression head: one output per target column, MSE or Huber loss, targets optionally
standardized with statistics learned from the training split."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
from torchmetrics import MetricCollection
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError, PearsonCorrCoef, SpearmanCorrCoef

from sft.errors import ConfigError
from sft.labels import key_map, metric_keys
from sft.models.heads import POOLINGS, Head, per_label_names, pool

LOSSES = ("mse", "huber")
METRICS = ("mse", "rmse", "mae", "pearson", "spearman")


class RegressionHead(Head):
    """Pool, dropout, linear to one value per target. With `target_mean`/`target_std` the layer
    predicts standardized targets; `predict` and the metrics work in the original units."""

    def __init__(self, hidden_size: int, label_names: Sequence[str], pooling: str = "cls", dropout: float = 0.1,
                 regression_loss: str = "mse", huber_delta: float = 1.0,
                 target_mean: Optional[Sequence[float]] = None, target_std: Optional[Sequence[float]] = None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"model.pooling={pooling!r} is not one of {POOLINGS}")
        if regression_loss not in LOSSES:
            raise ConfigError(f"model.regression_loss={regression_loss!r} is not one of {LOSSES}")
        self.label_names = [str(n) for n in label_names]
        n = len(self.label_names)
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.regressor = nn.Linear(hidden_size, n)
        self.loss_fn = nn.MSELoss() if regression_loss == "mse" else nn.HuberLoss(delta=huber_delta)
        for name, values, default in (("target_mean", target_mean, 0.0), ("target_std", target_std, 1.0)):
            values = [default] * n if values is None else [float(v) for v in values]
            if len(values) != n:
                raise ConfigError(f"{name} has {len(values)} entries for {n} targets {self.label_names}")
            self.register_buffer(name, torch.tensor(values))

    def forward(self, features: torch.Tensor, batch: dict) -> torch.Tensor:
        """Standardized predictions, shape (batch, targets)."""
        return self.regressor(self.dropout(pool(features, batch["attention_mask"], self.pooling)))

    def loss(self, outputs: torch.Tensor, batch: dict) -> torch.Tensor:
        standardized = (batch["labels"].float() - self.target_mean) / self.target_std
        return self.loss_fn(outputs.float(), standardized)

    def values(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float() * self.target_std + self.target_mean

    def make_metrics(self, prefix: str, final: bool = False) -> MetricCollection:
        n = len(self.label_names)
        metrics = {"mse": MeanSquaredError(num_outputs=n), "rmse": MeanSquaredError(squared=False, num_outputs=n),
                   "mae": MeanAbsoluteError(num_outputs=n), "pearson": PearsonCorrCoef(num_outputs=n),
                   "spearman": SpearmanCorrCoef(num_outputs=n)}
        assert tuple(metrics) == METRICS
        return MetricCollection(metrics, prefix=prefix)

    def metric_names(self, prefix: str, final: bool = False) -> set[str]:
        names = set()
        for name in METRICS:
            names.add(f"{prefix}{name}")
            if len(self.label_names) > 1:
                names |= per_label_names(prefix, f"{name}_", self.label_names)
        return names

    def update_metrics(self, metrics: MetricCollection, outputs: torch.Tensor, batch: dict) -> None:
        predicted, target = self.values(outputs.detach()), batch["labels"].float()
        if len(self.label_names) == 1:
            predicted, target = predicted[:, 0], target[:, 0]
        metrics.update(predicted, target)

    def flatten_metrics(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each metric averaged over targets; with several targets also one name per target."""
        flat = {}
        for name, value in values.items():
            flat[name] = value.float().mean()
            if value.numel() > 1:
                flat.update({f"{name}_{key}": value[i] for i, key in enumerate(metric_keys(self.label_names))})
        return flat

    def label_keys(self) -> dict[str, str]:
        return key_map(self.label_names) if len(self.label_names) > 1 else {}

    def predict(self, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"prediction": self.values(outputs)}
