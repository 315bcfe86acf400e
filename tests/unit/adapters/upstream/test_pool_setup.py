"""Pool configuration, the CLI's backends (a front gateway without a local model) and the pool
metrics (``gateway.observability.pool_metrics``)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from adapters.base import collect
from adapters.testing import FakeAdapter
from adapters.upstream import UpstreamAdapter, UpstreamConfig
from gateway.cli import _backends
from gateway.observability.pool_metrics import MAX_REPLICA_LABELS, PoolMetrics
from gateway.routing import CONFIG_DIR, CapabilityRouter
from tests.unit.adapters.upstream.pool_fake import PORTS, Replicas, chat, image, pool, root

PROFILE = "qwen3-vl-2b-instruct"


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"replicas": "http://127.0.0.1:9001/v1"}, "replicas"),
        ({"replicas": ["ftp://127.0.0.1/v1"]}, "replicas"),
        ({"replicas": [root(9001), root(9001)]}, "replicas"),
        ({"replicas": [root(9001)], "replicas_dns": root(9002)}, "exclusive"),
        ({"replicas_dns": "http://user:pw@vlm/v1"}, "replicas_dns"),
        ({"balance": "random"}, "balance"),
        ({"load_factor": 0.9}, "load_factor"),
        ({"eject_after": 0}, "eject_after"),
        ({"probe_interval_s": 0}, "probe_interval_s"),
        ({"dns_refresh_s": -1}, "dns_refresh_s"),
        ({"probe_path": "health"}, "probe_path"),
    ],
)
def test_bad_pool_configuration_is_refused_naming_the_key(
    changes: dict[str, Any], key: str
) -> None:
    with pytest.raises(ValueError, match=key):
        UpstreamConfig(model="m", **changes)


def test_the_commented_pool_example_in_routing_toml_is_valid() -> None:
    text = (CONFIG_DIR / "routing.toml").read_text(encoding="utf-8")
    block = text.split("# Or a pool of replicas", 1)[1].split("\n\n", 1)[0]
    lines = [line.removeprefix("# ") for line in block.splitlines()]
    table = "\n".join(lines[lines.index("[backends.big.upstream]") :])
    upstream = tomllib.loads(table)["backends"]["big"]["upstream"]
    config = UpstreamConfig(**upstream)
    assert config.pooled
    assert config.replicas == tuple(upstream["replicas"])
    documented = set(re.findall(r"^# (?:# )?(\w+) =", block, re.M))
    pool_keys = {"replicas", "replicas_dns", "dns_refresh_s", "balance", "load_factor"}
    pool_keys |= {"probe_interval_s", "probe_path", "eject_after", "image_uuids", "cache_salt"}
    assert pool_keys <= documented


def router_for(tmp_path: Path, tables: str) -> CapabilityRouter:
    (tmp_path / "routing.toml").write_text(tables, encoding="utf-8")
    return CapabilityRouter.from_files(tmp_path / "routing.toml", CONFIG_DIR / "models")


POOL_TABLE = f"""
[backends.pool]
profile = "{PROFILE}"
names = ["pool-vlm"]
[backends.pool.upstream]
model = "big-vlm"
replicas = ["{root(9001)}", "{root(9002)}"]
"""


def test_a_front_gateway_needs_no_local_backend(tmp_path: Path) -> None:
    one = f'\n[backends.one]\nprofile = "{PROFILE}"\nnames = ["one"]\n'
    one += f'[backends.one.upstream]\nmodel = "one"\nbase_url = "{root(9009)}"\n'
    backends = _backends(router_for(tmp_path, POOL_TABLE + one), None)
    assert list(backends) == ["pool", "one"]  # no local: the first upstream is the primary
    pooled, single = backends["pool"], backends["one"]
    assert isinstance(pooled, UpstreamAdapter)
    assert isinstance(single, UpstreamAdapter)
    assert isinstance(pooled._pool._observer, PoolMetrics)
    assert not isinstance(single._pool._observer, PoolMetrics)
    local = f'\n[backends.local]\nprofile = "{PROFILE}"\n'
    mixed = _backends(router_for(tmp_path, POOL_TABLE + local), FakeAdapter())
    assert list(mixed) == ["local", "pool"]  # the local model stays the primary
    two = local + f'\n[backends.other]\nprofile = "{PROFILE}"\nnames = ["x"]\n'
    with pytest.raises(ValueError, match="at most one backend may be local"):
        _backends(router_for(tmp_path, POOL_TABLE + two), FakeAdapter())
    with pytest.raises(ValueError, match="local"):
        _backends(router_for(tmp_path, POOL_TABLE + local), None)


def sample(name: str, backend: str, replica: int | str) -> float:
    label = replica if isinstance(replica, str) else f"127.0.0.1:{replica}"
    value = REGISTRY.get_sample_value(name, {"backend": backend, "replica": label})
    return value or 0.0


async def test_pool_metrics_per_replica() -> None:
    replicas = Replicas()
    adapter = pool(replicas, observer=PoolMetrics("metrics-test"), eject_after=1)
    assert [sample("vlm_gateway_pool_replica_healthy", "metrics-test", p) for p in PORTS] == [1] * 3
    request = chat("q", first=image(21))
    await collect(adapter.stream(request))
    home = replicas.chats[-1]
    replicas.behaviour[home] = "500"
    await collect(adapter.stream(request))  # fails on the home, retried on the next
    served = replicas.chats[-1]
    assert sample("vlm_gateway_pool_requests_total", "metrics-test", home) == 2
    assert sample("vlm_gateway_pool_requests_total", "metrics-test", served) == 1
    assert sample("vlm_gateway_pool_errors_total", "metrics-test", home) == 1
    assert sample("vlm_gateway_pool_errors_total", "metrics-test", served) == 0
    assert sample("vlm_gateway_pool_ejections_total", "metrics-test", home) == 1
    assert sample("vlm_gateway_pool_replica_healthy", "metrics-test", home) == 0
    assert sample("vlm_gateway_pool_affinity_hits_total", "metrics-test", home) == 2
    await collect(adapter.stream(request))  # the owner is ejected: a spill
    assert sample("vlm_gateway_pool_affinity_spills_total", "metrics-test", home) == 1
    assert all(sample("vlm_gateway_pool_in_flight", "metrics-test", p) == 0 for p in PORTS)
    await adapter.aclose()


def test_replica_labels_are_capped_per_backend() -> None:
    metrics = PoolMetrics("cap-test")
    for i in range(MAX_REPLICA_LABELS + 5):
        metrics.health(f"10.0.{i // 250}.{i % 250}:8000", True, ejected=False)
    assert sample("vlm_gateway_pool_replica_healthy", "cap-test", "10.0.0.0:8000") == 1
    assert sample("vlm_gateway_pool_replica_healthy", "cap-test", "other") == 1
    series = [
        s
        for family in REGISTRY.collect()
        if family.name == "vlm_gateway_pool_replica_healthy"
        for s in family.samples
        if s.labels["backend"] == "cap-test"
    ]
    assert len(series) == MAX_REPLICA_LABELS + 1
    metrics.removed("10.0.0.0:8000")
    assert (
        REGISTRY.get_sample_value(
            "vlm_gateway_pool_replica_healthy", {"backend": "cap-test", "replica": "10.0.0.0:8000"}
        )
        is None
    )
