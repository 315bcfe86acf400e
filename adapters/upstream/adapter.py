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
- ``timeout_s`` bounds the whole exchange, not only the gaps between reads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing

import httpx

from adapters.base import (
    Capabilities,
    Delta,
    Finish,
    GenerationRequest,
    ModelUnavailable,
    StreamEvent,
    Usage,
)
from adapters.stops import StopMatcher
from adapters.upstream.chunks import StreamTally, read_chunk
from adapters.upstream.config import UpstreamConfig
from adapters.upstream.errors import (
    UpstreamRejected,
    UpstreamUnavailable,
    error_for_status,
    upstream_message,
)
from adapters.upstream.wire import chat_body, sse_payloads

__all__ = ("UpstreamAdapter", "UpstreamConfig", "UpstreamRejected", "UpstreamUnavailable")

log = logging.getLogger("adapters.upstream.adapter")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_MAX_ERROR_BODY = 65536


class UpstreamAdapter:
    """A backend that forwards requests to an OpenAI-compatible server over HTTP."""

    def __init__(
        self,
        config: UpstreamConfig,
        capabilities: Capabilities | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """``capabilities``: the limits the gateway checks (the CLI builds them from the
        backend's profile); default ``Capabilities``' defaults for ``config.model``.
        ``transport``: for tests (``httpx.MockTransport``). ``environ``: where ``api_key_env``
        is looked up."""
        if not config.model:
            raise ValueError("model must name the upstream's model")
        self.config = config
        self.capabilities = capabilities or Capabilities(
            model_id=config.model,
            supports_response_format=config.supports_response_format,
            supports_tools=config.supports_tools,
        )
        root = config.base_url.rstrip("/")
        self._chat_url = httpx.URL(root + "/chat/completions")
        self._models_url = httpx.URL(root + "/models")
        url = httpx.URL(root)
        self._where = f"{url.scheme}://{url.netloc.decode('ascii')}{url.path}"
        # identity: no decompression bombs in error bodies, no compression buffering of SSE.
        headers = {"user-agent": "vlm-gateway-upstream", "accept-encoding": "identity"}
        if config.api_key_env:
            key = (os.environ if environ is None else environ).get(config.api_key_env, "")
            if key:
                headers["authorization"] = f"Bearer {key}"
            else:
                log.warning(
                    "upstream %s: %s is not set; no key sent", self._where, config.api_key_env
                )
        limits = httpx.Limits(
            max_connections=config.max_connections,
            max_keepalive_connections=config.max_connections,
        )
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(config.timeout_s, connect=config.connect_timeout_s),
            limits=limits,
            follow_redirects=False,
            trust_env=False,  # proxy variables must not reroute traffic to the upstream
            transport=transport,
        )
        self._closed = False

    async def check(self, request: GenerationRequest) -> None:
        """Nothing to prepare here: the upstream engine validates what it receives."""

    async def start(self) -> None:
        """Check that the upstream answers ``GET /models`` and lists ``config.model``.

        Raises ``ModelUnavailable`` naming the configured URL, never the upstream's text.
        """
        where, model = self._where, self.config.model
        timeout = httpx.Timeout(
            self.config.probe_timeout_s,
            connect=min(self.config.connect_timeout_s, self.config.probe_timeout_s),
        )
        try:
            response = await self._client.get(
                self._models_url, timeout=timeout, headers={"accept": "application/json"}
            )
        except httpx.HTTPError as exc:
            raise ModelUnavailable(
                f"the upstream backend at {where} cannot be reached ({type(exc).__name__})"
            ) from None
        if response.status_code != 200:
            raise ModelUnavailable(
                f"the upstream backend at {where} answered GET /models with HTTP "
                f"{response.status_code}"
            )
        try:
            listed = json.loads(response.content)["data"]
            ids = {m["id"] for m in listed if isinstance(m, dict) and isinstance(m.get("id"), str)}
        except (ValueError, KeyError, TypeError):
            raise ModelUnavailable(
                f"the upstream backend at {where} sent a malformed GET /models answer"
            ) from None
        if model not in ids:
            raise ModelUnavailable(
                f"the upstream backend at {where} does not serve the model {model!r} "
                f"(it lists {len(ids)} other model(s))"
            )

    async def aclose(self) -> None:
        """Close the connection pool; later streams raise ``UpstreamUnavailable``."""
        self._closed = True
        await self._client.aclose()

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        """Forward ``request``; yield ``Delta`` and ``ToolCallDelta`` values then one ``Finish``.

        Raises ``PromptTooLong`` or ``UpstreamRejected`` (the upstream refused the request,
        before any event), ``UpstreamUnavailable`` (network, timeout, 5xx, error frame).
        Usage is the upstream's final usage chunk; if the upstream sent none, or the local stop
        matcher ended the stream first, prompt tokens are 0 and completion tokens count the
        content chunks. Timings: ``prefill`` = until the first content chunk (network, upstream
        queue and prefill), ``decode`` = the rest.
        """
        if self._closed:
            raise UpstreamUnavailable("The upstream backend is shut down.")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.timeout_s
        model = self.config.model
        if request.images:
            body = await asyncio.to_thread(chat_body, request, model)
        else:
            body = chat_body(request, model)
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
                        "POST", self._chat_url, content=body, headers=headers
                    ),
                    stream=True,
                )
            try:
                if response.status_code != 200:
                    raw = await _read_bounded(response, deadline)
                    self._log_refusal(response.status_code, raw)
                    raise error_for_status(
                        response.status_code, raw, response.headers, request.sampling.max_tokens
                    )
                async with aclosing(sse_payloads(response)) as payloads:
                    while not (tally.done or matcher.stopped):
                        async with asyncio.timeout_at(deadline):  # one deadline for all reads
                            data = await anext(payloads, None)
                        if data is None:
                            break
                        for event in read_chunk(data, tally, matcher, self._where):
                            first = first or loop.time()
                            yield event
            finally:
                await response.aclose()  # unread body: the connection closes, the upstream stops
        except (TimeoutError, httpx.TimeoutException):
            raise UpstreamUnavailable("The upstream model timed out.", timed_out=True) from None
        except httpx.HTTPError as exc:
            log.warning("upstream %s failed: %s", self._where, type(exc).__name__)
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

    def _log_refusal(self, status: int, raw: bytes) -> None:
        message, code = upstream_message(raw)
        log.warning("upstream %s answered HTTP %d %s: %.300r", self._where, status, code, message)


async def _read_bounded(response: httpx.Response, deadline: float) -> bytes:
    """At most ``_MAX_ERROR_BODY`` bytes of an error answer, within the deadline."""
    raw = b""
    async with asyncio.timeout_at(deadline):
        async for piece in response.aiter_bytes():
            raw += piece
            if len(raw) >= _MAX_ERROR_BODY:
                break
    return raw[:_MAX_ERROR_BODY]
