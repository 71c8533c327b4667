"""The training order: seeded per epoch, optionally length-grouped, sharded across DDP ranks, and
resumable mid-epoch.

Lightning restores the loop counters of a run killed mid-epoch, but a plain shuffled DataLoader
would start the epoch over with a fresh order. Here each epoch's order is drawn from (seed, epoch)
alone and, after `resume_at(epoch, batches_done)`, the batches the interrupted run already trained
on are skipped, so a resumed run sees exactly the batches the uninterrupted one would.
"""

from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence

import numpy as np
from torch.utils.data import DistributedSampler


def length_grouped_order(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                         group_batches: int = 50) -> np.ndarray:
    """A shuffled order in which neighbouring indices have similar lengths.

    Shuffle everything, cut into groups of `batch_size * group_batches`, sort each group by
    length, slice it into batches, then shuffle the batches: batches stay random in content and
    order while padding drops to the spread within a batch.
    """
    order = rng.permutation(len(lengths))
    group = batch_size * group_batches
    batches = []
    for start in range(0, len(order), group):
        chunk = order[start:start + group]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    # A short final batch must stay last: the DataLoader cuts this order into batch_size slices.
    tail = [batches.pop()] if len(batches[-1]) < batch_size else []
    if batches:
        # The longest batch goes first so an out-of-memory error shows at step one, not hours in.
        longest = max(range(len(batches)), key=lambda b: lengths[batches[b]].max())
        first = batches.pop(longest)
        rng.shuffle(batches)
        batches = [first] + batches
    return np.concatenate(batches + tail)


class ResumableSampler(DistributedSampler):
    """This rank's share of the epoch's order, skipping what a resumed run already trained on.

    With `lengths`, batches are length-grouped (grouped over the global batch, batch_size x
    ranks, so every rank's batch holds neighbouring lengths); without, a plain shuffle. Like
    DistributedSampler, the order is padded to a multiple of the rank count and rank r takes
    every r-th index. It is a DistributedSampler so that Lightning leaves it in place under DDP
    (Lightning wraps any other sampler in one more DistributedSampler, which would shard the
    already sharded order again and reshuffle it).
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int, shuffle: bool = True,
                 lengths: Optional[Sequence[int]] = None, num_replicas: int = 1, rank: int = 0,
                 group_batches: int = 50):
        # range() stands in for the dataset: the parent only needs its length.
        super().__init__(range(num_examples), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.group_batches = group_batches
        self.num_samples = math.ceil(num_examples / num_replicas)
        self._resume: Optional[tuple[int, int]] = None  # (epoch, batches already trained in it)

    def resume_at(self, epoch: int, batches_done: int) -> None:
        self._resume = (int(epoch), int(batches_done))

    def _skip_trained(self, batches: list) -> list:
        """`batches` of this epoch (indices, or micro-batches), less those a resumed run already trained on."""
        if self._resume is not None:
            epoch, batches_done = self._resume
            self._resume = None  # applies to the interrupted epoch only
            if epoch == self.epoch:
                return batches[batches_done * self._items_per_batch:]
        return batches

    @property
    def _items_per_batch(self) -> int:
        return self.batch_size

    def __len__(self) -> int:
        return self.num_samples

    def epoch_order(self) -> np.ndarray:
        """The global order of this epoch, before sharding."""
        if not self.shuffle:
            return np.arange(self.num_examples)
        rng = np.random.default_rng((self.seed, self.epoch))
        if self.lengths is None:
            return rng.permutation(self.num_examples)
        return length_grouped_order(self.lengths, self.batch_size * self.num_replicas, rng, self.group_batches)

    def __iter__(self) -> Iterator[int]:
        order = self.epoch_order()
        padding = self.num_samples * self.num_replicas - len(order)
        if padding:
            order = np.concatenate([order, order[:padding]])
        return iter(self._skip_trained(order[self.rank::self.num_replicas].tolist()))
