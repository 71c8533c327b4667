"""Batching for causal-LM SFT: padding or packing, and the per-step loss denominator.

Packing puts several examples into one row of at most `max_length` tokens (best-fit
decreasing). Each example keeps its own position ids, restarting at 0; the collator then
passes `position_ids` and no attention mask, from which transformers (5.x) builds a mask that
keeps attention inside each example -- but only when the forward runs without a KV cache,
which is why the causal-LM head passes use_cache=False (tests/test_chat_training.py checks it).

Loss normalization: the loss of an optimizer step is the mean over the supervised tokens of
all its micro-batches. `StepBatchSampler` knows which micro-batches form a step, so each batch
carries `loss_denominator` = (supervised tokens of its step) / (micro-batches per step); the
module divides the micro-batch's summed token loss by it, and Lightning's division by the
number of accumulated micro-batches then yields exactly the step's token mean.
"""

from __future__ import annotations

import bisect
import heapq
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from sft.data.samplers import ResumableSampler

IGNORE = -100


def pack_plan(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Best-fit decreasing: longest example first, each into the open row with the least room
    that still fits it (of those, the row opened first). Returns the example indices of each row.

    Rooms are whole token counts, so the open rows are kept by room: a heap of rows per room, and
    the sorted list of rooms some row has. A choice is then a bisection over at most max_length + 1
    rooms, not over every open row (a million conversations open a quarter of a million)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    too_long = np.flatnonzero(lengths > max_length)
    if len(too_long):
        raise ValueError(f"example of {lengths[too_long[0]]} tokens exceeds the packing length {max_length}; truncate first")
    order = np.argsort(-lengths, kind="stable")
    rows: list[list[int]] = []  # example indices per row
    rows_with_room: list[list[int]] = [[] for _ in range(max_length + 1)]  # a heap of row indices per room
    rooms: list[int] = []  # the rooms some open row has, sorted

    def keep_open(row: int, room: int) -> None:
        if not rows_with_room[room]:
            bisect.insort(rooms, room)
        heapq.heappush(rows_with_room[room], row)

    for i, n in zip(order.tolist(), lengths[order].tolist()):
        k = bisect.bisect_left(rooms, n)
        if k < len(rooms):
            room = rooms[k]
            row = heapq.heappop(rows_with_room[room])
            if not rows_with_room[room]:
                del rooms[k]
            rows[row].append(i)
            keep_open(row, room - n)
        else:
            rows.append([i])
            keep_open(len(rows) - 1, max_length - n)
    return rows


def pack_examples(examples: Sequence[dict], max_length: int) -> list[dict]:
    """The examples packed into rows of at most `max_length` tokens (pack_plan); rows hold
    input_ids, labels and per-example position_ids."""
    from sft.data.examples import ListExamples, PackedExamples

    items = ListExamples(list(examples))
    return list(PackedExamples(items, pack_plan(items.lengths(), max_length)))


class CausalLMCollator:
    """Pads input_ids (pad id), labels (-100) to the longest row, rounded up to a multiple.

    Unpacked rows get an attention mask. Packed rows get position_ids and no mask; their padding
    is one more document (positions restart at 0), so it never joins a real example."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: Optional[int] = 8):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of or 1

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(item["input_ids"]) for item in items)
        width = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        packed = "position_ids" in items[0]
        input_ids = torch.full((len(items), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
        attention_mask = torch.zeros((len(items), width), dtype=torch.long)
        position_ids = torch.zeros((len(items), width), dtype=torch.long)
        for row, item in enumerate(items):
            n = len(item["input_ids"])
            input_ids[row, :n] = torch.as_tensor(item["input_ids"])
            labels[row, :n] = torch.as_tensor(item["labels"])
            attention_mask[row, :n] = 1
            if packed:
                position_ids[row, :n] = torch.as_tensor(item["position_ids"])
                position_ids[row, n:] = torch.arange(width - n)
        # Host ints, so throughput figures never wait for the device: real (non-padding) tokens,
        # and the examples (conversations) the rows hold.
        batch = {"input_ids": input_ids, "labels": labels,
                 "num_tokens": sum(len(item["input_ids"]) for item in items),
                 "num_examples": sum(item.get("documents", 1) for item in items)}
        if packed:
            batch["position_ids"] = position_ids
        else:
            batch["attention_mask"] = attention_mask
        if "loss_denominator" in items[0]:
            batch["loss_denominator"] = torch.tensor(float(items[0]["loss_denominator"]))
        return batch


class StepBatchSampler(ResumableSampler):
    """Micro-batches of `batch_size`, grouped `accumulate` to an optimizer step as Lightning
    groups them; each index is yielded with its step's loss denominator. It yields whole
    micro-batches, so the DataLoader takes it as `sampler` with `batch_size=None`.

    Order: a permutation per epoch drawn from (seed, epoch), resumable mid-epoch like
    ResumableSampler. Under DDP a global step holds `num_replicas x accumulate` micro-batches;
    rank r takes every r-th one, and its denominator counts its own tokens of the step (the
    causal-LM loss sums the denominators over ranks). The micro-batches are padded to a multiple
    of the rank count by repeating the first ones, as DistributedSampler pads, so every rank
    runs the same number of steps."""

    def __init__(self, supervised: Sequence[int], batch_size: int, accumulate: int = 1, shuffle: bool = True,
                 seed: int = 0, num_replicas: int = 1, rank: int = 0):
        super().__init__(len(supervised), batch_size, seed, shuffle, num_replicas=num_replicas, rank=rank)
        self.supervised = list(supervised)
        self.accumulate = max(1, int(accumulate))
        self.num_samples = -(-self._global_batches() // num_replicas)  # micro-batches per rank

    def _global_batches(self) -> int:
        return -(-len(self.supervised) // self.batch_size)

    @property
    def padded_batches(self) -> int:
        """Micro-batches repeated so that every rank gets as many (counted, not silent)."""
        return self.num_samples * self.num_replicas - self._global_batches()

    @property
    def _items_per_batch(self) -> int:
        return 1  # resuming skips whole micro-batches

    def __iter__(self) -> Iterator[list]:
        order = self.epoch_order().tolist()
        batches = [order[k:k + self.batch_size] for k in range(0, len(order), self.batch_size)]
        batches += batches[:self.padded_batches]
        per_step = self.num_replicas * self.accumulate
        mine = []
        for s in range(0, len(batches), per_step):
            step = batches[s:s + per_step][self.rank::self.num_replicas]
            tokens = sum(self.supervised[i] for batch in step for i in batch)
            # Lightning divides every micro-batch loss by `accumulate`, also in a short last step.
            denominator = max(tokens, 1) / self.accumulate
            mine += [[(i, denominator) for i in batch] for batch in step]
        return iter(self._skip_trained(mine))


class StepNormalizedDataset(Dataset):
    """Looks up (index, denominator) pairs from StepBatchSampler; plain indices pass through."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if isinstance(key, list):  # a whole micro-batch from StepBatchSampler
            return [self[item] for item in key]
        if isinstance(key, tuple):
            index, denominator = key
            return {**self.dataset[index], "loss_denominator": denominator}
        return self.dataset[key]
