"""The training order: every example once per epoch, reshuffled per epoch, far less padding when
length-grouped, disjoint DDP shards, and a mid-epoch resume that continues the same order."""

from __future__ import annotations

import numpy as np

from sft.data.samplers import ResumableSampler


def padded_tokens(order: list[int], lengths: np.ndarray, batch_size: int) -> int:
    return sum(int(lengths[order[i:i + batch_size]].max()) * len(order[i:i + batch_size])
               for i in range(0, len(order), batch_size))


def test_grouped_epochs_are_permutations_with_less_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(16, 129, size=1000)
    sampler = ResumableSampler(1000, batch_size=32, seed=7, lengths=lengths)
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


def test_short_batch_stays_last_and_longest_batch_first():
    lengths = np.arange(1, 71)  # 70 examples: two full batches of 32 and one of 6
    order = list(ResumableSampler(70, batch_size=32, seed=1, lengths=lengths, group_batches=3))
    batches = [order[i:i + 32] for i in range(0, 70, 32)]
    assert [len(b) for b in batches] == [32, 32, 6]
    assert all(lengths[b].max() - lengths[b].min() < 32 for b in batches[:2])
    assert lengths[batches[0]].max() == lengths.max()


def test_ddp_shards_are_disjoint_and_grouped():
    lengths = np.random.default_rng(1).integers(16, 129, size=640)
    shards = [list(ResumableSampler(640, batch_size=16, seed=3, lengths=lengths, num_replicas=2, rank=r)) for r in (0, 1)]
    assert not set(shards[0]) & set(shards[1]) and sorted(shards[0] + shards[1]) == list(range(640))
    random_batches = padded_tokens(np.random.default_rng(2).permutation(320).tolist(), lengths, 16)
    assert padded_tokens(shards[0], lengths, 16) < 0.75 * random_batches


def test_resume_skips_exactly_the_batches_already_trained():
    sampler = ResumableSampler(100, batch_size=10, seed=5, lengths=np.arange(100) % 37)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.resume_at(epoch=2, batches_done=3)
    assert list(sampler) == full[30:]
    assert list(sampler) == full  # the skip applies to the interrupted epoch only


def test_arrow_lengths_and_supervised_counts_follow_a_selection_and_a_pack_plan():
    """The sampler's per-example numbers come from Arrow columns; on a shuffled selection and on
    packed rows they must be those of the rows it reads."""
    from datasets import Dataset

    from sft.data.examples import SUPERVISED, ArrowExamples, PackedExamples

    ids = [[1] * n for n in (3, 5, 2, 7, 4)]
    table = Dataset.from_dict({"input_ids": ids, SUPERVISED: [n - 1 for n in map(len, ids)]})
    selection = ArrowExamples(table.select([3, 0, 4]))
    assert selection.lengths().tolist() == [7, 3, 4]
    assert selection.supervised(count=None).tolist() == [6, 2, 3]
    packed = PackedExamples(ArrowExamples(table), [[0, 1], [3], [2, 4]])
    assert packed.lengths().tolist() == [8, 7, 6]
    assert packed.supervised(count=None).tolist() == [6, 6, 4]


def test_pack_plan_is_best_fit_decreasing():
    """Every example in exactly one row within the packing length, each placed, longest first, in
    the open row with the least room that fits it (of equals, the row opened first), or a new row
    when none fits: checked by replaying the plan against every open row's room."""
    from sft.data.packing import pack_plan

    rng = np.random.default_rng(3)
    for max_length, count in ((16, 300), (64, 500), (7, 40)):
        lengths = rng.integers(0, max_length + 1, size=count)
        rows = pack_plan(lengths, max_length)
        assert sorted(i for row in rows for i in row) == list(range(count))
        assert all(int(lengths[row].sum()) <= max_length for row in rows)
        row_of = {i: r for r, row in enumerate(rows) for i in row}
        placed = [[] for _ in rows]
        room: list[int] = []
        for i in np.argsort(-lengths, kind="stable").tolist():
            n, r = int(lengths[i]), row_of[i]
            fitting = [(left, row) for row, left in enumerate(room) if left >= n]
            if fitting:
                assert (room[r], r) == min(fitting), (i, n, r)
                room[r] -= n
            else:
                assert r == len(room), (i, n, r)  # a new row, opened in order
                room.append(max_length - n)
            placed[r].append(i)
        assert placed == rows  # each row lists its examples in the order they were placed
