"""Parameter groups and learning-rate schedules.

Optimizers come from config as partials (`_partial_: true`), so any torch optimizer fits; this
module decides which parameters get weight decay and which get the head learning rate.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Optional

import torch
import torch.nn as nn
from torch.optim.lr_scheduler import LambdaLR

from sft.tasks import ConfigError


def parameter_groups(named_parameters: Iterable[tuple[str, nn.Parameter]], head_prefix: str = "head.",
                     head_lr: Optional[float] = None) -> list[dict]:
    """Groups without weight decay on biases and normalization weights (every tensor of rank <= 1),
    and, when `head_lr` is set, the head's parameters at their own learning rate."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        is_head = head_lr is not None and name.startswith(head_prefix)
        decays = param.ndim > 1
        groups.setdefault((is_head, decays), []).append(param)
    result = []
    for (is_head, decays), params in sorted(groups.items()):
        group = {"params": params, "name": ("head" if is_head else "body") + ("" if decays else "_no_decay")}
        if not decays:
            group["weight_decay"] = 0.0
        if is_head:
            group["lr"] = head_lr
        result.append(group)
    if not result:
        raise ConfigError("no trainable parameters: is the whole model frozen?")
    return result


SCHEDULES = ("linear", "cosine", "constant")


def schedule_factor(kind: str, warmup: int, total: int) -> Callable[[int], float]:
    """The learning-rate multiplier at each optimizer step: the formulas of transformers'
    `get_scheduler` ("linear", "cosine", "constant_with_warmup"), kept here because importing that
    function pulls in peft and transformers' trainer utilities (about 0.8 s of every launch)."""
    decay_steps = max(1, total - warmup)

    def factor(step: int) -> float:
        if step < warmup:
            return float(step) / float(max(1, warmup))
        if kind == "constant":
            return 1.0
        if kind == "linear":
            return max(0.0, float(total - step) / float(decay_steps))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(step - warmup) / float(decay_steps))))

    return factor


def warmup_schedule(optimizer: torch.optim.Optimizer, total_steps: int, kind: str = "linear",
                    warmup_steps: Optional[int] = None, warmup_ratio: float = 0.0) -> LambdaLR:
    """Linear warmup, then linear decay to 0, cosine decay to 0, or a constant rate. Warmup is
    `warmup_steps` when given, else `warmup_ratio` of the run's optimizer steps."""
    if kind not in SCHEDULES:
        raise ConfigError(f"scheduler.kind={kind!r} is not one of {', '.join(SCHEDULES)}")
    total_steps = max(1, int(total_steps))
    warmup = int(warmup_steps) if warmup_steps is not None else int(round(warmup_ratio * total_steps))
    return LambdaLR(optimizer, schedule_factor(kind, warmup, total_steps))
