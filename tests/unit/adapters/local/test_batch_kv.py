"""BatchedKV: left-padded rows of different lengths, rebuilt as sequences join and leave."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from adapters.local.kvbatch import GROWTH, BatchedKV

LAYERS, HEADS, DIM = 3, 2, 4


def cache(length: int, seed: int) -> DynamicCache:
    """A batch-1 cache with distinct random values per layer, like a prefill leaves."""
    generator = torch.Generator().manual_seed(seed)
    kv = DynamicCache()
    for layer in range(LAYERS):
        keys = torch.randn(1, HEADS, length, DIM, generator=generator)
        kv.update(keys, keys + 100, layer)
    return kv


def same_cache(a: DynamicCache, b: DynamicCache) -> bool:
    return all(
        torch.equal(x.keys, y.keys) and torch.equal(x.values, y.values)  # type: ignore[attr-defined]
        for x, y in zip(a.layers, b.layers, strict=True)
    )


def step(kv: BatchedKV, seed: int) -> list[torch.Tensor]:
    """What a forward pass does: append one position to every row of every layer."""
    generator = torch.Generator().manual_seed(seed)
    batch = kv.cache
    width = kv.width
    news = []
    for layer in range(LAYERS):
        new = torch.randn(kv.rows, HEADS, 1, DIM, generator=generator)
        keys, values = batch.update(new, new + 100, layer)
        assert keys.shape[2] == values.shape[2] == width + 1
        news.append(new)
    kv.advanced()
    return news


def test_rows_are_right_aligned_with_zero_padding_and_a_matching_mask() -> None:
    caches = [cache(5, 1), cache(2, 2), cache(7, 3)]
    kv = BatchedKV()
    kv.rebuild([], caches, headroom=3)
    assert (kv.rows, kv.width, kv.lengths) == (3, 7, [5, 2, 7])
    keys = kv.cache.layers[0].keys
    assert keys is not None
    assert keys.shape == (3, HEADS, 7, DIM)
    assert torch.count_nonzero(keys[1, :, :5]) == 0  # the short row's padding
    mask = kv.attention_mask()
    assert mask.tolist() == [[0, 0, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1, 1], [1] * 8]
    for i, original in enumerate(caches):
        assert same_cache(kv.row(i), original)


def test_steps_append_in_place_and_rows_copy_out_without_padding() -> None:
    caches = [cache(4, 1), cache(9, 2)]
    kv = BatchedKV()
    kv.rebuild([], caches, headroom=2)
    assert kv.nbytes == 2 * LAYERS * 2 * HEADS * (9 + 2) * DIM * 4  # rows x (width + headroom)
    added = [step(kv, seed) for seed in range(GROWTH + 3)]  # runs past the headroom once
    assert kv.lengths == [4 + GROWTH + 3, 9 + GROWTH + 3]
    row = kv.row(0)
    first_layer = row.layers[0].keys  # type: ignore[attr-defined]
    assert first_layer.shape == (1, HEADS, 4 + GROWTH + 3, DIM)
    assert torch.equal(first_layer[0, :, :4], caches[0].layers[0].keys[0])  # type: ignore[attr-defined,index]
    appended = torch.cat([news[0][0] for news in added], dim=1)
    assert torch.equal(first_layer[0, :, 4:], appended)
    assert row.get_seq_length() == kv.lengths[0]


def test_rebuild_drops_rows_adds_rows_and_trims_padding() -> None:
    kv = BatchedKV()
    long, short = cache(12, 1), cache(3, 2)
    kv.rebuild([], [long, short])
    step(kv, 7)
    kept_before = kv.row(1)
    # The long row leaves and a new one joins: the width shrinks to the longest remaining row.
    joining = cache(6, 3)
    kv.rebuild([1], [joining])
    assert (kv.width, kv.lengths) == (6, [4, 6])
    assert same_cache(kv.row(0), kept_before)
    assert same_cache(kv.row(1), joining)
    assert kv.attention_mask().tolist() == [[0, 0, 1, 1, 1, 1, 1], [1] * 7]
    kv.rebuild([], [])
    assert (kv.rows, kv.width) == (0, 0)


def test_dropping_rows_moves_the_last_rows_in_and_copies_nothing_else() -> None:
    caches = [cache(4 + i, i) for i in range(5)]
    kv = BatchedKV()
    kv.rebuild([], caches, headroom=3)
    storage = kv.nbytes
    before = [kv.row(i) for i in range(5)]
    order = kv.drop([1, 3])
    assert order == [0, 4, 2]
    assert kv.rows == 3
    assert kv.lengths == [4, 8, 6]
    for new, old in enumerate(order):
        assert same_cache(kv.row(new), before[old])
    assert kv.nbytes == storage  # memory is kept until the next rebuild
    step(kv, 7)  # the dropped-in-place batch decodes on
    assert kv.lengths == [5, 9, 7]


def storage(kv: BatchedKV) -> list[int]:
    return [layer._keys_all.data_ptr() for layer in kv._layers]  # type: ignore[attr-defined]


def test_a_row_joins_in_place_into_a_dropped_row() -> None:
    caches = [cache(6, 1), cache(8, 2), cache(7, 3)]
    kv = BatchedKV()
    kv.rebuild([], caches, headroom=4)
    step(kv, 5)
    where, size = storage(kv), kv.nbytes
    before = [kv.row(i) for i in range(3)]
    kv.drop([1])
    joining = cache(5, 4)
    assert kv.join([joining], headroom=3)  # width 9 + 3 = the 12 columns it has
    assert (storage(kv), kv.nbytes) == (where, size)  # no new buffers: nothing else copied
    assert kv.lengths == [7, 8, 5]
    assert same_cache(kv.row(0), before[0])
    assert same_cache(kv.row(1), before[2])
    assert same_cache(kv.row(2), joining)
    keys = kv.cache.layers[0].keys
    assert keys is not None
    assert torch.count_nonzero(keys[2, :, : kv.width - 5]) == 0  # the old row's data is gone
    assert kv.attention_mask().tolist()[2] == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    step(kv, 6)  # and the batch decodes on
    assert kv.lengths == [8, 9, 6]


def test_a_row_that_does_not_fit_is_refused_and_changes_nothing() -> None:
    kv = BatchedKV()
    kv.rebuild([], [cache(6, 1), cache(6, 2)], headroom=2)
    assert not kv.join([cache(3, 3)])  # no free row
    kv.drop([0])
    assert not kv.join([cache(7, 3)])  # longer than the batch's width
    assert not kv.join([cache(3, 3)], headroom=3)  # its future needs more columns
    assert kv.lengths == [6]
    assert kv.join([cache(3, 3)], headroom=2)
    assert kv.lengths == [6, 3]


def test_a_join_that_would_leave_the_batch_mostly_padding_is_refused() -> None:
    kv = BatchedKV()
    kv.rebuild([], [cache(20, 1), cache(2, 2), cache(2, 3)])
    kv.drop([0])
    assert kv.sparse  # 4 real positions in 2 rows of 20
    assert not kv.join([cache(1, 4)])
    kv.rebuild([0, 1], [cache(1, 4)])
    assert (kv.width, kv.sparse) == (2, False)
