"""UpstreamAdapter setup against an emulated upstream (httpx.MockTransport): the start check,
the bearer key, request ids, shutdown, and configuration validation."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from adapters.base import (
    Capabilities,
    GenerationRequest,
    Message,
    ModelUnavailable,
    SamplingParams,
    collect,
)
from adapters.upstream import (
    UpstreamAdapter,
    UpstreamConfig,
    UpstreamUnavailable,
)
from tests.unit.adapters.upstream.upstream_fake import (
    BASE,
    SECRET,
    Upstream,
    ask,
    make,
)


@pytest.fixture
def upstream() -> Upstream:
    return Upstream()


async def test_bearer_key_comes_from_the_named_environment_variable(upstream: Upstream) -> None:
    adapter = make(upstream, api_key_env="BIG_VLM_KEY", environ={"BIG_VLM_KEY": "sk-test-123"})
    await collect(adapter.stream(ask()))
    await adapter.start()
    assert [r.headers["authorization"] for r in upstream.requests] == ["Bearer sk-test-123"] * 2
    plain = make(upstream, api_key_env="BIG_VLM_KEY", environ={})
    await collect(plain.stream(ask()))
    assert "authorization" not in upstream.requests[-1].headers


async def test_request_id_is_forwarded_only_when_it_is_a_plain_token(upstream: Upstream) -> None:
    adapter = make(upstream)
    for request_id, expected in [("req-1.a:b", "req-1.a:b"), ("bad\r\nx: y", None), ("", None)]:
        request = GenerationRequest(
            (Message("user", ("hi",)),), SamplingParams(max_tokens=2), request_id=request_id
        )
        await collect(adapter.stream(request))
        assert upstream.requests[-1].headers.get("x-request-id") == expected


async def test_a_closed_adapter_refuses_to_stream(upstream: Upstream) -> None:
    adapter = make(upstream)
    await adapter.aclose()
    with pytest.raises(UpstreamUnavailable):
        await anext(adapter.stream(ask()))
    assert upstream.requests == []


# -- start ------------------------------------------------------------------------------------


async def test_start_checks_that_the_model_is_listed(upstream: Upstream) -> None:
    await make(upstream).start()
    assert upstream.requests[0].url == httpx.URL(f"{BASE}/models")
    upstream.models = ["other-model", SECRET]
    with pytest.raises(ModelUnavailable) as info:
        await make(upstream).start()
    assert "'big-vlm'" in str(info.value)
    assert "10.9.8.7" not in str(info.value)


@pytest.mark.parametrize(
    "answer",
    [
        httpx.ConnectError("[Errno 111] " + SECRET),
        httpx.Response(500, text=SECRET),
        httpx.Response(200, text="<html>" + SECRET),
        httpx.Response(200, json={"data": "nope"}),
        httpx.Response(302, headers={"location": "http://127.0.0.1:1/"}),
    ],
    ids=["unreachable", "500", "html", "malformed", "redirect"],
)
async def test_start_fails_with_a_safe_message(answer: httpx.Response | Exception) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(answer, Exception):
            raise answer
        return answer

    with pytest.raises(ModelUnavailable) as info:
        await make(handler).start()
    assert "127.0.0.1:8001/v1" in str(info.value)
    assert "10.9.8.7" not in str(info.value)


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"base_url": "ftp://127.0.0.1/v1"}, "base_url"),
        ({"base_url": "http://user:pw@127.0.0.1/v1"}, "base_url"),
        ({"base_url": "http://127.0.0.1/v1?x=1"}, "base_url"),
        ({"base_url": "http://[::1/v1"}, "base_url"),
        ({"base_url": 8001}, "base_url"),
        ({"api_key_env": "sk-live-secret-value"}, "api_key_env"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"max_connections": 0}, "max_connections"),
        ({"connect_timeout_s": -1}, "connect_timeout_s"),
    ],
)
def test_bad_configuration_is_refused_naming_the_key(changes: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=key) as info:
        UpstreamConfig(**changes)
    assert "secret-value" not in str(info.value)


def test_model_is_required_and_capabilities_come_from_the_caller() -> None:
    with pytest.raises(ValueError, match="model"):
        UpstreamAdapter(UpstreamConfig())
    caps = Capabilities(model_id="m", context_length=4096, max_images=2, max_pixels=1 << 20)
    assert UpstreamAdapter(UpstreamConfig(model="m"), caps).capabilities is caps
    # Without a profile: Capabilities' own defaults, and the config's response_format and tools
    # switches (tools on by default: an OpenAI-compatible upstream takes them).
    plain = UpstreamAdapter(UpstreamConfig(model="m", supports_response_format=False))
    assert plain.capabilities == Capabilities(
        model_id="m", supports_response_format=False, supports_tools=True
    )
    no_tools = UpstreamAdapter(UpstreamConfig(model="m", supports_tools=False))
    assert not no_tools.capabilities.supports_tools


def test_limits_are_not_upstream_configuration() -> None:
    # They belong to the backend's profile; a stale key in an upstream table is refused.
    with pytest.raises(TypeError, match="context_length"):
        UpstreamConfig(model="m", context_length=4096)  # type: ignore[call-arg]
