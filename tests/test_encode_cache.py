"""Tokenized splits are reused from disk only while nothing that shaped them has changed."""

from __future__ import annotations

import os

import pytest

from sft.data.datamodule import SFTDataModule
from tests.conftest import write_sentiment_csv


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("SFT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "encoded"


def encode_calls(monkeypatch) -> list:
    """Counts the processor's encode() calls (the work the cache saves)."""
    from sft.data.text_classification import TextClassificationProcessor

    calls = []
    original = TextClassificationProcessor.encode

    def counting(self, table, *args, **kwargs):
        calls.append(len(table))
        return original(self, table, *args, **kwargs)

    monkeypatch.setattr(TextClassificationProcessor, "encode", counting)
    return calls


def entries(cache_root) -> list:
    return [entry for entry in cache_root.iterdir() if entry.is_dir()] if cache_root.exists() else []


def datamodule(tokenizer: str, train_file, **options) -> SFTDataModule:
    dm = SFTDataModule(task="text_classification", tokenizer=tokenizer, train_file=str(train_file), **options)
    dm.setup("fit")
    return dm


def test_second_run_reads_the_cache(tiny_model_dir, tmp_path, cache_root, monkeypatch):
    data = write_sentiment_csv(tmp_path / "train.csv", rows=60)
    calls = encode_calls(monkeypatch)
    first = datamodule(tiny_model_dir, data)
    assert sum(calls) >= 54 and len(entries(cache_root)) == 2  # train (48) and val (6) encoded, then kept
    calls.clear()
    second = datamodule(tiny_model_dir, data, batch_size=4, num_workers=0, num_proc=2)  # batching does not matter
    assert calls == []
    for split in ("train", "val"):
        assert list(second.encoded(split).examples) == list(first.encoded(split).examples)
    assert second.report == first.report


@pytest.mark.parametrize("change", ["file", "max_length", "split_seed", "tokenizer"])
def test_any_change_that_shapes_the_examples_encodes_again(tiny_model_dir, tmp_path, cache_root, monkeypatch, change):
    data = write_sentiment_csv(tmp_path / "train.csv", rows=60)
    datamodule(tiny_model_dir, data)
    calls = encode_calls(monkeypatch)
    options, tokenizer = {}, tiny_model_dir
    if change == "file":
        write_sentiment_csv(data, rows=60, seed=1)  # same size, new content and time
        os.utime(data, ns=(os.stat(data).st_atime_ns, os.stat(data).st_mtime_ns + 1_000_000))
    elif change == "max_length":
        options["max_length"] = 8
    elif change == "split_seed":
        options["split_seed"] = 7
    else:  # the same vocabulary, but no lower-casing: other ids for the same text
        from transformers import BertTokenizerFast

        tokenizer = str(tmp_path / "cased")
        BertTokenizerFast(vocab=os.path.join(tiny_model_dir, "vocab.txt"), do_lower_case=False).save_pretrained(tokenizer)
    datamodule(tokenizer, data, **options)
    assert sum(calls) >= 54  # both splits encoded again


def test_cache_can_be_turned_off(tiny_model_dir, tmp_path, cache_root, monkeypatch):
    data = write_sentiment_csv(tmp_path / "train.csv", rows=60)
    calls = encode_calls(monkeypatch)
    datamodule(tiny_model_dir, data, cache_encoded=False)
    encoded_once = sum(calls)
    datamodule(tiny_model_dir, data, cache_encoded=False)
    assert encoded_once >= 54 and sum(calls) == 2 * encoded_once and not entries(cache_root)


def test_torn_entry_is_encoded_again(tiny_model_dir, tmp_path, cache_root, monkeypatch):
    data = write_sentiment_csv(tmp_path / "train.csv", rows=60)
    first = datamodule(tiny_model_dir, data)
    for entry in entries(cache_root):
        report = entry / "report.pkl"
        report.write_bytes(report.read_bytes()[:100])
    calls = encode_calls(monkeypatch)
    again = datamodule(tiny_model_dir, data)
    assert sum(calls) >= 54 and list(again.encoded("train").examples) == list(first.encoded("train").examples)


def test_chat_audit_is_shown_for_a_cached_split(tmp_path, cache_root, caplog):
    """The audit lines (supervised tokens of the first records) appear on every run, cached or not."""
    import logging

    from tests.chat_fixtures import make_tokenizer, write_chat_jsonl

    model_dir = tmp_path / "tok"
    model_dir.mkdir()
    make_tokenizer(model_dir)
    data = write_chat_jsonl(tmp_path / "chat.jsonl", rows=30)
    for run in range(2):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="sft.data.chat"):
            dm = SFTDataModule(task="causal_lm", tokenizer=str(model_dir), train_file=str(data), max_length=64)
            dm.setup("fit")
        assert sum("[audit]" in r.getMessage() for r in caplog.records) == 2 * 2, run  # 2 records of train and val
    assert len(entries(cache_root)) == 2


def test_label_map_is_kept_for_the_same_training_records(tiny_model_dir, tmp_path, cache_root, monkeypatch):
    from sft.data.text_classification import TextClassificationProcessor

    data = write_sentiment_csv(tmp_path / "train.csv", rows=60, labels=("a", "b"))
    fits = []
    original = TextClassificationProcessor.fit

    def counting(self, train):
        fits.append(len(train))
        return original(self, train)

    monkeypatch.setattr(TextClassificationProcessor, "fit", counting)
    first = datamodule(tiny_model_dir, data)
    assert first.label_names == ["a", "b"] and len(fits) == 1
    second = datamodule(tiny_model_dir, data, batch_size=4)  # a loader setting: the same label map
    assert second.label_names == ["a", "b"] and len(fits) == 1  # not fitted again
    other_split = datamodule(tiny_model_dir, data, split_seed=7)  # other training records: fitted
    assert other_split.label_names == ["a", "b"] and len(fits) == 2
    extra = write_sentiment_csv(tmp_path / "extra.csv", rows=20, seed=1, labels=("a", "c"))
    data.write_text(data.read_text() + extra.read_text().split("\n", 1)[1])  # the same file, a new label
    changed = datamodule(tiny_model_dir, data)
    assert changed.label_names == ["a", "b", "c"] and len(fits) == 3
