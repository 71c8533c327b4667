"""The duration estimate a chat run prints at its start."""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback

from sft.callbacks.duration import ProgressBar
from sft.cli import train
from tests.chat_fixtures import chat_jsonl, chat_overrides, tiny_llama_dir  # noqa: F401 - fixtures
from tests.conftest import compose_config


def test_chat_run_says_steps_tokens_and_seconds_per_step(tiny_llama_dir, chat_jsonl, tmp_path, caplog):
    cfg = compose_config("train", chat_overrides(tiny_llama_dir, chat_jsonl, [
        "callbacks=chat", "callbacks.generate.eval_examples=2", "trainer.max_steps=7", "trainer.max_epochs=20",
        "callbacks.early_stopping=null", "logger=none"]), tmp_path / "run")
    shown = []

    class BarWatcher(Callback):  # what the progress bar shows after each optimizer step
        def on_train_batch_end(self, trainer, pl_module, *args):
            bar = trainer.progress_bar_callback
            assert isinstance(bar, ProgressBar)
            shown.append(bar.get_metrics(trainer, pl_module).get("left"))

    with caplog.at_level("INFO", logger="sft"):
        train(cfg, extra_callbacks=[BarWatcher()])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Duration:")]
    assert lines and "7 optimizer steps from step 0" in lines[0] and "training tokens per epoch" in lines[0], lines
    assert any("s per optimizer step; about" in line and "2 more steps (step 5 of 7" in line for line in lines), lines
    # the bar shows the time left once steps were measured (after step 5), counting down to 0:00:00
    assert shown[:4] == [None] * 4 and shown[-1] == "0:00:00", shown
    assert all(isinstance(left, str) and left.count(":") == 2 for left in shown[5:]), shown
