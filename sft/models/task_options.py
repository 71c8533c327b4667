"""Helpers shared by the heads of the extra text tasks."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from sft.tasks import ConfigError


def per_label_tensor(values: Any, label_names: Sequence[str], key: str, default: float = 1.0) -> Optional[torch.Tensor]:
    """A per-label option given as a list in label order or a {label: value} mapping."""
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
