"""causal_lm data: shapes, loss masks against hand-built expectations, audit failures, truncation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sft.data.chat import IGNORE, ChatProcessor
from sft.data.sources import DataError, read_table
from tests.chat_fixtures import CHATML, CHATML_WITHOUT_EOS, make_tokenizer, tiny_llama_dir  # noqa: F401

EOT = "<|im_end|>"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def supervised_runs(input_ids, labels) -> list[list[int]]:
    """Consecutive runs of supervised token ids, and a check that labels equal the inputs there."""
    runs, current = [], []
    for token, label in zip(input_ids, labels):
        if label != IGNORE:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize("shape,record,question", [
    ("messages", {"messages": [{"role": "user", "content": "what colour is the tree ?"},
                               {"role": "assistant", "content": "green"}]}, "what colour is the tree ?"),
    ("prompt_completion", {"prompt": "what colour is the tree ?", "completion": "green"}, "what colour is the tree ?"),
    ("alpaca", {"instruction": "answer the question", "input": "what colour is the tree ?", "output": "green"},
     "answer the question\n\nwhat colour is the tree ?"),
])
def test_each_shape_supervises_exactly_the_answer_and_its_end_of_turn(tokenizer, tmp_path, shape, record, question):
    answer = "green"
    table = read_table(write_jsonl(tmp_path / "d.jsonl", [record]))
    processor = ChatProcessor(tokenizer, max_length=128)
    assert processor.shape_of(table) == shape  # detected from the fields
    [example], report = processor.encode(table)
    assert supervised_runs(example["input_ids"], example["labels"]) == [ids(tokenizer, answer + EOT)]
    assert report.supervised_tokens == len(ids(tokenizer, answer + EOT))
    # The prompt is the rendered user turn plus the generation prompt, and none of it is supervised.
    expected_prompt = ids(tokenizer, f"<|im_start|>user\n{question}{EOT}\n<|im_start|>assistant\n")
    assert example["input_ids"][: len(expected_prompt)] == expected_prompt
    assert all(label == IGNORE for label in example["labels"][: len(expected_prompt)])


def test_multi_turn_supervises_each_trained_assistant_turn(tokenizer, tmp_path):
    record = {"messages": [
        {"role": "system", "content": "answer briefly"},
        {"role": "user", "content": "what colour is the tree ?"},
        {"role": "assistant", "content": "green"},
        {"role": "user", "content": "and the bird ?"},
        {"role": "assistant", "content": "blue", "train": False},
        {"role": "user", "content": "and the stone ?"},
        {"role": "assistant", "content": "the stone is red"},
    ]}
    table = read_table(write_jsonl(tmp_path / "d.jsonl", [record]))
    [example], _ = ChatProcessor(tokenizer, max_length=256).encode(table)
    # Hand-built: the rendered conversation is the concatenation of ChatML turns.
    turns = [("system", "answer briefly"), ("user", "what colour is the tree ?"), ("assistant", "green"),
             ("user", "and the bird ?"), ("assistant", "blue"), ("user", "and the stone ?"),
             ("assistant", "the stone is red")]
    expected_ids, expected_labels = [], []
    for k, (role, content) in enumerate(turns):
        head, body, tail = ids(tokenizer, f"<|im_start|>{role}\n"), ids(tokenizer, content + EOT), ids(tokenizer, "\n")
        trained = role == "assistant" and k != 4
        expected_ids += head + body + tail
        expected_labels += [IGNORE] * len(head) + (body if trained else [IGNORE] * len(body)) + [IGNORE] * len(tail)
    assert example["input_ids"] == expected_ids
    assert example["labels"] == expected_labels


def test_train_on_prompt_supervises_everything_but_the_first_token(tokenizer, tmp_path):
    table = read_table(write_jsonl(tmp_path / "d.jsonl", [{"prompt": "what colour ?", "completion": "red"}]))
    [example], _ = ChatProcessor(tokenizer, max_length=128, train_on_prompt=True).encode(table)
    assert example["labels"][0] == IGNORE
    assert example["labels"][1:] == example["input_ids"][1:]
    # A message marked train: false stays unsupervised even then.
    record = {"messages": [{"role": "user", "content": "what colour ?", "train": False}, {"role": "assistant", "content": "red"}]}
    [example], _ = ChatProcessor(tokenizer, max_length=128, train_on_prompt=True).encode(
        read_table(write_jsonl(tmp_path / "e.jsonl", [record])))
    user_turn = len(ids(tokenizer, f"<|im_start|>user\nwhat colour ?{EOT}"))
    assert example["labels"][:user_turn] == [IGNORE] * user_turn
    assert example["labels"][user_turn:] == example["input_ids"][user_turn:]


def test_another_template_without_generation_marker(tmp_path):
    """A plain 'User:/Assistant:' template with EOS text: offsets, not markers or string search."""
    template = ("{% for m in messages %}{% if m['role'] == 'user' %}User: {{ m['content'] }}\n"
                "{% else %}Assistant: {{ m['content'] }}{{ eos_token }}\n{% endif %}{% endfor %}"
                "{% if add_generation_prompt %}Assistant:{% endif %}")
    tokenizer = make_tokenizer(tmp_path / "tok", template=template)
    # The answer also occurs in the prompt: a string search would find the wrong place.
    record = {"messages": [{"role": "user", "content": "red or blue ? red"}, {"role": "assistant", "content": "red"}]}
    [example], _ = ChatProcessor(tokenizer, max_length=64).encode(read_table(write_jsonl(tmp_path / "d.jsonl", [record])))
    assert supervised_runs(example["input_ids"], example["labels"]) == [ids(tokenizer, " red" + EOT)]


def test_a_batch_renders_as_apply_chat_template_and_encodes_as_each_record_alone(tmp_path):
    """Records are rendered and tokenized a batch at a time: each must come out as the tokenizer's
    own apply_chat_template renders it, and as it encodes on its own (nothing mixed between records)."""
    template = "{{ bos_token }}" + CHATML
    tokenizer = make_tokenizer(tmp_path / "tok", template=template)
    records = [
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "red or blue ?"},
                      {"role": "assistant", "content": "red"}, {"role": "user", "content": "and now ?", "train": False},
                      {"role": "assistant", "content": "blue"}]},
        {"messages": [{"role": "user", "content": "what colour ?"}, {"role": "assistant", "content": "green", "train": False},
                      {"role": "user", "content": "again ?"}, {"role": "assistant", "content": "yellow"}]},
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "red"}]},
    ]
    table = read_table(write_jsonl(tmp_path / "d.jsonl", records))
    for train_on_prompt in (False, True):
        processor = ChatProcessor(tokenizer, max_length=128, train_on_prompt=train_on_prompt)
        conversations = [[{"role": m["role"], "content": m["content"]} for m in r["messages"]] for r in records]
        for generation_prompt in (False, True):
            assert processor.render_many(conversations, generation_prompt) == [
                tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=generation_prompt)
                for c in conversations]
        examples, _ = processor.encode(table)
        alone = [processor.render_example(r, "messages", f"r{k}") for k, r in enumerate(records)]
        assert [e["input_ids"] for e in examples] == [a.input_ids for a in alone]
        assert [e["labels"] for e in examples] == [a.labels for a in alone]
    # The turns a learner answers, and only those, are supervised (the second record's first answer is not).
    processor = ChatProcessor(tokenizer, max_length=128)
    examples, _ = processor.encode(table)
    assert [len(supervised_runs(e["input_ids"], e["labels"])) for e in examples] == [2, 1, 1]
    assert supervised_runs(examples[1]["input_ids"], examples[1]["labels"]) == [ids(tokenizer, "yellow" + EOT)]


def test_texts_tokenize_as_the_tokenizer_call_does_whatever_state_it_was_left_in(tokenizer):
    """The Rust tokenizer is used directly only when set as the transformers call sets it."""
    texts = ["<|im_start|>user\nred or blue ?<|im_end|>\n", "the tree is green . what colour ?", ""]
    expected = [(e["input_ids"], e["offset_mapping"]) for e in
                (tokenizer(t, add_special_tokens=False, return_offsets_mapping=True) for t in texts)]
    processor = ChatProcessor(tokenizer, max_length=128)
    assert [(list(i), list(o)) for i, o in processor._encode_texts(texts)] == expected
    backend = tokenizer.backend_tokenizer
    backend.enable_truncation(max_length=3)  # as a call with truncation=True leaves it
    try:
        assert [(list(i), list(o)) for i, o in processor._encode_texts(texts)] == expected
    finally:
        backend.no_truncation()
    tokenizer.split_special_tokens = True  # special tokens written in the text are then split
    try:
        split = tokenizer(texts[0], add_special_tokens=False)["input_ids"]
        assert split != expected[0][0]
        assert list(processor._encode_texts(texts[:1])[0][0]) == split
    finally:
        tokenizer.split_special_tokens = False
        tokenizer(texts[0])  # the call puts the backend back as it was


def test_template_that_renders_an_earlier_turn_differently_is_refused_naming_the_record(tmp_path):
    """Labels come from prefixes of the rendering; a template that rewrites an earlier answer once
    later turns follow (as some reasoning templates do) would put them in the wrong place."""
    template = CHATML.replace("message['content'] + '<|im_end|>'",
                              "(message['content'] if loop.last or message['role'] != 'assistant' else '...') + '<|im_end|>'")
    tokenizer = make_tokenizer(tmp_path / "tok", template=template)
    record = {"messages": [{"role": "user", "content": "a ?"}, {"role": "assistant", "content": "red"},
                           {"role": "user", "content": "b ?"}, {"role": "assistant", "content": "blue"}]}
    table = read_table(write_jsonl(tmp_path / "d.jsonl", [{"messages": record["messages"][:2]}, record]))
    with pytest.raises(DataError, match=r"d\.jsonl:2: the chat template renders messages\[1\] differently"):
        ChatProcessor(tokenizer, max_length=128).encode(table)


def test_tokens_covered_by_a_span_with_and_without_ordered_offsets():
    from sft.data.chat import _covered

    offsets = [(0, 0), (0, 3), (3, 3), (3, 7), (7, 9), (9, 12)]
    starts, ends = [s for s, _ in offsets], [e for _, e in offsets]
    # zero-width tokens are never covered; a token is covered when it overlaps the span at all
    assert _covered(offsets, starts, ends, True, 3, 9) == [3, 4]
    assert _covered(offsets, starts, ends, True, 2, 8) == [1, 3, 4]
    assert _covered(offsets, starts, ends, True, 12, 20) == []
    shuffled = [offsets[k] for k in (3, 0, 5, 1, 4, 2)]
    assert _covered(shuffled, [s for s, _ in shuffled], [e for _, e in shuffled], False, 3, 9) == [0, 4]


def test_end_of_turn_is_supervised_even_when_pad_is_eos(tmp_path):
    from sft.data.packing import CausalLMCollator

    tokenizer = make_tokenizer(tmp_path / "tok", pad_is_eos=True)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    table = read_table(write_jsonl(tmp_path / "d.jsonl", [{"prompt": "what colour ?", "completion": "red"},
                                                          {"prompt": "and the tree near the river ?", "completion": "green"}]))
    processor = ChatProcessor(tokenizer, max_length=64)
    examples, _ = processor.encode(table)
    batch = processor.make_collator(8)(examples)
    assert isinstance(processor.make_collator(8), CausalLMCollator)
    eos = tokenizer.eos_token_id
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        supervised_eos = (batch["labels"][row, :n] == eos).sum().item()
        assert supervised_eos == 1  # the answer's end-of-turn, though the same id pads the row
        assert (batch["labels"][row, n:] == IGNORE).all()


def test_no_double_bos(tmp_path):
    from tokenizers.processors import TemplateProcessing

    template = "{{ bos_token }}" + CHATML
    tokenizer = make_tokenizer(tmp_path / "tok", template=template)
    bos = tokenizer.bos_token_id
    # A tokenizer that adds BOS itself (as Llama's do) must not add a second one to a template that has it.
    tokenizer._tokenizer.post_processor = TemplateProcessing(single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos)])
    assert tokenizer("a")["input_ids"][0] == bos
    record = {"prompt": "what colour ?", "completion": "red"}
    [example], _ = ChatProcessor(tokenizer, max_length=64).encode(read_table(write_jsonl(tmp_path / "d.jsonl", [record])))
    assert example["input_ids"][0] == bos and example["input_ids"][1] != bos
    # And a template without BOS gets the one the tokenizer would add.
    tokenizer.chat_template = CHATML
    [example], _ = ChatProcessor(tokenizer, max_length=64).encode(read_table(tmp_path / "d.jsonl"))
    assert example["input_ids"][0] == bos and example["input_ids"][1] != bos


def test_text_shape_supervises_every_token_and_appends_eos(tokenizer, tmp_path):
    table = read_table(write_jsonl(tmp_path / "d.jsonl", [{"text": "the tree is green"}]))
    [example], _ = ChatProcessor(tokenizer, max_length=64).encode(table)
    assert example["input_ids"] == ids(tokenizer, "the tree is green") + [tokenizer.eos_token_id]
    assert example["labels"] == [IGNORE] + example["input_ids"][1:]


def test_record_fitting_no_shape_names_file_line_and_fields(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError, match=r"d\.jsonl:1: .*fits no data shape.*\['answer', 'question'\]"):
        ChatProcessor(tokenizer).encode(read_table(path))
    # A later record that does not fit the detected shape is named by its line too.
    path = write_jsonl(tmp_path / "e.jsonl", [{"prompt": "p", "completion": "c"}, {"prompt": "p", "reply": "c"}])
    with pytest.raises(DataError, match=r"e\.jsonl:2: .*prompt_completion.*'completion'.*\['prompt', 'reply'\]"):
        ChatProcessor(tokenizer).encode(read_table(path))


def test_truncation_is_counted_dropped_or_refused(tokenizer, tmp_path):
    long = {"prompt": "the tree " * 5, "completion": "green " * 20}
    short = {"prompt": "what colour ?", "completion": "red"}
    only_prompt_fits = {"prompt": "the river " * 30, "completion": "blue"}
    table = read_table(write_jsonl(tmp_path / "d.jsonl", [long, short, only_prompt_fits]))
    examples, report = ChatProcessor(tokenizer, max_length=30).encode(table)
    assert report.truncated == 2 and report.truncated_tokens > 0
    assert report.dropped_unsupervised == 1  # its answer was cut away entirely: counted, not trained on
    assert len(examples) == 2 and all(len(e["input_ids"]) <= 30 for e in examples)
    examples, report = ChatProcessor(tokenizer, max_length=30, truncation="drop").encode(table)
    assert report.dropped_too_long == 2 and len(examples) == 1
    with pytest.raises(DataError, match=r"d\.jsonl:1: .*longer than data.max_length=30"):
        ChatProcessor(tokenizer, max_length=30, truncation="error").encode(table)


def test_audit_fails_on_empty_assistant_turn(tokenizer, tmp_path):
    # With an empty answer only the end-of-turn token is supervised: the turn teaches nothing but
    # stopping; an assistant turn rendered to nothing at all is refused.
    template = CHATML.replace("message['content'] + '<|im_end|>'",
                              "message['content'] + ('' if message['content'] == '' else '<|im_end|>')")
    tokenizer.chat_template = template
    try:
        path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "what ?", "completion": "red"}, {"prompt": "what ?", "completion": ""}])
        with pytest.raises(DataError, match=r"d\.jsonl:2: field 'completion' is an empty assistant turn"):
            ChatProcessor(tokenizer).encode(read_table(path))
        with pytest.raises(DataError, match=r"d\.jsonl:2: (no supervised token|an assistant turn renders to no token)"):
            ChatProcessor(tokenizer, allow_empty_turns=True).encode(read_table(path))
    finally:
        tokenizer.chat_template = CHATML


def test_empty_assistant_turn_is_an_audit_error_naming_record_and_turn(tokenizer, tmp_path):
    def turn(role, content, **extra):
        return {"role": role, "content": content, **extra}

    records = [
        {"messages": [turn("user", "what colour is the tree ?"), turn("assistant", "green")]},
        {"messages": [turn("user", "what ?"), turn("assistant", "red"), turn("user", "and now ?"), turn("assistant", " \n ")]},
        {"messages": [turn("user", "what ?"), turn("assistant", "", train=False), turn("user", "now ?"),
                      turn("assistant", "blue")]},
    ]
    table = read_table(write_jsonl(tmp_path / "d.jsonl", records))
    with pytest.raises(DataError, match=r"d\.jsonl:2: messages\[3\] is an empty assistant turn.*data\.allow_empty_turns=true"):
        ChatProcessor(tokenizer, max_length=128).encode(table)
    # Kept on request, and counted; a turn marked train: false is not supervised, so not counted.
    examples, report = ChatProcessor(tokenizer, max_length=128, allow_empty_turns=True).encode(table)
    assert len(examples) == 3 and report.empty_turns == 1 and report.as_dict()["empty_turns"] == 1
    assert ChatProcessor(tokenizer, max_length=128).encode(table.subset([0, 2]))[1].empty_turns == 0


def run_audit(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "sft.audit", *args], capture_output=True, text=True, env=env, timeout=120)


def test_audit_command_fails_when_template_drops_eos_and_passes_otherwise(tiny_llama_dir, tmp_path):  # noqa: F811
    records = [{"prompt": f"what colour is the tree {i} ?", "completion": "green"} for i in range(20)]
    path = write_jsonl(tmp_path / "d.jsonl", records)
    (tmp_path / "no_eos.jinja").write_text(CHATML_WITHOUT_EOS)
    base = ["data=chat", "model=causal_lm", f"data.train_file={path}", f"model.pretrained={tiny_llama_dir}"]
    bad = run_audit(base + [f"data.chat_template={tmp_path / 'no_eos.jinja'}"])
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "AUDIT FAILED" in bad.stderr and "d.jsonl:" in bad.stderr and "end-of-turn" in bad.stderr
    good = run_audit(base + ["data.audit_examples=1"])
    assert good.returncode == 0, good.stdout + good.stderr
    assert "AUDIT PASSED" in good.stdout
    assert "[[green<|im_end|>]]" in good.stdout + good.stderr  # the rendered example, supervised span marked
    from transformers import AutoTokenizer

    report = json.loads(good.stdout[: good.stdout.index("AUDIT PASSED")])
    per_example = len(ids(AutoTokenizer.from_pretrained(tiny_llama_dir), "green" + EOT))
    assert report["train"]["supervised_tokens"] == report["train"]["kept"] * per_example
