"""Prefix (KV) reuse: keep the key/value cache of recent prompts and start later prompts from it.

Turn N+1 of a chat repeats turn N's prompt and answer, so its first tokens were already run
through the model. After a generation the adapter stores the ``DynamicCache`` of the prompt and
its completion (everything the model saw; the last token never is). A new prompt starts from the
entry sharing the longest prefix with it and only the rest is computed.

Policy:

- Partitioned: an entry is only ever matched by requests of the same ``scope`` (the gateway's
  tenant: an API key, narrowed by a client's ``prompt_cache_key``/``cache_salt``), so one caller
  cannot learn from timing or ``cached_tokens`` what another sent.
- Keyed exactly: an entry is reused for the tokens where its ids equal the new prompt's ids and
  each image inside them is the same image (image placeholder ids are the same for every image,
  so the image keys at their positions are compared too). A prefix never ends inside an image,
  never covers the prompt's last token (``generate`` needs one token to compute), and is reused
  only from ``min_tokens`` tokens on.
- Bounded by bytes (the entry's tensors) with LRU eviction and an optional TTL
  (``BoundedCache``). An entry that a new one extends is dropped: whatever prompt matched it
  matches the new one at least as far.
- A hit is copied (the first ``tokens`` positions of every layer) before use, so entries are
  never mutated and can serve concurrent conversations.
- Qwen3-VL keeps ``rope_deltas`` on the model from its previous call and ``generate`` trusts it
  when starting from a cache; the runner resets it so the M-RoPE positions are recomputed from
  the full prompt (token identity is tested in ``tests/integration/test_cache_identity.py``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from adapters.local.cache import BoundedCache, CacheObserver
from adapters.local.kvbatch import cache_bytes

__all__ = ("ImageSpan", "PrefixCache", "PrefixEntry", "PrefixMatch", "PrefixUse", "image_spans")


@dataclass(frozen=True)
class ImageSpan:
    """One image's placeholder tokens in a prompt: positions ``[start, end)``."""

    start: int
    end: int
    key: Hashable
    """What identifies the image (the embedding cache key: model, preprocessing, pixel digest)."""


def image_spans(
    mm_token_type_ids: torch.Tensor, image_tokens: Sequence[int], keys: Sequence[Hashable]
) -> tuple[ImageSpan, ...]:
    """Spans of a prompt's images from its ``(prompt tokens,)`` placeholder mask."""
    positions = torch.nonzero(mm_token_type_ids).flatten().tolist()
    spans: list[ImageSpan] = []
    offset = 0
    for count, key in zip(image_tokens, keys, strict=True):
        spans.append(ImageSpan(positions[offset], positions[offset + count - 1] + 1, key))
        offset += count
    return tuple(spans)


@dataclass(frozen=True, eq=False)
class PrefixEntry:
    """A stored key/value cache and the exact tokens (and images) it was computed from."""

    ids: torch.Tensor
    """``(tokens,)`` int64 on the CPU."""
    spans: tuple[ImageSpan, ...]
    kv: DynamicCache
    nbytes: int
    """Tensor bytes held (keys, values and ids)."""
    scope: str = ""
    """The cache partition it belongs to (``GenerationRequest.cache_scope``)."""

    @property
    def tokens(self) -> int:
        return int(self.ids.shape[0])


@dataclass(frozen=True, eq=False)
class PrefixMatch:
    """A cached prefix of a new prompt: the first ``tokens`` positions of ``entry``."""

    entry: PrefixEntry
    tokens: int

    def materialize(self, config: Any) -> DynamicCache:
        """A new cache holding a copy of the first ``tokens`` positions (the entry is untouched)."""
        kv = DynamicCache(config=config)
        for i, layer in enumerate(self.entry.kv.layers):
            layer_kv: Any = layer  # a DynamicLayer (PrefixCache.put stores no other kind)
            keys, values = layer_kv.keys, layer_kv.values
            # update() concatenates onto an empty tensor: a copy, not a view of the entry.
            kv.update(keys[..., : self.tokens, :], values[..., : self.tokens, :], i)
        return kv


def _common(a: torch.Tensor, b: torch.Tensor) -> int:
    """Length of the common prefix of two 1-D tensors."""
    n = min(int(a.shape[0]), int(b.shape[0]))
    diff = torch.nonzero(a[:n] != b[:n])
    return int(diff[0, 0]) if diff.numel() else n


def _clip(n: int, spans: Sequence[ImageSpan], cached: Sequence[ImageSpan]) -> int:
    """``n`` cut back to before the first image that ``cached`` does not hold in full."""
    theirs = {(s.start, s.end): s.key for s in cached}
    for span in spans:
        if span.start >= n:
            break
        if span.end > n or theirs.get((span.start, span.end), _MISSING) != span.key:
            return span.start
    return n


_MISSING = object()


def _kv_bytes(kv: DynamicCache) -> int | None:
    """Bytes of a plain full-attention cache; None for layouts a prefix cannot be cut from."""
    for layer in kv.layers:
        if type(layer) is not DynamicLayer or not layer.is_initialized:
            return None
        if layer.keys is None or layer.values is None:
            return None
    return cache_bytes(kv)


class PrefixCache:
    """Key/value caches of recent prompts, matched by longest exact prefix. Thread-safe."""

    def __init__(
        self,
        capacity_bytes: int,
        ttl_s: float = 0.0,
        *,
        min_tokens: int = 16,
        observer: CacheObserver | None = None,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store: BoundedCache[str, PrefixEntry] = BoundedCache(
            "prefix", capacity_bytes, ttl_s, observer=observer, timer=timer
        )
        self.min_tokens = max(1, min_tokens)

    @property
    def enabled(self) -> bool:
        return self.store.enabled

    def match(
        self, ids: torch.Tensor, spans: Sequence[ImageSpan], scope: str = ""
    ) -> PrefixMatch | None:
        """The longest reusable cached prefix of the prompt ``ids`` (``(tokens,)``) among the
        entries of ``scope``, counted."""
        if not self.enabled:
            return None
        limit = ids[: int(ids.shape[0]) - 1].cpu()
        best: tuple[str, PrefixEntry, int] | None = None
        for key, entry in self.store.peek():
            if entry.scope != scope:
                continue
            n = _clip(_common(entry.ids, limit), spans, entry.spans)
            if n >= self.min_tokens and (best is None or n > best[2]):
                best = (key, entry, n)
        if best is None:
            self.store.count(misses=1)
            return None
        self.store.get(best[0])  # most recently used
        self.store.count(hits=1)
        return PrefixMatch(best[1], best[2])

    def put(
        self, ids: torch.Tensor, spans: Sequence[ImageSpan], kv: DynamicCache, scope: str = ""
    ) -> bool:
        """Keep ``kv``, the cache of exactly the tokens ``ids``, in partition ``scope``; False
        if not stored.

        ``kv`` is kept as is (not copied): the caller must not use it afterwards.
        """
        kv_bytes = _kv_bytes(kv) if self.enabled else None
        if kv_bytes is None or kv.get_seq_length() != int(ids.shape[0]):
            return False
        ids = ids.detach().to("cpu", torch.long).clone()
        entry = PrefixEntry(ids, tuple(spans), kv, kv_bytes + ids.nbytes, scope)
        digest = hashlib.blake2b(ids.numpy().tobytes(), digest_size=20)
        digest.update(repr(entry.spans).encode())
        digest.update(scope.encode())
        key = digest.hexdigest()
        for old_key, old in self.store.peek():
            if old_key != key and old.scope == scope and old.tokens <= entry.tokens:
                n = _common(old.ids, ids)
                if n == old.tokens and _clip(n, old.spans, entry.spans) == n:
                    self.store.discard(old_key)
        return self.store.put(key, entry)

    def clear(self) -> None:
        self.store.clear()


@dataclass(frozen=True, eq=False)
class PrefixUse:
    """One generation's use of the prefix cache (what the model runner needs, nothing more)."""

    cache: PrefixCache
    spans: tuple[ImageSpan, ...]
    """The prompt's images, for the stored entry's key."""
    match: PrefixMatch | None = None
    """The cached prefix to start from, if any."""
    store: bool = True
    """Keep this generation's key/value cache afterwards."""
    scope: str = ""
    """The cache partition (``GenerationRequest.cache_scope``)."""

    @property
    def reused_tokens(self) -> int:
        return self.match.tokens if self.match is not None else 0

    def start(self, config: Any) -> DynamicCache:
        """The cache to pass to ``generate``: a copy of the matched prefix, or a new one."""
        if self.match is not None:
            return self.match.materialize(config)
        return DynamicCache(config=config)

    def finish(self, sequence: torch.Tensor, kv: DynamicCache) -> None:
        """After a successful generation: keep ``kv`` for the ``(tokens,)`` ``sequence``."""
        length = kv.get_seq_length()
        if self.store and 0 < length <= int(sequence.shape[0]):
            self.cache.put(sequence[:length], self.spans, kv, self.scope)
