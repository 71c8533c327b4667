"""How long a run will take, said at its start: optimizer steps, training tokens, and (after a few
measured steps) seconds per step and the time left. Meant for runs whose length is not obvious,
such as the chat experiments on a CPU."""

from __future__ import annotations

import datetime
import logging
import time
from typing import Optional

import lightning as L
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger("sft")


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(round(seconds))))


def training_tokens(datamodule) -> Optional[int]:
    """Tokens in one epoch of the training split (input ids, padding excluded), when the data module has them."""
    try:
        examples = datamodule.encoded("train").examples
        return int(sum(len(e["input_ids"]) for e in examples))
    except Exception:  # noqa: BLE001 - data without token ids (images) or not encoded yet
        return None


class DurationEstimate(Callback):
    """Logs the run's size at the start (optimizer steps, training tokens per epoch) and, after
    `measure_after` warm-up steps and `measure_steps` measured ones, the seconds per optimizer step
    and the estimated time left for training (validation not included); the estimate is repeated
    every `every_n_steps` steps (null: once)."""

    def __init__(self, measure_after: int = 2, measure_steps: int = 3, every_n_steps: Optional[int] = None):
        self.measure_after = max(int(measure_after), 0)
        self.measure_steps = max(int(measure_steps), 1)
        self.every_n_steps = every_n_steps
        self._start: Optional[tuple[int, float]] = None
        self._reported_at = -1
        self.seconds_per_step: Optional[float] = None
        self.time_left: Optional[float] = None  # seconds of training left, once measured (shown by ProgressBar)

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        total = trainer.estimated_stepping_batches
        tokens = training_tokens(trainer.datamodule) if trainer.datamodule is not None else None
        steps = "an unknown number of" if total in (None, float("inf")) else f"{int(total):,}"
        log.info("Duration: %s optimizer steps from step %d%s; seconds per step measured after step %d",
                 steps, trainer.global_step, f", {tokens:,} training tokens per epoch" if tokens else "",
                 trainer.global_step + self.measure_after + self.measure_steps)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        total = trainer.estimated_stepping_batches
        if self.seconds_per_step is not None and total not in (None, float("inf")):
            self.time_left = max(int(total) - step, 0) * self.seconds_per_step
        if step == self._reported_at:
            return  # gradient accumulation: the same optimizer step
        if self._start is None:
            if step >= self._first_step(trainer) + self.measure_after:
                self._start = (step, time.perf_counter())
            return
        measured = step - self._start[0]
        due = measured == self.measure_steps or (
            self.every_n_steps and measured > self.measure_steps and step % int(self.every_n_steps) == 0)
        if not due:
            return
        self.seconds_per_step = (time.perf_counter() - self._start[1]) / measured
        self._reported_at = step
        self._report(trainer, step)

    def _first_step(self, trainer: L.Trainer) -> int:
        if not hasattr(self, "_first"):
            self._first = trainer.global_step - 1  # the step before this launch's first batch
        return self._first

    @rank_zero_only
    def _report(self, trainer: L.Trainer, step: int) -> None:
        total = trainer.estimated_stepping_batches
        if total in (None, float("inf")):
            log.info("Duration: %.2f s per optimizer step (step %d)", self.seconds_per_step, step)
            return
        left = self.time_left = max(int(total) - step, 0) * self.seconds_per_step
        log.info("Duration: %.2f s per optimizer step; about %s of training left for %d more steps (step %d of %d; "
                 "validation adds to it)", self.seconds_per_step, _clock(left), max(int(total) - step, 0), step,
                 int(total))


class ProgressBar(TQDMProgressBar):
    """Lightning's terminal progress bar, with the training time left (`left=H:MM:SS`) once a
    DurationEstimate callback has measured the seconds per step."""

    def get_metrics(self, trainer: L.Trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        for callback in trainer.callbacks:
            if isinstance(callback, DurationEstimate) and callback.time_left is not None:
                metrics["left"] = _clock(callback.time_left)
        return metrics
