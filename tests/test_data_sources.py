"""The Arrow data layer: shards, saved datasets, hf: datasets offline, parallel encoding, streaming."""

from __future__ import annotations

import csv
import glob
import json
import os
import shutil
from pathlib import Path

import hydra
import pytest

from sft.data.datamodule import SFTDataModule
from sft.data.sources import DataError, read_table
from sft.errors import ConfigError
from tests.conftest import compose_config, write_sentiment_csv


@pytest.fixture(autouse=True)
def own_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("SFT_CACHE", str(tmp_path / "sft-cache"))


def sentiment_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# -- sources -------------------------------------------------------------------------------------------
def test_glob_and_list_of_shards_read_as_one_table(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = sentiment_rows(write_sentiment_csv(tmp_path / "all.csv", rows=30))
    (tmp_path / "shards").mkdir()
    for k in range(3):
        pq.write_table(pa.Table.from_pylist(rows[k * 10:(k + 1) * 10]), tmp_path / "shards" / f"train-{k}.parquet")
    table = read_table(str(tmp_path / "shards" / "train-*.parquet"), "data.train_file")
    assert list(table.rows) == rows
    assert table.where(0).endswith("train-0.parquet row 1") and table.where(25).endswith("train-2.parquet row 6")
    # A list of files (any mix of formats) keeps its order.
    for k, part in enumerate((rows[:12], rows[12:])):
        with open(tmp_path / f"part{k}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in part)
    listed = read_table([str(tmp_path / "part1.jsonl"), str(tmp_path / "part0.jsonl")], "data.train_file")
    assert list(listed.rows) == rows[12:] + rows[:12]
    assert listed.where(18) == f"{tmp_path / 'part0.jsonl'}:1"
    with pytest.raises(DataError, match=r"data.train_file: the pattern .*nothing-\*\.csv' matches no file"):
        read_table(str(tmp_path / "nothing-*.csv"), "data.train_file")



def test_records_cache_keeps_the_most_recently_used_files_under_its_bound(tmp_path, monkeypatch):
    files = [write_sentiment_csv(tmp_path / f"part{k}.csv", rows=20, seed=k) for k in range(3)]
    records = tmp_path / "sft-cache" / "records"
    tables = [read_table(str(files[0]), "data.train_file"), read_table(str(files[1]), "data.train_file")]
    one = max(p.stat().st_size for p in records.glob("*.arrow"))
    # Room for two files.
    monkeypatch.setenv("SFT_RECORDS_CACHE_GB", str(2.5 * one / 2**30))
    for k in (0, 1):  # part0 written first, then part1
        os.utime(next(records.glob(f"part{k}.csv-*.arrow")), (k + 1, k + 1))
    read_table(str(files[0]), "data.train_file")  # used again: now the most recent
    tables.append(read_table(str(files[2]), "data.train_file"))
    kept = sorted(p.name.split(".csv-")[0] for p in records.glob("*.arrow"))
    assert kept == ["part0", "part2"] and len(list(records.glob("*.json"))) == 2
    # A table read before its file was removed still reads (its memory map holds the data); read
    # again, the file is parsed anew.
    assert list(tables[1].rows) == sentiment_rows(files[1])
    assert list(read_table(str(files[1]), "data.train_file").rows) == sentiment_rows(files[1])

def test_a_bad_record_in_a_shard_is_named_by_file_and_line(tiny_model_dir, tmp_path):
    rows = sentiment_rows(write_sentiment_csv(tmp_path / "all.csv", rows=40))
    rows[37]["label"] = ""
    for k in range(2):
        with open(tmp_path / f"s{k}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows[k * 20:(k + 1) * 20])
    dm = SFTDataModule(task="text_classification", tokenizer=tiny_model_dir, train_file=[str(tmp_path / "s0.jsonl"),
                       str(tmp_path / "s1.jsonl")], val_fraction=0.1, test_fraction=0.1)
    with pytest.raises(DataError, match=rf"{tmp_path / 's1.jsonl'}:18: field 'label' is empty"):
        dm.setup("fit")


def test_save_to_disk_folders(tiny_model_dir, tmp_path):
    from datasets import Dataset, DatasetDict

    rows = sentiment_rows(write_sentiment_csv(tmp_path / "all.csv", rows=60))
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "one"))
    dm = SFTDataModule(task="text_classification", tokenizer=tiny_model_dir, train_file=str(tmp_path / "one"))
    dm.setup("fit")
    assert len(dm.tables()["train"]) == 48 and len(dm.tables()["val"]) == 6  # carved as from a file
    assert dm.tables()["train"].where(0).startswith(f"{tmp_path / 'one'} row ")

    DatasetDict({"train": Dataset.from_list(rows[:40]), "validation": Dataset.from_list(rows[40:50]),
                 "test": Dataset.from_list(rows[50:])}).save_to_disk(str(tmp_path / "splits"))
    dm = SFTDataModule(task="text_classification", tokenizer=tiny_model_dir, train_file=str(tmp_path / "splits"))
    dm.setup()
    assert [len(dm.tables()[s]) for s in ("train", "val", "test")] == [40, 10, 10]
    assert [e["labels"] for e in dm.encoded("test")] == [dm.label_names.index(r["label"]) for r in rows[50:]]
    with pytest.raises(DataError, match=r"has the splits \['train', 'validation', 'test'\], not 'training'"):
        SFTDataModule(task="text_classification", tokenizer=tiny_model_dir, train_file=str(tmp_path / "splits"),
                      train_split="training").setup("fit")


def test_class_label_columns_read_as_their_names_in_the_datasets_order(tiny_model_dir, tmp_path):
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    rows = sentiment_rows(write_sentiment_csv(tmp_path / "all.csv", rows=60))
    features = Features({"text": Value("string"), "label": ClassLabel(names=["pos", "neg"])})  # not alphabetical

    def split(part: list[dict]) -> Dataset:
        return Dataset.from_dict({"text": [r["text"] for r in part], "label": [r["label"] for r in part]}, features)

    DatasetDict({"train": split(rows[:40]), "validation": split(rows[40:50]),
                 "test": split(rows[50:])}).save_to_disk(str(tmp_path / "splits"))
    dm = SFTDataModule(task="text_classification", tokenizer=tiny_model_dir, train_file=str(tmp_path / "splits"))
    dm.setup()
    assert dm.label_names == ["pos", "neg"]  # the dataset's names, in its order (ids 0 and 1 keep their meaning)
    assert dm.tables()["test"].rows[0]["label"] == rows[50]["label"]
    assert [e["labels"] for e in dm.encoded("test")] == [["pos", "neg"].index(r["label"]) for r in rows[50:]]
    unlabelled = Dataset.from_dict({"text": ["an unlabelled review"], "label": [-1]}, features)
    DatasetDict({"train": split(rows[:40]), "validation": split(rows[40:50]),
                 "test": unlabelled}).save_to_disk(str(tmp_path / "unlabelled"))
    with pytest.raises(DataError, match=r"unlabelled \[test\] row 1: field 'label' is empty"):
        SFTDataModule(task="text_classification", tokenizer=tiny_model_dir, train_file=str(tmp_path / "unlabelled")).setup()


def cache_hub_dataset(cache: Path, repo: str, splits: dict[str, Path]) -> None:
    """Put `repo` into a datasets cache as a run that once downloaded it leaves it (so that it loads offline)."""
    import datasets

    builder = datasets.load_dataset_builder("csv", data_files={k: str(v) for k, v in splits.items()},
                                            cache_dir=str(cache.parent / "build"))
    builder.download_and_prepare()
    owner, name = repo.split("/")
    target = cache / f"{owner}___{name}" / "default" / "0.0.0" / Path(builder.cache_dir).name
    shutil.copytree(builder.cache_dir, target)
    for file in glob.glob(str(target / "csv-*")):
        os.rename(file, file.replace("/csv-", f"/{name}-"))


def test_hf_dataset_offline_from_the_local_cache(tiny_model_dir, tmp_path, monkeypatch):
    import datasets

    rows = sentiment_rows(write_sentiment_csv(tmp_path / "all.csv", rows=50))
    splits = {}
    for split, part in (("train", rows[:40]), ("test", rows[40:])):
        with open(tmp_path / f"{split}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, ["text", "label"])
            writer.writeheader()
            writer.writerows(part)
        splits[split] = tmp_path / f"{split}.csv"
    cache = tmp_path / "hf-datasets"
    cache_hub_dataset(cache, "acme/reviews", splits)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # as the documented command composes it: data=text_classification data.dataset=hf:OWNER/NAME
    cfg = compose_config("train", ["data=text_classification", "data.dataset=hf:acme/reviews",
                                   f"model.pretrained={tiny_model_dir}"], tmp_path / "run")
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup()
    assert len(dm.tables()["test"]) == 10 and len(dm.tables()["train"]) + len(dm.tables()["val"]) == 40
    assert dm.tables()["test"].where(0) == "hf:acme/reviews test row 1"
    with pytest.raises(DataError, match=r"data.dataset=hf:acme/missing: neither the Hugging Face hub \(offline mode is on\) "
                                        r"nor the local datasets cache .*data.train_file=PATH"):
        SFTDataModule(task="text_classification", tokenizer=tiny_model_dir, dataset="hf:acme/missing").setup("fit")
    without_data = compose_config("train", ["data=text_classification", f"model.pretrained={tiny_model_dir}"],
                                  tmp_path / "run")
    with pytest.raises(hydra.errors.InstantiationException, match=r"no training data given; set exactly one of data.train_file=PATH .* "
                                          r"or hf:OWNER/NAME"):
        hydra.utils.instantiate(without_data.data)


# -- encoding ------------------------------------------------------------------------------------------
def test_parallel_encoding_matches_one_process_and_names_bad_records(tiny_model_dir, tmp_path, monkeypatch):
    from sft.data import examples

    monkeypatch.setattr(examples, "PARALLEL_FROM", 100)  # a worker pool for a small file too
    monkeypatch.setattr(examples, "BATCH_RECORDS", 50)
    data = write_sentiment_csv(tmp_path / "train.csv", rows=600)
    kwargs = dict(task="text_classification", tokenizer=tiny_model_dir, train_file=str(data), cache_encoded=False)
    one = SFTDataModule(**kwargs, num_proc=1)
    two = SFTDataModule(**kwargs, num_proc=2)
    for dm in (one, two):
        dm.setup("fit")
    assert list(two.encoded("train").examples) == list(one.encoded("train").examples)
    assert two.report == one.report and two.report["train"]["records"] == 480
    lines = data.read_text().splitlines()
    lines[590] = "some words,"  # an empty label late in the file, encoded by the second process
    data.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"{data}:591: field 'label' is empty"):
        SFTDataModule(**kwargs, num_proc=2, val_fraction=0.01, test_fraction=0.01).setup("fit")


# -- streaming -----------------------------------------------------------------------------------------
def stream_kwargs(tmp_path: Path) -> dict:
    from tests.chat_fixtures import make_tokenizer, write_chat_jsonl

    tokenizer = tmp_path / "tok"
    tokenizer.mkdir()
    make_tokenizer(tokenizer)
    train = write_chat_jsonl(tmp_path / "train.jsonl", rows=300)
    val = write_chat_jsonl(tmp_path / "val.jsonl", rows=16, seed=1)
    return dict(task="causal_lm", tokenizer=str(tokenizer), train_file=str(train), val_file=str(val),
                test_file=str(val), max_length=64, batch_size=4, packing=True, streaming=True, audit_examples=0)


def stream_batches(dm: SFTDataModule) -> list[list[list[int]]]:
    return [batch["input_ids"].tolist() for batch in dm.train_dataloader()]


def conversations(batches) -> int:
    return sum(row.count(2) for batch in batches for row in batch)  # one <|im_end|> (id 2) per turn


def test_stream_covers_each_record_once_across_workers_and_ranks(tmp_path):
    from sft.data.streaming import StreamedBatches

    kwargs = stream_kwargs(tmp_path)
    one = SFTDataModule(**kwargs)
    one.setup("fit")
    single = stream_batches(one)
    two = SFTDataModule(**kwargs, num_workers=2)
    two.setup("fit")
    assert conversations(stream_batches(two)) == conversations(single) > 0
    table = one.tables()["train"]
    shards = [StreamedBatches(table, one.processor, None, 4, rank=rank, world_size=2)._records(rank, 2)
              for rank in range(2)]
    seen = [{where for where, _ in shard} for shard in shards]
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 300


def test_stream_shards_take_every_nth_record_and_parse_only_their_own(tmp_path):
    from sft.data.sources import StreamTable

    first = tmp_path / "a.jsonl"
    first.write_text("".join(json.dumps({"text": f"r{i}", "label": "x"}) + "\n" + ("\n" if i == 2 else "")
                             for i in range(5)))  # a blank line is no record
    second = write_sentiment_csv(tmp_path / "b.csv", rows=4)
    table = StreamTable([first, second], "data.train_file")
    everything = list(table.records())
    assert len(everything) == 9 and everything[3][0] == f"{first}:5" and everything[5][0] == f"{second}:2"
    for shards in (1, 2, 3):
        parts = [list(table.records(shard, shards)) for shard in range(shards)]
        assert [everything[i::shards] for i in range(shards)] == parts
    assert list(table.records(1, 2, limit=6)) == everything[1:6:2]
    # a broken line is the error of the shard that owns it, named by file and line; the others never parse it
    lines = first.read_text().splitlines()
    lines[4] = "{not json"  # record 3: shard 1 of 2
    first.write_text("\n".join(lines) + "\n")
    assert [where for where, _ in table.records(0, 2)] == [where for where, _ in everything[0::2]]
    with pytest.raises(DataError, match=rf"{first}:5: not valid JSON"):
        list(table.records(1, 2))


def test_every_kind_of_table_reads_in_batches_with_its_locations(tmp_path):
    from sft.data.sources import StreamTable, Table

    csv_file = write_sentiment_csv(tmp_path / "train.csv", rows=23)
    arrow = read_table(str(csv_file), "data.train_file")
    expected = [(arrow.where(i), row) for i, row in enumerate(arrow.rows)]
    assert expected[4][0] == f"{csv_file}:6"
    in_memory = Table(str(csv_file), [row for _, row in expected], [where for where, _ in expected], arrow.columns)
    for table in (arrow, in_memory, StreamTable([csv_file], "data.train_file")):
        batches = list(table.in_batches(size=5))
        assert [len(b) for b in batches] == [5, 5, 5, 5, 3], type(table)
        assert [(b.where(i), b.rows[i]) for b in batches for i in range(len(b))] == expected, type(table)
    selected = arrow.subset([7, 2, 19])
    assert [(b.where(i), b.rows[i]) for b in selected.in_batches(size=2) for i in range(len(b))] == \
        [expected[7], expected[2], expected[19]]


def test_stream_resumes_with_the_same_batches(tmp_path):
    kwargs = stream_kwargs(tmp_path)
    for workers in (0, 2):
        dm = SFTDataModule(**kwargs, num_workers=workers)
        dm.setup("fit")
        straight = stream_batches(dm)
        resumed = SFTDataModule(**kwargs, num_workers=workers)
        resumed.load_state_dict({"train_order": {"epoch": 0, "batches_done": 7}})
        resumed.setup("fit")
        assert stream_batches(resumed) == straight[7:], workers
    loader = dm.train_dataloader()
    first, second = ([b["input_ids"].tolist() for b in loader] for _ in range(2))
    assert first == straight and second != first  # each pass (epoch) has its own order


def test_stream_steps_carry_their_token_count_and_ranks_stop_together():
    import torch

    from sft.data.streaming import step_windows

    def micro_batch(supervised: int) -> dict:
        labels = torch.full((2, 8), -100)
        labels.view(-1)[1:supervised + 1] = 1  # position 0 is never a target
        return {"labels": labels}

    def pass_of(tokens, accumulate, done=0, fewest=None):
        return [(int((b["labels"] != -100).sum()), round(float(b["loss_denominator"]), 4))
                for b in step_windows(iter([micro_batch(t) for t in tokens]), accumulate, done, True, fewest)]

    # steps of 3 micro-batches, the last one short: every micro-batch carries its step's tokens / 3
    assert pass_of([1, 2, 3, 4, 5, 6, 7], 3) == [(1, 2.0), (2, 2.0), (3, 2.0), (4, 5.0), (5, 5.0), (6, 5.0), (7, 2.3333)]
    # a pass resumed after 4 trained micro-batches starts inside a step (Lightning counts steps from the epoch start)
    assert pass_of([5, 6, 7], 3, done=4) == [(5, 3.6667), (6, 3.6667), (7, 2.3333)]
    # under DDP another rank has only one micro-batch left for the last step: this rank trains one, not two
    asked = []

    def other_rank_has_one_left(count: int) -> int:
        asked.append(count)
        return min(count, 1) if len(asked) == 3 else count

    assert [t for t, _ in pass_of([1, 2, 3, 4, 5, 6, 7, 8], 3, fewest=other_rank_has_one_left)] == [1, 2, 3, 4, 5, 6, 7]
    assert asked == [3, 3, 2]
    # a pass that ends on a step boundary asks once more and stops on every rank alike
    asked.clear()
    assert len(pass_of([1, 2, 3], 3, fewest=lambda n: asked.append(n) or n)) == 3 and asked == [3, 0]


def test_streamed_ddp_ranks_with_unequal_batches_keep_training_past_the_stream_end(tiny_model_dir, tmp_path):
    """49 records over 2 ranks: 25 and 24, so 7 and 6 batches of 4 a pass. Without an agreed end, rank 0
    would wait forever in its seventh step's all-reduce."""
    import subprocess
    import sys

    import torch

    from tests.conftest import tiny_overrides

    root = Path(__file__).resolve().parents[1]
    data = write_sentiment_csv(tmp_path / "train.csv", rows=49)
    held = write_sentiment_csv(tmp_path / "held.csv", rows=8, seed=3)
    overrides = tiny_overrides(tiny_model_dir, data, [
        "trainer=ddp_sim", "trainer.max_steps=15", "trainer.max_epochs=5", "data.batch_size=4", "data.streaming=true", f"data.val_file={held}",
        f"data.test_file={held}", "data.num_workers=0", "callbacks.early_stopping=null", "logger=none", "test=false",
        f"hydra.run.dir={tmp_path / 'run'}"])
    proc = subprocess.run([sys.executable, str(root / "train.py"), *overrides], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 15
    # two passes ended (steps 6 and 12), each leaving rank 0's seventh batch untrained, and said so
    assert output.count("1 micro-batch(es) at the end of this pass left untrained on this rank") == 2, output[-3000:]


def test_stream_resumes_exactly_after_a_worker_ran_out(tmp_path):
    """Worker 0 gets the long conversations (many packed rows), worker 1 the short ones, so worker 1
    runs out first and the DataLoader's turns change there; a resume from any point of the pass,
    with the per-worker counts a checkpoint records, still continues with the same batches."""
    kwargs = stream_kwargs(tmp_path)
    skewed = tmp_path / "skewed.jsonl"
    with open(skewed, "w") as f:
        for i in range(120):
            answer = " ".join(["red"] * (25 if i % 2 == 0 else 2))
            f.write(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": answer}]}) + "\n")
    kwargs["train_file"] = str(skewed)
    dm = SFTDataModule(**kwargs, num_workers=2)
    dm.setup("fit")
    straight = stream_batches(dm)
    taken = dm._stream.taken  # the worker of each batch, in the order trained
    assert taken[:4] == [0, 1, 0, 1] and taken[-3:] == [0, 0, 0]  # worker 1 ran out well before the end
    for done in range(len(straight)):
        resumed = SFTDataModule(**kwargs, num_workers=2)
        resumed.load_state_dict({"train_order": {"epoch": 0, "batches_done": done,
                                                 "worker_batches": dm._stream.trained_counts(done)}})
        resumed.setup("fit")
        assert stream_batches(resumed) == straight[done:], done


def test_streamed_training_runs_and_needs_max_steps(tiny_model_dir, tmp_path):
    from lightning.pytorch.callbacks import Callback

    from sft.cli import train
    from tests.conftest import compose_config, tiny_overrides

    data = write_sentiment_csv(tmp_path / "train.csv", rows=200)
    held = write_sentiment_csv(tmp_path / "held.csv", rows=40, seed=3)
    streamed = ["data.streaming=true", f"data.val_file={held}", f"data.test_file={held}", "data.num_workers=0"]
    validations = []

    class CountValidations(Callback):
        def on_validation_end(self, trainer, pl_module):
            validations.append(trainer.global_step)

    # the default share of an epoch (0.5) is a share of the run for a stream: validation at steps 3 and 6
    cfg = compose_config("train", tiny_overrides(tiny_model_dir, data, streamed + [
        "trainer.max_steps=6", "trainer.val_check_interval=0.5", "trainer.accumulate_grad_batches=2"]), tmp_path / "run")
    metrics = train(cfg, extra_callbacks=[CountValidations()])
    assert validations == [3, 6] and (cfg.trainer.val_check_interval, cfg.trainer.check_val_every_n_epoch) == (6, None)
    assert metrics["test/acc"] >= 0 and (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()
    with pytest.raises(ConfigError, match="data.streaming=true: set trainer.max_steps"):
        train(compose_config("train", tiny_overrides(tiny_model_dir, data, streamed), tmp_path / "run2"))
    with pytest.raises(ConfigError, match="data.streaming=true: set data.val_file"):
        train(compose_config("train", tiny_overrides(tiny_model_dir, data, ["data.streaming=true", "trainer.max_steps=2"]),
                             tmp_path / "run3"))
