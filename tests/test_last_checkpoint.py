"""last.ckpt is written whenever fitting ends, best.ckpt falls back to it, and a finished run can be extended."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from sft.cli import train
from tests.conftest import compose_config, tiny_overrides

# 256 training records in batches of 16: 16 batches per epoch and validation once per epoch, so a
# 10-step run ends without any validation. A constant rate, so that the first 10 steps of a 20-step
# run are those of a 10-step run (a decaying schedule depends on the run's length).
SHORT = ["scheduler=constant", "callbacks.early_stopping=null", "trainer.max_epochs=5"]


def _cfg(tiny_model_dir, sentiment_csv, run_dir: Path, extra: list[str]):
    return compose_config("train", tiny_overrides(tiny_model_dir, sentiment_csv, SHORT + extra), run_dir)


def _weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["state_dict"]


# Validation at the end of the first epoch (step 16, between the two halves), or none within 20 steps.
@pytest.mark.parametrize("schedule", [["trainer.val_check_interval=1.0"], ["trainer.check_val_every_n_epoch=3"]],
                         ids=["validates_at_16", "never_validates"])
def test_short_run_leaves_last_and_best_and_extends_exactly(tiny_model_dir, sentiment_csv, tmp_path, caplog, schedule):
    straight_dir = tmp_path / "straight"
    straight = train(_cfg(tiny_model_dir, sentiment_csv, straight_dir, schedule + ["trainer.max_steps=20"]))

    run_dir = tmp_path / "short"
    with caplog.at_level("WARNING", logger="sft"):
        train(_cfg(tiny_model_dir, sentiment_csv, run_dir, schedule + ["trainer.max_steps=10"]))
    last, best = run_dir / "checkpoints" / "last.ckpt", run_dir / "checkpoints" / "best.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 10
    assert torch.load(best, weights_only=True)["global_step"] == 10
    assert "No validation ran" in caplog.text and "best.ckpt" in caplog.text

    extended = train(_cfg(tiny_model_dir, sentiment_csv, run_dir, ["trainer.max_steps=20", f"resume={run_dir}"]))
    assert torch.load(last, weights_only=True)["global_step"] == 20
    straight_weights, extended_weights = _weights(straight_dir / "checkpoints" / "last.ckpt"), _weights(last)
    for name, value in straight_weights.items():
        assert torch.equal(extended_weights[name], value), name
    assert set(extended) == set(straight)
    for key, value in straight.items():
        assert extended[key] == value, key
    assert json.loads((run_dir / "metrics.json").read_text()) == pytest.approx(extended)
    best_step = 16 if "val_check_interval=1.0" in schedule[0] else 20
    assert torch.load(best, weights_only=True)["global_step"] == best_step


class Fail(Callback):
    def __init__(self, step: int, error: BaseException):
        self.step, self.error = step, error

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise self.error


def test_failed_run_saves_its_last_state(make_train_cfg):
    cfg = make_train_cfg(["trainer.max_steps=12"] + SHORT)
    with pytest.raises(RuntimeError, match="boom"):
        train(cfg, extra_callbacks=[Fail(7, RuntimeError("boom"))])
    last = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 7


class SendSigterm(Callback):
    """Sends this process SIGTERM once training has done `step` optimizer steps, as a scheduler would."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_saves_last_and_resume_matches_straight_run(tiny_model_dir, sentiment_csv, tmp_path):
    straight_dir, run_dir = tmp_path / "straight", tmp_path / "stopped"
    straight = train(_cfg(tiny_model_dir, sentiment_csv, straight_dir, ["trainer.max_steps=12"]))
    with pytest.raises(SystemExit):  # Lightning finishes the current batch, then stops with SIGTERMException
        train(_cfg(tiny_model_dir, sentiment_csv, run_dir, ["trainer.max_steps=12"]), extra_callbacks=[SendSigterm(7)])
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 7
    resumed = train(_cfg(tiny_model_dir, sentiment_csv, run_dir, [f"resume={run_dir}"]))
    assert resumed == straight
    straight_weights = _weights(straight_dir / "checkpoints" / "last.ckpt")
    assert all(torch.equal(_weights(last)[k], v) for k, v in straight_weights.items())
