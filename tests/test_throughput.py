"""The throughput callback's FLOP estimate agrees with torch's own FLOP counter, and runs log FLOP/s
and the gradient norm."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from sft.callbacks.throughput import SFTThroughputMonitor
from sft.models.module import SFTModule


def counted_training_flops(module, batch: dict) -> int:
    """FLOPs of one forward + backward, counted by torch (every matmul and convolution)."""
    with FlopCounterMode(display=False) as counter:
        module.head.loss(module(batch), batch).backward()
    module.zero_grad(set_to_none=True)
    return counter.get_total_flops()


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory) -> str:
    """Wide enough (hidden 128) that attention's length-squared term, which the estimate leaves out, is small."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("bert128")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=200, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=512, max_position_embeddings=64)).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("freeze_backbone", [False, True])
def test_text_estimate_matches_counted_flops(encoder_dir, freeze_backbone):
    module = SFTModule(task="text_classification", label_names=["a", "b"], pretrained=encoder_dir,
                       freeze_backbone=freeze_backbone, pooling="mean")
    tokens = 8 * 16
    batch = {"input_ids": torch.randint(5, 200, (8, 16)), "attention_mask": torch.ones(8, 16, dtype=torch.long),
             "labels": torch.randint(0, 2, (8,)), "num_tokens": tokens}
    estimate = SFTThroughputMonitor().batch_flops(module, batch, training=True)
    counted = counted_training_flops(module, batch)
    assert estimate == pytest.approx(counted, rel=0.1)
    # Padding is not useful work: half the tokens, half the estimate.
    assert SFTThroughputMonitor().batch_flops(module, {**batch, "num_tokens": tokens // 2}, True) == estimate // 2
    # Evaluation is the forward pass only.
    with torch.no_grad(), FlopCounterMode(display=False) as forward:
        module(batch)
    assert SFTThroughputMonitor().batch_flops(module, batch, training=False) == \
        pytest.approx(forward.get_total_flops(), rel=0.1)


def test_image_estimate_matches_counted_flops():
    module = SFTModule(task="image_classification", label_names=["a", "b", "c"], pretrained=None, modality="image",
                       architecture="test_efficientnet")
    batch = {"pixel_values": torch.randn(4, 3, 32, 32), "labels": torch.tensor([0, 1, 2, 0])}
    monitor = SFTThroughputMonitor()
    estimate = monitor.batch_flops(module, batch, training=True)
    assert estimate == pytest.approx(counted_training_flops(module, batch), rel=0.15)
    assert monitor.batch_flops(module, {**batch, "pixel_values": torch.randn(8, 3, 32, 32)}, True) == 2 * estimate


def test_run_logs_flops_per_second(tiny_model_dir, sentiment_csv, tmp_path):
    from sft.cli import train
    from tests.conftest import compose_config, tiny_overrides

    cfg = compose_config("train", tiny_overrides(tiny_model_dir, sentiment_csv, [
        "trainer.max_epochs=1", "callbacks.throughput.window_size=2", "logger=csv"]), tmp_path / "run")
    train(cfg)
    logged = (next((tmp_path / "run").rglob("metrics.csv"))).read_text().splitlines()[0].split(",")
    assert "train/device/flops_per_sec" in logged and "train/device/samples_per_sec" in logged
    assert "train/grad_norm" in logged  # the NaN/inf guard's norm, reused for clipping and logged
    rows = [dict(zip(logged, line.split(","))) for line in
            next((tmp_path / "run").rglob("metrics.csv")).read_text().splitlines()[1:]]
    flops = [float(row["train/device/flops_per_sec"]) for row in rows if row.get("train/device/flops_per_sec")]
    assert flops and all(value > 0 for value in flops)
    assert 0.0 <= json.loads((tmp_path / "run" / "metrics.json").read_text())["test/acc"] <= 1.0
