"""Tokenizer coverage: how much of a split the tokenizer could only read as its unknown token.

A tokenizer whose vocabulary does not cover the data's script (an English WordPiece vocabulary on
Chinese text) turns most characters into `[UNK]`; training still runs and reports a number, so
every text processor counts unknown tokens here and the data module warns or stops on the counts.
Byte-level tokenizers (GPT-2 style BPE, byte-fallback SentencePiece) never produce an unknown
token and report 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

WARN_SHARE = 0.01  # above this share of unknown tokens the run warns
STOP_SHARE = 0.20  # above this it stops before training (unless data.allow_unknown_tokens=true)
MOSTLY_UNKNOWN = 0.5  # an input is "mostly unknown" when more than this share of its tokens is unknown


def unknown_token_id(tokenizer) -> Optional[int]:
    """The id the tokenizer writes for text it cannot read, or None for a byte-level tokenizer
    (no unknown token, or one that shares its id with BOS/EOS/padding, as GPT-2's does, and so is
    only ever inserted by templates, never read from text)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return None
    shared = {getattr(tokenizer, name, None) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
    if unk in shared:
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and getattr(backend.model, "byte_fallback", False):
        return None
    return int(unk)


@dataclass
class UnknownTokens:
    """Unknown-token counts of one split (special tokens that the tokenizer adds are not counted)."""

    tokenizer: str = ""
    byte_level: bool = False
    tokens: int = 0
    unknown: int = 0
    inputs: int = 0
    mostly_unknown: int = 0

    @property
    def share(self) -> float:
        return self.unknown / self.tokens if self.tokens else 0.0

    @property
    def mostly_unknown_share(self) -> float:
        return self.mostly_unknown / self.inputs if self.inputs else 0.0

    def as_dict(self) -> dict:
        return {"tokenizer": self.tokenizer, "byte_level": self.byte_level, "tokens": self.tokens,
                "unknown_tokens": self.unknown, "unknown_share": round(self.share, 4),
                "inputs": self.inputs, "mostly_unknown_inputs": self.mostly_unknown,
                "mostly_unknown_share": round(self.mostly_unknown_share, 4)}


def count_unknown(tokenizer, inputs: Iterable[list[int]]) -> UnknownTokens:
    """Count unknown tokens over encoded inputs (lists of token ids)."""
    unk = unknown_token_id(tokenizer)
    counts = UnknownTokens(tokenizer=str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__),
                           byte_level=unk is None)
    special = set(getattr(tokenizer, "all_special_ids", None) or ()) - {unk}
    is_special = special.__contains__
    for ids in inputs:
        ids = list(ids)
        content = len(ids) - sum(map(is_special, ids))
        unknown = 0 if unk is None else ids.count(unk)
        counts.inputs += 1
        counts.tokens += content
        counts.unknown += unknown
        counts.mostly_unknown += content > 0 and unknown / content > MOSTLY_UNKNOWN
    return counts


def summary(report: dict) -> str:
    """The log's words for a split's counts (report: UnknownTokens.as_dict())."""
    if report.get("byte_level"):
        return "unknown tokens 0 (byte-level tokenizer)"
    return (f"unknown tokens {report['unknown_share']:.1%} of {report['tokens']}, "
            f"{report['mostly_unknown_share']:.1%} of inputs mostly unknown")


def verdict(split: str, report: dict, allow: bool, stops: bool = True) -> tuple[Optional[str], Optional[str]]:
    """(warning, error) for a split's counts: a warning above WARN_SHARE, an error above STOP_SHARE
    (when `stops` and not `allow`); either may be None."""
    share = float(report.get("unknown_share") or 0.0)
    if report.get("byte_level") or share <= WARN_SHARE:
        return None, None
    tokenizer, mostly = report.get("tokenizer", "?"), float(report.get("mostly_unknown_share") or 0.0)
    said = (f"{share:.1%} of the {split} split's tokens are the unknown token of tokenizer {tokenizer} "
            f"({mostly:.1%} of its inputs are mostly unknown)")
    if share > STOP_SHARE and stops and not allow:
        return None, (f"{said}: the tokenizer does not cover the data's script; choose a model whose vocabulary "
                      f"covers this language (model.pretrained=..., see docs/data.md), or set "
                      f"data.allow_unknown_tokens=true to go on")
    return f"{said}: the model cannot read that text", None
