"""Length-grouped sampling: batches of similar lengths, so dynamic padding wastes little compute."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class LengthGroupedSampler(Sampler[int]):
    """A shuffled order in which neighbouring indices have similar lengths.

    Each epoch: shuffle everything, cut into groups of `batch_size * group_batches`, sort each
    group by length, slice it into batches, then shuffle the batches. Batches stay random in
    content and order while padding drops to the spread within a batch. Under DDP, Lightning
    hands every rank every world_size-th index of this order, so each rank's batches are still
    grouped. The order depends only on (seed, epoch), so it is reproducible.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, group_batches: int = 50):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group_batches = group_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(len(self.lengths))
        group = self.batch_size * self.group_batches
        batches = []
        for start in range(0, len(order), group):
            chunk = order[start:start + group]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches.extend(chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
        # A short final batch must stay last: the DataLoader cuts this order into batch_size slices.
        tail = [batches.pop()] if len(batches[-1]) < self.batch_size else []
        if batches:
            # The longest batch goes first so an out-of-memory error shows at step one, not hours in.
            longest = max(range(len(batches)), key=lambda b: self.lengths[batches[b]].max())
            first = batches.pop(longest)
            rng.shuffle(batches)
            batches = [first] + batches
        for batch in batches + tail:
            yield from batch.tolist()
