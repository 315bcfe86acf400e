"""Label bounding: client-chosen strings never become label values, so series never grow."""

from __future__ import annotations

import inspect
import random
import re
import string
import typing
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from gateway import errors
from gateway.guard import guard
from gateway.observability import CacheMetrics, metrics
from gateway.observability.labels import (
    BACKENDS,
    ROUTER_ACTIONS,
    WARNING_CODES,
    BuildInfo,
    bounded,
    configure_labels,
    error_codes,
    outcome,
    status_class,
    vocabulary,
)
from gateway.routing import TASKS
from gateway.routing import router as routing

MODELS = ("fake-vlm", "qwen-alias")


@pytest.fixture(autouse=True)
def _configured() -> Iterator[None]:
    metrics.configure(models=MODELS, backends=("local",))
    yield
    configure_labels(
        models=(), tasks=TASKS, backends=BACKENDS, warning_codes=WARNING_CODES,
        router_actions=ROUTER_ACTIONS,
    )  # fmt: skip


def _series(prefix: str = "vlm_gateway_") -> int:
    return sum(
        len(family.samples)
        for family in REGISTRY.collect()
        if family.name.startswith(prefix) and not family.name.startswith("vlm_gateway_http")
    )


def _random_text(rng: random.Random) -> str:
    alphabet = string.printable + "é漢字\u202e\x00"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))


def test_known_values_are_kept_and_everything_else_is_other_or_none() -> None:
    assert bounded("model", "fake-vlm") == "fake-vlm"
    assert bounded("model", "qwen-alias") == "qwen-alias"
    assert bounded("model", "gpt-4o") == "other"
    assert bounded("model", "fake-vlm ") == "other"
    assert bounded("model", None) == "none"
    assert bounded("model", "") == "none"
    assert bounded("model", 3) == "other"
    for task in TASKS:
        assert bounded("task", task) == task
    assert bounded("task", "jailbreak") == "other"
    assert bounded("backend", "local") == "local"
    assert bounded("backend", "upstream") == "other"  # replaced by configure(backends=...)
    assert bounded("stage", "prefill") == "prefill"
    assert bounded("stage", "tokenize") == "other"
    assert bounded("cache", "embedding") == "embedding"
    assert bounded("cache", "kv") == "other"


def test_every_gateway_error_code_is_a_known_label_value() -> None:
    declared = {
        cls.code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.GatewayError) and cls.code
    }
    assert declared <= error_codes()
    for code in declared | {"shutting_down", "not_ready", "server_overloaded"}:
        assert bounded("code", code) == code
    assert bounded("code", "made_up_code") == "other"


def test_a_gateway_error_subclass_defined_later_is_known_without_reconfiguring() -> None:
    class LateError(errors.InvalidRequest):
        code = "late_code_for_test"

    assert bounded("code", LateError.code) == "late_code_for_test"


def test_warning_and_action_vocabularies_match_the_guard_and_router() -> None:
    assert set(guard.WARNINGS) <= set(WARNING_CODES)
    emitted = re.findall(
        r'warnings\.(?:append|insert)\((?:0, )?"(\w+)"\)', inspect.getsource(routing)
    )
    assert emitted, "the router's warning codes moved: update this test"
    assert set(emitted) <= set(WARNING_CODES)
    assert set(typing.get_args(routing.Action)) == set(ROUTER_ACTIONS)
    for code in guard.WARNINGS:
        assert bounded("warning", code) == code


def test_status_classes_and_outcomes() -> None:
    assert [status_class(s) for s in (101, 200, 204, 302, 400, 404, 499, 500, 504)] == [
        "1xx", "2xx", "2xx", "3xx", "4xx", "4xx", "4xx", "5xx", "5xx",
    ]  # fmt: skip
    assert status_class(0) == "other"
    assert status_class(600) == "other"
    assert status_class(-200) == "other"
    assert outcome(200, cancelled=False) == "success"
    assert outcome(200, cancelled=True) == "cancelled"
    assert outcome(413, cancelled=False) == "client_error"
    assert outcome(503, cancelled=False) == "server_error"
    assert outcome(0, cancelled=False) == "server_error"


def test_configure_replaces_vocabularies() -> None:
    configure_labels(models=("a",), tasks=("t1",), warning_codes=("w1",), router_actions=("go",))
    try:
        assert vocabulary("model") == {"a"}
        assert bounded("model", "fake-vlm") == "other"
        assert bounded("task", "t1") == "t1"
        assert bounded("task", "ocr") == "other"
        assert bounded("warning", "w1") == "w1"
        assert bounded("action", "go") == "go"
    finally:
        configure_labels(models=MODELS, tasks=TASKS, backends=("local",))


def test_build_info_is_one_series_replaced_on_reconfigure() -> None:
    metrics.configure(models=MODELS, build_info=BuildInfo("1.2.3", "m1", "bfloat16", "cpu"))
    metrics.configure(models=MODELS, build_info=BuildInfo("1.2.3", "m2", "float32", "cuda"))
    samples = [
        s for f in REGISTRY.collect() if f.name == "vlm_gateway_build_info" for s in f.samples
    ]
    assert len(samples) == 1
    assert samples[0].labels == {
        "version": "1.2.3",
        "model": "m2",
        "dtype": "float32",
        "device": "cuda",
    }
    assert samples[0].value == 1


def _record_everything(
    rng: random.Random, model: str, task: str, code: str, status: int, cancelled: bool
) -> None:
    metrics.observe_request(
        model=model, task=task, backend=_random_text(rng), status=status, duration_s=0.5,
        cancelled=cancelled, error_code=code, prompt_tokens=3, completion_tokens=2,
        image_tokens=1, cached_tokens=1,
    )  # fmt: skip
    metrics.count_error(code, status)
    metrics.observe_stage(_random_text(rng), 0.01, model=model)
    metrics.observe_ttft(0.1, model=model)
    metrics.observe_inter_token(0.02, model=model)
    metrics.observe_queue_wait(0.0, model=model)
    metrics.observe_timings({"queue": 0.1, "prefill": 0.2, _random_text(rng): 1.0}, model=model)
    metrics.count_image(_random_text(rng), 10)
    metrics.count_rejection(code)
    metrics.count_warnings([_random_text(rng), code])
    metrics.count_router_action(task, _random_text(rng))
    for event in ("hit", "miss", "evicted", "expired", "oversize", _random_text(rng)):
        CacheMetrics().counted(_random_text(rng), event, 1)
    CacheMetrics().usage(_random_text(rng), bytes_used=1, entries=1, capacity_bytes=2)


def test_random_client_values_do_not_grow_the_number_of_series() -> None:
    rng = random.Random(6)
    # Warm up: unknown values (all map to "other") with every status class and both cancelled
    # flags, so after this only new attacker-chosen strings could add series.
    for status in (0, 101, 200, 302, 404, 500):
        for cancelled in (False, True):
            _record_everything(rng, "gpt-4o", "jailbreak", "made_up", status, cancelled)
    before = _series()
    for _ in range(300):
        status = rng.choice((0, 200, 302, 400, 404, 413, 500, 503, rng.randint(-5, 999)))
        model, task, code = (_random_text(rng) for _ in range(3))
        _record_everything(rng, model, task, code, status, rng.random() < 0.2)
    assert _series() == before


def test_state_and_cache_gauges_hold_the_values_set() -> None:
    def value(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, labels)

    metrics.set_load(in_flight=3, queued=5)
    metrics.set_ready(loaded=True, ready=False)
    CacheMetrics().usage("embedding", bytes_used=1024, entries=2, capacity_bytes=4096)
    CacheMetrics().counted("prefix", "hit", 2)
    assert value("vlm_gateway_in_flight_requests") == 3
    assert value("vlm_gateway_queue_depth") == 5
    assert value("vlm_gateway_model_loaded") == 1
    assert value("vlm_gateway_ready") == 0
    assert value("vlm_gateway_cache_bytes", cache="embedding") == 1024
    assert value("vlm_gateway_cache_entries", cache="embedding") == 2
    assert value("vlm_gateway_cache_capacity_bytes", cache="embedding") == 4096
    assert (value("vlm_gateway_cache_hits_total", cache="prefix") or 0) >= 2
    metrics.set_load(in_flight=0, queued=0)
    metrics.set_ready(loaded=False, ready=False)
