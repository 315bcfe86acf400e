"""A streaming OpenAI chat client that times each request (TTFT, end-to-end) and reads usage."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = ("RequestResult", "stream_chat")


@dataclass
class RequestResult:
    """One request's timings (seconds, from the moment the request was sent) and usage."""

    status: int = 0
    ttft_s: float | None = None
    """First non-empty content delta."""
    e2e_s: float = 0.0
    """Last byte of the response."""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    text: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    arrivals: list[float] = field(default_factory=list)
    """Seconds from the send to each non-empty content delta."""

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None

    def decode_tps(self) -> float | None:
        """Output tokens per second after the first one (the per-request decode rate)."""
        n = self.completion_tokens
        if n is None or n < 2 or self.ttft_s is None or self.e2e_s <= self.ttft_s:
            return None
        return (n - 1) / (self.e2e_s - self.ttft_s)

    def gaps(self) -> list[float]:
        """Seconds between consecutive content deltas (the inter-token gaps a reader sees)."""
        return [b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)]


async def stream_chat(
    client: httpx.AsyncClient,
    base_url: str,
    body: Mapping[str, Any],
    started: asyncio.Event | None = None,
) -> RequestResult:
    """POST a streaming chat completion and time it. Accepts both OpenAI's framing (usage in a
    final chunk, ``[DONE]``) and peers that attach usage to the finish chunk and send no
    ``[DONE]``; an in-band ``{"error": ...}`` frame is recorded as the error. ``started`` is set
    at the first content delta."""
    result = RequestResult()
    start = time.perf_counter()
    try:
        async with client.stream("POST", base_url + "/v1/chat/completions", json=body) as resp:
            result.status = resp.status_code
            result.headers = {k: v for k, v in resp.headers.items() if k.startswith("x-gateway")}
            if resp.status_code != 200:
                raw = await resp.aread()
                result.error = raw.decode(errors="replace")[:300]
                result.e2e_s = time.perf_counter() - start
                return result
            parts: list[str] = []
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                chunk = json.loads(payload)
                if "error" in chunk:
                    result.error = json.dumps(chunk["error"])[:300]
                    continue
                for choice in chunk.get("choices") or ():
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        result.arrivals.append(time.perf_counter() - start)
                        if result.ttft_s is None:
                            result.ttft_s = result.arrivals[0]
                            if started is not None:
                                started.set()
                        parts.append(piece)
                usage = chunk.get("usage")
                if usage:
                    result.prompt_tokens = usage.get("prompt_tokens")
                    result.completion_tokens = usage.get("completion_tokens")
                    details = usage.get("prompt_tokens_details") or {}
                    result.cached_tokens = details.get("cached_tokens")
            result.text = "".join(parts)
    except httpx.HTTPError as exc:
        result.error = type(exc).__name__
    result.e2e_s = time.perf_counter() - start
    return result
