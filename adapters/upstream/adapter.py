"""An upstream OpenAI-compatible server (vLLM, SGLang, another vlm-gateway, OpenAI) as a backend.

``UpstreamAdapter`` forwards a validated ``GenerationRequest`` over HTTP: images as lossless PNG
data URLs of the already prepared pixels (``detail: high``: the gateway applied the budget), the
sampling parameters, ``stop``, ``response_format``, and ``tools`` with ``tool_choice`` and
``parallel_tool_calls`` (the conversation's calls and results as OpenAI messages). It always
streams from the upstream (the gateway collects for non-streaming clients) and asks for the
final usage chunk; the upstream's call pieces come back as ``ToolCallDelta`` values
(``adapters.upstream.chunks``).

Policy:

- The URL and the upstream model name are operator configuration; nothing a client sends changes
  them. The bearer key comes from an environment variable named in the configuration.
- ``stop`` goes to the upstream and is also applied locally with ``StopMatcher``, so the cut is
  exact whether or not the upstream honours it (and beyond OpenAI's four).
- Upstream text never reaches an exception message (see ``adapters.upstream.errors``).
- Closing the stream early closes the upstream response, which cancels the upstream generation.
- ``timeout_s`` bounds the whole exchange, not only the gaps between reads (a retry included).
- A pool (``replicas`` / ``replicas_dns``) picks a replica per request (``adapters.upstream.pool``)
  and retries once, on the next replica, only before the first event: after it, a retry would
  repeat text the client already has, so the failure propagates (the gateway ends the stream
  with an error frame).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing

import httpx

from adapters.base import Capabilities, Delta, Finish, GenerationRequest, StreamEvent, Usage
from adapters.stops import StopMatcher
from adapters.upstream.chunks import StreamTally, read_chunk
from adapters.upstream.config import UpstreamConfig
from adapters.upstream.errors import (
    UpstreamRejected,
    UpstreamUnavailable,
    error_for_status,
    upstream_message,
)
from adapters.upstream.health import Monitor, Resolver, check_models
from adapters.upstream.observer import PoolObserver
from adapters.upstream.pool import MAX_REPLICAS, Pool, Replica
from adapters.upstream.wire import chat_body, sse_payloads

__all__ = ("UpstreamAdapter", "UpstreamConfig", "UpstreamRejected", "UpstreamUnavailable")

log = logging.getLogger("adapters.upstream.adapter")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_MAX_ERROR_BODY = 65536


class UpstreamAdapter:
    """A backend that forwards requests to an OpenAI-compatible server, or a pool of them."""

    def __init__(
        self,
        config: UpstreamConfig,
        capabilities: Capabilities | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        environ: Mapping[str, str] | None = None,
        observer: PoolObserver | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        """``capabilities``: the limits the gateway checks (the CLI builds them from the
        backend's profile); default ``Capabilities``' defaults for ``config.model``.
        ``transport``: for tests (``httpx.MockTransport``). ``environ``: where ``api_key_env``
        is looked up. ``observer``: told what a pool does (metrics). ``resolver``: resolves
        ``replicas_dns`` (default: the system's resolver)."""
        if not config.model:
            raise ValueError("model must name the upstream's model")
        self.config = config
        self.capabilities = capabilities or Capabilities(
            model_id=config.model,
            supports_response_format=config.supports_response_format,
            supports_tools=config.supports_tools,
        )
        self._pool = Pool(config, observer)
        # identity: no decompression bombs in error bodies, no compression buffering of SSE.
        headers = {"user-agent": "vlm-gateway-upstream", "accept-encoding": "identity"}
        if config.api_key_env:
            key = (os.environ if environ is None else environ).get(config.api_key_env, "")
            if key:
                headers["authorization"] = f"Bearer {key}"
            else:
                log.warning("upstream: %s is not set; no key sent", config.api_key_env)
        # httpx bounds connections per client, not per host: max_connections per replica.
        replicas = MAX_REPLICAS if config.replicas_dns else max(1, len(config.replicas))
        connections = config.max_connections * replicas
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(config.timeout_s, connect=config.connect_timeout_s),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            follow_redirects=False,
            trust_env=False,  # proxy variables must not reroute traffic to the upstream
            transport=transport,
        )
        self._monitor = Monitor(self._pool, self._client, resolver)
        self._closed = False

    async def check(self, request: GenerationRequest) -> None:
        """Nothing to prepare here: the upstream engine validates what it receives."""

    async def start(self) -> None:
        """Check that the upstream answers ``GET /models`` and lists ``config.model``.

        A pool: resolve its name, check every replica (those failing start ejected) and start
        the health probes; it is up when one replica passes. Raises ``ModelUnavailable`` naming
        the configured URL, never the upstream's text.
        """
        if self._pool.managed:
            await self._monitor.start()
        else:
            await check_models(self._client, self._pool.replicas[0], self.config)

    async def aclose(self) -> None:
        """Stop the probes, close the connection pool; later streams raise
        ``UpstreamUnavailable``."""
        self._closed = True
        await self._monitor.aclose()
        await self._client.aclose()

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """Forward ``request``; yield ``Delta`` and ``ToolCallDelta`` values then one ``Finish``.

        Raises ``PromptTooLong`` or ``UpstreamRejected`` (the upstream refused the request,
        before any event), ``UpstreamUnavailable`` (network, timeout, 5xx, error frame; no
        healthy replica). In a pool, a replica that fails before the first event (unreachable,
        5xx, overloaded, a broken stream) is retried once on the next replica; after the first
        event a failure propagates, as the client already has part of the answer.
        Usage is the upstream's final usage chunk; if the upstream sent none, or the local stop
        matcher ended the stream first, prompt tokens are 0 and completion tokens count the
        content chunks. Timings: ``prefill`` = until the first content chunk (network, upstream
        queue and prefill), ``decode`` = the rest.
        """
        if self._closed:
            raise UpstreamUnavailable("The upstream backend is shut down.")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.timeout_s
        config = self.config
        build = functools.partial(
            chat_body, request, config.model, config.image_uuids, config.cache_salt
        )
        body = await asyncio.to_thread(build) if request.images else build()
        # No await between route() and begin(): concurrent requests see each other's load.
        candidates = self._pool.route(request)
        if not candidates:
            raise UpstreamUnavailable("No upstream replica is available.")
        for attempt, replica in enumerate(candidates):
            yielded, done = False, False
            self._pool.begin(replica)
            try:
                async with aclosing(self._exchange(replica, request, body, deadline)) as events:
                    async for event in events:
                        if isinstance(event, Finish):
                            # The replica is done now, though a caller that stops reading at
                            # the Finish leaves this generator open until it is collected.
                            done = True
                            self._pool.end(replica, failed=False)
                        yielded = True
                        yield event
                return
            except UpstreamUnavailable:
                done = True
                self._pool.end(replica, failed=True)
                if yielded or attempt + 1 == len(candidates) or loop.time() >= deadline:
                    raise
                log.warning(
                    "upstream replica %s failed before answering; retrying on %s",
                    replica.where,
                    candidates[attempt + 1].where,
                )
            finally:
                if not done:  # closed early (the client left) or another error
                    self._pool.end(replica, failed=False)

    async def _exchange(
        self, replica: Replica, request: GenerationRequest, body: bytes, deadline: float
    ) -> AsyncGenerator[StreamEvent, None]:
        """One request to one replica (``stream`` without the choice of replica)."""
        loop = asyncio.get_running_loop()
        headers = {"content-type": "application/json", "accept": "text/event-stream"}
        if _REQUEST_ID.fullmatch(request.request_id):
            headers["x-request-id"] = request.request_id
        matcher = StopMatcher(request.sampling.stop)
        tally = StreamTally()
        sent = loop.time()
        first: float | None = None
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._client.send(
                    self._client.build_request(
                        "POST", replica.chat_url, content=body, headers=headers
                    ),
                    stream=True,
                )
            try:
                if response.status_code >= 500:
                    self._pool.failed(replica)
                else:
                    self._pool.answered(replica)
                if response.status_code != 200:
                    raw = await _read_bounded(response, deadline)
                    self._log_refusal(replica, response.status_code, raw)
                    raise error_for_status(
                        response.status_code, raw, response.headers, request.sampling.max_tokens
                    )
                async with aclosing(sse_payloads(response)) as payloads:
                    while not (tally.done or matcher.stopped):
                        async with asyncio.timeout_at(deadline):  # one deadline for all reads
                            data = await anext(payloads, None)
                        if data is None:
                            break
                        for event in read_chunk(data, tally, matcher, replica.where):
                            first = first or loop.time()
                            yield event
            finally:
                await response.aclose()  # unread body: the connection closes, the upstream stops
        except (TimeoutError, httpx.TimeoutException) as exc:
            if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
                self._pool.failed(replica)
            raise UpstreamUnavailable("The upstream model timed out.", timed_out=True) from None
        except httpx.HTTPError as exc:
            log.warning("upstream %s failed: %s", replica.where, type(exc).__name__)
            self._pool.failed(replica)  # unreachable, or the connection broke: it may be down
            raise UpstreamUnavailable() from None
        if matcher.stopped:
            tally.finish_reason = "stop"
        elif tally.finish_reason is None:
            raise UpstreamUnavailable("The upstream stream ended before the answer was finished.")
        tail = matcher.flush()
        if tail:
            first = first or loop.time()
            yield Delta(tail)
        end = loop.time()
        timings = {"prefill": (first or end) - sent, "decode": end - (first or end)}
        yield Finish(tally.finish_reason, self._usage(request, tally), timings)

    def _usage(self, request: GenerationRequest, tally: StreamTally) -> Usage:
        u = tally.usage
        if u is None:
            return Usage(0, tally.chunks)
        # The upstream does not say how many prompt tokens were images; the profile does.
        images = sum(self.capabilities.image_tokens(*image.size) for image in request.images)
        return Usage(
            u.prompt_tokens, u.completion_tokens, u.cached_tokens, min(images, u.prompt_tokens)
        )

    def _log_refusal(self, replica: Replica, status: int, raw: bytes) -> None:
        message, code = upstream_message(raw)
        log.warning("upstream %s answered HTTP %d %s: %.300r", replica.where, status, code, message)


async def _read_bounded(response: httpx.Response, deadline: float) -> bytes:
    """At most ``_MAX_ERROR_BODY`` bytes of an error answer, within the deadline."""
    raw = b""
    async with asyncio.timeout_at(deadline):
        async for piece in response.aiter_bytes():
            raw += piece
            if len(raw) >= _MAX_ERROR_BODY:
                break
    return raw[:_MAX_ERROR_BODY]
