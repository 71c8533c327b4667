"""Processor for token classification (NER): words with one tag each, from CoNLL or JSON files.

Tags are aligned to subwords with the tag on each word's first subword (every subword with
`label_all_subwords`; a continuation of a B- word then gets the I- tag). A sentence longer
than `max_length` is split into overlapping windows of whole words, `stride` tokens of context
shared between neighbours; each word is predicted by the one window where it has the most
context on both sides, so every word gets exactly one tag and none is lost to truncation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from sft.data.collators import PaddingCollator
from sft.data.coverage import UnknownTokens, count_unknown
from sft.data.processor import Processor
from sft.data.rust_tokenizer import encode_words
from sft.data.sources import Table
from sft.errors import ConfigError, DataError
from sft.tagging import SCHEME_NAMES, check_tag, detect_scheme, entities, split_tag, tag_names

IGNORE = -100


@dataclass
class TokenEncodeReport:
    records: int = 0
    truncated: int = 0  # words cut short (one word longer than a whole window)
    tokens: int = 0
    windows: int = 0
    split_sentences: int = 0
    words: int = 0
    unknown_words: int = 0  # words the tokenizer turned into nothing, fed as its unknown token
    unknown: UnknownTokens = field(default_factory=UnknownTokens)  # unknown tokens over the windows

    def as_dict(self) -> dict:
        return {"records": self.records, "words": self.words, "windows": self.windows,
                "split_sentences": self.split_sentences, "truncated_words": self.truncated,
                "unknown_words": self.unknown_words, "mean_tokens": round(self.tokens / max(self.windows, 1), 1),
                "unknown_tokens": self.unknown.as_dict()}


def plan_windows(counts: list[int], budget: int, stride: int) -> list[tuple[int, int]]:
    """Word ranges [start, end) of at most `budget` subwords each (a single longer word stands
    alone), each next one starting so it repeats at most `stride` subwords of the previous."""
    windows, start, n = [], 0, len(counts)
    while True:
        end, used = start, 0
        while end < n and (used + counts[end] <= budget or end == start):
            used += counts[end]
            end += 1
        windows.append((start, end))
        if end >= n:
            return windows
        following, overlap = end, 0  # context repeated from this window, leaving room for word `end`
        while (following - 1 > start and overlap + counts[following - 1] <= stride
               and overlap + counts[following - 1] + counts[end] <= budget):
            following -= 1
            overlap += counts[following]
        start = following


def owners(counts: list[int], windows: list[tuple[int, int]]) -> list[int]:
    """For each word, the window that predicts it: where its first subword has the most context
    (the smaller of the subwords before and after it); the earlier window on ties."""
    best: list[tuple[int, int]] = [(-1, -1)] * len(counts)
    for w, (start, end) in enumerate(windows):
        size = sum(counts[start:end])
        offset = 0
        for word in range(start, end):
            context = min(offset, size - offset - 1)
            if context > best[word][0]:
                best[word] = (context, w)
            offset += counts[word]
    return [w for _, w in best]


class TokenCollator(PaddingCollator):
    """Pads as PaddingCollator, plus per-token labels (-100), word positions and word tags."""

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        batch = super().__call__([{k: v for k, v in item.items() if k == "input_ids" or k == "token_type_ids"}
                                  for item in items])
        width = batch["input_ids"].shape[1]
        for key, fill in (("labels", IGNORE), ("word_index", -1), ("word_labels", IGNORE)):
            if key in items[0]:
                values = torch.full((len(items), width), fill, dtype=torch.long)
                for row, item in enumerate(items):
                    values[row, :len(item[key])] = torch.as_tensor(item[key])
                batch[key] = values
        batch["sentence_index"] = torch.as_tensor([item["sentence_index"] for item in items])
        return batch


class TokenClassificationProcessor(Processor):
    index_fields = ("sentence_index",)
    def __init__(self, tokenizer, text_column: str = "tokens", label_column: str = "tags",
                 text_pair_column: str | None = None, max_length: int = 128, label_names: list[str] | None = None,
                 tag_column: int = -1, tag_scheme: str = "auto", label_all_subwords: bool = False, stride: int = 32):
        if text_pair_column:
            raise ConfigError("data.text_pair_column does not apply to token_classification; set it to null")
        if tag_scheme not in SCHEME_NAMES:
            raise ConfigError(f"data.tag_scheme={tag_scheme!r} is not one of {SCHEME_NAMES}")
        self.tokenizer = tokenizer
        self.text_column = text_column
        self.label_column = label_column
        self.max_length = max_length
        self.tag_column = int(tag_column)
        self.tag_scheme = tag_scheme
        self.label_all_subwords = label_all_subwords
        self.budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
        if self.budget < 1:
            raise ConfigError(f"data.max_length={max_length} leaves no room for words next to the special tokens")
        if not 0 <= stride < self.budget:
            raise ConfigError(f"data.stride={stride} must be at least 0 and below the {self.budget} subwords a window "
                              f"holds at data.max_length={max_length}")
        self.stride = stride
        self.label_names = list(label_names) if label_names is not None else None
        if self.label_names is not None and tag_scheme == "auto":
            self.tag_scheme = detect_scheme(split_tag(t)[0] for t in self.label_names)

    def make_collator(self, pad_to_multiple_of: int | None, train: bool = False):
        return TokenCollator(self.tokenizer.pad_token_id, pad_to_multiple_of)

    # -- reading -------------------------------------------------------------------------------
    def words_and_tags(self, table: Table, index: int, with_tags: bool = True):
        """(words, tags, where) of one record; `where(k)` names the location of word k."""
        row, location = table.rows[index], table.where(index)
        if "columns" in row and "lines" in row:  # a CoNLL sentence
            columns = row["columns"]
            if not -len(columns) <= self.tag_column < len(columns):
                raise DataError(f"{location}: data.tag_column={self.tag_column} but the file has {len(columns)} "
                                f"columns (0 to {len(columns) - 1}, or -1 for the last)")
            path = location.rsplit(":", 1)[0]
            return (columns[0], columns[self.tag_column] if with_tags else None,
                    lambda k: f"{path}:{row['lines'][k]}")
        fields = {"data.text_column": self.text_column}
        if with_tags:
            fields["data.label_column"] = self.label_column
        values = {}
        for key, column in fields.items():
            value = row.get(column)
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise DataError(f"{location}: field {column!r} (set by {key}) should be a list of strings, got "
                                f"{type(value).__name__ if value is not None else 'nothing'}")
            values[key] = list(value)
        words, tags = values["data.text_column"], values.get("data.label_column")
        if not words:
            raise DataError(f"{location}: field {self.text_column!r} is an empty list; expected at least one word")
        if tags is not None and len(tags) != len(words):
            raise DataError(f"{location}: {len(words)} words in {self.text_column!r} but {len(tags)} tags in "
                            f"{self.label_column!r}; expected one tag per word")
        return words, tags, lambda k: f"{location}, word {k + 1}"

    def fit(self, train: Table) -> list[str]:
        if self.label_names is None:
            first_seen: dict[str, str] = {}  # each distinct tag, in order of appearance: where it first occurs
            for batch in train.in_batches():
                for i in range(len(batch)):
                    _, tags, where = self.words_and_tags(batch, i)
                    for k, tag in enumerate(tags):
                        if tag not in first_seen:
                            first_seen[tag] = where(k)
            prefixes = set()
            for tag, location in first_seen.items():
                try:
                    prefixes.add(split_tag(tag)[0])
                except ValueError as e:
                    raise DataError(f"{location}: {e}") from None
            if self.tag_scheme == "auto":
                self.tag_scheme = detect_scheme(prefixes)
            types = set()
            for tag, location in first_seen.items():
                try:
                    types.add(check_tag(tag, self.tag_scheme)[1])
                except ValueError as e:
                    raise DataError(f"{location}: {e}; set data.tag_scheme to the scheme of your files") from None
            types.discard(None)
            if not types:
                raise DataError(f"{train.path}: every tag is O; token classification needs at least one entity type")
            self.label_names = tag_names(types, self.tag_scheme)
        return self.label_names

    # -- encoding ------------------------------------------------------------------------------
    def encode(self, table: Table, with_labels: bool = True):
        assert self.label_names is not None, "fit() builds the label map before encode()"
        index = {name: k for k, name in enumerate(self.label_names)}
        report = TokenEncodeReport(records=len(table))
        sentences = []
        for i in range(len(table)):
            words, tags, where = self.words_and_tags(table, i, with_labels)
            ids = None
            if tags is not None:
                ids = []
                for k, tag in enumerate(tags):
                    if tag not in index:
                        try:
                            check_tag(tag, self.tag_scheme)
                        except ValueError as e:
                            raise DataError(f"{where(k)}: {e}") from None
                        raise DataError(f"{where(k)}: tag {tag!r} has an entity type the training data never has; "
                                        f"known tags: {self.label_names}")
                    ids.append(index[tag])
            sentences.append((list(words), ids))
            report.words += len(words)

        # Subwords per word (special tokens have no word); a word that yields none is fed as [UNK].
        # A sentence that fits one window as it is keeps this encoding; the others are encoded again
        # by window.
        whole = encode_words(self.tokenizer, [words for words, _ in sentences])
        plans: list = []
        kept: set[int] = set()  # sentences whose whole encoding is their one window
        for s, (words, _) in enumerate(sentences):
            counts = [0] * len(words)
            for word in whole.word_ids(s):
                if word is not None:
                    counts[word] += 1
            replaced = False
            for k, c in enumerate(counts):
                if c == 0:
                    words[k] = self.tokenizer.unk_token
                    counts[k] = 1
                    report.unknown_words += 1
                    replaced = True
            windows = plan_windows(counts, self.budget, self.stride)
            report.windows += len(windows)
            report.split_sentences += len(windows) > 1
            report.truncated += sum(c > self.budget for c in counts)
            plans.append((windows, owners(counts, windows)))
            if len(windows) == 1 and not replaced and sum(counts) <= self.budget:
                kept.add(s)

        pieces = [(s, w, start, end) for s, (windows, _) in enumerate(plans) for w, (start, end) in enumerate(windows)]
        again = [(s, start, end) for s, _, start, end in pieces if s not in kept]
        windowed = self._encode_windows([sentences[s][0][start:end] for s, start, end in again]) if again else None
        rows = {(s, start): j for j, (s, start, _) in enumerate(again)}  # a window's row in `windowed`
        examples = []
        for s, w, start, end in pieces:
            encoded, row = (whole, s) if s in kept else (windowed, rows[(s, start)])
            tag_ids, owner = sentences[s][1], plans[s][1]
            word_ids = encoded.word_ids(row)
            example = {"input_ids": encoded["input_ids"][row], "sentence_index": s}
            if "token_type_ids" in encoded:
                example["token_type_ids"] = encoded["token_type_ids"][row]
            positions, labels, word_labels, previous = [], [], [], None
            for local in word_ids:
                word = None if local is None else start + local
                first = word is not None and word != previous
                positions.append(word if first and owner[word] == w else -1)
                if tag_ids is not None:
                    if word is None or not (first or self.label_all_subwords):
                        labels.append(IGNORE)
                    else:
                        labels.append(tag_ids[word] if first else self._continuation(tag_ids[word]))
                    word_labels.append(tag_ids[word] if positions[-1] >= 0 else IGNORE)
                previous = word
            missing = set(k for k in range(start, end) if owner[k] == w) - set(positions)
            if missing:  # cannot happen unless a tokenizer splits words differently in context
                raise DataError(f"{table.where(s)}: words {sorted(missing)} lost their first subword in a window")
            example["word_index"] = positions
            if tag_ids is not None:
                example["labels"] = labels
                example["word_labels"] = word_labels
            report.tokens += len(example["input_ids"])
            examples.append(example)
        report.unknown = count_unknown(self.tokenizer, (example["input_ids"] for example in examples))
        return examples, report

    def _encode_windows(self, windows: list[list[str]]):
        """The windows' words encoded, each truncated to max_length (only a single word longer than
        the window's budget is cut). The call leaves truncation set on the Rust tokenizer; it is
        put back as found, so the next batch's sentences still take the direct path."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        before = backend.truncation if backend is not None else None
        encoded = self.tokenizer(windows, is_split_into_words=True, truncation=True, max_length=self.max_length)
        if backend is not None and before is None:
            backend.no_truncation()
        return encoded

    def _continuation(self, tag_id: int) -> int:
        """The tag of a non-first subword when all subwords are labelled: B-X continues as I-X."""
        prefix, kind = split_tag(self.label_names[tag_id])
        if prefix in ("B", "S") and f"I-{kind}" in self.label_names:
            return self.label_names.index(f"I-{kind}")
        return tag_id

    # -- predictions -----------------------------------------------------------------------------
    def sentence_predictions(self, outputs: list[dict], sentences: int) -> list[dict[int, int]]:
        """Stitch windows back: {word: predicted tag id} per sentence, from predict outputs."""
        stitched: list[dict[int, int]] = [{} for _ in range(sentences)]
        for batch in outputs:
            for row in range(len(batch["sentence_index"])):
                s = int(batch["sentence_index"][row])
                owned = batch["word_index"][row] >= 0
                for word, tag in zip(batch["word_index"][row][owned].tolist(), batch["prediction"][row][owned].tolist()):
                    stitched[s][word] = tag
        return stitched

    def export_options(self) -> dict:
        """What a predictor needs to split and stitch sentences as training did (see sft.export)."""
        return {"max_length": self.max_length, "tag_scheme": self.tag_scheme,
                "label_all_subwords": self.label_all_subwords, "stride": self.stride}

    def prediction_rows(self, table: Table, outputs: list[dict], label_names: list[str],
                        examples: Optional[list[dict]] = None, with_tags: bool = True):
        """One dict per sentence: source, words, gold tags, predicted tags and predicted entity spans."""
        for s, predicted in enumerate(self.sentence_predictions(outputs, len(table))):
            words, tags, _ = self.words_and_tags(table, s, with_tags)
            if sorted(predicted) != list(range(len(words))):
                raise RuntimeError(f"{table.where(s)}: predictions cover words {sorted(predicted)} of {len(words)}")
            predicted_tags = [label_names[predicted[k]] for k in range(len(words))]
            spans = [{"type": kind, "start": start, "end": end + 1, "text": " ".join(words[start:end + 1])}
                     for kind, start, end in entities(predicted_tags)]
            yield {"source": table.where(s), "words": words, "tags": tags, "predicted_tags": predicted_tags,
                   "entities": spans}
