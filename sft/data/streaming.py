"""Training batches streamed from files (data.streaming=true): read, encoded and batched on the fly.

Nothing is stored, so a corpus may be larger than memory or disk. Record i of the stream goes
to shard i mod (ranks x workers): every DDP rank and DataLoader worker reads the files but
encodes only its own records, so no record is trained on twice in an epoch. Each worker encodes
its records in chunks with the task's processor (the same checks and errors, naming file and
line), shuffles within the chunk by (seed, epoch, shard), packs causal_lm examples into rows of
max_length when data.packing is on, and yields whole collated batches.

Resuming mid-epoch: each worker's batches are a function of (seed, epoch, shard) alone, and the
training process takes them in one fixed order, whatever the DataLoader's timing: by (batch
number within its worker, worker), i.e. the workers in turn, the ones that ran out passed over
(`in_worker_order`). A checkpoint records how many batches of each worker were trained; a
resumed run re-reads the stream, each worker skips that many of its own, and the same order
gives exactly the batches the interrupted run would have seen next.

In the training process, the loader reads one optimizer step of micro-batches ahead
(`step_windows`), which gives what a stream cannot know batch by batch: the step's
supervised-token count, the causal_lm loss denominator that map-style data gets from
StepBatchSampler; and, under DDP, how many micro-batches every rank still has, so that at the
stream's end all ranks train the fewest any of them has (the others' are counted and logged)
and none waits forever in a collective the others never join.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from sft.data.sources import StreamTable, Table

log = logging.getLogger(__name__)

IGNORE = -100
CHUNK_RECORDS = 512  # records encoded (and shuffled, and packed) together


class StreamedBatches(IterableDataset):
    def __init__(self, table: StreamTable, processor, collate, batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, pack_length: Optional[int] = None, max_records: Optional[int] = None):
        self.table = table
        self.processor = processor
        self.collate = collate
        self.batch_size = batch_size
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.pack_length = pack_length
        self.max_records = max_records
        self.epoch = 0
        self.skip_counts: list[int] = []  # per worker: batches of this epoch a resumed run already trained on
        self.taken: list[int] = []  # in the training process: the worker of each batch handed out this pass
        self.taken_from: list[int] = []  # the per-worker counts this pass started from

    def _shard(self) -> tuple[int, int, int, int]:
        """(shard, shards, worker, workers) of this iterator: DataLoader worker k of rank r reads shard
        r * workers + k."""
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return self.rank * workers + worker, self.world_size * workers, worker, workers

    def trained_counts(self, trained: int) -> list[int]:
        """Per worker, how many of this pass's batches are among its first `trained` (what a
        checkpoint records, so a resumed pass skips exactly those)."""
        counts = list(self.taken_from)
        for worker in self.taken[:max(0, trained - sum(self.taken_from))]:
            counts[worker] += 1
        return counts

    def _records(self, shard: int, shards: int) -> Iterator[tuple[str, dict]]:
        return self.table.records(shard, shards, self.max_records or None)

    def _rows(self, examples: list[dict], rng: np.random.Generator) -> list[dict]:
        examples = [examples[i] for i in rng.permutation(len(examples))]
        if not self.pack_length:
            return examples
        from sft.data.examples import ListExamples, PackedExamples
        from sft.data.packing import pack_plan

        items = ListExamples(examples)
        rows = list(PackedExamples(items, pack_plan(items.lengths(), self.pack_length)))
        return [rows[i] for i in rng.permutation(len(rows))]

    def __iter__(self) -> Iterator[Any]:
        # The epoch and resume position are read now, when the DataLoader starts a pass, not at the first batch.
        return self._batches(self.epoch, list(self.skip_counts))

    def _batches(self, epoch: int, skip_counts: list[int]) -> Iterator[tuple[int, int, Any]]:
        """(worker, number, batch) of this worker's batches, numbered from the pass's start (a resumed
        pass skips those trained before), then (worker, count, None) to mark its end."""
        shard, shards, worker, workers = self._shard()
        skip = skip_counts[worker] if worker < len(skip_counts) else 0
        rng = np.random.default_rng((self.seed, epoch, shard))
        pending: list[dict] = []
        records = self._records(shard, shards)
        number = 0
        while True:
            chunk = list(itertools.islice(records, CHUNK_RECORDS))
            if chunk:
                table = Table(self.table.path, [r for _, r in chunk], [w for w, _ in chunk], self.table.columns)
                examples, _ = self.processor.encode(table)
                pending += self._rows(examples, rng)
            while len(pending) >= self.batch_size or (not chunk and pending):
                batch, pending = pending[:self.batch_size], pending[self.batch_size:]
                if number >= skip:
                    yield worker, number, self.collate(batch)
                number += 1
            if not chunk:
                yield worker, max(number, skip), None
                return


def in_worker_order(items: Iterator[tuple[int, int, Any]], start: list[int], taken: list[int]) -> Iterator[Any]:
    """The batches of a pass by (batch number within its worker, worker): the workers in turn while
    all have batches, those that ran out passed over. The DataLoader mostly delivers them so, but
    not exactly once a worker runs out; a fixed order is what lets a resumed pass continue as the
    interrupted one would have. `start`: each worker's first batch number; `taken` gets the worker
    of each batch handed out."""
    workers = len(start)
    following, ends = list(start), [-1] * workers
    pending: dict[tuple[int, int], Any] = {}
    while True:
        live = [w for w in range(workers) if following[w] != ends[w]]
        if not live:
            return
        due = min(live, key=lambda w: (following[w], w))
        while (due, following[due]) not in pending and following[due] != ends[due]:
            worker, number, batch = next(items)  # every worker ends with its marker, so this cannot run dry first
            if batch is None:
                ends[worker] = number
            else:
                pending[worker, number] = batch
        if following[due] == ends[due]:
            continue
        taken.append(due)
        following[due] += 1
        yield pending.pop((due, following[due] - 1))


def step_windows(batches: Iterator[Any], accumulate: int, done: int, step_normalized: bool,
                 fewest: Optional[Callable[[int], int]] = None) -> Iterator[Any]:
    """The micro-batches of one pass, read an optimizer step (`accumulate` micro-batches, as
    Lightning groups them from the epoch's start; a resumed pass that trained `done` of them may
    start inside a step) at a time. With `step_normalized`, each gets `loss_denominator`: the
    step's supervised tokens / accumulate, as StepBatchSampler gives map-style data. `fewest`
    (under DDP) turns this rank's count of micro-batches for the step into the fewest any rank
    has: every rank trains that many, so all run the same steps to the stream's end."""
    size = accumulate - done % accumulate
    while True:
        window = list(itertools.islice(batches, size))
        count = fewest(len(window)) if fewest is not None else len(window)
        if count < len(window):
            log.warning("data.streaming: %d micro-batch(es) at the end of this pass left untrained on this rank, so "
                        "that every rank runs the same steps (ranks reach the stream's end a few batches apart)",
                        len(window) - count)
            window = window[:count]
        if step_normalized:
            tokens = sum(int((batch["labels"][:, 1:] != IGNORE).sum()) for batch in window)
            for batch in window:
                batch["loss_denominator"] = torch.tensor(max(tokens, 1) / accumulate)
        yield from window
        if count < size:
            return
        size = accumulate


_CPU_GROUP: list = []  # the gloo group of a job whose default backend is not (made once, by every rank)


def fewest_across_ranks() -> Optional[Callable[[int], int]]:
    """Under DDP, the all-reduce that gives the smallest of every rank's count; None in one process.
    It runs on the CPU (a gloo group beside NCCL), so reading the result never waits for the GPU."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    if dist.get_backend() != "gloo" and not _CPU_GROUP:
        _CPU_GROUP.append(dist.new_group(backend="gloo"))
    group = _CPU_GROUP[0] if dist.get_backend() != "gloo" else None

    def fewest(count: int) -> int:
        counts = torch.tensor([count])
        dist.all_reduce(counts, op=dist.ReduceOp.MIN, group=group)
        return int(counts.item())

    return fewest


class EpochLoader(DataLoader):
    """A DataLoader over StreamedBatches that tells the stream which epoch each pass is (the
    shuffle depends on it), hands a resume position to the first pass only, and gives the
    training loop its micro-batches a step at a time (`step_windows`)."""

    def __init__(self, dataset: StreamedBatches, accumulate: int = 1, step_normalized: bool = False, **kwargs):
        super().__init__(dataset, **kwargs)
        self.accumulate = max(1, int(accumulate))
        self.step_normalized = step_normalized

    def __iter__(self):
        stream: StreamedBatches = self.dataset  # type: ignore[assignment]
        workers = max(1, self.num_workers)
        start = (stream.skip_counts + [0] * workers)[:workers]
        done = sum(start)
        iterator = super().__iter__()  # workers copy the stream now, with its epoch and skip counts
        stream.skip_counts = []
        stream.epoch += 1
        stream.taken, stream.taken_from = [], start
        batches = in_worker_order(iterator, start, stream.taken)
        fewest = fewest_across_ranks()
        if fewest is None and not self.step_normalized:
            return batches
        return step_windows(batches, self.accumulate, done, self.step_normalized, fewest)
