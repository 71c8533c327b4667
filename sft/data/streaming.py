"""Training batches streamed from files (data.streaming=true): read, encoded and batched on the fly.

Nothing is stored, so a corpus may be larger than memory or disk. Record i of the stream goes
to shard i mod (ranks x workers): every DDP rank and DataLoader worker reads the files but
encodes only its own records, so no record is trained on twice in an epoch. Each worker encodes
its records in chunks with the task's processor (the same checks and errors, naming file and
line), shuffles within the chunk by (seed, epoch, shard), packs causal_lm examples into rows of
max_length when data.packing is on, and yields whole collated batches.

Resuming mid-epoch: the order is a function of (seed, epoch, shard) alone, and the DataLoader
takes batches from its workers in turn, so the batches already trained are known from their
count; a resumed run re-reads and skips them and then sees exactly the batches the interrupted
run would have seen next.

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
        self.skip_batches = 0  # batches of this epoch a resumed run already trained on (all workers together)

    def _shard(self, skip_batches: int) -> tuple[int, int, int, int]:
        """(shard, shards, worker, workers) of this iterator. The DataLoader asks its workers for batches in
        turn, starting with worker 0; after `skip_batches` the next batch is due from worker
        skip_batches mod workers, so on a resumed pass each process plays the worker that many turns on."""
        info = get_worker_info()
        workers, process = (info.num_workers, info.id) if info is not None else (1, 0)
        worker = (process + skip_batches) % workers
        return self.rank * workers + worker, self.world_size * workers, worker, workers

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
        return self._batches(self.epoch, self.skip_batches)

    def _batches(self, epoch: int, skip_batches: int) -> Iterator[Any]:
        shard, shards, worker, workers = self._shard(skip_batches)
        skip = len(range(worker, skip_batches, workers))  # this worker's share of the trained batches
        rng = np.random.default_rng((self.seed, epoch, shard))
        pending: list[dict] = []
        records = self._records(shard, shards)
        while True:
            chunk = list(itertools.islice(records, CHUNK_RECORDS))
            if chunk:
                table = Table(self.table.path, [r for _, r in chunk], [w for w, _ in chunk], self.table.columns)
                examples, _ = self.processor.encode(table)
                pending += self._rows(examples, rng)
            while len(pending) >= self.batch_size or (not chunk and pending):
                batch, pending = pending[:self.batch_size], pending[self.batch_size:]
                if skip:
                    skip -= 1
                    continue
                yield self.collate(batch)
            if not chunk:
                return


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


def fewest_across_ranks() -> Optional[Callable[[int], int]]:
    """Under DDP, the all-reduce that gives the smallest of every rank's count; None in one process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")

    def fewest(count: int) -> int:
        counts = torch.tensor([count], device=device)
        dist.all_reduce(counts, op=dist.ReduceOp.MIN)
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
        done = stream.skip_batches
        iterator = super().__iter__()  # workers copy the stream now, with its epoch and skip count
        stream.skip_batches = 0
        stream.epoch += 1
        fewest = fewest_across_ranks()
        if fewest is None and not self.step_normalized:
            return iterator
        return step_windows(iterator, self.accumulate, done, self.step_normalized, fewest)
