"""A training sampler whose place in the epoch can be saved and restored, for exact mid-epoch resume.

Lightning restores the loop counters of a run killed mid-epoch, but a plain shuffled DataLoader
would start the epoch over with a fresh order. `ResumableSampler` draws each epoch's order from
(seed, epoch) alone and, after `resume_at(epoch, batches_done)`, skips the batches the interrupted
run already trained on, so the resumed run sees exactly the batches the uninterrupted one would.
It is a DistributedSampler, so under DDP every rank gets its own share and Lightning leaves it in place.
"""

from __future__ import annotations

from typing import Iterator, Optional

from torch.utils.data import Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    def __init__(self, dataset: Dataset, batch_size: int, seed: int, shuffle: bool = True, num_replicas: int = 1,
                 rank: int = 0, drop_last: bool = False):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.batch_size = batch_size
        self._resume: Optional[tuple[int, int]] = None  # (epoch, batches already trained in it)

    def resume_at(self, epoch: int, batches_done: int) -> None:
        self._resume = (int(epoch), int(batches_done))

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())  # this rank's share of the (seed, epoch) order
        if self._resume is not None:
            epoch, batches_done = self._resume
            self._resume = None  # applies to the interrupted epoch only
            if epoch == self.epoch:
                indices = indices[batches_done * self.batch_size:]
        return iter(indices)
