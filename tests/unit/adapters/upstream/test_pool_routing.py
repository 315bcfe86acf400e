"""Choosing a replica: the hash ring, the affinity key, bounded loads, round robin and least in
flight (``adapters.upstream.ring`` and ``adapters.upstream.pool``, no HTTP)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from adapters.upstream import UpstreamConfig
from adapters.upstream.pool import Pool, Replica
from adapters.upstream.ring import TEXT_KEY_CHARS, HashRing, affinity_key
from tests.unit.adapters.upstream.pool_fake import chat, image, root


class Recorder:
    """A ``PoolObserver`` that keeps the affinity decisions: (owner's label, hit)."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, bool]] = []

    def started(self, replica: str) -> None:
        pass

    def finished(self, replica: str, failed: bool) -> None:
        pass

    def routed(self, replica: str, hit: bool) -> None:
        self.routes.append((replica, hit))

    def health(self, replica: str, healthy: bool, ejected: bool) -> None:
        pass

    def removed(self, replica: str) -> None:
        pass


def make_pool(n: int = 3, **config: Any) -> tuple[Pool, Recorder]:
    observer = Recorder()
    replicas = tuple(root(9001 + i) for i in range(n))
    return Pool(UpstreamConfig(model="m", replicas=replicas, **config), observer), observer


KEYS = [f"key-{i}" for i in range(6000)]


def owners(ring: HashRing) -> dict[str, str]:
    return {key: ring.walk(key)[0] for key in KEYS}


def test_the_ring_spreads_keys_evenly_and_walks_every_replica_once() -> None:
    names = [root(9001 + i) for i in range(5)]
    ring = HashRing(names)
    shares = Counter(owners(ring).values())
    assert set(shares) == set(names)
    for name in names:
        assert 0.12 < shares[name] / len(KEYS) < 0.28, shares  # 1/5 each, give or take
    walk = ring.walk("anything")
    assert sorted(walk) == sorted(names)
    assert HashRing([]).walk("x") == []


def test_membership_changes_move_only_the_keys_they_must() -> None:
    names = [root(9001 + i) for i in range(5)]
    before = owners(HashRing(names))
    grown = owners(HashRing([*names, root(9006)]))
    moved = [k for k in KEYS if before[k] != grown[k]]
    assert all(grown[k] == root(9006) for k in moved)  # keys only move to the newcomer
    assert 0.08 < len(moved) / len(KEYS) < 0.26  # about 1/6
    shrunk = owners(HashRing(names[1:]))
    moved = [k for k in KEYS if before[k] != shrunk[k]]
    assert all(before[k] == names[0] for k in moved)  # only the leaver's keys move
    # Order of configuration does not matter: the ring hashes the URLs.
    assert owners(HashRing(reversed(names))) == before


def test_the_affinity_key_is_the_first_image_else_the_opening_text_and_scope() -> None:
    pic = image(1)
    first = chat("What is this?", first=pic)
    later = chat("What is this?", "And the colour?", "Thanks", first=pic)
    other_text = chat("Something else entirely", first=pic)
    assert affinity_key(first) == affinity_key(later) == affinity_key(other_text)
    assert affinity_key(chat("What is this?", first=image(2))) != affinity_key(first)
    text = chat("Tell me a story")
    assert affinity_key(text) == affinity_key(chat("Tell me a story", "Go on", "More"))
    assert affinity_key(text) != affinity_key(chat("Tell me a joke"))
    assert affinity_key(text) != affinity_key(chat("Tell me a story", scope="tenant-b"))
    long = "x" * TEXT_KEY_CHARS
    assert affinity_key(chat(long + "a")) == affinity_key(chat(long + "b"))


def test_affinity_sends_a_conversation_to_one_replica_and_spills_when_it_is_full() -> None:
    pool, observer = make_pool(3, load_factor=1.25)
    request = chat("Describe", first=image(3))
    home, retry = pool.route(request)
    assert pool.route(chat("Describe", "More", first=image(3)))[0] is home
    assert retry is not home
    assert observer.routes == [(home.label, True)] * 2
    # One in flight on the home: bound = ceil(1.25 x 2 / 3) = 1, so the home is full.
    pool.begin(home)
    spilled, after = pool.route(request)
    assert spilled is retry  # the next replica on the ring
    assert observer.routes[-1] == (home.label, False)
    assert after is not spilled
    pool.end(home, failed=False)
    assert pool.route(request)[0] is home


def test_the_bound_grows_with_the_pool_load() -> None:
    pool, _ = make_pool(3, load_factor=1.25)
    request = chat("Describe", first=image(4))
    home = pool.route(request)[0]
    for replica in pool.replicas:  # 2 + 1 + 1 in flight: bound = ceil(1.25 x 5 / 3) = 3
        pool.begin(replica)
    pool.begin(home)
    assert pool.route(request)[0] is home
    pool.begin(home)  # 3 on the home: full
    assert pool.route(request)[0] is not home


def test_an_ejected_owner_spills_and_the_retry_skips_it() -> None:
    pool, observer = make_pool(3)
    request = chat("Describe", first=image(5))
    home, nxt = pool.route(request)
    pool.eject(home, "test")
    first, retry = pool.route(request)
    assert first is nxt
    assert home not in (first, retry)
    assert observer.routes[-1] == (home.label, False)
    for replica in pool.replicas:
        pool.eject(replica, "test")
    assert pool.route(request) == []


def test_round_robin_takes_turns_and_least_in_flight_takes_the_idlest() -> None:
    pool, _ = make_pool(3, balance="round_robin")
    firsts = [pool.route(chat("same"))[0].label for _ in range(6)]
    assert firsts[:3] == firsts[3:]
    assert len(set(firsts)) == 3
    pool, observer = make_pool(3, balance="least_in_flight")
    a, b, c = pool.replicas
    pool.begin(a)
    pool.begin(a)
    pool.begin(b)
    assert pool.route(chat("x")) == [c, b]
    pool.begin(c)
    pool.begin(c)
    first, second = pool.route(chat("x"))
    assert first is b
    assert second in (a, c)
    assert observer.routes == []  # no affinity decisions without affinity


def test_a_single_base_url_is_a_pool_of_one_that_is_never_ejected() -> None:
    pool = Pool(UpstreamConfig(model="m", base_url="http://10.1.2.3:8000/v1", eject_after=1))
    (only,) = pool.route(chat("x"))
    pool.failed(only)
    assert only.healthy
    assert pool.route(chat("x")) == [only]


@pytest.mark.parametrize(
    ("url", "label", "probe"),
    [
        ("http://10.0.0.11:8000/v1", "10.0.0.11:8000", "http://10.0.0.11:8000/health"),
        ("https://vlm.example/openai/v1/", "vlm.example:443", "https://vlm.example/openai/health"),
        ("http://[::1]:9000/v1", "[::1]:9000", "http://[::1]:9000/health"),
        ("http://h/", "h:80", "http://h/health"),
    ],
)
def test_replica_urls(url: str, label: str, probe: str) -> None:
    replica = Replica.at(url)
    assert (replica.label, str(replica.probe_url)) == (label, probe)
    assert str(replica.chat_url) == url.rstrip("/") + "/chat/completions"
