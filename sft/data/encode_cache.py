"""Tokenized splits kept on disk between runs (`data.cache_encoded`), under $SFT_CACHE/encoded/.

A split is reused only when everything that shaped it is unchanged: the data files (path, size,
modification time), the tokenizer (its vocabulary and rules, special tokens, chat template), the
data settings other than batching, the label map, the processor's checkpointed state and the
source code of sft/data itself. Anything else makes a new entry; entries not used for a while
are removed when the folder outgrows SFT_ENCODED_CACHE_GB, and the folder can be deleted at any
time. An entry is a folder of Arrow files (sft.data.examples) and a pickled report, written by
this process's user into their own cache folder and loaded only from there.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: Arrow files written by Dataset.map (sft.data.examples)
# Settings that change how batches are drawn, not what a split's encoded examples are.
LOADER_ONLY = {"batch_size", "eval_batch_size", "num_workers", "pad_to_multiple_of", "group_by_length", "cache_encoded",
               "allow_unknown_tokens", "num_proc"}


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts = {
        "class": type(tokenizer).__name__,
        "rules": backend.to_str() if backend is not None else sorted(tokenizer.get_vocab().items()),
        "special": {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
        "chat_template": getattr(tokenizer, "chat_template", None),
        "padding_side": tokenizer.padding_side,
        "truncation_side": tokenizer.truncation_side,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sft/data's source: a change to any processor invalidates what it encoded before."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def entry_path(root: Path, parts: dict[str, Any]) -> Path:
    parts = {**parts, "format_version": FORMAT_VERSION, "code": code_fingerprint()}
    key = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    return root / f"{parts.get('split', 'split')}-{key[:32]}"


def evict_least_recent(entries: list[tuple[float, int, Path]], keep: Path, limit_variable: str,
                       remove: Callable[[Path], None], what: str) -> None:
    """Remove the least recently used of `entries` (last use time, bytes, path), never `keep`,
    until they total at most `limit_variable` GB (default 20)."""
    total, limit = sum(size for _, size, _ in entries), float(os.environ.get(limit_variable, "20")) * 2**30
    for _, size, entry in sorted(entries, key=lambda e: e[0]):
        if total <= limit:
            break
        if entry != keep:
            remove(entry)
            total -= size
            log.info("[data] removed the least recently used %s %s (%s)", what, entry, limit_variable)
