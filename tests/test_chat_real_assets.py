"""The real SmolLM2-135M-Instruct from the catalog: the chat template it ships masks correctly,
and a few full fine-tuning steps lower the loss. Selected with `-m assets`."""

from __future__ import annotations

import json

import pytest

from sft.cli import train
from sft.data.chat import IGNORE
from sft.data.datamodule import load_tokenizer
from tests.conftest import compose_config

pytestmark = pytest.mark.assets

QUESTIONS = [("What is the capital of France?", "Paris."), ("What colour is the sky on a clear day?", "Blue."),
             ("How many legs does a spider have?", "Eight."), ("What is two plus two?", "Four."),
             ("Which planet is known as the red planet?", "Mars."), ("What do bees make?", "Honey.")]


def test_smollm2_template_eos_and_masks():
    from sft.data.chat import ChatProcessor

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2  # agrees with the model's EOS
    processor = ChatProcessor(tokenizer, max_length=256)
    item = processor.render_example({"prompt": "What is the capital of France?", "completion": "Paris."}, "prompt_completion", "x")
    supervised = [t for t, label in zip(item.input_ids, item.labels) if label != IGNORE]
    assert supervised == tokenizer("Paris.<|im_end|>", add_special_tokens=False)["input_ids"]
    assert "You are a helpful AI assistant named SmolLM" in item.text  # the template's default system turn
    assert item.input_ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3


def test_smollm2_few_steps_lower_the_loss(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"prompt": q, "completion": a}) + "\n" for q, a in QUESTIONS + QUESTIONS[:2]))
    losses = []

    from lightning.pytorch.callbacks import Callback

    class Record(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))  # the step's mean over its supervised tokens

    cfg = compose_config("train", [
        "data=chat", "model=causal_lm", f"data.train_file={path}", "data.val_fraction=0.1", "data.test_fraction=0.1",
        "data.batch_size=3", "data.max_length=64", "trainer.accelerator=cpu", "trainer.max_epochs=2",
        "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0", "optimizer.lr=1e-4", "scheduler=constant",
        "callbacks=none", "logger=none", "test=false", "extras.print_config=false",
    ], tmp_path / "run")
    train(cfg, extra_callbacks=[Record()])
    assert len(losses) == 4, losses  # 6 training records, batches of 3, 2 epochs (each sees all 6)
    assert sum(losses[-2:]) < 0.8 * sum(losses[:2]), losses
