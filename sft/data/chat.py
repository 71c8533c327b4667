"""Processor for causal-LM SFT: records in four shapes -> token ids + labels masked by turn.

Shapes (detected from a file's first record, or declared with `data.format`):
    messages           {"messages": [{"role": "system|user|assistant", "content": "...", "train": bool?}, ...]}
    prompt_completion  {"prompt": "...", "completion": "..."}
    alpaca             {"instruction": "...", "input": "..." (optional), "output": "..."}
    text               {"text": "..."}   (continued pre-training: every token supervised)

Labels come from character offsets of the rendered template, never from searching for a
response string: the text an assistant turn adds (its content and end-of-turn token) is the
span between render(turns before it, add_generation_prompt=True) and render(turns up to it),
and both must be prefixes of the whole rendered conversation. Tokens whose offsets fall in such
a span are supervised. This needs no `{% generation %}` marker. The prefixes of a batch of
records are rendered in one call, and their texts tokenized in one.
"""

from __future__ import annotations

import bisect
import copy
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from sft.data.coverage import UnknownTokens, count_unknown
from sft.data.processor import Processor
from sft.data.rust_tokenizer import ids_and_offsets
from sft.data.sources import Table
from sft.errors import ConfigError, DataError

if TYPE_CHECKING:
    from sft.data.examples import Examples

log = logging.getLogger(__name__)

IGNORE = -100
FORMATS = ("messages", "prompt_completion", "alpaca", "text")
FORMAT_FIELDS = {  # the fields that identify a shape, in detection order
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "alpaca": ("instruction", "output"),
    "text": ("text",),
}
ROLES = ("system", "user", "assistant")
TRUNCATIONS = ("keep_start", "drop", "error")


class TemplateError(DataError):
    """The chat template renders in a way labels cannot be derived from (names the example)."""


@dataclass
class ChatReport:
    """What encoding did to one split: counted, never silent."""

    records: int = 0
    tokens: int = 0
    supervised_tokens: int = 0
    truncated: int = 0            # examples cut to max_length (keep_start)
    truncated_tokens: int = 0     # tokens those cuts removed
    dropped_too_long: int = 0     # examples dropped for length (truncation=drop)
    dropped_unsupervised: int = 0  # examples that kept no supervised token after truncation
    empty_turns: int = 0          # empty assistant turns kept (data.allow_empty_turns=true)
    format: str = ""
    unknown: UnknownTokens = field(default_factory=UnknownTokens)  # unknown tokens of the kept examples

    def as_dict(self) -> dict:
        kept = self.records - self.dropped_too_long - self.dropped_unsupervised
        return {"records": self.records, "kept": kept, "format": self.format, "tokens": self.tokens,
                "supervised_tokens": self.supervised_tokens,
                "mean_tokens": round(self.tokens / max(kept, 1), 1),
                "truncated": self.truncated, "truncated_tokens": self.truncated_tokens,
                "dropped_too_long": self.dropped_too_long, "dropped_unsupervised": self.dropped_unsupervised,
                "empty_turns": self.empty_turns, "unknown_tokens": self.unknown.as_dict()}


@dataclass
class Rendered:
    """One example rendered and tokenized, before truncation."""

    where: str
    text: str
    input_ids: list[int]
    labels: list[int]
    # (start, end) token ranges of supervised assistant turns, to check each ends with end-of-turn
    turns: list[tuple[int, int]] = field(default_factory=list)
    # supervised assistant turns whose content is empty or only whitespace, named as in the record
    empty_turns: list[str] = field(default_factory=list)

    @property
    def supervised(self) -> int:
        return len(self.labels) - self.labels.count(IGNORE)


def load_template(chat_template: Optional[str], tokenizer) -> str:
    """`data.chat_template`: a file path or a Jinja string; None takes the tokenizer's own."""
    if chat_template is None:
        template = getattr(tokenizer, "chat_template", None)
        if isinstance(template, dict):  # several named templates: the default one
            template = template.get("default")
        if not template:
            raise ConfigError("the tokenizer has no chat template; set data.chat_template to a Jinja string "
                              "or a template file")
        return template
    path = Path(chat_template)
    if "{" not in chat_template and len(chat_template) < 4096:
        if not path.is_file():
            raise ConfigError(f"data.chat_template={chat_template!r}: no such file, and not a Jinja template "
                              "(a template contains '{{' or '{%')")
        return path.read_text(encoding="utf-8")
    return chat_template


def detect_format(table: Table) -> str:
    row = table.rows[0]
    for name, fields in FORMAT_FIELDS.items():
        if all(f in row for f in fields):
            return name
    raise DataError(f"{table.where(0)}: the record fits no data shape (fields seen: {sorted(row)}); expected "
                    + "; ".join(f"{n}: {', '.join(f)}" for n, f in FORMAT_FIELDS.items())
                    + ". Or declare data.format")


def _text(row: dict, key: str, where: str, shape: str, optional: bool = False) -> str:
    value = row.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} is {'missing' if value is None else type(value).__name__}; the "
                        f"{shape} shape needs a string there (fields seen: {sorted(row)})")
    return value


def to_messages(row: dict, shape: str, where: str) -> list[dict]:
    """A record of any chat shape as a list of {role, content, train?} messages."""
    missing = [f for f in FORMAT_FIELDS[shape] if f not in row]
    if missing:
        raise DataError(f"{where}: the record does not fit the {shape} shape: no field {missing[0]!r} "
                        f"(fields seen: {sorted(row)})")
    if shape == "prompt_completion":
        return [{"role": "user", "content": _text(row, "prompt", where, shape)},
                {"role": "assistant", "content": _text(row, "completion", where, shape)}]
    if shape == "alpaca":
        instruction = _text(row, "instruction", where, shape)
        extra = _text(row, "input", where, shape, optional=True)
        return [{"role": "user", "content": instruction + (f"\n\n{extra}" if extra.strip() else "")},
                {"role": "assistant", "content": _text(row, "output", where, shape)}]
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: field 'messages' must be a non-empty list of {{role, content}} objects")
    out = []
    for k, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(message.get("content"), str):
            raise DataError(f"{where}: messages[{k}] must be an object with role in {ROLES} and string content; "
                            f"got {message!r:.120}")
        out.append({"role": message["role"], "content": message["content"], "train": message.get("train", True)})
    if not any(m["role"] == "assistant" for m in out):
        raise DataError(f"{where}: the conversation has no assistant message; nothing to learn from it")
    return out


def _covered(offsets: list[tuple[int, int]], starts: list[int], ends: list[int], ordered: bool,
             start: int, end: int) -> list[int]:
    """The tokens whose characters overlap [start, end) (zero-width tokens never do); by bisection
    where the offsets run in order, as a tokenizer gives them."""
    if ordered:
        first, last = bisect.bisect_right(ends, start), bisect.bisect_left(starts, end)
        return [k for k in range(first, last) if ends[k] > starts[k]]
    return [k for k, (s, e) in enumerate(offsets) if e > s and s < end and e > start]


def empty_assistant_turns(messages: list[dict], shape: str) -> list[str]:
    """The supervised assistant turns whose content is empty or only whitespace, named as in the record
    (messages[3], or the field of a prompt/completion or alpaca record)."""
    field_name = {"prompt_completion": "field 'completion'", "alpaca": "field 'output'"}.get(shape)
    names = []
    for k, message in enumerate(messages):
        if message["role"] == "assistant" and message.get("train", True) is not False and not message["content"].strip():
            names.append(field_name or f"messages[{k}]")
    return names


class ChatProcessor(Processor):
    """Processor for `task=causal_lm` (see the module docstring for shapes and masking)."""

    def __init__(self, tokenizer, max_length: int = 1024, format: Optional[str] = None,
                 chat_template: Optional[str] = None, train_on_prompt: bool = False,
                 truncation: str = "keep_start", end_of_turn_token: Optional[str] = None,
                 packing: bool = False, audit_examples: int = 2, allow_empty_turns: bool = False):
        if format is not None and format not in FORMATS:
            raise ConfigError(f"data.format={format!r} is not one of {FORMATS} (or null to detect it)")
        if truncation not in TRUNCATIONS:
            raise ConfigError(f"data.truncation={truncation!r} is not one of {TRUNCATIONS}")
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError("causal_lm needs a fast tokenizer (token offsets come from it)")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.format = format
        self.train_on_prompt = train_on_prompt
        self.truncation = truncation
        self.packing = packing
        self.audit_examples = audit_examples
        self.allow_empty_turns = allow_empty_turns
        self.label_names: list[str] = []  # no label map: the vocabulary is the label space
        self._template_option = chat_template
        self._template: Optional[str] = None
        eot = end_of_turn_token or tokenizer.eos_token
        if eot is None:
            raise ConfigError("the tokenizer has no EOS token; set data.end_of_turn_token to the token that ends a turn")
        self.end_of_turn_id = tokenizer.convert_tokens_to_ids(eot)
        if self.end_of_turn_id is None or self.end_of_turn_id == tokenizer.unk_token_id:
            raise ConfigError(f"end-of-turn token {eot!r} is not in the tokenizer's vocabulary")
        self.end_of_turn_token = eot

    # -- template ---------------------------------------------------------------------------------
    @property
    def template(self) -> str:
        if self._template is None:
            self._template = load_template(self._template_option, self.tokenizer)
            # The tokenizer carries the template from here on, so every save_pretrained stores it.
            self.tokenizer.chat_template = self._template
        return self._template

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return self.render_many([messages], add_generation_prompt)[0]

    def render_many(self, conversations: list[list[dict]], add_generation_prompt: bool = False) -> list[str]:
        """Each conversation rendered with the template, in one call: the function that
        `apply_chat_template` renders with, given what it gives (the special tokens), so training
        and inference render alike, without its per-call overhead."""
        if not conversations:
            return []
        from transformers.utils.chat_template_utils import render_jinja_template

        plain = [[{"role": m["role"], "content": m["content"]} for m in messages] for messages in conversations]
        # annotated `-> str`, it returns (the renderings, their generation indices)
        rendered, _ = render_jinja_template(  # type: ignore[str-unpack]
            conversations=plain, chat_template=self.template, add_generation_prompt=add_generation_prompt,
            **self.tokenizer.special_tokens_map)
        return rendered

    def checkpoint_state(self) -> dict:
        """What a checkpoint records so the run can be reproduced at inference: the exact template
        and the special tokens."""
        return {"chat_template": self.template, "end_of_turn_token": self.end_of_turn_token,
                "special_tokens": {k: str(v) for k, v in self.tokenizer.special_tokens_map.items()}}

    def restore_checkpoint_state(self, state: dict) -> None:
        """Render with the template a checkpoint was trained with, whatever the config says now."""
        self._template = None
        self._template_option = state["chat_template"]
        self.template  # noqa: B018 - sets it on the tokenizer too

    # -- the processor interface -------------------------------------------------------------------
    def fit(self, train: Table) -> list[str]:
        return self.label_names

    step_normalized = True  # each training batch carries its optimizer step's supervised-token count

    def make_collator(self, pad_to_multiple_of: Optional[int], train: bool = False):
        from sft.data.packing import CausalLMCollator

        return CausalLMCollator(self.tokenizer.pad_token_id, pad_to_multiple_of)

    def shape_of(self, table: Table) -> str:
        return self.format or detect_format(table)

    # -- encoding -------------------------------------------------------------------------------------
    def _tokenize(self, text: str, where: str) -> tuple[list[int], list[tuple[int, int]]]:
        return self._tokenize_many([text], [where])[0]

    def _tokenize_many(self, texts: list[str], wheres: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """(ids, character offsets) of each text, tokenized in one call; BOS put in front where the
        tokenizer would add it and the template did not."""
        if not texts:
            return []
        bos = self.tokenizer.bos_token_id
        out = []
        for (ids, offsets), where in zip(self._encode_texts(texts), wheres):
            ids, offsets = list(ids), list(offsets)
            if bos is not None and self._adds_bos() and (not ids or ids[0] != bos):
                ids, offsets = [bos] + ids, [(0, 0)] + offsets
            if bos is not None and len(ids) > 1 and ids[0] == bos and ids[1] == bos:
                raise TemplateError(f"{where}: the rendered example starts with two BOS tokens; the chat template "
                                    "already writes bos_token, so it must not be added again")
            out.append((ids, offsets))
        return out

    def _encode_texts(self, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """(ids, offsets) of each text without special tokens added (through the Rust tokenizer
        where that gives the call's ids: the same ids at half the cost)."""
        return ids_and_offsets(self.tokenizer, texts)

    def _adds_bos(self) -> bool:
        """Whether the tokenizer puts BOS in front of plain text (then a template without it gets one)."""
        if not hasattr(self, "_adds_bos_cache"):
            probe = self.tokenizer("a", add_special_tokens=True)["input_ids"]
            self._adds_bos_cache = bool(probe) and probe[0] == self.tokenizer.bos_token_id
        return self._adds_bos_cache

    def render_example(self, row: dict, shape: str, where: str) -> Rendered:
        return self.render_examples([row], shape, [where])[0]

    def _needs_span(self, message: dict) -> bool:
        """Whether a message's own text must be located: assistant turns always (their tokens are
        learned, and each is checked to end with end-of-turn), other turns only when train_on_prompt
        supervises the prompt and the message opts out with train: false."""
        return message["role"] == "assistant" or (self.train_on_prompt and message.get("train", True) is False)

    def render_examples(self, rows: list[dict], shape: str, wheres: list[str]) -> list[Rendered]:
        """Records rendered and tokenized, labels masked by turn: every render and the tokenization
        of a batch of records each go through one call."""
        if shape == "text":
            texts = [_text(row, "text", where, shape) for row, where in zip(rows, wheres)]
            out = []
            for text, where, (ids, _) in zip(texts, wheres, self._tokenize_many(texts, wheres)):
                if not ids or ids[-1] != self.end_of_turn_id:
                    ids = ids + [self.end_of_turn_id]  # a document ends with EOS, and EOS is learned
                out.append(Rendered(where, text + self.end_of_turn_token, ids, [IGNORE] + ids[1:], [(1, len(ids))]))
            return out
        conversations = [to_messages(row, shape, where) for row, where in zip(rows, wheres)]
        # Which prefixes each conversation needs rendered: messages[:j + 1] (`upto` j, the last one is the
        # whole conversation) and messages[:j] with the generation prompt (`prompt` j, where assistant turn j starts).
        uptos: dict[tuple[int, int], int] = {}
        prompts: dict[tuple[int, int], int] = {}
        for c, messages in enumerate(conversations):
            uptos[c, len(messages) - 1] = 0
            for j, message in enumerate(messages):
                if self._needs_span(message):
                    uptos[c, j] = 0
                    if message["role"] == "assistant" and j:
                        prompts[c, j] = 0
                    elif message["role"] != "assistant" and j:
                        uptos[c, j - 1] = 0
        upto_text = dict(zip(uptos, self.render_many([conversations[c][: j + 1] for c, j in uptos])))
        prompt_text = dict(zip(prompts, self.render_many([conversations[c][:j] for c, j in prompts], True)))
        texts = [upto_text[c, len(messages) - 1] for c, messages in enumerate(conversations)]
        tokenized = self._tokenize_many(texts, wheres)
        out = []
        for c, messages in enumerate(conversations):
            text, where, (ids, offsets) = texts[c], wheres[c], tokenized[c]
            for j in range(len(messages) - 1):
                if (c, j) in upto_text and not text.startswith(upto_text[c, j]):
                    raise TemplateError(f"{where}: the chat template renders messages[{j}] differently when later "
                                        "messages follow, so labels cannot be taken from offsets; use a template "
                                        "that renders each turn the same way (data.chat_template)")
            # train_on_prompt: every token but those of messages marked train: false; else assistant turns only.
            labels = list(ids) if self.train_on_prompt else [IGNORE] * len(ids)
            turns = []
            starts, ends = [s for s, _ in offsets], [e for _, e in offsets]
            ordered = starts == sorted(starts) and ends == sorted(ends)
            for j, message in enumerate(messages):
                if not self._needs_span(message):
                    continue
                upto = upto_text[c, j]
                if message["role"] == "assistant":
                    prompt = prompt_text[c, j] if j else ""
                    if not upto.startswith(prompt):
                        raise TemplateError(f"{where}: the template's generation prompt for messages[{j}] is not a "
                                            "prefix of the rendered conversation; labels cannot be taken from offsets")
                    start = len(prompt)
                else:
                    start = len(upto_text[c, j - 1]) if j else 0
                end = len(upto.rstrip())  # whitespace after the end-of-turn token belongs to no turn
                tokens = _covered(offsets, starts, ends, ordered, start, end)
                trained = message.get("train", True) is not False
                for k in tokens:
                    labels[k] = ids[k] if trained and (self.train_on_prompt or message["role"] == "assistant") else IGNORE
                if message["role"] == "assistant" and trained:
                    # an empty turn (no token at all) is recorded empty, for the audit to report
                    turns.append((tokens[0], tokens[-1] + 1) if tokens else (len(ids), len(ids)))
            labels[0] = IGNORE  # nothing predicts the first token (so packed and unpacked rows agree)
            out.append(Rendered(where, text, ids, labels, turns, empty_assistant_turns(messages, shape)))
        return out

    # -- audit ------------------------------------------------------------------------------------------
    def check_example(self, item: Rendered) -> None:
        """Fail fast, naming the example, when it would teach nothing or never teach stopping."""
        if item.empty_turns and not self.allow_empty_turns:
            raise DataError(f"{item.where}: {item.empty_turns[0]} is an empty assistant turn; training on it teaches "
                            "the model to answer with nothing but the end-of-turn token. Fill or drop the turn (or "
                            "mark it \"train\": false), or set data.allow_empty_turns=true to keep such turns")
        if item.supervised == 0:
            raise DataError(f"{item.where}: no supervised token (empty assistant turns, or every turn marked "
                            f"train: false); rendered as:\n{item.text}")
        for start, end in item.turns:
            if end <= start:
                raise DataError(f"{item.where}: an assistant turn renders to no token at all (empty content and no "
                                f"end-of-turn); rendered as:\n{item.text}")
            if item.input_ids[end - 1] != self.end_of_turn_id:
                raise DataError(
                    f"{item.where}: the assistant turn ending at token {end} is not followed by a supervised "
                    f"end-of-turn token {self.end_of_turn_token!r}, so the model would never learn to stop. The chat "
                    f"template drops it, or data.end_of_turn_token names the wrong token; rendered as:\n{item.text}")

    def marked(self, input_ids: list[int], labels: list[int], left: str = "[[", right: str = "]]") -> str:
        """The example's text with supervised spans between `left` and `right`."""
        pieces, run, supervised = [], [], False
        for token, label in zip(input_ids, labels):
            now = label != IGNORE
            if now != supervised and run:
                text = self.tokenizer.decode(run)
                pieces.append(f"{left}{text}{right}" if supervised else text)
                run = []
            supervised = now
            run.append(token)
        if run:
            text = self.tokenizer.decode(run)
            pieces.append(f"{left}{text}{right}" if supervised else text)
        return "".join(pieces)

    def encode(self, table: Table) -> tuple[list[dict], ChatReport]:
        shape = self.shape_of(table)
        report = ChatReport(records=len(table), format=shape)
        examples = []
        rows = table.rows
        rendered = self.render_examples(list(rows), shape, [table.where(i) for i in range(len(rows))])
        for i, item in enumerate(rendered):
            self.check_example(item)
            report.empty_turns += len(item.empty_turns)
            ids, labels = item.input_ids, item.labels
            if i < self.audit_examples:
                log.info("[audit] %s: %d tokens, %d supervised (between [[ ]]):\n%s", item.where, len(ids),
                         item.supervised, self.marked(ids, labels))
            if len(ids) > self.max_length:
                if self.truncation == "error":
                    raise DataError(f"{item.where}: {len(ids)} tokens, longer than data.max_length={self.max_length} "
                                    "(data.truncation=error); raise max_length or choose keep_start or drop")
                if self.truncation == "drop":
                    report.dropped_too_long += 1
                    continue
                report.truncated += 1
                report.truncated_tokens += len(ids) - self.max_length
                ids, labels = ids[: self.max_length], labels[: self.max_length]
            supervised = len(labels) - labels.count(IGNORE)
            if supervised == 0:
                report.dropped_unsupervised += 1
                continue
            report.tokens += len(ids)
            report.supervised_tokens += supervised
            examples.append({"input_ids": ids, "labels": labels})
        report.unknown = count_unknown(self.tokenizer, (example["input_ids"] for example in examples))
        return examples, report

    def audit_cached(self, table: Table) -> None:
        """A split read from the encode cache still shows its audit: the first records again."""
        if self.audit_examples and len(table):
            self.encode(table.subset(list(range(min(self.audit_examples, len(table))))))

    def for_workers(self) -> "ChatProcessor":
        """Batches after the first log no audit (the first batch, encoded in the main process, does)."""
        quiet = copy.copy(self)
        quiet.audit_examples = 0
        return quiet

    def check_encoded(self, table: Table, count: int, report) -> None:
        if count == 0:
            raise DataError(f"{table.path}: no example kept a supervised token (see data_report: {report.as_dict()})")

    def arrange(self, split: str, examples: Examples) -> Examples:
        """Training rows: packed when data.packing is on, else the examples themselves."""
        if split != "train" or not self.packing:
            return examples
        from sft.data.examples import PackedExamples
        from sft.data.packing import pack_plan

        return PackedExamples(examples, pack_plan(examples.lengths(), self.max_length))

    def supervised_count(self, item: dict) -> int:
        return len(item["labels"]) - list(item["labels"]).count(IGNORE)

    # -- prompts for generation ------------------------------------------------------------------------
    def generation_examples(self, table: Table, limit: int) -> list[dict]:
        """The first `limit` records as {prompt_ids, reference, where}: the conversation up to its
        last assistant turn, rendered with the generation prompt; the reference is that turn."""
        shape = self.shape_of(table)
        if shape == "text":
            return []
        out = []
        for i, row in enumerate(table.rows[:limit]):
            messages = to_messages(row, shape, table.where(i))
            last = max(k for k, m in enumerate(messages) if m["role"] == "assistant")
            prompt = self.render(messages[:last], add_generation_prompt=True)
            ids, _ = self._tokenize(prompt, table.where(i))
            out.append({"prompt_ids": ids, "reference": messages[last]["content"], "where": table.where(i),
                        "prompt": prompt})
        return out
