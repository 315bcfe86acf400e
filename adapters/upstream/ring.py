"""The consistent-hash ring of a replica pool and the affinity key of a request.

Engine caches (vision encoder outputs, key/value prefixes) live in each replica, so a request
should reach the replica that already did its work. ``affinity_key`` names that work: the digest
of the conversation's first image (every turn about an image carries it first, and the same
image from another conversation shares its encoder output), or, for a conversation without
images, a hash of its opening text (system turns and the first user turn, the prefix every
later turn repeats) within its cache scope, so tenants' prompts never collide.

``HashRing`` places ``VNODES`` points per replica, hashed from the replica's URL: a key belongs
to the first point clockwise from its hash, and adding or removing a replica moves only the keys
of that replica's arcs (about 1/n of them), not the rest.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable

from adapters.base import GenerationRequest, ImageInput

__all__ = ("TEXT_KEY_CHARS", "VNODES", "HashRing", "affinity_key", "key_hash")

VNODES = 64
"""Points per replica: enough that n replicas share the ring within a few percent of 1/n."""
TEXT_KEY_CHARS = 512
"""Characters of a text-only conversation's opening that form its key: long enough to tell
conversations apart, short enough that a long first turn costs nothing to hash."""


def key_hash(text: str) -> int:
    """A stable 64-bit position on the ring (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def affinity_key(request: GenerationRequest) -> str:
    """The first image's digest, else ``cache_scope`` + the opening text (see the module)."""
    for message in request.messages:
        for part in message.content:
            if isinstance(part, ImageInput):
                return "image:" + part.digest
    opening: list[str] = []
    for message in request.messages:
        opening.extend(p for p in message.content if isinstance(p, str))
        if message.role == "user":
            break  # system turns and the first user turn: what every later turn starts with
    text = "\n".join(opening)[:TEXT_KEY_CHARS]
    # The scope's length first: no scope/text split can collide with another.
    return f"text:{len(request.cache_scope)}:{request.cache_scope}:{text}"


class HashRing:
    """Replica names on a ring of ``vnodes`` points each."""

    def __init__(self, names: Iterable[str], vnodes: int = VNODES) -> None:
        points = sorted(
            (key_hash(f"{name}#{i}"), name) for name in dict.fromkeys(names) for i in range(vnodes)
        )
        self._hashes = [h for h, _ in points]
        self._names = [n for _, n in points]
        self.size = len(set(self._names))

    def walk(self, key: str) -> list[str]:
        """Every replica once, in ring order from ``key``'s position: its owner first, then
        where the key goes when the owner is unhealthy or full."""
        if not self._names:
            return []
        start = bisect.bisect_left(self._hashes, key_hash(key))
        order: dict[str, None] = {}
        count = len(self._names)
        for i in range(count):
            order.setdefault(self._names[(start + i) % count])
            if len(order) == self.size:
                break
        return list(order)
