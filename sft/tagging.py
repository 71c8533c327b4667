"""Tag schemes (BIO / IOB2 / BIOES) and entity spans, counted the way seqeval does.

`entities` reproduces the chunking of seqeval's default (conlleval-compatible) mode: a chunk
ends and starts where the prefixes or entity types change, so `I-PER` after `O` opens a new
PER entity and `B-LOC I-PER` yields two. Precision, recall and F1 compare spans as exact
(type, start, end) triples, overall (micro) and per entity type.
"""

from __future__ import annotations

from typing import Iterable, Sequence

SCHEMES = {"BIO": ("B", "I"), "IOB2": ("B", "I"), "BIOES": ("B", "I", "E", "S")}
SCHEME_NAMES = ("auto",) + tuple(SCHEMES)


def split_tag(tag: str) -> tuple[str, str | None]:
    """("O", None) for O, (prefix, type) for PREFIX-TYPE; ValueError for anything else."""
    if tag == "O":
        return "O", None
    prefix, sep, kind = tag.partition("-")
    if not sep or len(prefix) != 1 or not kind:
        raise ValueError(f"tag {tag!r} is neither O nor PREFIX-TYPE (like B-PER)")
    return prefix, kind


def check_tag(tag: str, scheme: str) -> tuple[str, str | None]:
    prefix, kind = split_tag(tag)
    if prefix != "O" and prefix not in SCHEMES[scheme]:
        allowed = ", ".join(f"{p}-TYPE" for p in SCHEMES[scheme])
        raise ValueError(f"tag {tag!r} is not a {scheme} tag (expected O, {allowed})")
    return prefix, kind


def detect_scheme(prefixes: Iterable[str]) -> str:
    return "BIOES" if set(prefixes) & {"E", "S"} else "BIO"


def tag_names(types: Iterable[str], scheme: str) -> list[str]:
    """The label map of a tagger: O, then every prefix of the scheme for each entity type."""
    return ["O"] + [f"{prefix}-{kind}" for kind in sorted(set(types)) for prefix in SCHEMES[scheme]]


def _ends(prev_tag: str, tag: str, prev_type: str, kind: str) -> bool:
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    return prev_tag not in ("O", ".") and prev_type != kind


def _starts(prev_tag: str, tag: str, prev_type: str, kind: str) -> bool:
    if tag in ("B", "S"):
        return True
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag not in ("O", ".") and prev_type != kind


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word) of every entity in one sentence's tags."""
    spans = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, chunk in enumerate(list(tags) + ["O"]):
        tag = chunk[0]
        kind = chunk[1:].split("-", maxsplit=1)[-1] or "_"
        if _ends(prev_tag, tag, prev_type, kind):
            spans.append((prev_type, begin, i - 1))
        if _starts(prev_tag, tag, prev_type, kind):
            begin = i
        prev_tag, prev_type = tag, kind
    return spans


def _prf(correct: int, predicted: int, gold: int) -> tuple[float, float, float]:
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def entity_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]],
                  types: Iterable[str] = ()) -> dict[str, float]:
    """Entity precision/recall/F1 (micro over types) and per type F1, plus word accuracy.
    `types` lists entity types to report even where neither side has one (score 0)."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold sentences but {len(predicted)} predicted")
    gold_spans, pred_spans = set(), set()
    words = right = 0
    for n, (g, p) in enumerate(zip(gold, predicted)):
        if len(g) != len(p):
            raise ValueError(f"sentence {n}: {len(g)} gold tags but {len(p)} predicted")
        gold_spans |= {(n,) + span for span in entities(g)}
        pred_spans |= {(n,) + span for span in entities(p)}
        words += len(g)
        right += sum(a == b for a, b in zip(g, p))
    precision, recall, f1 = _prf(len(gold_spans & pred_spans), len(pred_spans), len(gold_spans))
    scores = {"entity_precision": precision, "entity_recall": recall, "entity_f1": f1,
              "token_acc": right / words if words else 0.0}
    all_types = set(types) | {s[1] for s in gold_spans | pred_spans}
    for kind in sorted(all_types):
        g = {s for s in gold_spans if s[1] == kind}
        p = {s for s in pred_spans if s[1] == kind}
        scores[f"entity_f1_{kind}"] = _prf(len(g & p), len(p), len(g))[2]
    return scores
