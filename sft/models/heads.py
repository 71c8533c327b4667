"""Task heads: each turns backbone features into outputs, and owns its loss and metrics.

A head implements:
    forward(features, batch) -> outputs (logits or predictions in a task-specific shape)
    loss(outputs, batch) -> scalar tensor
    make_metrics(prefix, final) -> MetricCollection (final=True adds the per-class report of a test)
    update_metrics(metrics, outputs, batch)
    flatten_metrics(values) -> {name: scalar}   (vector metrics become one name per class)
    predict(outputs) -> dict of tensors for prediction files

`build_head(task, hidden_size, label_names, **options)` picks the head for a task; a new task
adds its class here and one line in HEADS.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from sft.tasks import ConfigError

POOLINGS = ("cls", "mean")

log = logging.getLogger(__name__)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    raise ConfigError(f"model.pooling={pooling!r} is not one of {POOLINGS}")


def metric_suffix(label: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", str(label))


def flatten_per_label(values: dict[str, torch.Tensor], vector_suffix: str, label_names: Sequence[str],
                      skip_suffix: Optional[str] = None) -> dict[str, torch.Tensor]:
    """Metric values with each per-label vector (named `<prefix><vector_suffix>`) spread into one
    scalar per label, `<prefix>f1_<label>`; entries ending in `skip_suffix` (not scalars) dropped."""
    flat = {}
    for name, value in values.items():
        if skip_suffix and name.endswith(skip_suffix):
            continue
        if name.endswith(vector_suffix):
            base = name[: -len(vector_suffix)]
            flat.update({f"{base}f1_{metric_suffix(label)}": value[i] for i, label in enumerate(label_names)})
        else:
            flat[name] = value
    return flat


def class_weight_tensor(class_weights, label_names: Sequence[str]) -> Optional[torch.Tensor]:
    """`model.class_weights` as a list aligned with the label map, or a {label: weight} mapping."""
    if class_weights is None:
        return None
    if hasattr(class_weights, "items"):
        unknown = set(map(str, class_weights)) - set(label_names)
        if unknown:
            raise ConfigError(f"model.class_weights names labels {sorted(unknown)} that the data does not have; "
                              f"labels: {list(label_names)}")
        weights = [float(dict(class_weights).get(name, 1.0)) for name in label_names]
    else:
        weights = [float(w) for w in class_weights]
        if len(weights) != len(label_names):
            raise ConfigError(f"model.class_weights has {len(weights)} entries; the data has {len(label_names)} labels "
                              f"{list(label_names)}")
    return torch.tensor(weights)


class SequenceClassificationHead(nn.Module):
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
        self.loss_fn = nn.CrossEntropyLoss(weight=class_weight_tensor(class_weights, self.label_names),
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

    def update_metrics(self, metrics: MetricCollection, logits: torch.Tensor, batch: dict) -> None:
        metrics.update(logits.detach(), batch["labels"])

    def flatten_metrics(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return flatten_per_label(values, "f1_per_class", self.label_names)

    def predict(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        probabilities = logits.float().softmax(-1)
        return {"probabilities": probabilities, "prediction": probabilities.argmax(-1)}


# Heads of the other text tasks live in their own files; imported here, after pool() and
# metric_suffix() exist, because they use them.
from sft.models.multilabel_head import MultiLabelHead  # noqa: E402
from sft.models.regression_head import RegressionHead  # noqa: E402
from sft.models.token_head import TokenClassificationHead  # noqa: E402
from sft.models.causal_lm import CausalLMHead  # noqa: E402

HEADS = {
    "text_classification": SequenceClassificationHead,
    "multilabel_classification": MultiLabelHead,
    "text_regression": RegressionHead,
    "token_classification": TokenClassificationHead,
    "causal_lm": CausalLMHead,
}


def build_head(task: str, hidden_size: int, label_names: Sequence[str], **options) -> nn.Module:
    import inspect

    cls = HEADS[task]
    accepted = set(inspect.signature(cls).parameters)
    # One model config serves every task: options of other tasks' heads are left out here.
    elsewhere = {name for head in HEADS.values() for name in inspect.signature(head).parameters}
    ignored = sorted((set(options) - accepted) & elsewhere)
    if ignored:
        log.info("model.%s: not options of the %s head; ignored", ", model.".join(ignored), task)
        options = {k: v for k, v in options.items() if k not in ignored}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(f"model.{unknown[0]} is not an option of the {task} head; its options: "
                          f"{sorted(accepted - {'hidden_size', 'label_names'})}")
    return cls(hidden_size, label_names, **options)


from sft.models.image_head import ImageClassificationHead  # noqa: E402 - it builds on the helpers above

HEADS["image_classification"] = ImageClassificationHead
