"""The image classification head: dropout + linear on pooled backbone features.

Loss: cross-entropy with label smoothing; on MixUp / CutMix batches (which carry `soft_labels`)
the soft-target cross-entropy, smoothed the same way. Metrics: accuracy, top-5 accuracy when
there are more than 5 classes, macro-F1, and on validation/test a confusion matrix, drawn into
TensorBoard at the end of each validation.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassF1Score

from sft.labels import key_map
from sft.models.heads import Head, flatten_per_label, per_label_names, per_label_tensor

log = logging.getLogger(__name__)


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.0,
                              weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of -sum_k t_k log p_k, targets smoothed toward uniform by `smoothing`."""
    if smoothing:
        targets = targets * (1.0 - smoothing) + smoothing / targets.shape[-1]
    log_probs = F.log_softmax(logits.float(), dim=-1)
    if weight is not None:
        log_probs = log_probs * weight
    return -(targets * log_probs).sum(-1).mean()


class ImageClassificationHead(Head):
    def __init__(self, hidden_size: int, label_names: Sequence[str], dropout: float = 0.0,
                 label_smoothing: float = 0.0, class_weights: Any = None, top_k: int = 5):
        super().__init__()
        self.label_names = [str(n) for n in label_names]
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, len(self.label_names))
        self.label_smoothing = label_smoothing
        self.top_k = top_k
        weights = per_label_tensor(class_weights, self.label_names, "model.class_weights")
        self.register_buffer("class_weights", weights if weights is not None else torch.ones(0), persistent=False)

    def forward(self, features: torch.Tensor, batch: dict) -> torch.Tensor:
        return self.classifier(self.dropout(features))

    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        weight = self.class_weights if self.class_weights.numel() else None
        if "soft_labels" in batch:
            return soft_target_cross_entropy(logits, batch["soft_labels"].float(), self.label_smoothing, weight)
        return F.cross_entropy(logits.float(), batch["labels"], weight=weight, label_smoothing=self.label_smoothing)

    def make_metrics(self, prefix: str, final: bool = False) -> MetricCollection:
        n = len(self.label_names)
        metrics = {"acc": MulticlassAccuracy(n, average="micro"), "f1": MulticlassF1Score(n, average="macro")}
        if n > self.top_k:
            metrics[f"acc_top{self.top_k}"] = MulticlassAccuracy(n, top_k=self.top_k, average="micro")
        if prefix in ("val/", "test/"):
            metrics["confusion"] = MulticlassConfusionMatrix(n)
        if final:
            metrics["f1_per_class"] = MulticlassF1Score(n, average=None)
        # No compute groups: torchmetrics merges metrics whose states are equal after the first batch, and a
        # batch the model gets all right makes top-1 and top-k states equal: F1 then read the top-k state.
        return MetricCollection(metrics, prefix=prefix, compute_groups=False)

    def metric_names(self, prefix: str, final: bool = False) -> set[str]:
        names = {f"{prefix}acc", f"{prefix}f1"}
        if len(self.label_names) > self.top_k:
            names.add(f"{prefix}acc_top{self.top_k}")
        return names | (per_label_names(prefix, "f1_", self.label_names) if final else set())

    def update_metrics(self, metrics: MetricCollection, logits: torch.Tensor, batch: dict) -> None:
        metrics.update(logits.detach(), batch["labels"])  # on mixed batches: the label of the unmixed image

    def flatten_metrics(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # The confusion matrix is an image, not a scalar: see log_artifacts.
        return flatten_per_label(values, "f1_per_class", self.label_names, skip_suffix="confusion")

    def log_artifacts(self, values: dict[str, torch.Tensor], module) -> None:
        """Draw the confusion matrix into TensorBoard (tag `val/confusion_matrix`, `test/...`)."""
        from lightning.pytorch.loggers import TensorBoardLogger

        for name, value in values.items():
            if not name.endswith("confusion") or module.trainer.sanity_checking:
                continue
            for logger in module.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_figure(f"{name}_matrix", confusion_figure(value.cpu(), self.label_names),
                                                 global_step=module.global_step)

    def label_keys(self) -> dict[str, str]:
        return key_map(self.label_names)

    def predict(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        probabilities = logits.float().softmax(-1)
        k = min(self.top_k, probabilities.shape[-1])
        top = probabilities.topk(k, dim=-1)
        return {"probabilities": probabilities, "prediction": probabilities.argmax(-1),
                "top_k_probabilities": top.values, "top_k_indices": top.indices}


def confusion_figure(matrix: torch.Tensor, label_names: Sequence[str]):
    """Row-normalized confusion matrix (rows: true label, columns: predicted) as a matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = matrix.float()
    shares = counts / counts.sum(1, keepdim=True).clamp(min=1)
    n = len(label_names)
    size = max(4.0, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(shares.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels=label_names, rotation=90, fontsize=8)
    ax.set_yticks(range(n), labels=label_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if shares[i, j] > 0.5 else "black")
    fig.tight_layout()
    return fig
