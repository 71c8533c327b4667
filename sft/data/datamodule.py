"""The one LightningDataModule: reads files or a catalog data set, splits, encodes once, batches."""

from __future__ import annotations

import json
import logging
import os
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch.utils.data import DataLoader, Dataset

from sft import assets
from sft.data import coverage, encode_cache
from sft.data.examples import ArrowExamples, Examples, encode_table
from sft.data.processor import Processor
from sft.data.samplers import ResumableSampler
from sft.data.settings import DataSettings
from sft.data.sources import DataError, StreamTable, Table, expand_files, hf_table, is_saved_dataset, load_hf_dataset, saved_dataset_splits
from sft.errors import ConfigError
from sft.options import as_dict, check_options
from sft.tasks import Task, get_task, plain

log = logging.getLogger(__name__)


class EncodedDataset(Dataset):
    """A split's examples for the DataLoader: memory-mapped Arrow rows (or a small in-memory list),
    completed by the processor's `batch_source` where it has one (e.g. embedded image bytes)."""

    def __init__(self, examples: Examples, complete: Optional[Callable[[list[dict]], list[dict]]] = None):
        self.examples = examples
        self.complete = complete

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0] if self.complete is not None else self.examples[index]

    def __getitems__(self, indices: list[int]) -> list[dict]:
        # One Arrow read per batch instead of one per example.
        if isinstance(self.examples, ArrowExamples):
            items = self.examples.many(indices)
        else:
            items = [self.examples[i] for i in indices]
        return self.complete(items) if self.complete is not None else items


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(assets.resolve_pretrained(name_or_path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ConfigError(f"tokenizer of {name_or_path!r} has neither a pad nor an EOS token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def worker_count(setting: int | str, devices: int = 1) -> int:
    """data.num_workers: a number, or "auto": the CPUs this process may use, shared by the
    devices of this node, less one for the training process itself (at most 16)."""
    if setting != "auto":
        try:
            return max(0, int(setting))
        except (TypeError, ValueError):
            raise ConfigError(f"data.num_workers={setting!r}: expected a number of worker processes or auto") from None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(16, cpus // max(1, devices) - 1))


def seeded_split(n: int, fraction: float, seed: int, of: Optional[int] = None) -> tuple[list[int], list[int]]:
    """(kept, carved) index lists of n records; the carved part holds round(of * fraction) records, at
    least one, where `of` (default n) is the count the fraction refers to (the whole training file)."""
    of = n if of is None else of
    order = np.random.default_rng(seed).permutation(n)
    carved = max(1, int(round(of * fraction)))
    if carved >= n:
        raise DataError(f"cannot carve {fraction:.0%} of {of} records off for evaluation and keep any for training "
                        f"({n} left before this split)")
    return np.sort(order[carved:]).tolist(), np.sort(order[:carved]).tolist()


def write_text_atomically(path: Path, text: str) -> None:
    """A reader (another launch, another rank) sees the whole file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def check_data_settings(task: Task, settings: dict) -> tuple[DataSettings, Any]:
    """The shared data settings and the task's own, checked: an unknown key, a wrong type or a value
    out of range is refused, naming the key."""
    shared, own_keys = set(DataSettings.__dataclass_fields__), set(task.DataOptions.__dataclass_fields__)
    unknown = sorted(set(settings) - shared - own_keys)
    if unknown:
        raise ConfigError(f"data.{unknown[0]} is not a data setting of data.task={task.name}; the task's own settings: "
                          f"{', '.join(sorted(own_keys)) or '(none)'}; shared settings: {', '.join(sorted(shared))}")
    common = check_options(DataSettings, {k: plain(v) for k, v in settings.items() if k in shared},
                           "data", f"data.task={task.name}")
    own = task.check_data_options({k: plain(v) for k, v in settings.items() if k in own_keys})
    return common, own


class SFTDataModule(L.LightningDataModule):
    """Reads, splits, encodes and batches the records of one task. `settings` are the shared
    `data.*` keys (sft.data.settings.DataSettings) plus the task's own (its DataOptions)."""

    def __init__(self, task: str, **settings):
        super().__init__()
        self.task = get_task(task)
        self.settings, self.options = check_data_settings(self.task, settings)
        if (self.settings.train_file is None) == (self.settings.dataset is None):
            given = ("no training data given" if self.settings.train_file is None else
                     f"both data.train_file={self.settings.train_file!r} and data.dataset={self.settings.dataset!r} given")
            raise ConfigError(f"{given}; set exactly one of data.train_file=PATH (your own file, a glob, a list or a "
                              "save_to_disk folder) and data.dataset=NAME (a catalog data set, or hf:OWNER/NAME for a "
                              "Hugging Face dataset)")
        # Absolute paths, so a checkpoint's record of its data still holds from another directory.
        for key in ("train_file", "val_file", "test_file"):
            value = getattr(self.settings, key)
            if isinstance(value, str):
                setattr(self.settings, key, os.path.abspath(value))
            elif value is not None:
                setattr(self.settings, key, [os.path.abspath(str(v)) for v in value])
        self.save_hyperparameters({"task": task, **as_dict(self.settings), **as_dict(self.options)}, logger=False)
        self._tables: dict[str, Table] = {}
        self._encoded: dict[str, EncodedDataset] = {}
        self._tokenizer = None
        self._tokenizer_digest: Optional[str] = None
        self._processor: Optional[Processor] = None
        self.report: dict[str, dict] = {}
        self._train_sampler: Optional[ResumableSampler] = None
        self._resume_order: Optional[dict] = None  # where a resumed run continues the data order
        self._stream = None  # data.streaming: the training stream

    # -- data ------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        # Runs on one process per node: fetch catalog assets before the ranks read them.
        if self.hparams.dataset and not self.hparams.dataset.startswith("hf:"):
            assets.fetch(self.hparams.dataset)
        if self.hparams.tokenizer:
            assets.resolve_pretrained(self.hparams.tokenizer)

    def _train_source(self) -> tuple[Any, str]:
        if self.hparams.dataset:
            if self.hparams.dataset.startswith("hf:"):
                return self.hparams.dataset, "data.dataset"
            return str(assets.fetch(self.hparams.dataset)), f"data.dataset={self.hparams.dataset}"
        return self.hparams.train_file, "data.train_file"

    def _source_splits(self) -> dict[str, Table]:
        """The named splits a source brings with it: a Hugging Face dataset's (hf:) or those of a
        DatasetDict folder given as data.train_file, as {train|val|test: table}."""
        hp = self.hparams
        wanted = {"train": hp.train_split, "val": hp.val_split, "test": hp.test_split}
        if hp.dataset and hp.dataset.startswith("hf:"):
            name = hp.dataset[3:]
            loaded = load_hf_dataset(name, hp.dataset_config)
            if hp.train_split not in loaded:
                raise DataError(f"data.dataset={hp.dataset} has the splits {sorted(loaded)}, not {hp.train_split!r}; "
                                f"set data.train_split")
            return {split: hf_table(loaded[name_], f"{hp.dataset} {name_}", hp.dataset)
                    for split, name_ in wanted.items() if name_ in loaded}
        train = hp.train_file
        if isinstance(train, str) and Path(train).is_dir() and is_saved_dataset(Path(train)) and saved_dataset_splits(Path(train)):
            from sft.data.sources import read_saved_dataset

            present = saved_dataset_splits(Path(train))
            if hp.train_split not in present:
                raise DataError(f"data.train_file: {train} has the splits {present}, not {hp.train_split!r}; "
                                f"set data.train_split")
            return {split: read_saved_dataset(Path(train), "data.train_file", name_)
                    for split, name_ in wanted.items() if name_ in present}
        return {}

    def tables(self) -> dict[str, Table]:
        """train/val/test tables, read once; missing val/test splits are carved from train by seed."""
        if self._tables:
            return self._tables
        hp = self.hparams
        path, key = self._train_source()
        read = partial(self.processor.read_source, encoding=hp.encoding)  # images, audio: folders and arrays too
        own = {} if hp.streaming else self._source_splits()
        if hp.streaming:
            return self._streamed_tables(path, key, read)
        train = own["train"] if "train" in own else read(path, key)
        in_file = len(train)  # data.*_fraction are shares of the whole training file
        tables = {}
        for split, file, fraction, salt in (("test", hp.test_file, hp.test_fraction, 1), ("val", hp.val_file, hp.val_fraction, 2)):
            if file is None and hp.dataset and not hp.dataset.startswith("hf:"):
                file = assets.split_file(hp.dataset, split)  # a catalog data set's own split, where it has one
            if file is not None:
                tables[split] = read(file, f"data.{split}_file")
            elif split in own:
                tables[split] = own[split]
                rank_zero_info(f"[data] {split} split: the source's own split {getattr(hp, f'{split}_split')!r} of "
                               f"{own[split].path} ({len(own[split])} records)")
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

    def _streamed_tables(self, path, key: str, read) -> dict[str, Table]:
        """data.streaming=true: the training files as a stream; validation and test read as usual."""
        hp = self.hparams
        if hp.dataset and hp.dataset.startswith("hf:"):
            raise ConfigError("data.streaming=true reads files (data.train_file); for a Hugging Face dataset, "
                              "save it to Parquet or JSONL shards and give those")
        tables: dict[str, Table] = {"train": StreamTable(expand_files(path, key), key, hp.encoding)}
        for split, file in (("val", hp.val_file), ("test", hp.test_file)):
            if file is None and hp.dataset:
                file = assets.split_file(hp.dataset, split)
            if file is None:
                raise ConfigError(f"data.streaming=true: set data.{split}_file (a stream cannot be split by "
                                  f"fraction: its length is unknown until it has been read)")
            tables[split] = read(file, f"data.{split}_file")
        self._tables = tables
        return tables

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.hparams.tokenizer, self.hparams.trust_remote_code)
        return self._tokenizer

    @property
    def processor(self) -> Processor:
        if self._processor is None:
            tokenizer = self.tokenizer if self.task.needs_tokenizer else None
            self._processor = self.task.make_processor(vars(self.settings), self.options, tokenizer)
        return self._processor

    @property
    def label_names(self) -> list[str]:
        """The label map (index -> name), built from the training split unless given."""
        if self.processor.label_names is None:
            train = self.tables()["train"]
            kept = self._label_map_entry(train)
            if kept is not None and kept.is_file():  # the same records and settings as a finished fit
                self.processor.label_names = json.loads(kept.read_text(encoding="utf-8"))
                rank_zero_info(f"[data] label map of {train.path}: {len(self.processor.label_names)} labels, "
                               f"kept from an earlier launch on the same records ({kept})")
            else:
                self.processor.fit(train)
                if kept is not None:
                    write_text_atomically(kept, json.dumps(self.processor.label_names, ensure_ascii=False))
        return self.processor.label_names

    def _label_map_entry(self, train: Table) -> Optional[Path]:
        """Where the label map fitted on these training records is kept between launches (None: it
        is not kept: the processor learns more than the label map, or the records have no fingerprint)."""
        if not self.processor.fit_sets_only_label_names or not self.hparams.cache_encoded or train.fingerprint() is None:
            return None
        settings = {k: v for k, v in self.hparams.items() if k not in encode_cache.LOADER_ONLY}
        return encode_cache.entry_path(assets.cache_root() / "label_maps", {
            "split": "train", "settings": settings, "records": train.fingerprint(),
            "processor": type(self.processor).__qualname__}).with_suffix(".json")

    @property
    def head_options(self) -> dict:
        """What the head needs learned from the training split besides the label map (e.g. the
        target statistics of regression); passed to the model with the label map."""
        return self.processor.learned_head_options(self.tables()["train"])

    def _encode_cache_entry(self, split: str) -> Optional[Path]:
        """Where this split's encoded examples are kept between runs (None: not cached)."""
        hp = self.hparams
        table = self.tables()[split]
        if not hp.cache_encoded or not self.task.cache_examples or table.fingerprint() is None:
            return None
        return encode_cache.entry_path(assets.cache_root() / "encoded", {
            "split": split,
            "settings": {k: v for k, v in hp.items() if k not in encode_cache.LOADER_ONLY},
            "label_names": self.processor.label_names,
            "records": table.fingerprint(),  # the records themselves: files (path, size, time) and selection
            "tokenizer": self._tokenizer_fingerprint(),
            "processor_state": self.processor.checkpoint_state(),
        })

    def _tokenizer_fingerprint(self) -> str:
        # Serializing the tokenizer costs tens of milliseconds: once per data module, not per split.
        if self._tokenizer_digest is None:
            self._tokenizer_digest = encode_cache.tokenizer_fingerprint(self.tokenizer)
        return self._tokenizer_digest

    def encoded(self, split: str) -> EncodedDataset:
        if split == "train" and self.hparams.streaming:
            raise DataError("data.streaming=true: the training split is encoded as it streams, never as a whole")
        if split not in self._encoded:
            self.label_names  # noqa: B018 - the label map must exist before encoding
            examples, report = encode_table(self.processor, self.tables()[split], split,
                                            self._encode_cache_entry(split), self.hparams.num_proc)
            examples = self.processor.arrange(split, examples)  # e.g. packing of training rows
            self._encoded[split] = EncodedDataset(examples, self.processor.batch_source(self.tables()[split]))
            self.report[split] = report.as_dict()
            unknown = self.report[split].get("unknown_tokens")  # text tasks: the tokenizer's coverage
            if hasattr(report, "summary"):
                rank_zero_info(f"[data] {split}: {report.summary()}")
            else:
                rank_zero_info(f"[data] {split}: {report.records} records, mean {report.as_dict()['mean_tokens']} tokens, "
                               f"{report.truncated} truncated to data.max_length={self.hparams.max_length}"
                               + (f"; {coverage.summary(unknown)}" if unknown else ""))
            if unknown:
                warning, error = coverage.verdict(split, unknown, bool(self.hparams.get("allow_unknown_tokens")),
                                                  stops=split != "test")
                if error:
                    del self._encoded[split]
                    raise DataError(error)
                if warning and rank_zero_only.rank == 0:
                    log.warning("[data] %s", warning)
        return self._encoded[split]

    def setup(self, stage: Optional[str] = None) -> None:
        splits = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["test"]}
        for split in splits.get(stage, ["train", "val", "test"]):
            if split == "train" and self.hparams.streaming:
                self.label_names  # noqa: B018 - one pass over the stream, unless data.label_names is set
                self.processor.audit_cached(self.tables()["train"].head(64))  # the first records, as encoding shows them
                self.report["train"] = {"streaming": True, "source": self.tables()["train"].path,
                                        "records": "counted as they stream"}
                continue
            self.encoded(split)

    # -- loaders ---------------------------------------------------------------------------
    def _loader(self, split: str, sampler=None) -> DataLoader:
        hp = self.hparams
        batch_size = hp.batch_size if split == "train" else (hp.eval_batch_size or hp.batch_size)
        return DataLoader(
            self.encoded(split), batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
            collate_fn=self.processor.make_collator(hp.pad_to_multiple_of, train=split == "train"),
            pin_memory=torch.cuda.is_available(), persistent_workers=self.num_workers > 0,
            # A loader's own generator: making an iterator (every validation) never draws from the
            # global RNG, so dropout sees the same random stream in a resumed and an uninterrupted run.
            generator=torch.Generator().manual_seed(self._order_seed()),
        )

    @property
    def num_workers(self) -> int:
        devices = self.trainer.num_devices if self.trainer is not None else 1
        return worker_count(self.hparams.num_workers, devices)

    @staticmethod
    def _order_seed() -> int:
        # The run's seed (seed_everything records it for every rank), as Lightning's own samplers use it.
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    def _step_normalized_loader(self, batch_size: int, shuffle: bool) -> DataLoader:
        """Batches that carry their optimizer step's supervised-token count (token-mean loss per step)."""
        from sft.data.packing import StepBatchSampler, StepNormalizedDataset

        hp = self.hparams
        dataset = self.encoded("train")
        trainer = self.trainer
        sampler = StepBatchSampler(dataset.examples.supervised(self.processor.supervised_count).tolist(), batch_size,
                                   trainer.accumulate_grad_batches if trainer is not None else 1, shuffle,
                                   seed=self._order_seed(), num_replicas=trainer.world_size if trainer else 1,
                                   rank=trainer.global_rank if trainer else 0)
        if sampler.padded_batches:
            rank_zero_info(f"[data] train: {sampler.padded_batches} micro-batches repeated so that each of "
                           f"{sampler.num_replicas} ranks gets {sampler.num_samples} per epoch")
        self._use_train_sampler(sampler)
        return DataLoader(
            StepNormalizedDataset(dataset), sampler=sampler, batch_size=None, num_workers=self.num_workers,
            collate_fn=self.processor.make_collator(hp.pad_to_multiple_of, train=True),
            pin_memory=torch.cuda.is_available(), persistent_workers=self.num_workers > 0,
        )

    def _use_train_sampler(self, sampler: ResumableSampler) -> None:
        """The sampler whose position checkpoints record; a resumed run continues from it."""
        self._train_sampler = sampler
        if self._resume_order:
            sampler.resume_at(**self._resume_order)
            self._resume_order = None

    def generation_examples(self, split: str, limit: int) -> list[dict]:
        """Prompts and reference answers of the first `limit` records of a split (causal_lm)."""
        return self.processor.generation_examples(self.tables()[split], limit)


    def _streamed_loader(self) -> DataLoader:
        from sft.data.streaming import EpochLoader, StreamedBatches

        hp, trainer = self.hparams, self.trainer
        if trainer is not None and trainer.max_steps < 0:
            raise ConfigError("data.streaming=true: set trainer.max_steps (a stream's length is unknown, so "
                              "epochs and the learning-rate schedule cannot be counted in batches)")
        stream = StreamedBatches(
            self.tables()["train"], self.processor.for_workers(),
            self.processor.make_collator(hp.pad_to_multiple_of, train=True), hp.batch_size, seed=self._order_seed(),
            rank=trainer.global_rank if trainer else 0, world_size=trainer.world_size if trainer else 1,
            pack_length=hp.max_length if getattr(self.options, "packing", False) else None,
            max_records=hp.max_train_records)
        if self._resume_order:
            order = self._resume_order
            workers = max(1, self.num_workers)
            # per worker, the batches trained (checkpoints before this record only the total: the workers took turns)
            stream.epoch = order["epoch"]
            stream.skip_counts = order.get("worker_batches") or [len(range(w, order["batches_done"], workers))
                                                                 for w in range(workers)]
            self._resume_order = None
        self._stream = stream
        return EpochLoader(stream, accumulate=trainer.accumulate_grad_batches if trainer is not None else 1,
                           step_normalized=self.processor.step_normalized, batch_size=None,
                           num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                           # its own generator, as for files: a pass starting never draws from the global RNG
                           generator=torch.Generator().manual_seed(self._order_seed()))

    def train_dataloader(self) -> DataLoader:
        if self.hparams.streaming:
            return self._streamed_loader()
        if self.processor.step_normalized:  # causal_lm: each batch carries its optimizer step's token count
            return self._step_normalized_loader(self.hparams.batch_size, shuffle=True)
        trainer = self.trainer
        dataset = self.encoded("train")
        # The shuffled order depends on (seed, epoch) only, and its position is saved in checkpoints.
        grouped = self.hparams.group_by_length and len(dataset) and "input_ids" in dataset.examples[0]
        lengths = dataset.examples.lengths() if grouped else None
        sampler = ResumableSampler(
            len(dataset), batch_size=self.hparams.batch_size, seed=self._order_seed(), lengths=lengths,
            shuffle=not (trainer and trainer.overfit_batches), num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0)
        self._use_train_sampler(sampler)
        return self._loader("train", sampler=sampler)

    # -- checkpoint state: the processor's (e.g. a causal_lm run's exact chat template and special
    # tokens) and where in the epoch's data order training stands ---------------------------------
    def state_dict(self) -> dict:
        processor_state = self.processor.checkpoint_state()
        state = {"processor": processor_state} if processor_state is not None else {}
        trainer = self.trainer
        if self._train_sampler is not None and trainer is not None:
            state["train_order"] = {"epoch": self._train_sampler.epoch,
                                    "batches_done": trainer.fit_loop.epoch_loop.batch_progress.current.processed}
        elif self._stream is not None and trainer is not None:
            trained = trainer.fit_loop.epoch_loop.batch_progress.current.processed
            state["train_order"] = {"epoch": trainer.current_epoch, "batches_done": trained,
                                    "worker_batches": self._stream.trained_counts(trained)}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self._resume_order = state_dict.get("train_order")
        if state_dict.get("processor"):
            self.processor.restore_checkpoint_state(state_dict["processor"])

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Processors that finish batches on the device (images: normalize, erase, mix) do it here."""
        return self.processor.on_device(batch, train=bool(self.trainer is not None and self.trainer.training))

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")
