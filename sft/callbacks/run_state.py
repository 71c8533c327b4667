"""Callbacks that make a run resumable exactly, self-describing, and safe against non-finite losses."""

from __future__ import annotations

import datetime
import logging
import os
import random
from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from sft import runs
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
    every checkpoint under the key `sft_run_record`; with `run_dir`, also adds to this launch's entry
    of run_record.json when its first optimizer step ended and how long after the process started
    (the launch's fixed cost: imports, data, model, Lightning's setup)."""

    def __init__(self, record: dict[str, Any], run_dir: Optional[Path] = None):
        self.record = record
        self.run_dir = run_dir
        self._start_step: Optional[int] = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint["sft_run_record"] = self.record

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self._start_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # Runs before the checkpoint callbacks (Lightning calls those last), so no checkpoint write is counted.
        if self._start_step is None or trainer.global_step <= self._start_step:
            return
        self._start_step = None
        if self.run_dir is None or not trainer.is_global_zero:
            return
        seconds = runs.process_seconds()
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
        runs.update_last_launch(self.run_dir, {"first_optimizer_step": {"time": now, "seconds_after_start": round(seconds, 2)}})
        log.info("First optimizer step %.1f s after the process started", seconds)


class NonFiniteLossError(UserError, RuntimeError):
    """Training produced a NaN or infinite loss (or gradients)."""


class NonFiniteLossGuard(Callback):
    """Checks each optimizer step for a NaN/inf training loss or gradients.

    action="stop": raise NonFiniteLossError naming the global step, epoch and batch; no update is
    applied, so the last.ckpt then written (LastCheckpoint) holds the state before that step.
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
                f"{what} {where}. Stopped without applying this update; last.ckpt holds the state before it. "
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


class LastCheckpoint(ModelCheckpoint):
    """`checkpoints/last.ckpt`: the latest state of the run, for resuming and for extending it.

    Lightning's ModelCheckpoint writes it at every validation; this also writes it whenever fitting
    ends without one at the final step: the run finished (`max_steps`, `max_epochs`, early stopping)
    since its last validation, it got SIGTERM or Ctrl-C (Lightning stops after the current batch),
    or it failed with an exception (the state after the last completed optimizer step). So a run
    that ends always leaves its weights, and `resume=RUN_DIR trainer.max_steps=MORE` can extend it.

    When fitting finished but no validation ever ran, the best checkpoint (the ModelCheckpoint with
    a `monitor` writing into the same folder) falls back to this state: `best.ckpt` is made a copy
    of `last.ckpt` (a hard link where the file system allows), and the log says so.
    """

    def __init__(self, dirpath: str, filename: str = "last", monitor: Optional[str] = None, save_top_k: int = 1,
                 enable_version_counter: bool = False, save_on_end: bool = True, best_fallback: bool = True,
                 **kwargs):
        super().__init__(dirpath=dirpath, filename=filename, monitor=monitor, save_top_k=save_top_k,
                         enable_version_counter=enable_version_counter, **kwargs)
        self.save_on_end = save_on_end
        self.best_fallback = best_fallback

    def _last_path(self) -> str:
        return os.path.join(self.dirpath, self.filename + self.FILE_EXTENSION)

    def _saved_at(self, trainer: L.Trainer) -> bool:
        """Whether last.ckpt already holds this global step (written by this callback or by PeriodicCheckpoint)."""
        if self._last_global_step_saved == trainer.global_step:
            return True
        last = os.path.abspath(self._last_path())
        return any(isinstance(cb, PeriodicCheckpoint) and cb._last_saved_step == trainer.global_step
                   and os.path.abspath(os.path.join(cb.dirpath, cb.filename)) == last for cb in trainer.callbacks)

    def _save_final(self, trainer: L.Trainer, why: str) -> None:
        path = self._last_path()
        self._save_checkpoint(trainer, path)
        self.best_model_path = path
        log.info("Saved the state at global step %d (%s) to %s", trainer.global_step, why, path)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        # The last step of a `max_steps` run, usually mid-epoch: saved here, where the loops' state is
        # that of a step in the epoch (a resume continues the epoch), not after Lightning has closed it.
        # A validation that follows at this step saves last.ckpt itself, after it.
        max_steps = trainer.max_steps
        if (not self.save_on_end or max_steps is None or max_steps < 0 or trainer.global_step < max_steps
                or trainer.fast_dev_run or trainer.sanity_checking or self._saved_at(trainer)
                or self._validates_now(trainer)):
            return
        self._save_final(trainer, "trainer.max_steps reached")

    @staticmethod
    def _validates_now(trainer: L.Trainer) -> bool:
        """Whether Lightning runs validation right after this training batch (its own rule)."""
        loop = trainer.fit_loop.epoch_loop
        try:
            return bool(loop._should_check_val_fx(trainer.fit_loop._data_fetcher))
        except Exception:  # noqa: BLE001 - a Lightning without this method: save now, validation saves again
            return False

    def on_train_end(self, trainer: L.Trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        if not self.save_on_end or trainer.fast_dev_run or trainer.global_step == 0:
            return
        if not self._saved_at(trainer):
            self._save_final(trainer, "end of training")
        if self.best_fallback:
            self._best_falls_back(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        from lightning.pytorch.trainer.states import TrainerFn
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if (not self.save_on_end or trainer.state.fn != TrainerFn.FITTING or trainer.fast_dev_run
                or trainer.sanity_checking or trainer.global_step == 0 or self._saved_at(trainer)):
            return
        stopped = isinstance(exception, (SIGTERMException, KeyboardInterrupt))
        if trainer.world_size > 1 and not isinstance(exception, SIGTERMException):
            # Saving synchronises all processes; after a failure in only some of them it would hang.
            log.warning("Not saving last.ckpt after %s: with %d processes only SIGTERM stops all of them together",
                        type(exception).__name__, trainer.world_size)
            return
        try:
            self._save_final(trainer, "stopped by a signal" if stopped else f"run failed: {type(exception).__name__}")
        except Exception as error:  # noqa: BLE001 - the original exception is what the user must see
            log.warning("Could not save last.ckpt after %s: %s", type(exception).__name__, error)

    def _best_falls_back(self, trainer: L.Trainer) -> None:
        """No validation ran (no best.ckpt was chosen): best.ckpt becomes the final state, said in the log."""
        last = self._last_path()
        if not trainer.is_global_zero or not os.path.isfile(last):
            return
        for cb in trainer.checkpoint_callbacks:
            if cb is self or not isinstance(cb, ModelCheckpoint) or not cb.monitor or cb.best_model_path:
                continue
            if cb.dirpath is None or os.path.abspath(cb.dirpath) != os.path.abspath(self.dirpath):
                continue
            best = os.path.join(cb.dirpath, (cb.filename or "best") + cb.FILE_EXTENSION)
            _link_or_copy(last, best)
            cb.best_model_path = best
            log.warning("No validation ran, so %s was never measured: %s is the final state (a copy of %s)",
                        cb.monitor, best, os.path.basename(last))


def _link_or_copy(source: str, target: str) -> None:
    """`target` becomes the same file as `source`, replaced atomically (a hard link, or a copy where
    links are not allowed). last.ckpt is later replaced by renaming, so the link never changes with it."""
    import shutil
    import tempfile

    folder = os.path.dirname(os.path.abspath(target))
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(target)}.", suffix=".tmp")
    os.close(handle)
    os.remove(temporary)
    try:
        os.link(source, temporary)
    except OSError:
        shutil.copyfile(source, temporary)
    os.replace(temporary, target)
