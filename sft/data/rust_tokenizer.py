"""Tokenizing through the Rust tokenizer behind a transformers fast tokenizer, where that gives the
ids the transformers call would: the call converts every encoding into Python dicts (about a
third of its cost on short texts), which the processors do not need."""

from __future__ import annotations

from typing import Any, Optional

# The methods a tokenizer class overrides when its call does more than the Rust tokenizer does
# (CodeLlama's infilling, LayoutLM's boxes, Luke's entities, ...).
_CALL_PATH = ("__call__", "_call_one", "encode_plus", "_encode_plus", "batch_encode_plus", "_batch_encode_plus")


def direct_backend(tokenizer) -> Optional[Any]:
    """The Rust tokenizer, when it is set as the transformers call sets it for an untruncated,
    unpadded batch (no truncation, no padding, special tokens written in the text kept whole or
    split alike) and the tokenizer's class adds nothing of its own to the call; else None."""
    from transformers import PreTrainedTokenizerFast

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not isinstance(tokenizer, PreTrainedTokenizerFast):
        return None
    if any(getattr(type(tokenizer), name, None) is not getattr(PreTrainedTokenizerFast, name, None) for name in _CALL_PATH):
        return None
    if backend.truncation is not None or backend.padding is not None:
        return None  # a call with truncation=True or padding left it so; the call puts it back
    if backend.encode_special_tokens != bool(getattr(tokenizer, "split_special_tokens", False)):
        return None
    return backend


def untruncated_ids(tokenizer, texts: list[str], pairs: Optional[list[str]] = None) -> dict[str, list[list[int]]]:
    """input_ids (and token_type_ids where the tokenizer returns them) of each text or text pair,
    special tokens added, untruncated: what `tokenizer(texts, pairs, truncation=False)` gives."""
    backend = direct_backend(tokenizer)
    if backend is None:
        encoded = tokenizer(texts, pairs, truncation=False, verbose=False)
        return {name: encoded[name] for name in ("input_ids", "token_type_ids") if name in encoded}
    encodings = backend.encode_batch(list(zip(texts, pairs)) if pairs is not None else texts, add_special_tokens=True)
    ids = {"input_ids": [e.ids for e in encodings]}
    if "token_type_ids" in tokenizer.model_input_names:  # the call's default for return_token_type_ids
        ids["token_type_ids"] = [e.type_ids for e in encodings]
    return ids


def ids_and_offsets(tokenizer, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """(ids, character offsets) of each text without special tokens added, as the transformers call
    with return_offsets_mapping=True gives them."""
    backend = direct_backend(tokenizer)
    if backend is not None:
        return [(e.ids, e.offsets) for e in backend.encode_batch(texts, add_special_tokens=False)]
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    return list(zip(encoded["input_ids"], encoded["offset_mapping"]))


class WordEncodings:
    """Rust encodings of pre-split sentences, read as the processors read a transformers
    BatchEncoding: `encodings["input_ids"]` (and "token_type_ids"), `name in encodings`, and
    `encodings.word_ids(i)`."""

    def __init__(self, encodings: list, with_token_type_ids: bool):
        self._encodings = encodings
        self._columns = {"input_ids": [e.ids for e in encodings]}
        if with_token_type_ids:
            self._columns["token_type_ids"] = [e.type_ids for e in encodings]

    def __getitem__(self, name: str) -> list[list[int]]:
        return self._columns[name]

    def __contains__(self, name: str) -> bool:
        return name in self._columns

    def word_ids(self, index: int) -> list[Optional[int]]:
        return self._encodings[index].word_ids


def encode_words(tokenizer, sentences: list[list[str]]):
    """What `tokenizer(sentences, is_split_into_words=True)` gives (input_ids, token_type_ids where
    the call returns them, word_ids), untruncated, through the Rust tokenizer where that gives the
    call's ids."""
    backend = direct_backend(tokenizer)
    if backend is None:
        return tokenizer(sentences, is_split_into_words=True)
    return WordEncodings(backend.encode_batch(sentences, is_pretokenized=True, add_special_tokens=True),
                         "token_type_ids" in tokenizer.model_input_names)
