"""Option sets that several tasks share (head settings of the pooled text heads)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Union

from sft.options import option

PerLabel = Optional[Union[list, dict]]  # a list in label order, or {label: value}


@dataclass
class PooledHeadOptions:
    pooling: Literal["cls", "mean"] = option("cls", "cls (first token: exports as the stock sequence classifier) or mean (mean over non-pad tokens)")
    dropout: float = option(0.1, "dropout before the output layer", min=0.0, below=1.0)


@dataclass
class TextClassificationHeadOptions(PooledHeadOptions):
    label_smoothing: float = option(0.0, "cross-entropy label smoothing", min=0.0, below=1.0)
    class_weights: PerLabel = option(None, "per-class loss weights: a list in label order or {label: weight}")
