"""Reading users' files: formats, clear errors on bad input, label maps, seeded splits, encoding."""

from __future__ import annotations

import bz2
import csv
import gzip
import json
from pathlib import Path

import pytest

from sft.data.datamodule import SFTDataModule, seeded_split
from sft.data.sources import DataError, Table, read_table

RECORDS = [
    {"text": "the film was great", "label": "pos"},
    {"text": "a dull, tedious plot", "label": "neg"},  # a comma: must be quoted in CSV
    {"text": "quite \"charming\" actors", "label": "pos"},
    {"text": "the ending was awful", "label": "neg"},
]


def write_csv(path: Path, rows: list[dict], delimiter: str = ",", opener=open) -> Path:
    with opener(path, "wt", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict], opener=open) -> Path:
    with opener(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def datamodule(tokenizer: str, train: Path, val: Path | None = None, test: Path | None = None, **kwargs) -> SFTDataModule:
    return SFTDataModule(task="text_classification", tokenizer=tokenizer, train_file=str(train),
                         val_file=str(val) if val else None, test_file=str(test) if test else None, **kwargs)


def words(n: int, start: int = 0) -> str:
    """n words that the tiny tokenizer knows, one token each."""
    vocab = ["the", "film", "movie", "was", "a", "plot", "story", "actors", "really", "quite"]
    return " ".join(vocab[(start + i) % len(vocab)] for i in range(n))


# -- bad input: one DataError that names what and where ---------------------------------------


def test_missing_train_file(tiny_model_dir, tmp_path):
    missing = tmp_path / "nope" / "train.csv"
    dm = datamodule(tiny_model_dir, missing)
    with pytest.raises(DataError) as info:
        dm.label_names
    message = str(info.value)
    assert "data.train_file" in message and str(missing) in message


def test_missing_val_file_names_its_key(tiny_model_dir, tmp_path):
    train = write_csv(tmp_path / "train.csv", RECORDS)
    dm = datamodule(tiny_model_dir, train, val=tmp_path / "val.csv")
    with pytest.raises(DataError) as info:
        dm.setup("fit")
    assert "data.val_file" in str(info.value) and str(tmp_path / "val.csv") in str(info.value)


def test_unknown_extension(tiny_model_dir, tmp_path):
    path = tmp_path / "train.xlsx"
    path.write_bytes(b"PK\x03\x04 not really a spreadsheet")
    with pytest.raises(DataError) as info:
        datamodule(tiny_model_dir, path).label_names
    message = str(info.value)
    assert "train.xlsx" in message and ".xlsx" in message.replace("train.xlsx", "")
    assert ".csv" in message and ".jsonl" in message and ".parquet" in message


@pytest.mark.parametrize("key, override", [("data.text_column", {"text_column": "review"}),
                                           ("data.label_column", {"label_column": "sentiment"}),
                                           ("data.text_pair_column", {"text_pair_column": "hypothesis"})])
def test_missing_column(tiny_model_dir, tmp_path, key, override):
    train = write_csv(tmp_path / "train.csv", RECORDS * 5)
    dm = datamodule(tiny_model_dir, train, **override)
    with pytest.raises(DataError) as info:
        dm.label_names
    message = str(info.value)
    column = next(iter(override.values()))
    assert "train.csv" in message and repr(column) in message and key in message
    assert "'text'" in message and "'label'" in message  # the columns the file does have


def test_missing_text_column_in_val_file(tiny_model_dir, tmp_path):
    train = write_csv(tmp_path / "train.csv", RECORDS)
    val = write_csv(tmp_path / "val.csv", [{"sentence": r["text"], "label": r["label"]} for r in RECORDS])
    dm = datamodule(tiny_model_dir, train, val=val, test=train)
    with pytest.raises(DataError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert "val.csv" in message and "'text'" in message and "data.text_column" in message and "'sentence'" in message


@pytest.mark.parametrize("name, content", [("train.csv", "text,label\n"), ("train.jsonl", ""),
                                           ("train.jsonl", "\n\n"), ("train.tsv", "")])
def test_empty_file(tiny_model_dir, tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError) as info:
        datamodule(tiny_model_dir, path).label_names
    message = str(info.value)
    assert "data.train_file" in message and str(path) in message and "no records" in message


def test_malformed_jsonl_line(tiny_model_dir, tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "the film", "label": "pos"}\n'
                    "\n"  # blank lines are skipped but still counted
                    '{"text": "the plot", "label": }\n'
                    '{"text": "the story", "label": "neg"}\n')
    with pytest.raises(DataError) as info:
        datamodule(tiny_model_dir, path).label_names
    message = str(info.value)
    assert f"{path}:3:" in message and "not valid JSON" in message


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "the film", "label": "pos"}\n["the plot", "neg"]\n')
    with pytest.raises(DataError, match=r"train\.jsonl:2: expected a JSON object per line, got list"):
        read_table(path)


def test_json_string_holding_half_a_surrogate_pair_is_named(tmp_path):
    """JSON may escape half of an emoji (`\\ud83d` alone); Python parses it into a string no encoder
    or tokenizer takes, so the record is named at reading, not left to fail deep in tokenization."""
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a smile \\ud83d\\ude00 and an accent \\u00e9", "label": "pos"}\n'
                    '{"messages": [{"role": "user", "content": "cut \\ud83d"}], "label": "neg"}\n')
    with pytest.raises(DataError, match=r"train\.jsonl:2: field 'messages' holds half of a UTF-16 surrogate pair"):
        read_table(path)
    path.write_text('{"text": "a smile \\ud83d\\ude00 and an accent \\u00e9", "label": "pos"}\n')
    assert read_table(path).rows[0]["text"] == "a smile \U0001F600 and an accent \u00e9"  # a whole pair is text
    listed = tmp_path / "train.json"
    listed.write_text('[{"text": "fine", "label": "pos"}, {"text": "\\udc00 cut", "label": "neg"}]')
    with pytest.raises(DataError, match=r"train\.json record 2: field 'text' holds half of a UTF-16 surrogate pair"):
        read_table(listed)

def test_unseen_label_in_val(tiny_model_dir, tmp_path):
    train = write_csv(tmp_path / "train.csv", RECORDS)
    val = write_csv(tmp_path / "val.csv", [{"text": "the film", "label": "pos"},
                                           {"text": "the movie", "label": "neg"},
                                           {"text": "the plot", "label": "meh"}])
    dm = datamodule(tiny_model_dir, train, val=val, test=train)
    with pytest.raises(DataError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert f"{val}:4:" in message and "'meh'" in message and "'label'" in message
    assert "'neg'" in message and "'pos'" in message  # the labels it knows


def test_null_text(tiny_model_dir, tmp_path):
    rows = [dict(r) for r in RECORDS]
    rows[2]["text"] = None
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    dm = datamodule(tiny_model_dir, train, val=train, test=train)
    with pytest.raises(DataError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert f"{train}:3:" in message and "'text'" in message and "null" in message


def test_empty_label_in_train(tiny_model_dir, tmp_path):
    rows = [dict(r) for r in RECORDS]
    rows[1]["label"] = ""
    train = write_csv(tmp_path / "train.csv", rows)
    with pytest.raises(DataError) as info:
        datamodule(tiny_model_dir, train, val=train, test=train).label_names
    assert f"{train}:3:" in str(info.value) and "'label'" in str(info.value) and "empty" in str(info.value)


def test_csv_row_with_extra_field(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,label\nthe film,pos\nthe plot, sadly,neg\n")
    with pytest.raises(DataError) as info:
        read_table(path)
    assert f"{path}:3:" in str(info.value) and "3 fields" in str(info.value) and "header has 2" in str(info.value)


# -- line numbers --------------------------------------------------------------------------------


def test_csv_line_numbers_with_multiline_fields(tiny_model_dir, tmp_path):
    train = write_csv(tmp_path / "train.csv", RECORDS)
    val = tmp_path / "val.csv"
    val.write_text('text,label\n'             # line 1
                   '"the film\n'               # line 2: a record over three lines
                   '\n'
                   'was great",pos\n'
                   'the plot,neg\n'            # line 5
                   '\n'                        # line 6: blank, skipped
                   '"quite\nboring",neg\n'     # lines 7-8
                   'the ending,maybe\n')        # line 9
    table = read_table(val)
    assert table.locations == [f"{val}:2", f"{val}:5", f"{val}:7", f"{val}:9"]
    assert table.rows[0]["text"] == "the film\n\nwas great"

    dm = datamodule(tiny_model_dir, train, val=val, test=train)
    with pytest.raises(DataError) as info:
        dm.setup("fit")
    assert f"{val}:9:" in str(info.value) and "'maybe'" in str(info.value)


def test_json_list_record_numbers(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps([RECORDS[0], RECORDS[1], "oops"]))
    with pytest.raises(DataError, match=r"train\.json record 3: expected a JSON object, got str"):
        read_table(path)


# -- formats -------------------------------------------------------------------------------------


def test_every_format_reads_the_same_records(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = {
        "csv": write_csv(tmp_path / "d.csv", RECORDS),
        "tsv": write_csv(tmp_path / "d.tsv", RECORDS, delimiter="\t"),
        "csv.gz": write_csv(tmp_path / "d.csv.gz", RECORDS, opener=gzip.open),
        "jsonl": write_jsonl(tmp_path / "d.jsonl", RECORDS),
        "jsonl.bz2": write_jsonl(tmp_path / "d.jsonl.bz2", RECORDS, opener=bz2.open),
    }
    files["json"] = tmp_path / "d.json"
    files["json"].write_text(json.dumps(RECORDS, indent=1))
    files["json (wrapped)"] = tmp_path / "w.json"
    files["json (wrapped)"].write_text(json.dumps({"data": RECORDS}))
    files["parquet"] = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(RECORDS), files["parquet"])

    for kind, path in files.items():
        table = read_table(path)
        assert table.rows == RECORDS, kind
        assert table.columns == ["text", "label"], kind
        assert len(table.locations) == len(RECORDS) and all(str(path) in loc for loc in table.locations), kind
    assert read_table(files["parquet"]).where(1) == f"{files['parquet']} row 2"
    assert read_table(files["json"]).where(1) == f"{files['json']} record 2"
    assert read_table(files["csv.gz"]).where(1) == f"{files['csv.gz']}:3"


def test_uppercase_extension_and_folder(tmp_path):
    path = write_csv(tmp_path / "TRAIN.CSV", RECORDS)
    assert read_table(path).rows == RECORDS
    with pytest.raises(DataError, match="is a folder"):
        read_table(tmp_path, "data.train_file")


def test_broken_parquet(tmp_path):
    path = tmp_path / "train.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="train.parquet: not a readable Parquet file"):
        read_table(path)


# -- label map -----------------------------------------------------------------------------------


def test_string_labels_are_sorted(tiny_model_dir, tmp_path):
    rows = [{"text": words(3, i), "label": label} for i, label in enumerate(["pos", "neutral", "neg", "pos"])]
    train = write_csv(tmp_path / "train.csv", rows)
    dm = datamodule(tiny_model_dir, train, val=train, test=train)
    assert dm.label_names == ["neg", "neutral", "pos"]
    dm.setup("fit")
    assert [e["labels"] for e in dm.encoded("train")] == [2, 1, 0, 2]


def test_integer_labels_in_numeric_order_across_formats(tiny_model_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    labels = [10, 2, 0, 1, 10, 2]  # as strings, "10" < "2"
    rows = [{"text": words(3, i), "label": label} for i, label in enumerate(labels)]
    as_json = write_jsonl(tmp_path / "ints.jsonl", rows)
    as_csv = write_csv(tmp_path / "ints.csv", rows)
    as_parquet = tmp_path / "floats.parquet"
    pq.write_table(pa.Table.from_pylist([{**r, "label": float(r["label"])} for r in rows]), as_parquet)

    encoded = []
    for path in (as_json, as_csv, as_parquet):
        dm = datamodule(tiny_model_dir, path, val=path, test=path)
        assert dm.label_names == ["0", "1", "2", "10"], path.name
        dm.setup("fit")
        encoded.append([e["labels"] for e in dm.encoded("train")])
    assert encoded[0] == encoded[1] == encoded[2] == [3, 2, 0, 1, 3, 2]


def test_json_int_labels_match_csv_string_labels_of_val(tiny_model_dir, tmp_path):
    """Train in JSONL (ints), validate on CSV (strings): the same label."""
    train = write_jsonl(tmp_path / "train.jsonl", [{"text": words(3, i), "label": i % 2} for i in range(6)])
    val = write_csv(tmp_path / "val.csv", [{"text": "the film", "label": "1"}, {"text": "the plot", "label": "0"}])
    dm = datamodule(tiny_model_dir, train, val=val, test=train)
    dm.setup("fit")
    assert [e["labels"] for e in dm.encoded("val")] == [1, 0]


def test_label_map_comes_from_train_only(tiny_model_dir, tmp_path):
    train = write_csv(tmp_path / "train.csv", [{"text": words(3, i), "label": label} for i, label in enumerate("cab")])
    val = write_csv(tmp_path / "val.csv", [{"text": "the film", "label": "b"}])
    test = write_csv(tmp_path / "test.csv", [{"text": "the plot", "label": "z"}])  # only read for "test"
    dm = datamodule(tiny_model_dir, train, val=val, test=test)
    assert dm.label_names == ["a", "b", "c"]
    dm.setup("fit")
    assert dm.label_names == ["a", "b", "c"]
    assert [e["labels"] for e in dm.encoded("val")] == [1]
    with pytest.raises(DataError, match=r"test\.csv:2: label 'z'"):
        dm.setup("test")


def test_given_label_names_are_kept(tiny_model_dir, tmp_path):
    train = write_csv(tmp_path / "train.csv", RECORDS)
    dm = datamodule(tiny_model_dir, train, val=train, test=train, label_names=["pos", "neg"])
    assert dm.label_names == ["pos", "neg"]
    dm.setup("fit")
    assert [e["labels"] for e in dm.encoded("train")] == [0, 1, 0, 1]


def test_single_label_is_an_error(tiny_model_dir, tmp_path):
    train = write_csv(tmp_path / "train.csv", [{"text": "the film", "label": "pos"}] * 3)
    with pytest.raises(DataError) as info:
        datamodule(tiny_model_dir, train, val=train, test=train).label_names
    assert "train.csv" in str(info.value) and "'label'" in str(info.value) and "at least two" in str(info.value)


# -- seeded split --------------------------------------------------------------------------------


def _split_texts(tokenizer: str, train: Path, seed: int, **kwargs) -> dict[str, list[str]]:
    tables = datamodule(tokenizer, train, split_seed=seed, **kwargs).tables()
    return {split: [row["text"] for row in table.rows] for split, table in tables.items()}


def test_seeded_split(tiny_model_dir, tmp_path):
    n = 60
    train = write_csv(tmp_path / "train.csv", [{"text": f"record {i}", "label": "ab"[i % 2]} for i in range(n)])
    first = _split_texts(tiny_model_dir, train, seed=1, val_fraction=0.2, test_fraction=0.1)
    again = _split_texts(tiny_model_dir, train, seed=1, val_fraction=0.2, test_fraction=0.1)
    other = _split_texts(tiny_model_dir, train, seed=2, val_fraction=0.2, test_fraction=0.1)
    assert first == again
    assert set(first["val"]) != set(other["val"]) and set(first["test"]) != set(other["test"])

    for split in (first, other):
        sets = {name: set(texts) for name, texts in split.items()}
        assert all(len(sets[name]) == len(split[name]) for name in split)  # no duplicates
        assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"] or sets["val"] & sets["test"])
        assert sets["train"] | sets["val"] | sets["test"] == {f"record {i}" for i in range(n)}
        # The fractions are shares of the whole file.
        assert len(split["test"]) == round(0.1 * n) and len(split["val"]) == round(0.2 * n)
        assert sum(len(t) for t in split.values()) == n


def test_split_with_given_val_file_carves_only_test(tiny_model_dir, tmp_path):
    n = 20
    train = write_csv(tmp_path / "train.csv", [{"text": f"record {i}", "label": "ab"[i % 2]} for i in range(n)])
    val = write_csv(tmp_path / "val.csv", RECORDS)
    split = _split_texts(tiny_model_dir, train, seed=0, val=val, test_fraction=0.25)
    assert split["val"] == [r["text"] for r in RECORDS]
    assert len(split["test"]) == 5 and len(split["train"]) == 15
    assert not set(split["test"]) & set(split["train"])


def test_seeded_split_function():
    kept, carved = seeded_split(10, 0.3, seed=0)
    assert len(carved) == 3 and sorted(kept + carved) == list(range(10))
    assert seeded_split(10, 0.3, seed=0) == (kept, carved)
    assert len(seeded_split(10, 0.01, seed=0)[1]) == 1  # at least one
    with pytest.raises(DataError, match="cannot carve"):
        seeded_split(2, 0.9, seed=0)


# -- encoding ------------------------------------------------------------------------------------


def test_truncation_is_counted(tiny_model_dir, tmp_path):
    max_length = 8  # [CLS] + 6 words + [SEP] fit exactly
    lengths = [3, 6, 7, 12, 2, 20, 6, 9]  # in words; one token per word
    rows = [{"text": words(n, i), "label": "ab"[i % 2]} for i, n in enumerate(lengths)]
    train = write_csv(tmp_path / "train.csv", rows)
    val = write_csv(tmp_path / "val.csv", rows[:4])
    dm = datamodule(tiny_model_dir, train, val=val, test=val, max_length=max_length)
    dm.setup("fit")
    assert dm.report["train"]["truncated"] == sum(n + 2 > max_length for n in lengths) == 4
    assert dm.report["train"]["records"] == len(lengths)
    assert dm.report["val"]["truncated"] == sum(n + 2 > max_length for n in lengths[:4]) == 2
    encoded = [e["input_ids"] for e in dm.encoded("train")]
    assert [len(ids) for ids in encoded] == [min(n + 2, max_length) for n in lengths]
    sep = dm.tokenizer.sep_token_id
    assert all(ids[-1] == sep for ids in encoded)  # truncated records still end properly


def test_texts_and_pairs_tokenize_as_the_tokenizer_call_does(tiny_model_dir):
    """The Rust tokenizer is used directly only where it gives the transformers call's ids."""
    from transformers import AutoTokenizer

    from sft.data.rust_tokenizer import direct_backend, untruncated_ids

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts, pairs = [words(3, 1), "", words(12, 2) + " zzz"], [words(2, 4), words(1), ""]
    assert direct_backend(tokenizer) is not None
    for second in (None, pairs):
        expected = tokenizer(texts, second, truncation=False)
        assert untruncated_ids(tokenizer, texts, second) == {name: expected[name] for name in ("input_ids", "token_type_ids")}
    tokenizer(texts, truncation=True, max_length=4)  # leaves the Rust tokenizer truncating
    assert direct_backend(tokenizer) is None
    assert [len(ids) for ids in untruncated_ids(tokenizer, texts)["input_ids"]] == [5, 2, 15]
    # A tokenizer that returns no token type ids gets none.
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    assert untruncated_ids(tokenizer, texts, pairs) == {"input_ids": tokenizer(texts, pairs)["input_ids"]}

    class Marked(type(tokenizer)):  # a class whose call adds to the Rust tokenizer's ids (as LayoutLM's does)
        def __call__(self, *args, **kwargs):
            encoded = super().__call__(*args, **kwargs)
            encoded["input_ids"] = [ids + [self.unk_token_id] for ids in encoded["input_ids"]]
            return encoded

    marked = Marked.from_pretrained(tiny_model_dir)
    assert direct_backend(marked) is None
    assert [ids[-1] for ids in untruncated_ids(marked, texts)["input_ids"]] == [marked.unk_token_id] * 3


def test_pre_split_words_tokenize_as_the_tokenizer_call_does(tiny_model_dir):
    """NER's sentences go through the Rust tokenizer with the call's ids, type ids and word ids; a
    batch whose long sentence is windowed (a truncating call) leaves the next batch that path."""
    from transformers import AutoTokenizer

    from sft.data.rust_tokenizer import WordEncodings, direct_backend, encode_words
    from sft.data.token_classification import TokenClassificationProcessor

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    sentences = [words(3, 1).split(), ["zzz", "", words(1)], words(12, 2).split()]
    expected = tokenizer(sentences, is_split_into_words=True)
    encoded = encode_words(tokenizer, sentences)
    assert isinstance(encoded, WordEncodings)
    for name in ("input_ids", "token_type_ids"):
        assert encoded[name] == expected[name]
    assert [encoded.word_ids(i) for i in range(3)] == [expected.word_ids(i) for i in range(3)]

    processor = TokenClassificationProcessor(tokenizer, max_length=8, stride=2)
    long = Table("t.jsonl", [{"tokens": words(20, 3).split(), "tags": ["B-PER"] + ["O"] * 19}], ["t.jsonl:1"])
    processor.fit(long)
    examples, report = processor.encode(long)
    assert report.windows > 1 and direct_backend(tokenizer) is not None


def test_sentence_pairs(tiny_model_dir, tmp_path):
    rows = [{"premise": words(3, i), "hypothesis": words(2, i + 5), "label": "ab"[i % 2]} for i in range(4)]
    rows.append({"premise": words(10), "hypothesis": words(10, 3), "label": "a"})
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    dm = datamodule(tiny_model_dir, train, val=train, test=train, text_column="premise",
                    text_pair_column="hypothesis", max_length=12)
    dm.setup("fit")
    sep = dm.tokenizer.sep_token_id
    for example in dm.encoded("train"):
        ids, types = example["input_ids"], example["token_type_ids"]
        assert len(ids) == len(types) <= 12
        assert ids.count(sep) == 2  # both texts are there
        first_sep = ids.index(sep)
        assert set(types[: first_sep + 1]) == {0} and set(types[first_sep + 1:]) == {1}
    assert [len(e["input_ids"]) for e in dm.encoded("train")][:4] == [3 + 2 + 3] * 4
    assert dm.report["train"]["truncated"] == 1

    # Without a pair column the same premise is a single text: no second segment.
    single = datamodule(tiny_model_dir, train, val=train, test=train, text_column="premise")
    single.setup("fit")
    assert all(set(e["token_type_ids"]) == {0} for e in single.encoded("train"))


def test_null_pair_text(tiny_model_dir, tmp_path):
    rows = [{"premise": "the film", "hypothesis": "the plot", "label": "ab"[i % 2]} for i in range(3)]
    rows[1]["hypothesis"] = None
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    dm = datamodule(tiny_model_dir, train, val=train, test=train, text_column="premise", text_pair_column="hypothesis")
    with pytest.raises(DataError, match=r"train\.jsonl:2: field 'hypothesis' is missing or null"):
        dm.setup("fit")


def test_worker_count_auto_follows_the_cpus(monkeypatch):
    import os

    from sft.data.datamodule import worker_count
    from sft.tasks import ConfigError

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert worker_count("auto") == 15  # one CPU stays with the training process
    assert worker_count("auto", devices=4) == 3  # a node's CPUs are shared by its devices' processes
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert worker_count("auto") == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(256)), raising=False)
    assert worker_count("auto") == 16
    assert worker_count(3) == 3 and worker_count("0") == 0
    with pytest.raises(ConfigError, match="data.num_workers='many'"):
        worker_count("many")


# -- text encodings -------------------------------------------------------------------------------
@pytest.mark.parametrize("name,lines", [
    ("latin1.csv", [b"text,label", b"fine film,pos", b"caf\xe9 scene,neg"]),
    ("latin1.jsonl", [b'{"text": "fine", "label": "pos"}', b'{"text": "caf\xe9", "label": "neg"}', b""]),
    ("latin1.tsv.gz", [b"text\tlabel", b"fine film\tpos", b"caf\xe9 scene\tneg"]),
    ("latin1.conll", [b"EU B-ORG", b"", b"Caf\xe9 O"]),
])
def test_non_utf8_input_names_file_and_line(tmp_path, name, lines):
    import gzip

    data = b"\n".join(lines) + b"\n"
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    line = next(i for i, text in enumerate(lines, start=1) if b"\xe9" in text)
    with pytest.raises(DataError, match=rf"{path.name}:{line}: not valid UTF-8 text \(byte 0xe9 at column \d+\); set data.encoding"):
        read_table(path)
    # Read as what it is, the same file gives the accented word.
    rows = list(read_table(path, encoding="latin-1").rows)
    assert "café" in json.dumps(rows, ensure_ascii=False).lower()


@pytest.mark.parametrize("name,text", [
    ("bom.csv", "text,label\nfine film,pos\n"),
    ("bom.jsonl", '{"text": "fine film", "label": "pos"}\n'),
    ("bom.json", '[{"text": "fine film", "label": "pos"}]'),
])
def test_utf8_byte_order_mark_is_accepted(tmp_path, name, text):
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    table = read_table(path)
    assert table.columns == ["text", "label"] and table.rows[0]["text"] == "fine film"
    table.require_columns({"data.text_column": "text"})
