"""Checkpoint files that are never half-written.

Lightning's TorchCheckpointIO truncates the target and writes into it, so a kill during a save
leaves a broken `last.ckpt`. Here a checkpoint goes to a temporary file in the same folder, is
flushed to disk, and then renamed over the target: a rename is atomic, so the target holds either
the previous checkpoint or the new one, never a part.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            from sft.errors import CheckpointError

            kept = f"the previous {path.name} is kept" if path.exists() else f"no {path.name} was written"
            raise CheckpointError(f"{path}: {os.strerror(error.errno)} while writing the checkpoint; {kept}. Free "
                                  "space and continue the run with `python train.py resume=RUN_DIR`") from error
        raise
    # Make the rename itself durable.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO for local paths with write-to-temporary-then-rename saves."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if "://" in str(path):  # remote storage: keep Lightning's own writer
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_torch_save(checkpoint, path)
