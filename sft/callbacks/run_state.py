"""Callbacks that make a run resumable exactly, self-describing, and safe against non-finite losses."""

from __future__ import annotations

import logging
import random
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from sft.errors import UserError
from sft.tasks import ConfigError

log = logging.getLogger("sft")


class RNGState(Callback):
    """Saves the Python, NumPy and torch (CPU and CUDA) random states in every checkpoint and puts
    them back on resume, so dropout after a resume draws what the uninterrupted run would have."""

    # Kept to tensors and plain Python values, so checkpoints still load with torch.load(weights_only=True).
    def state_dict(self) -> dict[str, Any]:
        version, python_state, gauss = random.getstate()
        kind, keys, pos, has_gauss, cached_gauss = np.random.get_state(legacy=True)
        state = {"python": [version, list(python_state), gauss],
                 "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached_gauss],
                 "torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        version, python_state, gauss = state_dict["python"]
        random.setstate((version, tuple(python_state), gauss))
        kind, keys, pos, has_gauss, cached_gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gauss))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


class RunRecord(Callback):
    """Writes the run's record (resolved config, command line, git commit, package versions) into
    every checkpoint under the key `sft_run_record`."""

    def __init__(self, record: dict[str, Any]):
        self.record = record

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint["sft_run_record"] = self.record


class NonFiniteLossError(UserError, RuntimeError):
    """Training produced a NaN or infinite loss (or gradients)."""


class NonFiniteLossGuard(Callback):
    """Checks each optimizer step for a NaN/inf training loss or gradients.

    action="stop": raise NonFiniteLossError naming the global step, epoch and batch; no update is
    applied, and the checkpoints already on disk (last.ckpt, best.ckpt) are kept as they are.
    action="skip": drop that step's gradients (no update), count it, warn, and go on.
    The check runs on gradients after they are synced, so every DDP rank decides the same way.
    """

    ACTIONS = ("stop", "skip")

    def __init__(self, action: str = "stop"):
        if action not in self.ACTIONS:
            raise ConfigError(f"callbacks.nonfinite_guard.action={action!r} is not one of {self.ACTIONS}")
        self.action = action
        self.skipped = 0
        self._batch_idx = 0
        self._losses: Optional[torch.Tensor] = None  # this optimizer step's micro-batch losses

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._batch_idx = batch_idx

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        # Kept on the device: checked once per optimizer step, with the gradients.
        loss = loss.detach().float().reshape(-1)
        self._losses = loss if self._losses is None else torch.cat([self._losses, loss])

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module, optimizer) -> None:
        losses, self._losses = self._losses, None
        checks = [] if losses is None else [losses.sum()]  # NaN or inf anywhere makes the sum non-finite
        # fp16 loss scaling produces inf gradients on purpose (the scaler then skips the step).
        if "16-mixed" not in str(trainer.precision) or "bf16" in str(trainer.precision):
            grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
            if grads:  # the global L2 norm (NaN/inf propagate), in a few fused kernels
                norm = torch.nn.utils.get_total_norm(grads)
                checks.append(norm)
                # SFTModule clips with it instead of reading every gradient a second time.
                pl_module.step_grad_norm = norm
        # One host synchronisation per optimizer step, not one per parameter.
        if not checks or bool(torch.isfinite(torch.stack([c.float().to(checks[0].device) for c in checks])).all()):
            return
        bad_loss = losses is not None and not bool(torch.isfinite(losses).all())
        what = f"train loss {float(losses[~torch.isfinite(losses)][0])}" if bad_loss else "non-finite gradients"
        where = (f"at global step {trainer.global_step} (epoch {trainer.current_epoch}, batch {self._batch_idx} "
                 f"of the epoch)")
        if self.action == "stop":
            raise NonFiniteLossError(
                f"{what} {where}. Stopped without applying this update; the last good checkpoint is kept. "
                "Lower optimizer.lr, check the data of that batch, or set callbacks.nonfinite_guard.action=skip.")
        for p in pl_module.parameters():
            p.grad = None
        self.skipped += 1
        log.warning("Skipped the optimizer update %s: %s (%d skipped so far)", where, what, self.skipped)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.skipped:
            log.warning("%d optimizer updates were skipped for non-finite loss or gradients", self.skipped)

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = state_dict.get("skipped", 0)


class PeriodicCheckpoint(Callback):
    """Writes `last.ckpt` every `every_n_train_steps` optimizer steps (None: never), so a killed run
    loses at most that many steps. Kept apart from the best-checkpoint ModelCheckpoint, whose choice
    of best.ckpt stays tied to validation (and so comes out the same after a resume)."""

    def __init__(self, dirpath: str, every_n_train_steps: Optional[int] = None, filename: str = "last.ckpt"):
        if every_n_train_steps is not None and int(every_n_train_steps) < 1:
            raise ConfigError(f"callbacks.periodic_checkpoint.every_n_train_steps={every_n_train_steps} must be "
                             "a positive number of steps or null")
        self.dirpath = dirpath
        self.every_n_train_steps = every_n_train_steps
        self.filename = filename
        self._last_saved_step = -1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if trainer.received_sigterm and step != self._last_saved_step and not trainer.sanity_checking:
            # Preemption (SLURM time limit, spot instance): Lightning stops after this batch, so save the
            # step reached; `resume=RUN_DIR` continues from it exactly.
            self._last_saved_step = step
            trainer.save_checkpoint(f"{self.dirpath}/{self.filename}")
            log.warning("SIGTERM received: saved %s/%s at global step %d", self.dirpath, self.filename, step)
            return
        if (not self.every_n_train_steps or step == 0 or step % self.every_n_train_steps
                or step == self._last_saved_step or trainer.sanity_checking):
            return
        self._last_saved_step = step
        trainer.save_checkpoint(f"{self.dirpath}/{self.filename}")
