"""The one LightningDataModule: reads files or a catalog data set, splits, encodes once, batches."""

from __future__ import annotations

import inspect
import logging
import os
from typing import Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from sft import assets
from sft.data.sources import DataError, Table, read_table
from sft.data.images import ImageClassificationProcessor
from sft.data.text_classification import TextClassificationProcessor
from sft.tasks import TASK_MODALITY, ConfigError

# The processor of each task: reads records of a Table, learns the label map from train, encodes.
PROCESSORS = {
    "text_classification": TextClassificationProcessor,
    "image_classification": ImageClassificationProcessor,
}

log = logging.getLogger(__name__)


def plain(value):
    """Mappings and sequences (e.g. OmegaConf containers) as plain dicts and lists, recursively."""
    from collections.abc import Mapping, Sequence

    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [plain(v) for v in value]
    return value


class EncodedDataset(Dataset):
    def __init__(self, examples: list[dict]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        return self.examples[index]


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(assets.resolve_pretrained(name_or_path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ConfigError(f"tokenizer of {name_or_path!r} has neither a pad nor an EOS token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def seeded_split(n: int, fraction: float, seed: int, of: Optional[int] = None) -> tuple[list[int], list[int]]:
    """(kept, carved) index lists of n records; the carved part holds round(of * fraction) records, at
    least one, where `of` (default n) is the count the fraction refers to (the whole training file)."""
    of = n if of is None else of
    order = np.random.default_rng(seed).permutation(n)
    carved = max(1, int(round(of * fraction)))
    if carved >= n:
        raise DataError(f"cannot carve {fraction:.0%} of {of} records off for evaluation and keep any for training "
                        f"({n} left before this split)")
    return sorted(order[carved:].tolist()), sorted(order[:carved].tolist())


class SFTDataModule(L.LightningDataModule):
    def __init__(
        self,
        task: str,
        tokenizer: Optional[str] = None,
        train_file: Optional[str] = None,
        val_file: Optional[str] = None,
        test_file: Optional[str] = None,
        dataset: Optional[str] = None,
        text_column: str = "text",
        text_pair_column: Optional[str] = None,
        label_column: str = "label",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 42,
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
        pad_to_multiple_of: Optional[int] = 8,
        label_names: Optional[list[str]] = None,
        trust_remote_code: bool = False,
        max_train_records: Optional[int] = None,
        **task_options,
    ):
        super().__init__()
        if task not in TASK_MODALITY:
            raise ConfigError(f"data.task={task!r} is not a known task; known tasks: {', '.join(TASK_MODALITY)}")
        if (train_file is None) == (dataset is None):
            raise ConfigError("set exactly one of data.train_file (your own file) and data.dataset (a catalog data set)"
                              + (f"; got train_file={train_file!r} and dataset={dataset!r}" if train_file else ""))
        # Absolute paths, so a checkpoint's record of its data still holds from another directory.
        train_file, val_file, test_file = (os.path.abspath(f) if f else None for f in (train_file, val_file, test_file))
        # Nested options (image transforms) as plain dicts and lists, so checkpoints load with weights_only.
        task_options = {k: plain(v) for k, v in task_options.items()}
        self.save_hyperparameters(logger=False)
        self._tables: dict[str, Table] = {}
        self._encoded: dict[str, EncodedDataset] = {}
        self._tokenizer = None
        self._processor: Optional[TextClassificationProcessor] = None
        self.report: dict[str, dict] = {}

    # -- data ------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        # Runs on one process per node: fetch catalog assets before the ranks read them.
        if self.hparams.dataset:
            assets.fetch(self.hparams.dataset)
        if self.hparams.tokenizer:
            assets.resolve_pretrained(self.hparams.tokenizer)

    def _train_source(self) -> tuple[str, str]:
        if self.hparams.dataset:
            return str(assets.fetch(self.hparams.dataset)), f"data.dataset={self.hparams.dataset}"
        return self.hparams.train_file, "data.train_file"

    def tables(self) -> dict[str, Table]:
        """train/val/test tables, read once; missing val/test splits are carved from train by seed."""
        if self._tables:
            return self._tables
        hp = self.hparams
        path, key = self._train_source()
        read = getattr(PROCESSORS[hp.task], "read_source", read_table)  # images: folders and arrays too
        train = read(path, key)
        in_file = len(train)  # data.*_fraction are shares of the whole training file
        tables = {}
        for split, file, fraction, salt in (("test", hp.test_file, hp.test_fraction, 1), ("val", hp.val_file, hp.val_fraction, 2)):
            if file is None and hp.dataset:
                file = assets.split_file(hp.dataset, split)  # a catalog data set's own split, where it has one
            if file is not None:
                tables[split] = read(file, f"data.{split}_file")
            else:
                kept, carved = seeded_split(len(train), fraction, hp.split_seed * 1000 + salt, of=in_file)
                tables[split] = train.subset(carved)
                train = train.subset(kept)
                rank_zero_info(f"[data] {split} split: {len(carved)} records carved from {path} by seed "
                               f"(data.{split}_fraction={fraction}, data.split_seed={hp.split_seed})")
        if hp.max_train_records and hp.max_train_records < len(train):
            kept, _ = seeded_split(len(train), 1 - hp.max_train_records / len(train), hp.split_seed * 1000 + 3)
            rank_zero_info(f"[data] train: a seeded subset of {len(kept)} of {len(train)} records "
                           f"(data.max_train_records={hp.max_train_records})")
            train = train.subset(kept)
        tables["train"] = train
        self._tables = tables
        return tables

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.hparams.tokenizer, self.hparams.trust_remote_code)
        return self._tokenizer

    @property
    def processor(self):
        if self._processor is None:
            import inspect

            hp = self.hparams
            cls = PROCESSORS[hp.task]
            known = set(inspect.signature(SFTDataModule.__init__).parameters)
            options = {k: v for k, v in hp.items() if k not in known}
            accepted = set(inspect.signature(cls).parameters)
            unknown = sorted(set(options) - accepted)
            if unknown:
                raise ConfigError(f"data.{unknown[0]} is not an option of the {hp.task} task")
            if TASK_MODALITY[hp.task] == "text":
                self._processor = cls(self.tokenizer, text_column=hp.text_column, text_pair_column=hp.text_pair_column,
                                      label_column=hp.label_column, max_length=hp.max_length,
                                      label_names=hp.label_names, **options)
            else:
                self._processor = cls(label_column=hp.label_column, label_names=hp.label_names, **options)
        return self._processor

    @property
    def label_names(self) -> list[str]:
        """The label map (index -> name), built from the training split unless given."""
        if self.processor.label_names is None:
            self.processor.fit(self.tables()["train"])
        return self.processor.label_names

    def encoded(self, split: str) -> EncodedDataset:
        if split not in self._encoded:
            self.label_names  # noqa: B018 - the label map must exist before encoding
            examples, report = self.processor.encode(self.tables()[split])
            self._encoded[split] = EncodedDataset(examples)
            self.report[split] = report.as_dict()
            if hasattr(report, "summary"):
                rank_zero_info(f"[data] {split}: {report.summary()}")
            else:
                rank_zero_info(f"[data] {split}: {report.records} records, mean {report.as_dict()['mean_tokens']} tokens, "
                               f"{report.truncated} truncated to data.max_length={self.hparams.max_length}")
        return self._encoded[split]

    def setup(self, stage: Optional[str] = None) -> None:
        splits = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["test"]}
        for split in splits.get(stage, ["train", "val", "test"]):
            self.encoded(split)

    # -- loaders ---------------------------------------------------------------------------
    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        hp = self.hparams
        batch_size = hp.batch_size if split == "train" else (hp.eval_batch_size or hp.batch_size)
        make_collator = self.processor.make_collator
        # Processors whose collator differs by split (image augmentation) take `train`.
        split_kwargs = {"train": split == "train"} if "train" in inspect.signature(make_collator).parameters else {}
        return DataLoader(
            self.encoded(split), batch_size=batch_size, shuffle=shuffle, num_workers=hp.num_workers,
            collate_fn=make_collator(hp.pad_to_multiple_of, **split_kwargs),
            pin_memory=torch.cuda.is_available(), persistent_workers=hp.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
