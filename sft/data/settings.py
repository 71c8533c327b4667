"""The data settings every task shares (`data.*` keys besides `data.task` and the task's own)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Union

from sft.options import option


@dataclass
class DataSettings:
    tokenizer: Optional[str] = option(None, "the tokenizer (text tasks: the backbone's, model.pretrained)")
    train_file: Union[str, list, None] = option(None, "your training file (CSV, TSV, JSON, JSONL, Parquet, CoNLL), a glob "
                                                 "or list of shards, a save_to_disk folder, or a folder")
    val_file: Union[str, list, None] = option(None, "validation file(s) (null: the source's val split, or carve val_fraction off train)")
    test_file: Union[str, list, None] = option(None, "test file(s) (null: the source's test split, or carve test_fraction off train)")
    dataset: Optional[str] = option(None, "a catalog data set, or hf:OWNER/NAME (a Hugging Face dataset), instead of train_file")
    dataset_config: Optional[str] = option(None, "hf: datasets: the configuration (subset) name")
    train_split: str = option("train", "hf: datasets and DatasetDict folders: the training split")
    val_split: Optional[str] = option("validation", "hf: datasets and DatasetDict folders: the validation split (absent: carved)")
    test_split: Optional[str] = option("test", "hf: datasets and DatasetDict folders: the test split (absent: carved)")
    encoding: str = option("utf-8", "text encoding of CSV/TSV/JSON/JSONL/CoNLL files (e.g. latin-1)")
    num_proc: Optional[int] = option(None, "processes that tokenize large splits (null: the CPUs available)", min=1)
    streaming: bool = option(False, "read train_file as a stream, encoded on the fly (corpora larger than memory or disk)")
    text_column: str = option("text", "field holding the text")
    text_pair_column: Optional[str] = option(None, "field holding the second text of a pair")
    label_column: Union[str, list] = option("label", "field holding the label (regression: one or several columns)")
    val_fraction: float = option(0.1, "share of train held out for validation when val_file is null", above=0.0, below=1.0)
    test_fraction: float = option(0.1, "share of train held out for testing when test_file is null", above=0.0, below=1.0)
    split_seed: int = option(42, "seed of the train/val/test split")
    max_length: int = option(128, "longest tokenized input", min=1)
    batch_size: int = option(32, "training batch size per device", min=1)
    eval_batch_size: Optional[int] = option(None, "validation/test batch size per device (null: batch_size)", min=1)
    num_workers: Union[int, Literal["auto"]] = option(0, "DataLoader workers, or auto", min=0)
    pad_to_multiple_of: Optional[int] = option(8, "pad batches to a multiple of this length", min=1)
    group_by_length: bool = option(True, "batch training examples of similar length")
    label_names: Optional[list] = option(None, "fix the label map instead of learning it from train")
    trust_remote_code: bool = option(False, "allow custom tokenizer code from the model folder")
    max_train_records: Optional[int] = option(None, "train on a seeded subset of this many records", min=1)
    cache_encoded: bool = option(True, "keep tokenized splits in $SFT_CACHE/encoded between runs")
    allow_unknown_tokens: bool = option(False, "train on although over 20% of tokens are the tokenizer's unknown token")
    input_spec: Optional[dict] = option(None, "images: size, mean, std, ... the backbone expects (set from the model)")

