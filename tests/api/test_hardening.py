"""Hardening at the HTTP edge: what a browser page, an odd number or a misused option can do."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from adapters.base import Capabilities, GenerationRequest, InvalidResponseFormat
from adapters.testing import FakeAdapter
from tests.api.conftest import (
    MODEL,
    ClientFactory,
    build_app,
    chat_scope,
    http_client,
    running,
)
from tests.api.test_chat import URL, assert_error, chat
from tests.api.test_metrics import scrape

pytestmark = pytest.mark.asyncio


async def test_json_endpoints_refuse_bodies_that_are_not_json(make_client: ClientFactory) -> None:
    """A page may POST text/plain anywhere without a CORS preflight: it must not be served."""
    async with make_client() as (client, fake):
        body = json.dumps(chat())
        for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {"content-type": content_type} if content_type else {}
            response = await client.post(URL, content=body, headers=headers)
            assert_error(response, 415, "unsupported_media_type")
        ok = await client.post(
            URL, content=body, headers={"content-type": "application/json; charset=utf-8"}
        )
        assert ok.status_code == 200
        assert len(fake.requests) == 1


@pytest.mark.parametrize(
    ("bind", "allowed", "host", "status"),
    [
        ("127.0.0.1", (), "localhost:8000", 200),
        ("127.0.0.1", (), "127.0.0.1:8000", 200),
        ("127.0.0.1", (), "[::1]:8000", 200),
        ("127.0.0.1", (), "app.localhost", 200),
        ("127.0.0.1", (), "attacker.example:8000", 400),  # a rebound DNS name
        ("127.0.0.1", (), "10.0.0.5", 400),
        ("127.0.0.1", ("gateway.internal",), "gateway.internal:8000", 200),
        ("127.0.0.1", ("gateway.internal",), "localhost", 400),  # the list replaces the default
        ("127.0.0.1", ("*.corp.example",), "vlm.corp.example", 200),
        ("127.0.0.1", ("*",), "anything.example", 200),
        ("0.0.0.0", (), "anything.example", 200),  # behind a load balancer: any host
    ],
)
async def test_loopback_servers_answer_only_loopback_host_names(
    bind: str, allowed: tuple[str, ...], host: str, status: int
) -> None:
    app = build_app(
        FakeAdapter(Capabilities(model_id=MODEL)),
        server={"host": bind, "allowed_hosts": allowed},
    )
    async with running(app), http_client(app) as client:
        for path in ("/v1/models", "/metrics", "/health"):
            response = await client.get(path, headers={"host": host})
            if status == 400:
                assert_error(response, 400, "invalid_host")
            else:
                assert response.status_code == status, (path, response.text)


async def test_cors_is_off_unless_configured(make_client: ClientFactory) -> None:
    preflight = {
        "origin": "https://evil.example",
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type",
    }
    async with make_client() as (client, _):
        response = await client.options(URL, headers=preflight)
        assert "access-control-allow-origin" not in response.headers
    async with make_client(server={"cors_origins": ("https://app.example",)}) as (client, _):
        allowed = await client.options(URL, headers={**preflight, "origin": "https://app.example"})
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        other = await client.options(URL, headers=preflight)
        assert other.headers.get("access-control-allow-origin") != "https://evil.example"


@pytest.mark.parametrize("seed", [2**64, -(2**70), 2**63])
async def test_seeds_beyond_64_bits_are_refused(make_client: ClientFactory, seed: int) -> None:
    async with make_client() as (client, _):
        assert_error(await client.post(URL, json=chat(seed=seed)), 400, "invalid_value", "seed")
        assert (await client.post(URL, json=chat(seed=2**63 - 1))).status_code == 200
        assert (await client.post(URL, json=chat(seed=-(2**63)))).status_code == 200


async def test_stream_options_need_a_stream(make_client: ClientFactory) -> None:
    options = {"stream_options": {"include_usage": True}}
    async with make_client() as (client, fake):
        for stream in (False, None):
            fields = {**options, **({} if stream is None else {"stream": stream})}
            response = await client.post(URL, json=chat(**fields))
            assert_error(response, 400, "invalid_value", "stream_options")
        assert fake.requests == []
        ok = await client.post(URL, json=chat(stream=True, **options))
        assert ok.status_code == 200


class CompilesSlowly(FakeAdapter):
    """A backend whose ``check`` refuses every response_format (a schema too costly to compile)."""

    async def check(self, request: GenerationRequest) -> None:
        if request.response_format is not None:
            raise InvalidResponseFormat("response_format schema pattern repeats too much")


async def test_response_format_is_checked_before_taking_a_generation_slot(
    make_client: ClientFactory,
) -> None:
    adapter = CompilesSlowly(Capabilities(model_id=MODEL), token_delay_s=0.05)
    adapter.enqueue(" ".join(["word"] * 60))  # holds the only slot for about 3 s
    server = {"max_concurrent": 1, "max_queue": 1}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}
    async with (
        make_client(adapter, server=server) as (client, _),
        client.stream("POST", URL, json=chat(stream=True)) as running_stream,
    ):
        assert running_stream.status_code == 200
        started = asyncio.get_running_loop().time()
        refused = await client.post(URL, json=chat(response_format=fmt))
        assert_error(refused, 400, "invalid_value", "response_format")
        assert asyncio.get_running_loop().time() - started < 1.5  # did not wait for the slot


async def test_each_api_key_gets_its_own_cache_partition(make_client: ClientFactory) -> None:
    server = {"api_keys": ("alice-key", "bob-key")}
    async with make_client(server=server) as (client, fake):
        calls = [
            ("alice-key", None),
            ("alice-key", None),
            ("bob-key", None),
            ("alice-key", "conversation-1"),
            ("alice-key", "conversation-2"),
        ]
        for key, salt in calls:
            fields = {"cache_salt": salt} if salt else {}
            headers = {"authorization": f"Bearer {key}"}
            assert (await client.post(URL, json=chat(**fields), headers=headers)).status_code == 200
        scopes = [r.cache_scope for r in fake.requests]
    assert scopes[0] == scopes[1]  # one key, one partition
    assert len(set(scopes)) == 4  # bob's, and each salt narrows alice's
    assert all("alice-key" not in s and "conversation" not in s for s in scopes)  # never stored
    async with make_client(server=server, cache={"share_across_keys": True}) as (client, fake):
        for key in ("alice-key", "bob-key"):
            headers = {"authorization": f"Bearer {key}"}
            assert (await client.post(URL, json=chat(), headers=headers)).status_code == 200
        assert fake.requests[0].cache_scope == fake.requests[1].cache_scope


async def test_a_client_hanging_up_mid_upload_is_a_499_not_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = build_app(FakeAdapter(Capabilities(model_id=MODEL)))
    sent: list[dict[str, Any]] = []
    chunks = [
        {"type": "http.request", "body": b'{"model": "fake-vlm", "mess', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, Any]:
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = chat_scope()
    async with running(app), http_client(app) as client:
        before = await scrape(client)
        with caplog.at_level(logging.INFO):
            await asyncio.wait_for(app(scope, receive, send), 5)  # type: ignore[arg-type]
        after = await scrape(client)
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert [m["status"] for m in starts] == [499]
    errors = [k for k in after if k[0] == "vlm_gateway_errors_total"]
    assert all(after[k] == before.get(k, 0.0) for k in errors)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [r for r in caplog.records if r.exc_info]


async def test_a_body_that_trickles_in_gets_a_408() -> None:
    app = build_app(FakeAdapter(Capabilities(model_id=MODEL)), server={"body_timeout_s": 0.5})
    sent: list[dict[str, Any]] = []
    first = {"type": "http.request", "body": b'{"model": "fake-vlm", "mess', "more_body": True}
    pending = [first]

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await asyncio.sleep(3)  # the rest of the body never comes in time
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = chat_scope()
    async with running(app):
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(app(scope, receive, send), 5)  # type: ignore[arg-type]
        assert asyncio.get_running_loop().time() - started < 2
    (start,) = [m for m in sent if m["type"] == "http.response.start"]
    assert start["status"] == 408
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert json.loads(body)["error"]["code"] == "request_timeout"
