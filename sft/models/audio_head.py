"""The audio classification head: mean or attention pooling over the encoder's frames (the real
part of each clip only), then dropout + linear. Loss and metrics are the image head's: accuracy,
macro-F1, top-k, per-class F1 on test and the confusion matrix drawn into TensorBoard."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from sft.errors import ConfigError
from sft.models.heads import pool
from sft.models.image_head import ImageClassificationHead

# mean: over the clip's real frames; mean_with_padding: over every frame of the max_seconds window, as
# transformers' WhisperForAudioClassification does (so a Whisper head trained with it exports as that class);
# attention: a learned score per real frame.
AUDIO_POOLINGS = ("mean", "mean_with_padding", "attention")


class AttentionPool(nn.Module):
    """A learned score per frame, softmax over the real frames, weighted sum of the frames."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.score = nn.Linear(hidden_size, 1)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.score(hidden).squeeze(-1).float().masked_fill(mask == 0, torch.finfo(torch.float32).min)
        weights = scores.softmax(-1).to(hidden.dtype)
        return (weights.unsqueeze(-1) * hidden).sum(1)


class AudioClassificationHead(ImageClassificationHead):
    def __init__(self, hidden_size: int, label_names: Sequence[str], pooling: str = "mean", dropout: float = 0.1,
                 label_smoothing: float = 0.0, class_weights: Any = None, top_k: int = 5):
        if pooling not in AUDIO_POOLINGS:
            raise ConfigError(f"model.pooling={pooling!r} is not one of {AUDIO_POOLINGS}")
        super().__init__(hidden_size, label_names, dropout, label_smoothing, class_weights, top_k)
        self.pooling = pooling
        self.attention = AttentionPool(hidden_size) if pooling == "attention" else None

    def forward(self, features: tuple[torch.Tensor, torch.Tensor], batch: dict) -> torch.Tensor:
        hidden, mask = features
        if self.attention is not None:
            pooled = self.attention(hidden, mask)
        elif self.pooling == "mean_with_padding":
            pooled = hidden.mean(1)
        else:
            pooled = pool(hidden, mask, "mean")
        return self.classifier(self.dropout(pooled))
