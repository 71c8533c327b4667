"""Resume, atomic checkpoints, run records, the NaN guard and config checks, in process on the tiny BERT."""

from __future__ import annotations

import datetime
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from sft.callbacks.run_state import NonFiniteLossError
from sft.cli import train
from sft.runs import process_seconds
from sft.tasks import ConfigError
from tests.conftest import compose_config, tiny_overrides

# 256 training records in batches of 16: 16 batches per epoch, so 18 steps cross an epoch boundary
# and a stop at step 9 falls mid-epoch, with dropout on.
RESUMABLE = ["trainer.max_steps=18", "trainer.max_epochs=5", "trainer.val_check_interval=4", "callbacks.early_stopping=null",
             "callbacks.periodic_checkpoint.every_n_train_steps=3"]


class Crash(Callback):
    """Fails the run when it reaches `step`, as a crash would (after the checkpoint at that step)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


class Final(Callback):
    """Records the step training starts from and the parameters it ends with."""

    def __init__(self):
        self.start_step = None
        self.params = None
        self.batches: list[torch.Tensor] = []

    def on_train_start(self, trainer, pl_module):
        self.start_step = trainer.global_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append(batch["input_ids"].clone())

    def on_train_end(self, trainer, pl_module):
        self.params = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def crash_and_resume(model_dir: str, data, overrides: list[str], tmp_path: Path, step: int):
    """An uninterrupted run, and one that crashes at `step` and is resumed: (straight metrics, its
    probe, resumed metrics, its probe, the interrupted run's directory, its checkpoint at the crash)."""
    straight_probe = Final()
    straight = train(compose_config("train", tiny_overrides(model_dir, data, overrides), tmp_path / "straight"),
                     extra_callbacks=[straight_probe])
    run_dir = tmp_path / "interrupted"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(compose_config("train", tiny_overrides(model_dir, data, overrides), run_dir), extra_callbacks=[Crash(step)])
    assert not (run_dir / "metrics.json").exists()
    at_crash = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    resumed_probe = Final()
    resumed = train(compose_config("train", tiny_overrides(model_dir, data, overrides + [f"resume={run_dir}"]), run_dir),
                    extra_callbacks=[resumed_probe])
    return straight, straight_probe, resumed, resumed_probe, run_dir, at_crash


def test_resume_is_exact(tiny_model_dir, sentiment_csv, tmp_path):
    straight, straight_probe, resumed, resumed_probe, run_dir, at_crash = crash_and_resume(
        tiny_model_dir, sentiment_csv, RESUMABLE, tmp_path, step=9)
    assert at_crash["global_step"] == 9
    assert resumed_probe.start_step == 9
    # The resumed run saw exactly the batches the uninterrupted one saw after step 9.
    assert len(resumed_probe.batches) == 9
    for mine, theirs in zip(resumed_probe.batches, straight_probe.batches[9:]):
        assert torch.equal(mine, theirs)
    assert resumed.keys() == straight.keys()
    for key, value in straight.items():
        assert resumed[key] == value, key
    assert resumed_probe.params.keys() == straight_probe.params.keys()
    for name, value in straight_probe.params.items():
        assert torch.equal(resumed_probe.params[name], value), name
    # Same directory, both launches recorded.
    assert json.loads((run_dir / "metrics.json").read_text()) == pytest.approx(resumed)
    launches = json.loads((run_dir / "run_record.json").read_text())["launches"]
    assert len(launches) == 2 and launches[1]["resumed_from"].endswith("last.ckpt")
    # Each launch has its own first step: the resumed one's is its step 10, after its own start.
    first, again = (datetime.datetime.fromisoformat(launch["first_optimizer_step"]["time"]) for launch in launches)
    assert again > first >= datetime.datetime.fromisoformat(launches[0]["started"])
    assert again >= datetime.datetime.fromisoformat(launches[1]["started"])


def test_streamed_resume_is_exact_with_workers(tiny_model_dir, sentiment_csv, tmp_path):
    """data.streaming with two DataLoader workers: 320 records, 20 batches a pass; a crash at step 25
    (in the second pass) and a resume see the batches and end with the weights of an uninterrupted run."""
    from tests.conftest import write_sentiment_csv

    held = write_sentiment_csv(tmp_path / "held.csv", rows=32, seed=3)
    streamed = ["trainer.max_steps=30", "trainer.max_epochs=5", "trainer.val_check_interval=10", "callbacks.early_stopping=null",
                "callbacks.periodic_checkpoint.every_n_train_steps=5", "data.streaming=true", "data.num_workers=2",
                f"data.val_file={held}", f"data.test_file={held}"]
    straight, straight_probe, resumed, resumed_probe, _, at_crash = crash_and_resume(
        tiny_model_dir, sentiment_csv, streamed, tmp_path, step=25)
    saved = at_crash["SFTDataModule"]["train_order"]
    assert saved["epoch"] == 1 and saved["batches_done"] == 5 and sum(saved["worker_batches"]) == 5
    assert resumed_probe.start_step == 25 and len(resumed_probe.batches) == 5
    for mine, theirs in zip(resumed_probe.batches, straight_probe.batches[25:]):
        assert torch.equal(mine, theirs)
    for name, value in straight_probe.params.items():
        assert torch.equal(resumed_probe.params[name], value), name
    assert resumed == pytest.approx(straight)


def test_run_records_in_dir_and_checkpoint(make_train_cfg):
    cfg = make_train_cfg(["trainer.max_steps=2", "trainer.val_check_interval=2"])
    train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    launch = json.loads((run_dir / "run_record.json").read_text())["launches"][0]
    assert launch["packages"]["torch"] == torch.__version__.split("+")[0] or launch["packages"]["torch"].startswith("2.")
    assert "lightning" in launch["packages"] and "transformers" in launch["packages"]
    assert launch["command"] and launch["git"] is None or len(launch["git"]["commit"]) == 40
    # When the first optimizer step ended, and how long after this process started (pytest's, here).
    first_step = launch["first_optimizer_step"]
    ended = datetime.datetime.fromisoformat(first_step["time"])
    assert datetime.datetime.fromisoformat(launch["started"]) <= ended <= datetime.datetime.now(datetime.timezone.utc)
    assert 0 < first_step["seconds_after_start"] <= process_seconds()
    for name in ("last.ckpt", "best.ckpt"):
        record = torch.load(run_dir / "checkpoints" / name, weights_only=True)["sft_run_record"]
        assert record["config"]["optimizer"]["lr"] == cfg.optimizer.lr
        assert record["packages"] == launch["packages"] and record["command"] == launch["command"]
    assert "lr: 0.003" in (run_dir / "config.yaml").read_text()


def test_resume_refuses_a_changed_group_and_missing_checkpoint(make_train_cfg, tmp_path):
    with pytest.raises(ConfigError, match="resume=.*no config.yaml"):
        train(make_train_cfg([f"resume={tmp_path / 'nothing'}"]))


# -- atomic checkpoints ---------------------------------------------------------------------------
SAVER = """
import sys, torch
from sft.checkpointing import atomic_torch_save
i = 0
while True:
    i += 1
    atomic_torch_save({"version": i, "weights": torch.full((1_000_000,), float(i))}, sys.argv[1])
    print(i, flush=True)
"""


def test_kill_during_save_never_leaves_a_broken_checkpoint(tmp_path):
    target = tmp_path / "last.ckpt"
    for delay in (0.0, 0.011, 0.023):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(target)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "1"  # one complete save, then kill during the following ones
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        checkpoint = torch.load(target, weights_only=True)
        assert torch.equal(checkpoint["weights"], torch.full((1_000_000,), float(checkpoint["version"])))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.ckpt"]
    # A kill mid-save can leave only a hidden temporary file, never a damaged target.
    assert all(name.startswith(".last.ckpt.") and name.endswith(".tmp") for name in leftovers)


# -- guard rails ---------------------------------------------------------------------------------
def _poison_batch(monkeypatch, batches: set[int]):
    """Make the training loss NaN on the given batch indices."""
    from sft.models.module import SFTModule

    original = SFTModule.training_step

    def training_step(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        return loss * float("nan") if batch_idx in batches else loss

    monkeypatch.setattr(SFTModule, "training_step", training_step)


def test_nan_loss_stops_naming_step_and_batch(make_train_cfg, monkeypatch):
    cfg = make_train_cfg(["trainer.max_steps=8", "callbacks.periodic_checkpoint.every_n_train_steps=2",
                          "callbacks.early_stopping=null"])
    _poison_batch(monkeypatch, {5})
    with pytest.raises(NonFiniteLossError, match=r"train loss nan at global step 5 \(epoch 0, batch 5 of the epoch\)"):
        train(cfg)
    last = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 5  # saved when the guard stopped the run; the NaN update was not applied
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


def test_nan_loss_skipped_when_configured(make_train_cfg, monkeypatch):
    cfg = make_train_cfg(["trainer.max_steps=6", "callbacks.nonfinite_guard.action=skip", "callbacks.early_stopping=null"])
    _poison_batch(monkeypatch, {1, 3})
    guard_seen = {}

    class Count(Callback):
        def on_train_end(self, trainer, pl_module):
            guard_seen["skipped"] = next(c for c in trainer.callbacks if type(c).__name__ == "NonFiniteLossGuard").skipped
            guard_seen["finite"] = all(torch.isfinite(p).all() for p in pl_module.parameters())

    metrics = train(cfg, extra_callbacks=[Count()])
    assert guard_seen == {"skipped": 2, "finite": True}
    assert torch.isfinite(torch.tensor(metrics["test/loss"]))


@pytest.mark.parametrize("overrides,message", [
    (["scheduler.warmup_steps=50", "trainer.max_steps=20"], r"scheduler.warmup_steps=50 is not shorter than training \(trainer.max_steps=20\)"),
    (["scheduler.warmup_ratio=1.5"], r"scheduler.warmup_ratio=1.5"),
    (["monitor=val/accuracy"], r"monitor=val/accuracy is never logged.*val/acc"),
    (["callbacks.early_stopping.monitor=val/f2"], r"callbacks.early_stopping.monitor=val/f2 is never logged"),
    (["optimized_metric=test/auroc"], r"optimized_metric=test/auroc is not a metric"),
    (["trainer.devices=4096"], r"trainer.devices=4096 asks for more devices"),
    (["trainer.accelerator=gpu"] if not torch.cuda.is_available() else ["trainer.devices=4096", "trainer.accelerator=gpu"],
     r"trainer\.(accelerator=gpu but no CUDA|devices=4096)"),
])
def test_bad_config_rejected_before_weights_load(make_train_cfg, monkeypatch, overrides, message):

    def fail(*args, **kwargs):
        raise AssertionError("weights were loaded")

    from sft.models.backbones import BACKBONES

    for modality in list(BACKBONES):  # every backbone loader the module may pick
        monkeypatch.setitem(BACKBONES, modality, fail)
    with pytest.raises(ConfigError, match=message):
        train(make_train_cfg(overrides))
