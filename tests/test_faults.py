"""Faults a run survives, each shown: preemption by SIGTERM mid-epoch, a full disk during a checkpoint
write, a DDP rank that dies, a DataLoader worker that fails on one file.

| fault                              | what sft does                                              | test |
| SIGTERM mid-epoch                  | saves last.ckpt at the step reached, exits 143; resume= is exact | test_sigterm_* |
| ENOSPC while writing a checkpoint  | one-line error naming the file; previous last.ckpt intact; resume= works | test_disk_full_* |
| a DDP rank raises or is SIGKILLed  | the whole job exits non-zero within 60 s, the rank's error shown | test_ddp_rank_failure_* |
| a worker fails on one image        | the error names the image file                              | test_worker_failure_* |
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from sft.cli import train
from sft.errors import CheckpointError, user_message
from tests.conftest import compose_config, tiny_overrides
from tests.probes import SigtermAt
from tests.test_resume import RESUMABLE, Final

ROOT = Path(__file__).resolve().parents[1]


# -- preemption -----------------------------------------------------------------------------------------
def test_sigterm_mid_epoch_saves_and_resume_matches_uninterrupted(tiny_model_dir, sentiment_csv, tmp_path):
    overrides = tiny_overrides(tiny_model_dir, sentiment_csv, RESUMABLE + ["logger=none"])
    straight_probe = Final()
    straight = train(compose_config("train", overrides, tmp_path / "straight"), extra_callbacks=[straight_probe])

    run_dir = tmp_path / "preempted"
    with pytest.raises(SIGTERMException):  # step 7 is mid-epoch and between periodic checkpoints (every 3)
        train(compose_config("train", overrides, run_dir), extra_callbacks=[SigtermAt(step=7)])
    assert not (run_dir / "metrics.json").exists()
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8

    resumed_probe = Final()
    resumed = train(compose_config("train", overrides + [f"resume={run_dir}"], run_dir), extra_callbacks=[resumed_probe])
    assert resumed_probe.start_step == 8
    assert resumed == straight
    for name, value in straight_probe.params.items():
        assert torch.equal(resumed_probe.params[name], value), name


def test_sigterm_exit_status_and_message(tiny_model_dir, sentiment_csv, tmp_path):
    overrides = tiny_overrides(tiny_model_dir, sentiment_csv, RESUMABLE + [
        "logger=none", f"paths.log_dir={tmp_path}", "+callbacks.term._target_=tests.probes.SigtermAt",
        "+callbacks.term.step=4"])
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides], cwd=tmp_path, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 128 + 15, result.stderr[-3000:]
    assert "error: stopped by SIGTERM" in result.stderr and "resume=" in result.stderr
    assert "Traceback" not in result.stderr
    last = next((tmp_path / "train" / "runs").iterdir()) / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 5


# -- a full disk --------------------------------------------------------------------------------------------
class DiskFullFrom(Callback):
    """From global step `step` on, every checkpoint write fails with ENOSPC after writing a few bytes."""

    def __init__(self, monkeypatch, step: int):
        self.monkeypatch, self.step = monkeypatch, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            import sft.checkpointing

            def full(obj, f, *args, **kwargs):
                f.write(b"PK\x03\x04 partial")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            self.monkeypatch.setattr(sft.checkpointing.torch, "save", full)


def test_disk_full_keeps_previous_last_checkpoint(tiny_model_dir, sentiment_csv, tmp_path, monkeypatch):
    overrides = tiny_overrides(tiny_model_dir, sentiment_csv, RESUMABLE + ["logger=none"])
    run_dir = tmp_path / "run"
    with pytest.raises(CheckpointError) as info:
        train(compose_config("train", overrides, run_dir), extra_callbacks=[DiskFullFrom(monkeypatch, step=4)])
    monkeypatch.undo()
    message = user_message(info.value)
    assert "No space left on device while writing the checkpoint" in message and "is kept" in message
    checkpoints = run_dir / "checkpoints"
    assert str(checkpoints) in message
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 4  # the save before the disk filled (step 4: validation)
    assert not [p for p in checkpoints.iterdir() if p.name.endswith(".tmp")]
    metrics = train(compose_config("train", overrides + [f"resume={run_dir}"], run_dir))
    assert "test/acc" in metrics
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 18


# -- a DDP rank fails ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["raise", "kill"])
def test_ddp_rank_failure_ends_the_job(tiny_model_dir, sentiment_csv, tmp_path, how):
    overrides = tiny_overrides(tiny_model_dir, sentiment_csv, [
        "trainer=ddp_sim", "trainer.max_steps=50", "trainer.max_epochs=5", "callbacks.early_stopping=null", "logger=none",
        f"paths.log_dir={tmp_path}", "+callbacks.fail._target_=tests.probes.FailOnRank", "+callbacks.fail.rank=1",
        "+callbacks.fail.step=2", f"+callbacks.fail.how={how}"])
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *overrides], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PROBE_DIR": str(tmp_path)})
    try:
        output, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    ended = time.time()
    failed_at = float((tmp_path / "failed_at").read_text())
    assert proc.returncode != 0, output[-3000:]
    assert ended - failed_at < 60, f"the job took {ended - failed_at:.0f} s to end after rank 1 failed"
    if how == "raise":
        assert "rank 1 failed on purpose at step 2" in output


# -- a DataLoader worker fails on one file ---------------------------------------------------------------------
def test_worker_failure_names_the_file(tmp_path):
    from sft.data.sources import DataError
    from tests.test_images import image_datamodule, write_listing

    listing = write_listing(tmp_path / "data", per_class=4, kind="csv")
    dm = image_datamodule(listing, num_workers=1, batch_size=2)
    dm.setup("fit")  # every image checked and readable here
    for image in (tmp_path / "data" / "images").iterdir():  # then the files go bad (a disk, a sync, a job)
        image.write_bytes(b"no longer an image")
    with pytest.raises(DataError) as info:
        next(iter(dm.train_dataloader()))
    message = user_message(info.value)
    assert "DataLoader worker" in message and "Traceback" not in message
    assert str(tmp_path / "data" / "images") in message and ".jpg: its pixels could not be decoded" in message
