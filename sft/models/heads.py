"""Task heads on top of a backbone's hidden states."""

from __future__ import annotations

import torch
import torch.nn as nn

POOLINGS = ("cls", "mean")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    raise ValueError(f"model.pooling={pooling!r} is not one of {POOLINGS}")


class ClassificationHead(nn.Module):
    """Pool the sequence, then dropout and one linear layer to the label logits."""

    def __init__(self, hidden_size: int, num_labels: int, pooling: str = "cls", dropout: float = 0.1):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"model.pooling={pooling!r} is not one of {POOLINGS}")
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(pool(hidden, attention_mask, self.pooling)))
