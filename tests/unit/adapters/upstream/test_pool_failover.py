"""A pool behind one UpstreamAdapter (httpx.MockTransport replicas): affinity over HTTP, retry
once before the first event and never after, ejection and re-admission, probes, DNS
membership, image uuids."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import pytest

from adapters.base import Delta, ModelUnavailable, StreamEvent, collect
from adapters.upstream import UpstreamRejected, UpstreamUnavailable
from adapters.upstream.health import Resolver
from tests.unit.adapters.upstream.pool_fake import PORTS, Replicas, chat, image, pool, root
from tests.unit.adapters.upstream.upstream_fake import drain


async def until(condition: Callable[[], bool]) -> None:
    """Wait up to 2 s for ``condition`` (set by probes and refreshes in the background)."""
    for _ in range(400):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached in 2 s")


async def test_every_turn_of_a_conversation_reaches_one_replica() -> None:
    replicas = Replicas()
    adapter = pool(replicas)
    pic = image(7)
    for turns in (["a"], ["a", "b"], ["a", "b", "c"]):
        done = await collect(adapter.stream(chat(*turns, first=pic)))
        assert done.text.startswith("from ")
    assert len(set(replicas.chats)) == 1
    # Many images spread over the replicas.
    for seed in range(30):
        await collect(adapter.stream(chat("x", first=image(100 + seed))))
    assert set(replicas.chats) == set(PORTS)
    await adapter.aclose()


async def test_a_failure_before_the_first_event_is_retried_once_on_the_next_replica() -> None:
    replicas = Replicas()
    adapter = pool(replicas)
    request = chat("q", first=image(8))
    await collect(adapter.stream(request))
    home = replicas.chats[-1]
    for failure in ("500", "down"):
        replicas.behaviour[home] = failure
        replicas.chats.clear()
        done = await collect(adapter.stream(request))
        served = int(done.text.removeprefix("from "))
        assert served != home
        assert replicas.chats == ([home, served] if failure == "500" else [served])
    # Every replica failing: one retry, then the error.
    replicas.behaviour = dict.fromkeys(PORTS, "500")
    replicas.chats.clear()
    with pytest.raises(UpstreamUnavailable):
        await collect(adapter.stream(request))
    assert len(replicas.chats) == 2
    assert len(set(replicas.chats)) == 2
    await adapter.aclose()


async def test_no_retry_after_the_first_event_and_none_for_a_refusal() -> None:
    replicas = Replicas()
    adapter = pool(replicas)
    request = chat("q", first=image(9))
    await collect(adapter.stream(request))
    home = replicas.chats[-1]
    replicas.behaviour[home] = "broken"
    replicas.chats.clear()
    received: list[StreamEvent] = []
    with pytest.raises(UpstreamUnavailable):
        await drain(adapter.stream(request), received)
    assert received == [Delta("partial")]  # the client has text: repeating it elsewhere is wrong
    assert replicas.chats == [home]
    replicas.behaviour[home] = "400"
    with pytest.raises(UpstreamRejected):
        await collect(adapter.stream(request))
    assert replicas.chats == [home, home]  # the request's own fault: no other replica tried
    await adapter.aclose()


async def test_a_failing_replica_is_ejected_and_a_passing_probe_readmits_it() -> None:
    replicas = Replicas()
    adapter = pool(replicas, eject_after=2, probe_interval_s=0.02)
    await adapter.start()
    request = chat("q", first=image(10))
    await collect(adapter.stream(request))
    home = replicas.chats[-1]
    replicas.behaviour[home] = "500"  # /health fails too
    await until(lambda: not adapter._pool.replicas[PORTS.index(home)].healthy)
    replicas.chats.clear()
    for _ in range(3):
        await collect(adapter.stream(request))
    assert home not in replicas.chats  # ejected: not even tried
    replicas.behaviour[home] = "ok"
    await until(lambda: adapter._pool.replicas[PORTS.index(home)].healthy)
    replicas.chats.clear()
    await collect(adapter.stream(request))
    assert replicas.chats == [home]  # back with its keys
    await adapter.aclose()


async def test_passive_ejection_by_requests_and_probes_at_the_root() -> None:
    replicas = Replicas()
    adapter = pool(replicas, eject_after=2, probe_interval_s=60)  # no probe in this test
    await adapter.start()
    request = chat("q", first=image(11))
    await collect(adapter.stream(request))
    home = replicas.chats[-1]
    replicas.behaviour[home] = "down"
    for _ in range(2):
        await collect(adapter.stream(request))  # retried elsewhere each time
    replica = adapter._pool.replicas[PORTS.index(home)]
    assert not replica.healthy
    replicas.behaviour[home] = "ok"
    await adapter._monitor.probe()
    assert replica.healthy
    assert set(replicas.probes) == set(PORTS)  # GET /health beside /v1, on every replica
    await adapter.aclose()


async def test_no_healthy_replica_is_unavailable() -> None:
    replicas = Replicas()
    adapter = pool(replicas, eject_after=1)
    for replica in adapter._pool.replicas:
        adapter._pool.eject(replica, "test")
    with pytest.raises(UpstreamUnavailable, match="No upstream replica"):
        await collect(adapter.stream(chat("q")))
    assert replicas.chats == []
    await adapter.aclose()


async def test_start_ejects_replicas_that_fail_and_needs_one_that_passes() -> None:
    replicas = Replicas()
    replicas.behaviour[PORTS[0]] = "down"
    adapter = pool(replicas, probe_interval_s=60)
    await adapter.start()
    assert [r.healthy for r in adapter._pool.replicas] == [False, True, True]
    await adapter.aclose()
    replicas.behaviour = dict.fromkeys(PORTS, "down")
    with pytest.raises(ModelUnavailable, match="none of the 3 upstream replica"):
        await pool(replicas).start()


def resolver_of(answers: list[Iterable[tuple[str, int]] | Exception]) -> Resolver:
    async def resolve(host: str, port: int) -> Iterable[tuple[str, int]]:
        assert (host, port) == ("vlm.pool.test", 8000)
        answer = answers[0] if len(answers) == 1 else answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return resolve


async def test_dns_membership_follows_the_resolver() -> None:
    replicas = Replicas((9001, 9002, 9003, 9004))
    answers: list[Iterable[tuple[str, int]] | Exception] = [
        [("127.0.0.1", 9001), ("127.0.0.1", 9002)],
        OSError("name server down"),  # a failed refresh keeps what is known
        [("127.0.0.1", 9002), ("127.0.0.1", 9003), ("127.0.0.1", 9004)],
    ]
    adapter = pool(
        replicas,
        replicas_dns="http://vlm.pool.test:8000/v1",
        dns_refresh_s=0.02,
        probe_interval_s=60,
        resolver=resolver_of(answers),
    )
    await adapter.start()
    assert [r.root for r in adapter._pool.replicas] == [root(9001), root(9002)]
    await until(lambda: len(adapter._pool.replicas) == 3)
    assert [r.root for r in adapter._pool.replicas] == [root(p) for p in (9002, 9003, 9004)]
    for seed in range(20):
        await collect(adapter.stream(chat("x", first=image(200 + seed))))
    assert set(replicas.chats) <= {9002, 9003, 9004}
    await adapter.aclose()


async def test_an_unresolvable_dns_pool_does_not_start() -> None:
    adapter = pool(
        Replicas(),
        replicas_dns="http://vlm.pool.test:8000/v1",
        resolver=resolver_of([OSError("NXDOMAIN")]),
    )
    with pytest.raises(ModelUnavailable, match="cannot be resolved"):
        await adapter.start()
    await adapter.aclose()


@pytest.mark.parametrize("uuids", [True, False])
async def test_image_uuids_carry_the_digest_within_the_partition(uuids: bool) -> None:
    replicas = Replicas()
    adapter = pool(replicas, image_uuids=uuids)
    for scope in ("key:a", "key:a", "key:b"):
        await collect(adapter.stream(chat("q", first=image(12), scope=scope)))
    ids = []
    for body in replicas.bodies:
        (part,) = [p for p in body["messages"][1]["content"] if p["type"] == "image_url"]
        assert part["image_url"]["url"].startswith("data:image/png;base64,")
        ids.append(part.get("uuid"))
    if uuids:
        # One key's image keeps its id; another key's copy of it gets another one.
        assert ids[0] == ids[1] != ids[2]
        assert "digest-12" not in ids[0]
    else:
        assert ids == [None, None, None]
    assert all("cache_salt" not in body for body in replicas.bodies)
    await adapter.aclose()


async def test_cache_salt_keeps_keys_apart_upstream() -> None:
    replicas = Replicas()
    adapter = pool(replicas, cache_salt=True)
    for scope in ("key:a", "key:a", "key:b"):
        await collect(adapter.stream(chat("q", scope=scope)))
    salts = [body["cache_salt"] for body in replicas.bodies]
    assert salts[0] == salts[1] != salts[2]
    assert all("key:" not in salt for salt in salts)  # the partition's name is not sent
    await adapter.aclose()


async def test_a_slow_replica_does_not_hold_its_keys_back() -> None:
    replicas = Replicas()
    adapter = pool(replicas)
    request = chat("q", first=image(13))
    await collect(adapter.stream(request))
    home = replicas.chats[-1]
    replicas.behaviour[home] = "slow"
    held = asyncio.create_task(collect(adapter.stream(request)))
    await until(lambda: replicas.chats.count(home) == 2)
    replicas.behaviour[home] = "ok"  # it would answer, but it is at its bound
    done = await asyncio.wait_for(collect(adapter.stream(request)), 2)
    assert done.text != f"from {home}"
    replicas.release.set()
    assert (await held).text == f"from {home}"
    await adapter.aclose()
