"""Throughput in TensorBoard for every run: samples/s, non-pad tokens/s, FLOP/s and MFU
(Lightning's ThroughputMonitor, fed a FLOP count for each batch).

FLOPs per batch are estimated without timing anything or waiting for the device:
- text (encoders and causal LMs): per non-pad token, 2 FLOPs per weight in the forward pass;
  in training, 2 more for the input gradients and 2 more for trainable weights' gradients
  (the "6N" rule when everything trains, 4N for frozen weights under trainable ones such as a
  LoRA base; a wholly frozen backbone is forward only). Embedding lookups are not matmuls and
  are not counted, nor is attention's own (length-squared) term, so the figure is a slight
  underestimate; padding is not counted, so padding shows up as lower MFU.
- images: the forward FLOPs of one image, counted once with torch's FlopCounterMode, times
  the batch size, times the same training factor.
MFU is logged where Lightning knows the chip's peak (`get_available_flops`); on CPU it is not.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from lightning.pytorch.callbacks import ThroughputMonitor


# Batches of fixed-shape inputs (images, audio clips): FLOPs are counted per item, by shape.
ITEM_INPUTS = ("pixel_values", "input_features", "input_values")


def batch_size(batch: dict) -> int:
    if "input_ids" in batch:
        return len(batch["input_ids"])
    return len(next(batch[key] for key in ITEM_INPUTS if key in batch))


def num_tokens(batch: dict) -> int:
    # Counted by the text collators on the host, so reading it never waits for the device.
    # An image counts as one item, so items/s equals samples/s there.
    return int(batch["num_tokens"]) if "num_tokens" in batch else batch_size(batch)


def matmul_weights(module: nn.Module) -> tuple[int, int]:
    """(all, trainable) parameter counts, leaving out embedding tables (lookups, not matmuls)."""
    embeddings = {id(p) for m in module.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    weights = [p for p in module.parameters() if id(p) not in embeddings]
    return sum(p.numel() for p in weights), sum(p.numel() for p in weights if p.requires_grad)


def training_flops_per_weight(backbone: tuple[int, int], head: tuple[int, int]) -> float:
    """FLOPs per token (or image) and forward weight, summed over forward and backward."""
    (total, trainable), (head_total, head_trainable) = backbone, head
    backward = (2 * total + 2 * trainable) if trainable else 0  # nothing to send gradients to below the head
    backward += 2 * head_total + 2 * head_trainable
    return 2 * (total + head_total) + backward


def image_forward_flops(module: nn.Module, pixel_values: torch.Tensor) -> int:
    """Forward FLOPs of the model on one image of this batch's shape (eval mode, so BatchNorm
    statistics are untouched; no gradients)."""
    return item_forward_flops(module, {"pixel_values": pixel_values})


def item_forward_flops(module: nn.Module, batch: dict) -> int:
    """Forward FLOPs of the model on the first item of a batch of fixed-shape inputs."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module({k: v[:1] for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "labels"})
    finally:
        module.train(was_training)
    return counter.get_total_flops()


class SFTThroughputMonitor(ThroughputMonitor):
    """Logs train/device/samples_per_sec, train/device/items_per_sec (non-pad tokens),
    train/device/flops_per_sec and, on GPUs Lightning knows, train/device/mfu, over a moving
    window (and the same for validation and test)."""

    def __init__(self, window_size: int = 50):
        super().__init__(batch_size_fn=batch_size, length_fn=num_tokens, window_size=window_size, separator="/")
        self._training_factor: Optional[float] = None  # training FLOPs / forward FLOPs
        self._forward_per_token = 0
        self._image_flops: dict[tuple, int] = {}

    def batch_flops(self, pl_module, batch: dict, training: bool) -> int:
        if self._training_factor is None:
            backbone, head = matmul_weights(pl_module.backbone), matmul_weights(pl_module.head)
            self._forward_per_token = 2 * (backbone[0] + head[0])
            self._training_factor = training_flops_per_weight(backbone, head) / self._forward_per_token
        key = next((k for k in ITEM_INPUTS if k in batch), None)
        if key is not None:
            shape = (key, *batch[key].shape[1:])
            if shape not in self._image_flops:
                self._image_flops[shape] = item_forward_flops(pl_module, batch)
            forward = self._image_flops[shape] * batch_size(batch)
        else:
            forward = self._forward_per_token * num_tokens(batch)
        return int(forward * self._training_factor) if training else forward

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._training_factor = None  # counted again each epoch: a freeze schedule may have changed what trains

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, *args) -> None:
        pl_module.flops_per_batch = self.batch_flops(pl_module, batch, training=True)
        super().on_train_batch_end(trainer, pl_module, outputs, batch, *args)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, *args) -> None:
        pl_module.flops_per_batch = self.batch_flops(pl_module, batch, training=False)
        super().on_validation_batch_end(trainer, pl_module, outputs, batch, *args)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, *args) -> None:
        pl_module.flops_per_batch = self.batch_flops(pl_module, batch, training=False)
        super().on_test_batch_end(trainer, pl_module, outputs, batch, *args)
