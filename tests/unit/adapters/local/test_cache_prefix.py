"""PrefixCache: exact longest-prefix matching (tokens and images), copies, bounds, replacement."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from adapters.local.prefix import ImageSpan, PrefixCache, PrefixUse, image_spans

LAYERS, HEADS, DIM = 2, 2, 4
BYTES_PER_TOKEN = LAYERS * 2 * HEADS * DIM * 4 + 8  # float32 keys and values, int64 id


def kv_for(ids: list[int]) -> DynamicCache:
    """A cache whose every value at position p is ``1000 * layer + ids[p]`` (checkable)."""
    kv = DynamicCache()
    token = torch.tensor(ids, dtype=torch.float32).view(1, 1, -1, 1)
    for layer in range(LAYERS):
        states = (token + 1000 * layer).expand(1, HEADS, len(ids), DIM).contiguous()
        kv.update(states, states.clone(), layer)
    return kv


def stored(cache: PrefixCache, ids: list[int], spans: tuple[ImageSpan, ...] = ()) -> bool:
    return cache.put(torch.tensor(ids), spans, kv_for(ids))


def prompt(ids: list[int]) -> torch.Tensor:
    return torch.tensor(ids)


BASE = list(range(100, 140))  # 40 tokens


def test_the_longest_common_prefix_is_matched_and_copied() -> None:
    cache = PrefixCache(10**6, min_tokens=4)
    assert stored(cache, BASE[:20])
    assert stored(cache, [*BASE[:10], 7, 7, 7, 7, 7, 7])
    match = cache.match(prompt([*BASE[:30], 1, 2]), ())
    assert match is not None
    assert match.tokens == 20
    kv = match.materialize(None)
    assert kv.get_seq_length() == 20
    layer = kv.layers[1]
    assert layer.keys is not None
    assert layer.keys[0, 0, :, 0].tolist() == [1000.0 + t for t in BASE[:20]]
    stats = cache.store.stats()
    assert (stats.hits, stats.misses) == (1, 0)


def test_a_copy_is_independent_of_the_entry() -> None:
    cache = PrefixCache(10**6, min_tokens=4)
    stored(cache, BASE)
    match = cache.match(prompt([*BASE[:12], 5, 5]), ())
    assert match is not None
    assert match.tokens == 12
    kv = match.materialize(None)
    extra = torch.zeros(1, HEADS, 3, DIM)
    kv.update(extra, extra, 0)  # generation appends to the copy
    assert kv.get_seq_length() == 15
    assert match.entry.kv.get_seq_length() == 40
    entry_layer = match.entry.kv.layers[0]
    assert entry_layer.keys is not None
    assert entry_layer.keys[0, 0, :, 0].tolist() == [float(t) for t in BASE]


def test_the_last_prompt_token_is_never_covered_and_short_prefixes_are_not_reused() -> None:
    cache = PrefixCache(10**6, min_tokens=8)
    stored(cache, BASE)
    same = cache.match(prompt(BASE), ())
    assert same is not None
    assert same.tokens == 39  # generate needs at least one token to compute
    assert cache.match(prompt([*BASE[:7], 1, 2, 3]), ()) is None
    assert cache.match(prompt([1, *BASE]), ()) is None
    stats = cache.store.stats()
    assert (stats.hits, stats.misses) == (1, 2)


def test_images_must_be_the_same_images_and_wholly_inside_the_prefix() -> None:
    pad = 9
    ids = [*BASE[:5], *[pad] * 10, *BASE[5:25]]  # image at [5, 15)
    cache = PrefixCache(10**6, min_tokens=2)
    stored(cache, ids, (ImageSpan(5, 15, "cat"),))
    same = cache.match(prompt([*ids, 1]), (ImageSpan(5, 15, "cat"),))
    other = cache.match(prompt([*ids, 1]), (ImageSpan(5, 15, "dog"),))
    assert same is not None
    assert same.tokens == len(ids)
    assert other is not None
    assert other.tokens == 5  # same placeholder ids, different pixels: stop before the image
    # The cached prompt ends inside an image of the new prompt: stop before that image.
    cache.clear()
    stored(cache, ids[:10], (ImageSpan(5, 10, "cat"),))
    cut = cache.match(prompt([*ids, 1]), (ImageSpan(5, 15, "cat"),))
    assert cut is not None
    assert cut.tokens == 5


def test_an_entry_extended_by_a_new_one_is_replaced() -> None:
    cache = PrefixCache(10**6, min_tokens=4)
    stored(cache, BASE[:10])
    stored(cache, [*BASE[:5], 1, 1, 1, 1, 1])  # diverges: kept
    stored(cache, BASE[:30])  # extends the first: it goes
    tokens = sorted(entry.tokens for _, entry in cache.store.peek())
    assert tokens == [10, 30]
    assert cache.store.stats().bytes_used == 40 * BYTES_PER_TOKEN


def test_prefix_entries_are_bounded_by_bytes_and_oversize_is_skipped() -> None:
    cache = PrefixCache(50 * BYTES_PER_TOKEN, min_tokens=4)
    stored(cache, [1, *BASE[:20]])
    stored(cache, [2, *BASE[:20]])
    stored(cache, [3, *BASE[:20]])  # 63 tokens > 50: the oldest goes
    firsts = sorted(int(entry.ids[0]) for _, entry in cache.store.peek())
    assert firsts == [2, 3]
    assert not stored(cache, list(range(51)))
    stats = cache.store.stats()
    assert (stats.evictions, stats.oversize, stats.entries) == (1, 1, 2)


def test_prefix_entries_expire() -> None:
    now = [0.0]
    cache = PrefixCache(10**6, ttl_s=60, min_tokens=4, timer=lambda: now[0])
    stored(cache, BASE)
    now[0] = 61.0
    assert cache.match(prompt(BASE), ()) is None
    assert cache.store.stats().expirations == 1


def test_disabled_or_mismatched_caches_store_nothing() -> None:
    off = PrefixCache(0)
    assert not stored(off, BASE)
    assert off.match(prompt(BASE), ()) is None
    cache = PrefixCache(10**6)
    assert not cache.put(torch.tensor(BASE[:5]), (), kv_for(BASE[:6]))
    assert cache.store.stats().entries == 0


def test_plan_stores_the_cache_of_the_tokens_the_model_saw() -> None:
    cache = PrefixCache(10**6, min_tokens=4)
    plan = PrefixUse(cache, spans=())
    kv = plan.start(None)
    assert kv.get_seq_length() == 0
    sequence = torch.tensor(BASE)  # prompt + completion; the last token was never fed
    fed = kv_for(BASE[:-1])
    plan.finish(sequence, fed)
    [(_, entry)] = cache.store.peek()
    assert entry.ids.tolist() == BASE[:-1]
    no_store = PrefixUse(cache, spans=(), store=False)
    no_store.finish(torch.tensor([5, *BASE]), kv_for([5, *BASE]))
    assert cache.store.stats().entries == 1


def test_image_spans_follow_the_placeholder_mask() -> None:
    mask = torch.tensor([0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 0])
    spans = image_spans(mask, (3, 2, 3), ("a", "b", "c"))
    assert spans == (ImageSpan(1, 4, "a"), ImageSpan(6, 8, "b"), ImageSpan(8, 11, "c"))
