"""How an OpenAI-compatible upstream's failures become our ``AdapterError`` subclasses.

Policy: an upstream's own text (error messages, bodies) never becomes an exception message, since
it may name internal hosts, paths or keys. Only numbers parsed from a context-length error are
used, to build our own ``PromptTooLong`` message. ``upstream_message`` extracts the text for the
operator's log only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from adapters.base import AdapterError, BackendRejected, BackendUnavailable, PromptTooLong

__all__ = ("UpstreamRejected", "UpstreamUnavailable", "error_for_status", "upstream_message")

_MAX_RETRY_AFTER_S = 3600


class UpstreamUnavailable(BackendUnavailable):
    """The upstream could not serve the request: network failure, timeout, a 5xx / 429 /
    authentication answer, a redirect, or a malformed or erroring stream. The message is ours."""


class UpstreamRejected(BackendRejected):
    """The upstream refused this request as invalid (HTTP 400/413/422). The message is ours,
    never the upstream's, so ``code`` says what kind of refusal it was."""


_CONTEXT_HINT = re.compile(
    r"context[ _](?:length|window)|maximum model length|max_model_len|prompt is too long", re.I
)
# (context, prompt, completion) in the order each pattern captures them; None: from the request.
_CONTEXT_NUMBERS: tuple[tuple[re.Pattern[str], tuple[int, int, int | None]], ...] = (
    # OpenAI, older vLLM and vlm-gateway itself.
    (
        re.compile(
            r"maximum context length is (\d{1,9}) tokens.{0,200}?\((\d{1,9}) in the messages, "
            r"(\d{1,9}) in the completion\)",
            re.S,
        ),
        (1, 2, 3),
    ),
    # SGLang.
    (
        re.compile(
            r"maximum context length of (\d{1,9}) tokens.{0,200}?(\d{1,9}) tokens from the input "
            r"messages and (\d{1,9}) tokens for the completion",
            re.S,
        ),
        (1, 2, 3),
    ),
    # Newer vLLM: the completion is the request's max_tokens.
    (
        re.compile(
            r"maximum context length is (\d{1,9}) tokens.{0,60}?request has (\d{1,9}) input tokens",
            re.S,
        ),
        (1, 2, None),
    ),
    # vLLM's engine check (prompt alone too long).
    (
        re.compile(
            r"prompt \(length (\d{1,9})\) is longer than the maximum model length of (\d{1,9})"
        ),
        (2, 1, None),
    ),
)


def upstream_message(raw: bytes) -> tuple[str, str]:
    """(message, code) from an OpenAI-style (``{"error": {...}}``) or vLLM/SGLang-style
    (``{"message": ...}``) error body; empty strings when absent. For logs and parsing only."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return raw[:4096].decode("utf-8", "replace"), ""
    if not isinstance(body, dict):
        return "", ""
    error = body.get("error")
    source = error if isinstance(error, dict) else body
    message = source.get("message")
    code = source.get("code")
    return (
        message[:4096] if isinstance(message, str) else "",
        code if isinstance(code, str) else "",
    )


def _retry_after(headers: Mapping[str, str]) -> int | None:
    value = headers.get("retry-after", "").strip()
    if not (value.isascii() and value.isdigit()):
        return None  # an HTTP date is possible but no upstream we know sends one
    return min(int(value), _MAX_RETRY_AFTER_S)


def _too_long(message: str, max_tokens: int) -> PromptTooLong | None:
    for pattern, (ctx, prompt, completion) in _CONTEXT_NUMBERS:
        match = pattern.search(message)
        if match is None:
            continue
        context_length = int(match.group(ctx))
        prompt_tokens = int(match.group(prompt))
        completion_tokens = int(match.group(completion)) if completion else max_tokens
        if context_length > 0:
            return PromptTooLong(prompt_tokens, completion_tokens, context_length)
    return None


def error_for_status(
    status: int, raw: bytes, headers: Mapping[str, str], max_tokens: int
) -> AdapterError:
    """Our error for an upstream's non-200 answer to a chat request.

    400/413/422 are the request's fault: ``PromptTooLong`` when a context-length error states its
    numbers, else ``UpstreamRejected``. Everything else (401/403/404: our configuration, 408/429,
    5xx, 3xx since redirects are not followed) is ``UpstreamUnavailable``.
    """
    if status in (400, 413, 422):
        message, code = upstream_message(raw)
        if code == "context_length_exceeded" or _CONTEXT_HINT.search(message):
            too_long = _too_long(message, max_tokens)
            if too_long is not None:
                return too_long
            return UpstreamRejected(
                "The upstream model rejected the request: the prompt plus max_tokens exceeds its "
                "context length.",
                status=status,
                code="context_length_exceeded",
            )
        return UpstreamRejected(status=status)
    if status == 408:
        return UpstreamUnavailable("The upstream model timed out.", status=status, timed_out=True)
    if status in (429, 503):
        return UpstreamUnavailable(
            "The upstream model is overloaded.", status=status, retry_after=_retry_after(headers)
        )
    return UpstreamUnavailable(status=status)
