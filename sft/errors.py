"""User errors, and how the command line reports them.

A user error is something the user can fix (a bad setting, a broken record, a missing file, a
checkpoint that is damaged or not trusted). train.py and eval.py print it as one line,
`error: <message>`, on stderr and exit with status 2, with no traceback; anything else is a bug
and keeps its traceback (exit status 1). `HYDRA_FULL_ERROR=1` shows the full trace of a user
error too. In a sweep, the failed job's record in summary.csv holds the same one-line message.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

USER_ERROR_STATUS = 2
SIGTERM_STATUS = 128 + 15  # what a shell reports for a process ended by SIGTERM


class UserError(Exception):
    """Something the user can fix; the message says what is wrong, where, and what to do."""


class ConfigError(UserError, ValueError):
    """A configuration that cannot work; the message says which keys and what to change."""


class DataError(UserError, ValueError):
    """Bad user data: the message names the file, the line or record, the field and what was expected."""


class CheckpointError(UserError):
    """A checkpoint file that is missing, damaged, written by another tool, or not trusted."""


# OSErrors that come from the user's files and machine rather than from a bug.
_USER_OS_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
_USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error and its explicit causes (`raise ... from ...`), e.g. what hydra.utils.instantiate wrapped;
    for OmegaConf's interpolation errors also the error a resolver raised (its implicit context)."""
    from omegaconf.errors import InterpolationResolutionError

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        wrapper = isinstance(error, InterpolationResolutionError) and error.__cause__ is None
        error = error.__context__ if wrapper else error.__cause__


def _one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return "; ".join(lines)


def _unwrap_worker(text: str) -> str:
    """An error re-raised from a DataLoader worker carries the worker's traceback in its message;
    keep the original message, and say that it came from a worker."""
    if not text.startswith("Caught ") or "Original Traceback" not in text:
        return text
    import re

    found = list(re.finditer(r"^(?:[\w.]+\.)?\w+(?:Error|Exception): ", text, flags=re.MULTILINE))
    return (text[found[-1].end():].strip() + " (in a DataLoader worker)") if found else text


def _os_message(error: OSError) -> str:
    what = error.strerror or str(error)
    if error.filename is not None:
        return f"{error.filename}: {what}"
    return what


def _raised_in(error: BaseException, packages: tuple[str, ...]) -> bool:
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_globals.get("__name__", "").startswith(packages)


def user_message(error: BaseException) -> Optional[str]:
    """The one-line message of a user error; None for anything else (a bug)."""
    from hydra.errors import ConfigCompositionException, InstantiationException, OverrideParseException
    from omegaconf.errors import InterpolationKeyError, MissingMandatoryValue

    for cause in _chain(error):
        if isinstance(cause, UserError):
            return _one_line(_unwrap_worker(str(cause)))
    for cause in _chain(error):
        if isinstance(cause, OverrideParseException) and getattr(cause, "override", None):
            return f"cannot parse the override {cause.override!r}: " + _one_line(str(cause))
        if isinstance(cause, (ConfigCompositionException, OverrideParseException)):
            return _one_line(str(cause))
        if isinstance(cause, MissingMandatoryValue):
            key = getattr(cause, "full_key", None)
            return (f"{key}: no value given; set it on the command line ({key}=...)" if key
                    else _one_line(str(cause)))
        if isinstance(cause, InterpolationKeyError):
            return _one_line(str(cause))
        if isinstance(cause, _USER_OS_ERRORS) or (isinstance(cause, OSError) and cause.errno in _USER_ERRNOS):
            return _os_message(cause)
        if type(cause) is OSError and _raised_in(cause, ("transformers.", "huggingface_hub.", "timm.")):
            # How Hugging Face reports a model or tokenizer it cannot find or fetch.
            return _one_line(str(cause))
        if isinstance(cause, InstantiationException):
            text = str(cause)
            if text.startswith("Error locating target") or "unexpected keyword argument" in text:
                return _one_line(text)
    return None


def full_trace_wanted() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR", "") not in ("", "0")


def report(error: BaseException) -> int:
    """Print `error` for the user and return the exit status: 2 for a user error (one line, or its
    traceback under HYDRA_FULL_ERROR=1), 1 with the traceback for anything else."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    if isinstance(error, SIGTERMException):
        sys.stderr.write("error: stopped by SIGTERM; the run saved checkpoints/last.ckpt at the step it reached. "
                         "Continue it with `python train.py resume=RUN_DIR`\n")
        return SIGTERM_STATUS
    message = user_message(error)
    if message is None or full_trace_wanted():
        traceback.print_exception(type(error), error, error.__traceback__)
    if message is None:
        return 1
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    return USER_ERROR_STATUS


@contextmanager
def _hydra_reraises() -> Iterator[None]:
    """Let exceptions pass through Hydra's own reporter (which prints a stripped traceback and
    exits 1), so that `main` reports them as above."""
    import hydra._internal.utils as hydra_utils

    original = hydra_utils.run_and_report
    hydra_utils.run_and_report = lambda func: func()
    try:
        yield
    finally:
        hydra_utils.run_and_report = original


class _Failure:
    error: Optional[BaseException] = None


def task(fn: Callable) -> Callable:
    """Wrap a Hydra task function so that its failure is handed to `main` instead of passing through
    Hydra's job runner (which adds lines of its own to stderr)."""

    def run(cfg):
        try:
            return fn(cfg)
        except (Exception, SystemExit) as error:  # SystemExit: Lightning's SIGTERMException
            if _Failure.error is None:
                _Failure.error = error
            return None

    return run


def main(entry: Callable[[], None]) -> None:
    """Run a Hydra entry point with sft's error reporting; exits with the status `report` gives.
    `entry` is `hydra.main(...)(task(fn))`."""
    try:
        with _hydra_reraises():
            entry()
        if _Failure.error is not None:
            error, _Failure.error = _Failure.error, None
            raise error
    except SystemExit as error:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(error, SIGTERMException):
            sys.exit(report(error))
        raise
    except KeyboardInterrupt:
        raise
    except Exception as error:  # noqa: BLE001 - every failure ends here, as a message or a traceback
        sys.exit(report(error))
