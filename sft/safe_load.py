"""Loading checkpoints without running code from them, and saying what a bad file is.

`torch.load(weights_only=False)` unpickles arbitrary objects, so a checkpoint from someone else can
run code on load. sft's own checkpoints hold only tensors and plain Python values and load with
`weights_only=True`; a file that needs more is refused, naming it and what it asks to import,
unless the user sets `allow_unsafe_checkpoint=true`. A file that is not a checkpoint at all, is
cut short, or was written by another tool is named with what it is.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch

from sft.errors import CheckpointError

log = logging.getLogger("sft")

UNSAFE_HINT = ("set allow_unsafe_checkpoint=true only if you trust whoever wrote the file: loading it can run "
               "arbitrary code")


def describe_file(path: Path) -> Optional[str]:
    """What a file that torch cannot load as a checkpoint looks like; None if it looks like one."""
    size = path.stat().st_size
    if size == 0:
        return "an empty file (cut short while it was written?)"
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):
            return f"a checkpoint cut short ({size} bytes; the end of its zip archive is missing)"
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if not any(name.endswith("/data.pkl") or name == "data.pkl" for name in names):
            return f"a zip archive, not a PyTorch checkpoint (it holds {', '.join(names[:5])}{' ...' if len(names) > 5 else ''})"
        return None
    if head.startswith(b"\x80") and len(head) > 1 and head[1] in range(2, 6):
        return None  # torch's legacy (pre-1.6) format: a pickle stream; torch.load decides
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size:
        return "a safetensors file (weights only, not a training checkpoint); give a .ckpt written by train.py"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file (Keras/TensorFlow weights?), not a PyTorch checkpoint"
    try:
        head.decode("utf-8")
        return "a text file, not a checkpoint"
    except UnicodeDecodeError:
        return "not a PyTorch checkpoint (unrecognized binary content)"


def _unsupported_global(error: BaseException, path: Optional[Path] = None) -> str:
    try:  # every global the file would import, not only the first one torch stopped at
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path) if path is not None else []
    except Exception:  # older torch, or a file it cannot scan
        names = []
    if names:
        return "the objects " + ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
    if match:
        return f"the object {match.group(1)}"
    match = re.search(r"Unsupported operand (\d+)", str(error))
    return f"pickle operand {match.group(1)}" if match else "objects outside torch's allow-list"


def load_checkpoint(path: str | Path, what: str = "ckpt_path", allow_unsafe: bool = False,
                    map_location: Any = "cpu") -> tuple[dict, bool]:
    """The checkpoint at `path` as a dict, loaded with weights_only=True, and whether unsafe loading
    was needed (only with `allow_unsafe`). Raises CheckpointError naming the file and what it is."""
    path = Path(path)
    where = f"{what}={path}"
    if not path.exists():
        raise CheckpointError(f"{where}: no checkpoint at {path.absolute()}")
    if path.is_dir():
        raise CheckpointError(f"{where}: is a folder; give a checkpoint file such as RUN_DIR/checkpoints/best.ckpt")
    kind = describe_file(path)
    if kind is not None:
        raise CheckpointError(f"{where}: {kind}")
    unsafe = False
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" not in str(error).lower() and "weights_only" not in str(error).lower():
            raise CheckpointError(f"{where}: damaged checkpoint ({_first_line(error)})") from None
        if not allow_unsafe:
            raise CheckpointError(f"{where}: refused: loading it needs {_unsupported_global(error, path)}, which a "
                                  f"safe load (weights_only=True) does not run; {UNSAFE_HINT}") from None
        log.warning("Loading %s with weights_only=False (allow_unsafe_checkpoint=true): it needs %s", path,
                    _unsupported_global(error, path))
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
        unsafe = True
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        if isinstance(error, (FileNotFoundError, PermissionError)):
            raise
        raise CheckpointError(f"{where}: damaged or cut-short checkpoint ({_first_line(error)})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{where}: written by another tool: it holds a {type(checkpoint).__name__}, "
                              "not a Lightning checkpoint")
    if "state_dict" not in checkpoint or "pytorch-lightning_version" not in checkpoint:
        keys = ", ".join(map(str, list(checkpoint)[:6]))
        raise CheckpointError(f"{where}: written by another tool (a torch file with keys {keys}), not a "
                              "Lightning checkpoint written by sft's train.py")
    return checkpoint, unsafe


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _step(path: Path) -> Optional[int]:
    try:
        return int(load_checkpoint(path)[0].get("global_step", -1))
    except CheckpointError:
        return None


def newest_intact(folder: Path, exclude: Path) -> Optional[tuple[Path, int]]:
    """The intact checkpoint of a run folder with the highest global step (safe loads only)."""
    found = []
    for path in sorted(folder.glob("*.ckpt")):
        if path.resolve() == exclude.resolve():
            continue
        step = _step(path)
        if step is not None:
            found.append((step, path.stat().st_mtime, path))
    if not found:
        return None
    step, _, path = max(found)
    return path, step


def check_resume_checkpoint(ckpt_path: str, resume_dir: Optional[str], allow_unsafe: bool) -> bool:
    """Check the checkpoint a training run starts from; returns the weights_only to load it with.
    With `resume=RUN_DIR`, a damaged last.ckpt names the newest intact checkpoint of that run."""
    path = Path(ckpt_path)
    try:
        _, unsafe = load_checkpoint(path, "resume" if resume_dir else "ckpt_path", allow_unsafe)
    except CheckpointError as error:
        if not resume_dir or not path.exists():
            raise
        intact = newest_intact(path.parent, path)
        if intact is None:
            raise CheckpointError(f"{error}; the run holds no other intact checkpoint in {path.parent}") from None
        other, step = intact
        raise CheckpointError(f"{error}; the newest intact checkpoint of this run is {other} (global step {step}): "
                              f"continue from it with `python train.py resume={resume_dir} ckpt_path={other}`") from None
    return not unsafe
