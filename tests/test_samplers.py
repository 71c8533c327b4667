"""Length-grouped sampling: every example once per epoch, reshuffled per epoch, far less padding."""

from __future__ import annotations

import numpy as np

from sft.data.samplers import LengthGroupedSampler


def padded_tokens(order: list[int], lengths: np.ndarray, batch_size: int) -> int:
    return sum(int(lengths[order[i:i + batch_size]].max()) * len(order[i:i + batch_size])
               for i in range(0, len(order), batch_size))


def test_each_epoch_is_a_permutation_with_less_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(16, 129, size=1000)
    sampler = LengthGroupedSampler(lengths, batch_size=32, seed=7)
    first = list(sampler)
    assert sorted(first) == list(range(1000))
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(second) == list(range(1000)) and second != first
    sampler.set_epoch(0)
    assert list(sampler) == first  # reproducible from (seed, epoch)

    random_order = rng.permutation(1000).tolist()
    grouped, shuffled = padded_tokens(first, lengths, 32), padded_tokens(random_order, lengths, 32)
    assert grouped < 0.75 * shuffled, (grouped, shuffled)
    assert grouped >= lengths.sum()


def test_short_batch_stays_last_and_longest_batch_first():
    lengths = np.arange(1, 71)  # 70 examples: two full batches of 32 and one of 6
    order = list(LengthGroupedSampler(lengths, batch_size=32, seed=1, group_batches=3))
    batches = [order[i:i + 32] for i in range(0, 70, 32)]
    assert [len(b) for b in batches] == [32, 32, 6]
    spans = [lengths[b].max() - lengths[b].min() for b in batches[:2]]
    assert max(spans) < 32  # each full batch holds neighbouring lengths, not a random mix
    assert lengths[batches[0]].max() == lengths[order].max()
