"""Callbacks that tests load into train.py subprocesses (by `+callbacks.NAME._target_=tests.probes...`)."""

from __future__ import annotations

import json
import os

from lightning.pytorch.callbacks import Callback


class TrainDataProbe(Callback):
    """Writes, per rank, what the first training epoch fed it: sampler type, batch count and the
    token ids of every row without padding, to `PROBE_DIR/rank{N}.json`."""

    def __init__(self):
        self.batches, self.rows = 0, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 0:
            self.batches += 1
            self.rows += [row[mask.bool()].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            path = os.path.join(os.environ["PROBE_DIR"], f"rank{trainer.global_rank}.json")
            with open(path, "w") as f:
                json.dump({"sampler": type(trainer.train_dataloader.sampler).__name__, "batches": self.batches,
                           "dataloader_len": len(trainer.train_dataloader), "rows": self.rows}, f)


class Boom(Callback):
    """A bug stand-in: fails as it is built, with an error that is not a user error."""

    def __init__(self):
        raise RuntimeError("boom: a bug in a callback")


class SigtermAt(Callback):
    """Sends this process SIGTERM as the batch of global step `step` starts (a preemption mid-epoch)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        import signal

        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


class FailOnRank(Callback):
    """DDP rank `rank` fails at global step `step`: by an exception, or killed (`how=kill`); the time
    of the failure goes to `PROBE_DIR/failed_at`."""

    def __init__(self, rank: int = 1, step: int = 2, how: str = "raise"):
        self.rank, self.step, self.how = rank, step, how

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        import signal
        import time

        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            with open(os.path.join(os.environ["PROBE_DIR"], "failed_at"), "w") as f:
                f.write(str(time.time()))
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError(f"rank {self.rank} failed on purpose at step {self.step}")
