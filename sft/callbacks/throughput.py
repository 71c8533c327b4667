"""Throughput in TensorBoard for every run: samples/s and non-pad tokens/s (Lightning's ThroughputMonitor)."""

from __future__ import annotations

from lightning.pytorch.callbacks import ThroughputMonitor


def batch_size(batch: dict) -> int:
    return len(batch["input_ids"] if "input_ids" in batch else batch["pixel_values"])


def num_tokens(batch: dict) -> int:
    # Counted by the text collators on the host, so reading it never waits for the device.
    # An image counts as one item, so items/s equals samples/s there.
    return int(batch["num_tokens"]) if "num_tokens" in batch else batch_size(batch)


class SFTThroughputMonitor(ThroughputMonitor):
    """Logs train/device/samples_per_sec, train/device/items_per_sec (non-pad tokens) over a moving
    window (and the same for validation and test) and, when the module sets `flops_per_batch`,
    train/device/mfu."""

    def __init__(self, window_size: int = 50):
        super().__init__(batch_size_fn=batch_size, length_fn=num_tokens, window_size=window_size, separator="/")
