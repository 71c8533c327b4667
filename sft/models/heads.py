"""The head interface, and the parts heads share (pooling, per-label options, metric names).

A head turns backbone features into outputs and owns its loss and metrics, so the Lightning
module's steps are the same for every task. Each task's head lives in its own module and
subclasses `Head`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
from torchmetrics import MetricCollection

from sft.errors import ConfigError
from sft.labels import metric_key, metric_keys

POOLINGS = ("cls", "mean")


class Head(nn.Module):
    """What the Lightning module calls on a head."""

    drives_backbone = False  # True: the head calls the backbone itself, in features(backbone, batch)
    predict_keeps: tuple[str, ...] = ()  # batch entries that predict_step passes on to prediction rows
    peft_task_type: Optional[str] = None  # peft's task type when LoRA adapters are added

    def features(self, backbone: nn.Module, batch: dict) -> Any:
        raise NotImplementedError

    def loss(self, outputs: Any, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def loss_weight(self, outputs: Any, batch: dict) -> int:
        """How many items the batch's loss is a mean over (records; tokens for a causal LM), so
        an epoch's val/loss and test/loss are means over items, not over batches."""
        return len(batch["labels"])

    def make_metrics(self, prefix: str, final: bool = False) -> MetricCollection:
        """The metrics of one stage (final=True: the test's per-label report too)."""
        raise NotImplementedError

    def metric_names(self, prefix: str, final: bool = False) -> set[str]:
        """The names flatten_metrics gives, declared without computing anything."""
        raise NotImplementedError

    def update_metrics(self, metrics: MetricCollection, outputs: Any, batch: dict) -> None:
        raise NotImplementedError

    def flatten_metrics(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Scalars to log from the computed metrics (a vector metric becomes one name per label)."""
        return values

    def label_keys(self) -> dict[str, str]:
        """Each name that metric keys carry (labels, entity types) -> its part of the key, for
        data_report.json; empty for heads without per-label metrics."""
        return {}

    def log_artifacts(self, values: dict[str, torch.Tensor], module) -> None:
        """Log what is not a scalar (e.g. a confusion matrix image)."""

    def predict(self, outputs: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    raise ConfigError(f"model.pooling={pooling!r} is not one of {POOLINGS}")


def metric_suffix(label: str) -> str:
    """A label's part of a metric key: its name, with only `/`, whitespace and control characters
    replaced (sft.labels). Use metric_keys for a whole label map: it keeps colliding names apart."""
    return metric_key(label)


def per_label_names(prefix: str, base: str, label_names: Sequence[str]) -> set[str]:
    return {f"{prefix}{base}{key}" for key in metric_keys(label_names)}


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
            flat.update({f"{base}f1_{key}": value[i] for i, key in enumerate(metric_keys(label_names))})
        else:
            flat[name] = value
    return flat


def per_label_tensor(values: Any, label_names: Sequence[str], key: str, default: float = 1.0) -> Optional[torch.Tensor]:
    """A per-label option (class weights, pos_weight) given as a list in label order or a
    {label: value} mapping; None when not set."""
    if values is None:
        return None
    if hasattr(values, "items"):
        unknown = set(map(str, values)) - set(label_names)
        if unknown:
            raise ConfigError(f"{key} names labels {sorted(unknown)} that the data does not have; labels: {list(label_names)}")
        given = {str(k): float(v) for k, v in dict(values).items()}
        return torch.tensor([given.get(name, default) for name in label_names])
    values = [float(v) for v in values]
    if len(values) != len(label_names):
        raise ConfigError(f"{key} has {len(values)} entries; the data has {len(label_names)} labels {list(label_names)}")
    return torch.tensor(values)
